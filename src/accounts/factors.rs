//! Second factors, the parts without I/O: authenticator-app codes (TOTP, RFC 6238: SHA-1,
//! 6 digits, 30-second steps, one step either side) and recovery codes (10 of 50 bits each,
//! stored as SHA-256). The database keeps the TOTP secret sealed with the server secret
//! ([`crate::secret::ServerSecret::seal`], purpose [`TOTP_PURPOSE`]) and the last step used,
//! so that no code is accepted twice.

use std::fmt::Write;

/// The server secret's purpose for TOTP secrets.
pub const TOTP_PURPOSE: &str = "totp secret";
/// Seconds per TOTP step.
pub const STEP: u64 = 30;
/// Steps either side of now that are accepted (clock drift, a code typed as it changed).
const WINDOW: u64 = 1;
/// Recovery codes per set.
pub const RECOVERY_CODES: usize = 10;

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A new TOTP secret: 160 random bits, as RFC 4226 recommends.
pub fn new_secret() -> Vec<u8> {
    let mut s = vec![0u8; 20];
    aws_lc_rs::rand::fill(&mut s).expect("the system RNG");
    s
}

/// RFC 4648 base32 without padding: how authenticator apps take a secret.
pub fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            out.push(BASE32[((buffer >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(BASE32[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The bytes of a base32 secret as authenticator apps take it (case, spaces and padding
/// ignored); `None` when it is not base32.
pub fn from_base32(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.chars().filter(|c| !c.is_whitespace() && *c != '=') {
        let v = BASE32
            .iter()
            .position(|b| *b as char == c.to_ascii_uppercase())? as u32;
        buffer = (buffer << 5) | v;
        bits += 5;
        if bits >= 8 {
            out.push((buffer >> (bits - 8)) as u8);
            bits -= 8;
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The code of `secret` at `step` (RFC 4226's HOTP with the step as counter).
pub fn code_at(secret: &[u8], step: u64) -> u32 {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let mac = aws_lc_rs::hmac::sign(&key, &step.to_be_bytes());
    let h = mac.as_ref();
    let offset = (h[19] & 0x0f) as usize;
    let value = u32::from_be_bytes([
        h[offset] & 0x7f,
        h[offset + 1],
        h[offset + 2],
        h[offset + 3],
    ]);
    value % 1_000_000
}

/// The step of `code` if it is `secret`'s code within the window around `now` (Unix
/// seconds), newest first. Spaces are ignored; anything but six digits is no code.
pub fn matching_step(secret: &[u8], code: &str, now: u64) -> Option<u64> {
    let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let typed: u32 = digits.parse().ok()?;
    let current = now / STEP;
    (current.saturating_sub(WINDOW)..=current + WINDOW)
        .rev()
        .find(|&step| constant_eq(code_at(secret, step), typed))
}

fn constant_eq(a: u32, b: u32) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(&a.to_be_bytes(), &b.to_be_bytes()).is_ok()
}

/// The `otpauth://` URI an authenticator app scans.
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    let enc = crate::forward::percent_encode;
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits=6&period={STEP}",
        enc(issuer),
        enc(account),
        base32(secret),
        enc(issuer)
    )
}

/// `text` as a QR code in inline SVG (dark modules on white, with the quiet zone).
pub fn qr_svg(text: &str) -> String {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(200, 200)
            .dark_color(qrcode::render::svg::Color("#111827"))
            .light_color(qrcode::render::svg::Color("#ffffff"))
            .build(),
        Err(_) => String::new(),
    }
}

/// A new set of recovery codes: each 10 base32 characters (50 bits), shown as `xxxxx-xxxxx`.
pub fn new_recovery_codes() -> Vec<String> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut raw = [0u8; 7];
            aws_lc_rs::rand::fill(&mut raw).expect("the system RNG");
            let text = base32(&raw)[..10].to_ascii_lowercase();
            format!("{}-{}", &text[..5], &text[5..])
        })
        .collect()
}

/// How a recovery code is stored and looked up: SHA-256 of its normal form (lower case,
/// without the dash and spaces people type), hex. 50 random bits need no slow hash.
pub fn recovery_hash(code: &str) -> String {
    let normal: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, normal.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in d.as_ref() {
        let _ = write!(hex, "{b:02x}"); // into a String: cannot fail
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238, appendix B: the SHA-1 secret and its 8-digit codes, of which TOTP with 6
    /// digits keeps the last six.
    #[test]
    fn rfc_6238_test_vectors() {
        let secret = b"12345678901234567890";
        for (time, eight) in [
            (59u64, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ] {
            assert_eq!(code_at(secret, time / STEP), eight % 1_000_000, "{time}");
        }
        assert_eq!(
            base32(b"12345678901234567890"),
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        );
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }

    /// With a fixed clock: the current step and one either side, nothing further; spaces are
    /// fine, other shapes are no code.
    #[test]
    fn codes_match_within_one_step_either_side() {
        let secret = b"12345678901234567890";
        let now = 1_111_111_111;
        let at = |step: u64| format!("{:06}", code_at(secret, step));
        let current = now / STEP;
        assert_eq!(matching_step(secret, &at(current), now), Some(current));
        assert_eq!(
            matching_step(secret, &at(current - 1), now),
            Some(current - 1)
        );
        assert_eq!(
            matching_step(secret, &at(current + 1), now),
            Some(current + 1)
        );
        assert_eq!(matching_step(secret, &at(current - 2), now), None);
        assert_eq!(matching_step(secret, &at(current + 2), now), None);
        let spaced = format!("{} {}", &at(current)[..3], &at(current)[3..]);
        assert_eq!(matching_step(secret, &spaced, now), Some(current));
        for bad in ["", "12345", "1234567", "abcdef", "12345x"] {
            assert_eq!(matching_step(secret, bad, now), None, "{bad}");
        }
    }

    #[test]
    fn recovery_codes_are_distinct_and_hash_however_typed() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), RECOVERY_CODES);
        let c = &codes[0];
        assert_eq!(c.len(), 11);
        assert_eq!(recovery_hash(c), recovery_hash(&c.to_uppercase()));
        assert_eq!(recovery_hash(c), recovery_hash(&c.replace('-', " ")));
        assert_ne!(recovery_hash(c), recovery_hash(&codes[1]));
    }

    #[test]
    fn the_enrolment_uri_and_qr_code() {
        let uri = otpauth_uri("gatehouse", "ada@example.org", b"12345678901234567890");
        assert_eq!(
            uri,
            "otpauth://totp/gatehouse:ada%40example.org?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=gatehouse&algorithm=SHA1&digits=6&period=30"
        );
        let svg = qr_svg(&uri);
        assert!(svg.starts_with("<?xml") || svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("</svg>"));
    }
}
