//! arXiv drop-in mode (`--compat arxiv`): answers `/auth` from an existing arXiv Redis, as
//! arXiv's authenticator did, so that arXiv's services keep working unchanged.
//!
//! The browser sends the `ARXIVNG_SESSION_ID` cookie, an HS256 JWT (arXiv's secret) holding
//! `user_id`, `session_id`, `nonce` and `expires`. The session record is another HS256 JWT,
//! stored in Redis at the key `session_id`, with `session_id`, `start_time`, `end_time`,
//! `nonce`, `user` (`user_id`, `username`, `email`, ...), `client` (for API clients) and
//! `authorizations.scopes` (strings like `submission:create`, or objects with `domain`,
//! `action` and `resource`). A bearer token is the key of such a record itself: it is
//! checked against the record alone — its signature (arXiv's secret), its `end_time` (and a
//! `start_time` not in the future) — as there is no cookie whose nonce and user could be
//! compared; its secrecy is that of the key, so arXiv must use unguessable session ids.
//!
//! Checked here and not by the original: both signatures, both expiry times, and that the
//! cookie's `nonce`, `user_id` and `session_id` match the record's. A store failure is 503
//! (the original answered 200 without identity). Times are accepted as ISO 8601 (what arXiv
//! writes; no zone means UTC) or as Unix seconds.
//!
//! Nothing is cached: arXiv's own services log out by deleting the record, with no
//! broadcast, so only a read per request sees a logout at once. That read is one `GET` on a
//! pooled connection (the original opened a connection per request).

use bytes::Bytes;
use hyper::header::HeaderValue;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::secret::Secret;
use crate::store::redis::RedisStore;
use crate::store::StoreError;

/// arXiv's session cookie.
pub const COOKIE: &str = "ARXIVNG_SESSION_ID";

/// Longest bearer token looked up: it becomes a Redis key.
const MAX_TOKEN: usize = 4096;

/// The arXiv mode's verifier, built once at start.
pub struct Arxiv {
    key: DecodingKey,
    validation: Validation,
}

/// What a valid arXiv session grants.
#[derive(Debug)]
pub struct Allowed {
    /// The stored record verbatim: arXiv's services expect `Authorization: <it>`.
    pub authorization: HeaderValue,
    pub user: Option<String>,
    pub email: Option<String>,
    /// Scopes as `domain:action[:resource]` strings, for route policy.
    pub scopes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArxivError {
    /// Bad signature, expired, mismatched, or unreadable: the caller's credential is bad.
    #[error("invalid arXiv session")]
    Invalid,
    /// No record under that key (logged out, expired in Redis, or never existed).
    #[error("unknown arXiv session")]
    Unknown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Arxiv {
    pub fn new(secret: &Secret<String>) -> Arxiv {
        let mut validation = Validation::new(Algorithm::HS256);
        // arXiv's records carry their own time claims (`expires`, `end_time`), checked below;
        // none of the registered claims is required.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        Arxiv {
            key: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
        }
    }

    fn decode(&self, jwt: &str) -> Result<Value, ArxivError> {
        jsonwebtoken::decode::<Value>(jwt, &self.key, &self.validation)
            .map(|d| d.claims)
            .map_err(|_| ArxivError::Invalid)
    }

    /// The `ARXIVNG_SESSION_ID` cookie: verify it, load its record, check that they agree.
    pub async fn check_cookie(
        &self,
        cookie: &str,
        store: &RedisStore,
        now: f64,
    ) -> Result<Allowed, ArxivError> {
        let claims = self.decode(cookie)?;
        let expires = claims
            .get("expires")
            .and_then(time)
            .ok_or(ArxivError::Invalid)?;
        if expires <= now {
            return Err(ArxivError::Invalid);
        }
        let session_id = claims
            .get("session_id")
            .and_then(id)
            .ok_or(ArxivError::Invalid)?;
        let nonce = claims
            .get("nonce")
            .and_then(id)
            .ok_or(ArxivError::Invalid)?;
        let user_id = claims.get("user_id").and_then(id);
        let raw = store
            .get_raw(&session_id)
            .await?
            .ok_or(ArxivError::Unknown)?;
        let (record, allowed) = self.check_record(raw, now)?;
        let same = |field: &str, expected: &str| {
            record.get(field).and_then(id).as_deref() == Some(expected)
        };
        if !same("nonce", &nonce) {
            return Err(ArxivError::Invalid);
        }
        // A record that names its own id must name this one.
        if record.get("session_id").is_some() && !same("session_id", &session_id) {
            return Err(ArxivError::Invalid);
        }
        let record_user = record
            .get("user")
            .and_then(|u| u.get("user_id"))
            .and_then(id);
        if record_user != user_id {
            return Err(ArxivError::Invalid);
        }
        Ok(allowed)
    }

    /// A bearer token: the key of a stored record.
    pub async fn check_bearer(
        &self,
        token: &str,
        store: &RedisStore,
        now: f64,
    ) -> Result<Allowed, ArxivError> {
        if token.len() > MAX_TOKEN {
            return Err(ArxivError::Invalid);
        }
        let raw = store.get_raw(token).await?.ok_or(ArxivError::Unknown)?;
        self.check_record(raw, now).map(|(_, allowed)| allowed)
    }

    /// Verifies a stored record and reads what it grants.
    fn check_record(&self, raw: Bytes, now: f64) -> Result<(Value, Allowed), ArxivError> {
        let jwt = std::str::from_utf8(&raw)
            .map_err(|_| ArxivError::Invalid)?
            .trim();
        let record = self.decode(jwt)?;
        let end = record
            .get("end_time")
            .and_then(time)
            .ok_or(ArxivError::Invalid)?;
        if end <= now {
            return Err(ArxivError::Invalid);
        }
        if let Some(start) = record.get("start_time").and_then(time) {
            // Clock skew between arXiv's hosts is tolerated; a record from the future is not.
            if start > now + 60.0 {
                return Err(ArxivError::Invalid);
            }
        }
        let user = record.get("user");
        let field = |v: Option<&Value>, k: &str| v.and_then(|v| v.get(k)).and_then(id);
        let name = field(user, "username")
            .or_else(|| field(user, "user_id"))
            .or_else(|| field(record.get("client"), "client_id"));
        let allowed = Allowed {
            authorization: HeaderValue::from_str(jwt).map_err(|_| ArxivError::Invalid)?,
            user: name,
            email: field(user, "email"),
            scopes: scopes(&record),
        };
        Ok((record, allowed))
    }
}

/// An identifier given as a string or a number; empty strings are absent.
fn id(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `authorizations.scopes` as `domain:action[:resource]` strings.
pub fn scopes(record: &Value) -> Vec<String> {
    let Some(list) = record
        .get("authorizations")
        .and_then(|a| a.get("scopes"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|s| match s {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Object(o) => {
                let part = |k: &str| o.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
                let (domain, action) = (part("domain")?, part("action")?);
                Some(match part("resource") {
                    Some(r) => format!("{domain}:{action}:{r}"),
                    None => format!("{domain}:{action}"),
                })
            }
            _ => None,
        })
        .collect()
}

/// A time as Unix seconds: a number, a numeric string, or ISO 8601. Only finite times:
/// Rust parses `"NaN"` and `"inf"` as numbers, and `NaN <= now` is false, so such an
/// expiry would never come; it is no time at all, and a record without one is refused.
pub fn time(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().or_else(|| iso8601(s.trim())),
        _ => None,
    }
    .filter(|t| t.is_finite())
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.fraction][Z|±HH:MM|±HHMM]` as Unix seconds; no zone means UTC
/// (Python's `isoformat()` of arXiv's UTC datetimes writes `+00:00`).
pub fn iso8601(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let digits = |from: usize, n: usize| -> Option<i64> {
        let d = b.get(from..from + n)?;
        d.iter()
            .all(u8::is_ascii_digit)
            .then(|| d.iter().fold(0i64, |acc, c| acc * 10 + i64::from(c - b'0')))
    };
    let at = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    if !(at(4, b"-") && at(7, b"-") && at(10, b"Tt ") && at(13, b":") && at(16, b":")) {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut fraction = 0.0;
    if at(i, b".") {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        fraction = format!("0.{}", &s[start..i]).parse().ok()?;
    }
    let offset = match &b[i..] {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), ..] => {
            let (h, m) = match b.len() - i {
                6 if at(i + 3, b":") => (digits(i + 1, 2)?, digits(i + 4, 2)?),
                5 => (digits(i + 1, 2)?, digits(i + 3, 2)?),
                _ => return None,
            };
            let o = h * 3600 + m * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(secs as f64 + fraction)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn iso8601_as_python_writes_it() {
        assert_eq!(iso8601("1970-01-01T00:00:00"), Some(0.0));
        assert_eq!(iso8601("2026-11-23T10:00:00+00:00"), Some(1_795_428_000.0));
        assert_eq!(iso8601("2026-11-23T10:00:00Z"), Some(1_795_428_000.0));
        assert_eq!(iso8601("2026-11-23 11:00:00+01:00"), Some(1_795_428_000.0));
        assert_eq!(iso8601("2026-11-23T05:30:00-0430"), Some(1_795_428_000.0));
        assert_eq!(
            iso8601("2026-11-23T10:00:00.250000+00:00"),
            Some(1_795_428_000.25)
        );
        assert_eq!(iso8601("2000-02-29T00:00:00"), Some(951_782_400.0));
        for bad in [
            "",
            "2026-11-23",
            "2026-13-01T00:00:00",
            "2026-11-23T10:00:00+",
            "2026-11-23T10:00:00.+00:00",
            "2026-11-23T10:00:00 UTC",
            "+026-11-23T10:00:00",
            "2026-11-23T10:00:00+00:00:00",
        ] {
            assert_eq!(iso8601(bad), None, "{bad}");
        }
    }

    #[test]
    fn times_as_numbers_and_strings() {
        assert_eq!(time(&json!(1_795_428_000)), Some(1_795_428_000.0));
        assert_eq!(time(&json!("1795428000.5")), Some(1_795_428_000.5));
        assert_eq!(
            time(&json!("2026-11-23T10:00:00+00:00")),
            Some(1_795_428_000.0)
        );
        assert_eq!(time(&json!(null)), None);
        assert_eq!(time(&json!("soon")), None);
        for never in [
            "NaN",
            "nan",
            "inf",
            "-inf",
            "infinity",
            "+Infinity",
            "1e999",
        ] {
            assert_eq!(time(&json!(never)), None, "{never}");
        }
    }

    #[test]
    fn scopes_as_strings_and_objects() {
        let record = json!({"authorizations": {"scopes": [
            "submission:create",
            {"domain": "submission", "action": "read"},
            {"domain": "submission", "action": "update", "resource": "1234"},
            {"domain": "incomplete"},
            42,
            ""
        ]}});
        assert_eq!(
            scopes(&record),
            [
                "submission:create",
                "submission:read",
                "submission:update:1234"
            ]
        );
        assert!(scopes(&json!({})).is_empty());
    }
}
