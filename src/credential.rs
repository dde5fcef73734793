//! Credentials: the token format, reading a credential from a request, and hashing it.
//!
//! Tokens look like `gts_<43 chars>_<6 chars>`: a kind prefix (so secret scanners recognise a
//! leaked gatehouse token, and no token starts with `-`), 256 bits from the OS CSPRNG in
//! URL-safe base64, and a CRC32 of everything before it. The checksum lets `/auth` reject
//! garbage before any cache or store lookup; it is not a secret and proves nothing by itself.
//!
//! The store and the cache only ever see [`TokenHash`], the SHA-256 of the token. This module
//! must never log a token: tokens travel as `&str` borrowed from the request or as
//! [`Secret`].

use aws_lc_rs::digest;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hyper::header::{HeaderMap, AUTHORIZATION, COOKIE};

use crate::secret::Secret;
use crate::session::SessionKind;

const BODY_LEN: usize = 43; // 32 bytes in base64 without padding
const CRC_LEN: usize = 6; // 4 bytes in base64 without padding
const PREFIX_LEN: usize = 4;
pub const TOKEN_LEN: usize = PREFIX_LEN + BODY_LEN + 1 + CRC_LEN;

/// Creates a new token for a session of `kind` from the OS CSPRNG; the kind's prefix
/// ([`SessionKind::prefix`]) starts it.
pub fn generate(kind: SessionKind) -> Secret<String> {
    let mut random = [0u8; 32];
    aws_lc_rs::rand::fill(&mut random).expect("the OS random number generator failed");
    let mut token = String::with_capacity(TOKEN_LEN);
    token.push_str(kind.prefix());
    URL_SAFE_NO_PAD.encode_string(random, &mut token);
    let crc = crc32fast::hash(token.as_bytes());
    token.push('_');
    URL_SAFE_NO_PAD.encode_string(crc.to_be_bytes(), &mut token);
    debug_assert_eq!(token.len(), TOKEN_LEN);
    Secret::new(token)
}

/// The bytes of the URL-safe base64 alphabet.
static BASE64URL: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        c += 1;
    }
    t
};

/// Checks the shape and checksum of a token without any lookup; `None` for garbage.
pub fn check(token: &str) -> Option<SessionKind> {
    let b = token.as_bytes();
    if b.len() != TOKEN_LEN || b[PREFIX_LEN + BODY_LEN] != b'_' {
        return None;
    }
    let kind = SessionKind::from_prefix(&b[..PREFIX_LEN])?;
    let mut crc = [0u8; 4];
    let n = URL_SAFE_NO_PAD
        .decode_slice(&b[PREFIX_LEN + BODY_LEN + 1..], &mut crc)
        .ok()?;
    if n != 4 || crc32fast::hash(&b[..PREFIX_LEN + BODY_LEN]) != u32::from_be_bytes(crc) {
        return None;
    }
    // The body must be base64url; the CRC alone would let other bytes through.
    if !b[PREFIX_LEN..PREFIX_LEN + BODY_LEN]
        .iter()
        .all(|&c| BASE64URL[c as usize])
    {
        return None;
    }
    Some(kind)
}

/// SHA-256 of a token: the only form in which the store and the cache know it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

/// Feeds the hasher 8 of the 32 bytes: they are already uniformly distributed, and the
/// cache's hasher is keyed per process, so hashing all 32 costs time and buys nothing.
/// Equality still compares all 32.
impl std::hash::Hash for TokenHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

impl TokenHash {
    pub fn of(token: &str) -> Self {
        let d = digest::digest(&digest::SHA256, token.as_bytes());
        let mut h = [0u8; 32];
        h.copy_from_slice(d.as_ref());
        TokenHash(h)
    }

    /// The store key: the hash in URL-safe base64 (43 characters).
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    pub fn decode(s: &str) -> Option<Self> {
        let mut h = [0u8; 32];
        match URL_SAFE_NO_PAD.decode_slice(s, &mut h) {
            Ok(32) => Some(TokenHash(h)),
            _ => None,
        }
    }

    /// A short, non-secret handle of the session (the JWT's `sid`): a prefix of the store
    /// key, which a dump of the store shows anyway.
    pub fn sid(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.0[..12])
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({})", self.sid())
    }
}

/// Where the credential came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Bearer,
    Cookie,
}

/// Why a request carries no usable credential. Every variant is the caller's fault (401).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("malformed authorization header")]
    Malformed,
    #[error("unsupported authorization scheme")]
    UnsupportedScheme,
}

/// Reads the credential: `Authorization: Bearer` first; only when that header is absent, the
/// session cookie. A present but unusable Authorization header never falls back to the cookie.
pub fn extract<'a>(
    headers: &'a HeaderMap,
    cookie_name: &str,
) -> Result<Option<(Method, &'a str)>, CredentialError> {
    let mut auth = headers.get_all(AUTHORIZATION).iter();
    if let Some(value) = auth.next() {
        if auth.next().is_some() {
            return Err(CredentialError::Malformed);
        }
        let value = value.to_str().map_err(|_| CredentialError::Malformed)?;
        let (scheme, rest) = value
            .split_once(' ')
            .ok_or(CredentialError::UnsupportedScheme)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(CredentialError::UnsupportedScheme);
        }
        let token = rest.trim_matches(' ');
        // `to_str` admitted only visible ASCII, space and tab.
        if token.is_empty() || token.bytes().any(|b| b == b' ' || b == b'\t') {
            return Err(CredentialError::Malformed);
        }
        return Ok(Some((Method::Bearer, token)));
    }
    Ok(cookie(headers, cookie_name).map(|v| (Method::Cookie, v)))
}

/// The value of the cookie `name`: the first one sent when there are several (browsers send
/// the most specific first). The one rule for `/auth` and the pages alike.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    for value in headers.get_all(COOKIE) {
        // A cookie header that is not visible ASCII cannot hold one of our tokens; skip it
        // rather than reject the request, since other cookies are not ours to judge.
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            if let Some((n, v)) = pair.trim_start().split_once('=') {
                if n == name {
                    return Some(v.trim_end().trim_matches('"'));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::headers;

    #[test]
    fn generated_tokens_pass_the_check_and_differ() {
        let a = generate(SessionKind::User);
        let b = generate(SessionKind::Personal);
        assert_eq!(check(a.expose()), Some(SessionKind::User));
        assert_eq!(check(b.expose()), Some(SessionKind::Personal));
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with("gts_"));
        assert_eq!(a.expose().len(), TOKEN_LEN);
    }

    #[test]
    fn check_rejects_garbage_and_tampering() {
        let t = generate(SessionKind::User).expose().clone();
        let mut tampered = t.clone().into_bytes();
        tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
        assert_eq!(check(std::str::from_utf8(&tampered).unwrap()), None);
        assert_eq!(check(""), None);
        assert_eq!(check("gts_"), None);
        assert_eq!(check(&t[..t.len() - 1]), None);
        assert_eq!(check(&format!("xxx_{}", &t[4..])), None);
        assert_eq!(check(&"a".repeat(TOKEN_LEN)), None);
    }

    #[test]
    fn hash_round_trips_and_sid_is_short() {
        let h = TokenHash::of("gts_x");
        assert_eq!(TokenHash::decode(&h.encode()), Some(h));
        assert_eq!(h.sid().len(), 16);
        assert!(h.encode().starts_with(&h.sid()));
    }

    #[test]
    fn bearer_wins_over_cookie_and_malformed_never_falls_back() {
        let h = headers(&[
            ("authorization", "Bearer abc"),
            ("cookie", "gatehouse_session=xyz"),
        ]);
        assert_eq!(
            extract(&h, "gatehouse_session"),
            Ok(Some((Method::Bearer, "abc")))
        );
        let h = headers(&[("authorization", "bEaReR   abc  ")]);
        assert_eq!(extract(&h, "s"), Ok(Some((Method::Bearer, "abc"))));
        for bad in ["Bearer", "Bearer ", "Bearer a b", "Bearer\tabc"] {
            let h = headers(&[("authorization", bad), ("cookie", "s=xyz")]);
            assert!(extract(&h, "s").is_err(), "{bad:?} must be refused");
        }
        let h = headers(&[("authorization", "Basic dXNlcjpwYXNz"), ("cookie", "s=xyz")]);
        assert_eq!(extract(&h, "s"), Err(CredentialError::UnsupportedScheme));
        let h = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert_eq!(extract(&h, "s"), Err(CredentialError::Malformed));
    }

    #[test]
    fn cookie_is_found_among_others_and_across_headers() {
        let h = headers(&[("cookie", "a=1; b=2"), ("cookie", "other=3;  s=tok ; z=9")]);
        assert_eq!(extract(&h, "s"), Ok(Some((Method::Cookie, "tok"))));
        let h = headers(&[("cookie", "ss=1; s_=2")]);
        assert_eq!(extract(&h, "s"), Ok(None));
        assert_eq!(extract(&HeaderMap::new(), "s"), Ok(None));
    }
}
