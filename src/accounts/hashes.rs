//! The password hashes of the systems gatehouse replaces, verified as they are and replaced by
//! Argon2id on the first successful sign-in (`gatehouse user import`).
//!
//! A stored hash is read by its prefix: PHC Argon2 (`$argon2id$`, `$argon2i$`), bcrypt
//! (`$2a$`, `$2b$`, `$2y$`), passlib's PBKDF2 (`$pbkdf2-sha512$`, `$pbkdf2-sha256$`; Invenio 3),
//! Django's (`pbkdf2_sha256$`) and sha512-crypt (`$6$`). Schemes with no self-describing form
//! are stored as the JSON object they were imported as, `{"scheme": …, …}`: arXiv's tapir hash,
//! Keycloak's credential export, and `legacy-hook` (the old system answers; accounts::ops).

use aws_lc_rs::{constant_time, digest, pbkdf2};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use serde_json::Value;
use std::num::NonZeroU32;

/// The most PBKDF2 iterations an imported hash may ask for: above any system's default, and
/// a bound on what one sign-in costs.
const MAX_ITERATIONS: u32 = 10_000_000;

/// Every scheme a stored hash may use, by the name `password_scheme` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Argon2id,
    Argon2i,
    Bcrypt,
    Pbkdf2Sha512,
    Pbkdf2Sha256,
    DjangoPbkdf2Sha256,
    Sha512Crypt,
    KeycloakPbkdf2Sha256,
    ArxivTapir,
    LegacyHook,
}

impl Scheme {
    pub const ALL: [Scheme; 10] = [
        Scheme::Argon2id,
        Scheme::Argon2i,
        Scheme::Bcrypt,
        Scheme::Pbkdf2Sha512,
        Scheme::Pbkdf2Sha256,
        Scheme::DjangoPbkdf2Sha256,
        Scheme::Sha512Crypt,
        Scheme::KeycloakPbkdf2Sha256,
        Scheme::ArxivTapir,
        Scheme::LegacyHook,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scheme::Argon2id => "argon2id",
            Scheme::Argon2i => "argon2i",
            Scheme::Bcrypt => "bcrypt",
            Scheme::Pbkdf2Sha512 => "pbkdf2-sha512",
            Scheme::Pbkdf2Sha256 => "pbkdf2-sha256",
            Scheme::DjangoPbkdf2Sha256 => "django-pbkdf2-sha256",
            Scheme::Sha512Crypt => "sha512-crypt",
            Scheme::KeycloakPbkdf2Sha256 => "keycloak-pbkdf2-sha256",
            Scheme::ArxivTapir => "arxiv-tapir",
            Scheme::LegacyHook => "legacy-hook",
        }
    }
}

/// The scheme of a stored hash, by its prefix (or its `scheme` field); `None` for anything
/// else, which verifies no password.
pub fn scheme(stored: &str) -> Option<Scheme> {
    if stored.starts_with('{') {
        let v: Value = serde_json::from_str(stored).ok()?;
        let name = v.get("scheme")?.as_str()?;
        return [
            Scheme::KeycloakPbkdf2Sha256,
            Scheme::ArxivTapir,
            Scheme::LegacyHook,
        ]
        .into_iter()
        .find(|s| s.name() == name);
    }
    let prefixes = [
        ("$argon2id$", Scheme::Argon2id),
        ("$argon2i$", Scheme::Argon2i),
        ("$2a$", Scheme::Bcrypt),
        ("$2b$", Scheme::Bcrypt),
        ("$2y$", Scheme::Bcrypt),
        ("$pbkdf2-sha512$", Scheme::Pbkdf2Sha512),
        ("$pbkdf2-sha256$", Scheme::Pbkdf2Sha256),
        ("pbkdf2_sha256$", Scheme::DjangoPbkdf2Sha256),
        ("$6$", Scheme::Sha512Crypt),
    ];
    prefixes
        .into_iter()
        .find(|(p, _)| stored.starts_with(p))
        .map(|(_, s)| s)
}

/// An imported `password_hash` (a string, or an object for the schemes with no string form)
/// as it is stored, once its shape is checked; why not, in words for the import report.
pub fn from_import(value: &Value) -> Result<(String, Scheme), String> {
    let stored = match value {
        Value::String(s) => s.clone(),
        Value::Object(o) => {
            // Sorted keys (serde_json's map), compact: one stored form per hash.
            serde_json::to_string(o).map_err(|e| e.to_string())?
        }
        _ => return Err("password_hash must be a string or an object".into()),
    };
    let Some(scheme) = scheme(&stored) else {
        let named = value.get("scheme").and_then(Value::as_str);
        return Err(match named {
            Some(s) => format!("unknown password scheme {s:?}"),
            None => "unknown password hash scheme (read by its prefix, e.g. $2b$, $pbkdf2-sha512$, $6$; or an object with \"scheme\")".into(),
        });
    };
    well_formed(scheme, &stored)
        .map(|()| (stored, scheme))
        .map_err(|why| format!("{}: {why}", scheme.name()))
}

fn well_formed(scheme: Scheme, stored: &str) -> Result<(), String> {
    match scheme {
        Scheme::Argon2id | Scheme::Argon2i => {
            let h = argon2::password_hash::PasswordHash::new(stored).map_err(|e| e.to_string())?;
            argon2::Params::try_from(&h).map_err(|e| e.to_string())?;
            h.salt.ok_or("no salt")?;
            h.hash.ok_or("no hash")?;
            Ok(())
        }
        Scheme::Bcrypt => stored
            .parse::<bcrypt::HashParts>()
            .map(drop)
            .map_err(|e| e.to_string()),
        Scheme::Sha512Crypt => sha_crypt::PasswordHashRef::new(stored)
            .map(drop)
            .map_err(|e| e.to_string()),
        _ => Pbkdf2::parse(stored).map(drop).ok_or_else(|| {
            match scheme {
                Scheme::Pbkdf2Sha512 | Scheme::Pbkdf2Sha256 => "expected $pbkdf2-<digest>$<rounds>$<salt>$<checksum> (passlib's adapted base64)",
                Scheme::DjangoPbkdf2Sha256 => "expected pbkdf2_sha256$<iterations>$<salt>$<base64 hash>",
                Scheme::KeycloakPbkdf2Sha256 => "expected {\"hash\": base64, \"salt\": base64, \"iterations\": N}",
                Scheme::ArxivTapir => "expected {\"hash\": base64 of a 4-byte salt and a SHA-1}",
                _ => "expected {\"scheme\": \"legacy-hook\"}",
            }
            .to_string()
        }),
    }
}

/// A hash whose check is one PBKDF2 or one SHA-1; `LegacyHook` has nothing to check here.
enum Pbkdf2 {
    Derived {
        algorithm: pbkdf2::Algorithm,
        iterations: NonZeroU32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Tapir {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Hook,
}

/// passlib's "adapted base64": the standard alphabet with `.` for `+`, no padding.
fn ab64(s: &str) -> Option<Vec<u8>> {
    STANDARD_NO_PAD.decode(s.replace('.', "+")).ok()
}

fn iterations(n: u64) -> Option<NonZeroU32> {
    u32::try_from(n)
        .ok()
        .filter(|n| *n <= MAX_ITERATIONS)
        .and_then(NonZeroU32::new)
}

impl Pbkdf2 {
    fn parse(stored: &str) -> Option<Pbkdf2> {
        let derived = |algorithm, rounds: &str, salt, hash: Vec<u8>| {
            (!hash.is_empty()).then_some(())?;
            Some(Pbkdf2::Derived {
                algorithm,
                iterations: iterations(rounds.parse().ok()?)?,
                salt,
                hash,
            })
        };
        match scheme(stored)? {
            s @ (Scheme::Pbkdf2Sha512 | Scheme::Pbkdf2Sha256) => {
                let parts: Vec<&str> = stored.split('$').collect();
                let [_, _, rounds, salt, hash] = parts[..] else {
                    return None;
                };
                let algorithm = if s == Scheme::Pbkdf2Sha512 {
                    pbkdf2::PBKDF2_HMAC_SHA512
                } else {
                    pbkdf2::PBKDF2_HMAC_SHA256
                };
                derived(algorithm, rounds, ab64(salt)?, ab64(hash)?)
            }
            Scheme::DjangoPbkdf2Sha256 => {
                let parts: Vec<&str> = stored.split('$').collect();
                let [_, rounds, salt, hash] = parts[..] else {
                    return None;
                };
                // Django uses the salt's text as it is, not decoded.
                derived(
                    pbkdf2::PBKDF2_HMAC_SHA256,
                    rounds,
                    salt.as_bytes().to_vec(),
                    STANDARD.decode(hash).ok()?,
                )
            }
            Scheme::KeycloakPbkdf2Sha256 => {
                let v: Value = serde_json::from_str(stored).ok()?;
                let field = |k: &str| STANDARD.decode(v.get(k)?.as_str()?).ok();
                Some(Pbkdf2::Derived {
                    algorithm: pbkdf2::PBKDF2_HMAC_SHA256,
                    iterations: iterations(v.get("iterations")?.as_u64()?)?,
                    salt: field("salt")?,
                    hash: field("hash").filter(|h| !h.is_empty())?,
                })
            }
            Scheme::ArxivTapir => {
                let v: Value = serde_json::from_str(stored).ok()?;
                let raw = STANDARD.decode(v.get("hash")?.as_str()?).ok()?;
                // A 4-byte salt, then SHA-1's 20 bytes.
                (raw.len() == 24).then(|| Pbkdf2::Tapir {
                    salt: raw[..4].to_vec(),
                    hash: raw[4..].to_vec(),
                })
            }
            Scheme::LegacyHook => Some(Pbkdf2::Hook),
            _ => None,
        }
    }
}

/// Whether `password` matches `stored` in a scheme other than Argon2 (CPU work: run it off
/// the async threads); `None` when `stored` is not such a hash, or is `legacy-hook`'s.
pub fn verify(stored: &str, password: &str) -> Option<bool> {
    match scheme(stored)? {
        Scheme::Argon2id | Scheme::Argon2i | Scheme::LegacyHook => None,
        Scheme::Bcrypt => bcrypt::verify(password, stored).ok(),
        Scheme::Sha512Crypt => {
            use sha_crypt::PasswordVerifier;
            Some(
                sha_crypt::ShaCrypt::default()
                    .verify_password(password.as_bytes(), stored)
                    .is_ok(),
            )
        }
        _ => match Pbkdf2::parse(stored)? {
            Pbkdf2::Derived {
                algorithm,
                iterations,
                salt,
                hash,
            } => Some(
                pbkdf2::verify(algorithm, iterations, &salt, password.as_bytes(), &hash).is_ok(),
            ),
            Pbkdf2::Tapir { salt, hash } => {
                // arXiv's legacy/passwords.py: sha1(salt + b"-" + password.encode("ascii")).
                if !password.is_ascii() {
                    return Some(false);
                }
                let d = digest::digest(
                    &digest::SHA1_FOR_LEGACY_USE_ONLY,
                    &[&salt[..], b"-", password.as_bytes()].concat(),
                );
                Some(constant_time::verify_slices_are_equal(d.as_ref(), &hash).is_ok())
            }
            Pbkdf2::Hook => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // The fixtures made by the reference implementations (passlib, bcrypt) are the e2e
    // import test's (tests/e2e/import.rs), made at run time.
    #[test]
    fn every_scheme_is_named_by_its_prefix_or_its_field() {
        for (stored, name) in [
            (
                "$argon2id$v=19$m=256,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
                "argon2id",
            ),
            ("$2y$04$abc", "bcrypt"),
            ("$pbkdf2-sha512$25000$c2FsdA$aGFzaA", "pbkdf2-sha512"),
            ("pbkdf2_sha256$600000$salt$aGFzaA==", "django-pbkdf2-sha256"),
            ("$6$rounds=5000$salt$hash", "sha512-crypt"),
            (r#"{"scheme":"arxiv-tapir","hash":"x"}"#, "arxiv-tapir"),
            (r#"{"scheme":"legacy-hook"}"#, "legacy-hook"),
        ] {
            assert_eq!(scheme(stored).map(Scheme::name), Some(name), "{stored}");
        }
        assert_eq!(scheme("md5$abc"), None);
        assert_eq!(scheme(r#"{"scheme":"md5"}"#), None);
    }

    #[test]
    fn tapir_follows_arxivs_formula_and_refuses_non_ascii() {
        let salt = b"\x01\x02\x03\x04";
        let d = digest::digest(
            &digest::SHA1_FOR_LEGACY_USE_ONLY,
            b"\x01\x02\x03\x04-correct horse",
        );
        let hash = STANDARD.encode([&salt[..], d.as_ref()].concat());
        let (stored, s) = from_import(&json!({"scheme": "arxiv-tapir", "hash": hash})).unwrap();
        assert_eq!(s, Scheme::ArxivTapir);
        assert_eq!(verify(&stored, "correct horse"), Some(true));
        assert_eq!(verify(&stored, "correct horsE"), Some(false));
        assert_eq!(verify(&stored, "corréct horse"), Some(false));
    }

    #[test]
    fn imports_refuse_unknown_and_malformed_hashes_in_words() {
        assert!(from_import(&json!("md5$x"))
            .unwrap_err()
            .contains("unknown"));
        assert!(from_import(&json!({"scheme": "md5"}))
            .unwrap_err()
            .contains("\"md5\""));
        assert!(from_import(&json!("$pbkdf2-sha512$x$y"))
            .unwrap_err()
            .starts_with("pbkdf2-sha512:"));
        assert!(from_import(&json!("$2b$04$short")).is_err());
        assert!(from_import(&json!({"scheme": "keycloak-pbkdf2-sha256", "hash": "aGFzaA==", "salt": "c2FsdA==", "iterations": 0})).is_err());
        assert!(from_import(&json!(42)).is_err());
        assert!(from_import(&json!({"scheme": "legacy-hook"})).is_ok());
    }
}
