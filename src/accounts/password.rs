//! Passwords: Argon2id hashing off the async threads with bounded concurrency, verification
//! that costs the same for unknown users (imported hashes of other schemes verify too, and
//! ask for a rehash: accounts::hashes), and the rules a new password must meet.
//!
//! Each hash works in `m_cost` KiB of memory (19 MiB at OWASP's parameters), so hashing runs
//! on the blocking pool behind a semaphore of one permit per CPU: a burst of logins queues
//! for at most [`QUEUE_WAIT`], then gets [`Busy`] (503). The working memory is allocated once
//! per permit and reused: freed and reallocated instead, glibc keeps a copy in each of its
//! arenas (measured: 200 logins took RSS from 17 to 282 MiB; reused, it stays near 60).

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use argon2::password_hash::PasswordHash;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine;
use tokio::sync::Semaphore;

use crate::secret::Secret;

/// OWASP's Argon2id recommendation: 19 MiB, 2 passes, 1 lane.
pub const OWASP_M_KIB: u32 = 19 * 1024;
pub const OWASP_T: u32 = 2;
pub const OWASP_P: u32 = 1;
/// The longest password accepted, in characters (NIST SP 800-63B asks for at least 64).
pub const MAX_LEN: usize = 256;
/// How long a hash waits for a permit before the request gets 503.
pub const QUEUE_WAIT: Duration = Duration::from_secs(3);

/// Every permit taken and the queue wait over: answer 503.
#[derive(Debug, thiserror::Error)]
#[error("too many password checks at once")]
pub struct Busy;

/// A verification's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub ok: bool,
    /// The stored hash used weaker parameters than today's: store a new one.
    pub rehash: bool,
}

pub struct Passwords {
    params: Params,
    permits: Semaphore,
    /// Argon2 working memory, one per permit, reused.
    memory: Mutex<Vec<Vec<Block>>>,
    min_len: usize,
    /// A hash of nothing anyone knows, verified for unknown users so that they cost the same.
    dummy: OnceLock<String>,
}

fn common() -> &'static HashSet<String> {
    static LIST: OnceLock<HashSet<String>> = OnceLock::new();
    LIST.get_or_init(|| {
        include_str!("common-passwords.txt")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(normalise)
            .collect()
    })
}

fn normalise(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

impl Passwords {
    /// `m_kib`, `t`, `p`: Argon2id's memory, passes and lanes (never below OWASP's in
    /// production; the tests of other modules may go lower). `min_len`: characters.
    pub fn new(m_kib: u32, t: u32, p: u32, min_len: usize) -> Passwords {
        let params = Params::new(m_kib, t, p, None).expect("valid Argon2 parameters");
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Passwords {
            params,
            permits: Semaphore::new(cpus.max(1)),
            memory: Mutex::new(Vec::new()),
            min_len,
            dummy: OnceLock::new(),
        }
    }

    /// Runs `work` on the blocking pool once a permit is free, with a working memory.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let _permit = tokio::time::timeout(QUEUE_WAIT, self.permits.acquire())
            .await
            .map_err(|_| Busy)?
            .map_err(|_| Busy)?;
        let mut memory = self
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        let (result, memory) = tokio::task::spawn_blocking(move || {
            let result = work(&mut memory);
            (result, memory)
        })
        .await
        .map_err(|_| Busy)?;
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(memory);
        Ok(result)
    }

    /// A PHC string of `password` with a fresh salt.
    pub async fn hash(&self, password: &Secret<String>) -> Result<String, Busy> {
        let params = self.params.clone();
        let password = password.clone();
        self.run(move |memory| hash_with(&params, password.expose(), memory))
            .await
    }

    /// Checks `password` against `stored`; with no stored hash (unknown user, or a user
    /// without a password) a dummy hash is verified instead and the answer is `false`, in
    /// the same time.
    pub async fn verify(
        &self,
        password: &Secret<String>,
        stored: Option<&Secret<String>>,
    ) -> Result<Verified, Busy> {
        let known = stored.is_some();
        let stored = match stored {
            Some(h) => h.expose().clone(),
            None => self
                .dummy
                .get_or_init(|| {
                    let mut memory = Vec::new();
                    let nobody = crate::accounts::db::random_token(16);
                    hash_with(&self.params, &nobody, &mut memory)
                })
                .clone(),
        };
        let password = password.clone();
        let params = self.params.clone();
        self.run(move |memory| {
            // Argon2 as ours, else an imported scheme (always weaker than ours).
            let Some((ok, weaker)) = check(&stored, password.expose(), &params, memory)
                .or_else(|| super::hashes::verify(&stored, password.expose()).map(|ok| (ok, true)))
            else {
                return Verified {
                    ok: false,
                    rehash: false,
                };
            };
            let ok = known && ok;
            Verified {
                ok,
                rehash: ok && weaker,
            }
        })
        .await
    }

    /// Why `password` cannot be chosen, in words for the form; `None` when it can. Other
    /// things the user typed (username, email, name) make it weaker when it contains them.
    pub fn refuse(&self, password: &str, user_inputs: &[&str]) -> Option<String> {
        let len = password.chars().count();
        if len < self.min_len {
            return Some(format!("Use at least {} characters.", self.min_len));
        }
        if len > MAX_LEN {
            return Some(format!("Use at most {MAX_LEN} characters."));
        }
        if common().contains(&normalise(password)) {
            return Some(
                "This password is on the list of the most common ones. Choose another.".into(),
            );
        }
        let inputs: Vec<&str> = user_inputs
            .iter()
            .copied()
            .filter(|s| !s.is_empty())
            .collect();
        let entropy = zxcvbn::zxcvbn(password, &inputs);
        if entropy.score() < zxcvbn::Score::Three {
            let why = entropy
                .feedback()
                .and_then(|f| f.warning())
                .map(|w| format!("{w} "))
                .unwrap_or_default();
            return Some(format!(
                "{why}This password would be easy to guess. Add more words or characters."
            ));
        }
        None
    }
}

/// PHC's base64: the standard alphabet without padding.
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;

/// Argon2id of `password` with a fresh salt, as a PHC string, in `memory`.
fn hash_with(params: &Params, password: &str, memory: &mut Vec<Block>) -> String {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).expect("the system RNG");
    let mut out = [0u8; 32];
    memory.resize(params.block_count(), Block::new());
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, &mut memory[..])
        .expect("Argon2 with valid parameters");
    format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        B64.encode(salt),
        B64.encode(out)
    )
}

/// Whether `password` matches the PHC string `stored`, and whether that hash is weaker than
/// one made with `ours`; `None` when `stored` is not an Argon2 hash.
fn check(
    stored: &str,
    password: &str,
    ours: &Params,
    memory: &mut Vec<Block>,
) -> Option<(bool, bool)> {
    let parsed = PasswordHash::new(stored).ok()?;
    let algorithm = Algorithm::new(parsed.algorithm.as_str()).ok()?;
    let version = parsed
        .version
        .map_or(Ok(Version::V0x13), Version::try_from)
        .ok()?;
    let expected = parsed.hash?;
    let used = Params::try_from(&parsed).ok()?;
    let params = Params::new(
        used.m_cost(),
        used.t_cost(),
        used.p_cost(),
        Some(expected.len()),
    )
    .ok()?;
    let mut salt = [0u8; 64];
    let salt = parsed.salt?.decode_b64(&mut salt).ok()?;
    let mut out = vec![0u8; expected.len()];
    memory.resize(params.block_count(), Block::new());
    Argon2::new(algorithm, version, params.clone())
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut memory[..])
        .ok()?;
    let ok = aws_lc_rs::constant_time::verify_slices_are_equal(&out, expected.as_bytes()).is_ok();
    // Another variant than Argon2id, or lower costs than today's: weaker.
    let weaker = algorithm != Algorithm::Argon2id
        || params.m_cost() < ours.m_cost()
        || params.t_cost() < ours.t_cost()
        || params.p_cost() < ours.p_cost();
    Some((ok, weaker))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weak() -> Passwords {
        Passwords::new(256, 1, 1, 12)
    }

    #[tokio::test]
    async fn hashes_verify_and_weaker_parameters_ask_for_a_rehash() {
        let old = weak();
        let pw = Secret::new("correct horse staple battery unicode ☃".to_string());
        let h = Secret::new(old.hash(&pw).await.unwrap());
        assert!(h.expose().starts_with("$argon2id$v=19$m=256,t=1,p=1$"));
        let v = old.verify(&pw, Some(&h)).await.unwrap();
        assert_eq!(
            v,
            Verified {
                ok: true,
                rehash: false
            }
        );
        let wrong = Secret::new("correct horse staple battery unicode ☂".to_string());
        assert!(!old.verify(&wrong, Some(&h)).await.unwrap().ok);
        let new = Passwords::new(512, 2, 1, 12);
        assert_eq!(
            new.verify(&pw, Some(&h)).await.unwrap(),
            Verified {
                ok: true,
                rehash: true
            }
        );
        // Unknown user: a verification happens, and fails.
        assert!(!new.verify(&pw, None).await.unwrap().ok);
    }

    #[test]
    fn rules_length_common_guessable_but_no_composition() {
        let p = weak();
        assert!(p.refuse("short", &[]).unwrap().contains("at least 12"));
        assert!(p.refuse(&"a".repeat(MAX_LEN + 1), &[]).is_some());
        assert!(p.refuse("Password1234", &[]).is_some());
        assert!(p
            .refuse("P A S S W O R D P A S S W O R D", &[])
            .unwrap()
            .contains("common"));
        assert!(p.refuse("alicealicealice", &["alice"]).is_some());
        // No digits, no capitals, no symbols needed; Unicode counts as characters.
        assert_eq!(p.refuse("tangerine kayak moonlit orbit", &[]), None);
        assert_eq!(p.refuse("зелёный слон читает газету", &[]), None);
        // 64 characters and more are fine, and nothing is cut off.
        assert_eq!(p.refuse(&"violet ocean drum ".repeat(4), &[]), None);
    }
}
