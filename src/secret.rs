//! A wrapper for values that must never reach a log line: tokens, cookies, keys, passwords.
//!
//! `Debug` and `Display` print `[redacted]`; the only way to the inner value is `expose()`,
//! which makes every place that handles the secret easy to find with grep.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The secret itself. Never pass the result to a logging macro.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl FromStr for Secret<String> {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// The server secret (`--server-secret-file`): the key every replica shares for what gatehouse
/// signs or encrypts for itself (the known-device cookie today). Never a JWKS key, never in
/// `--keys-dir`. Everything made with it carries its key id ([`ServerSecret::kid`]), so that a
/// new secret can be told from an old one.
pub struct ServerSecret {
    key: aws_lc_rs::hmac::Key,
    kid: String,
}

impl fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerSecret {{ kid: {:?}, key: [redacted] }}", self.kid)
    }
}

const FLAG: &str = "--server-secret-file";

impl ServerSecret {
    /// Reads the secret at `path`; when there is none, creates it: 256 random bits, written
    /// exclusively (of replicas starting at once on one volume, one writes it, all read it)
    /// and readable by its owner only. A file that cannot be read or made, or holds fewer than
    /// 32 bytes, is a configuration error naming the flag.
    pub fn load_or_create(
        path: &std::path::Path,
    ) -> Result<ServerSecret, crate::error::ConfigError> {
        use base64::Engine;
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let bad = |why: String| {
            crate::error::ConfigError::new(FLAG, format!("{}: {why}", path.display()))
        };
        if !path.exists() {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                crate::files::private_dir(dir, FLAG)?;
            }
            let mut raw = [0u8; 32];
            aws_lc_rs::rand::fill(&mut raw).map_err(|_| bad("no randomness".into()))?;
            let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw) + "\n";
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(mut f) => {
                    f.write_all(text.as_bytes())
                        .and_then(|()| f.sync_all())
                        .map_err(|e| bad(e.to_string()))?;
                    tracing::info!(path = %path.display(), "generated the server secret");
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(bad(format!("cannot create it: {e}"))),
            }
        }
        let text = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let material = text.trim_ascii();
        if material.len() < 32 {
            return Err(bad(
                "holds fewer than 32 bytes; use 32 random bytes, e.g. `openssl rand -base64 32`"
                    .into(),
            ));
        }
        Ok(ServerSecret::from_bytes(material))
    }

    pub fn from_bytes(material: &[u8]) -> ServerSecret {
        use base64::Engine;
        let id = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &[b"gatehouse server secret id\0".as_slice(), material].concat(),
        );
        ServerSecret {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, material),
            kid: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&id.as_ref()[..6]),
        }
    }

    /// A short, public name of this secret (8 characters).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// HMAC-SHA256 of `data` for `purpose` (each use its own purpose, so that a MAC made for
    /// one is never valid for another), base64url.
    pub fn mac(&self, purpose: &str, data: &str) -> String {
        use base64::Engine;
        let tag = aws_lc_rs::hmac::sign(&self.key, &Self::message(purpose, data));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    }

    /// Whether `tag` is [`ServerSecret::mac`] of `data` for `purpose`, in constant time.
    pub fn verify(&self, purpose: &str, data: &str, tag: &str) -> bool {
        use base64::Engine;
        let Ok(tag) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tag) else {
            return false;
        };
        aws_lc_rs::hmac::verify(&self.key, &Self::message(purpose, data), &tag).is_ok()
    }

    /// Encrypts `plain` for `purpose` (AES-256-GCM, under a key derived from the secret for
    /// that purpose alone): `<kid>.<nonce and ciphertext, base64url>`, so that a value sealed
    /// under another secret is recognised as such.
    pub fn seal(&self, purpose: &str, plain: &[u8]) -> String {
        use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, NONCE_LEN};
        use base64::Engine;
        let key = LessSafeKey::new(self.aead_key(purpose));
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("the system RNG");
        let mut data = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(purpose.as_bytes()),
            &mut data,
        )
        .expect("AES-GCM sealing of a short value");
        let sealed = [nonce.as_slice(), &data].concat();
        format!(
            "{}.{}",
            self.kid,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed)
        )
    }

    /// What [`ServerSecret::seal`] sealed for `purpose`; `None` when it was sealed under
    /// another secret or changed.
    pub fn open(&self, purpose: &str, sealed: &str) -> Option<Vec<u8>> {
        use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, NONCE_LEN};
        use base64::Engine;
        let (kid, data) = sealed.split_once('.')?;
        if kid != self.kid {
            return None;
        }
        let mut data = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(data)
            .ok()?;
        if data.len() < NONCE_LEN {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&data[..NONCE_LEN]).ok()?;
        let key = LessSafeKey::new(self.aead_key(purpose));
        let plain = key
            .open_within(nonce, Aad::from(purpose.as_bytes()), &mut data, NONCE_LEN..)
            .ok()?;
        Some(plain.to_vec())
    }

    fn aead_key(&self, purpose: &str) -> aws_lc_rs::aead::UnboundKey {
        let derived = aws_lc_rs::hmac::sign(&self.key, &Self::message("seal", purpose));
        aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, derived.as_ref())
            .expect("a 32-byte key")
    }

    fn message(purpose: &str, data: &str) -> Vec<u8> {
        [purpose.as_bytes(), b"\0", data.as_bytes()].concat()
    }
}

/// A secret kept in a file (a client secret, a bearer token): its content without the
/// trailing newline; an unreadable or empty file is a configuration error naming `flag`.
pub fn read_secret_file(
    path: &std::path::Path,
    flag: &'static str,
) -> Result<Secret<String>, crate::error::ConfigError> {
    let bad =
        |why: String| crate::error::ConfigError::new(flag, format!("{}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let value = text.trim_end_matches(['\r', '\n']);
    if value.trim().is_empty() {
        return Err(bad("is empty".into()));
    }
    Ok(Secret::new(value.to_owned()))
}

/// One line from stdin, never from argv: a prompt (input hidden) when stdin is a terminal.
/// `name` and `missing` make the error when the line is empty.
pub fn read_secret(
    name: &'static str,
    prompt: &str,
    missing: &str,
) -> Result<Secret<String>, crate::error::ConfigError> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let stty = |arg: &str| {
        let _ = std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status();
    };
    if tty {
        eprint!("{prompt} ");
        stty("-echo");
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if tty {
        stty("echo");
        eprintln!();
    }
    read.map_err(|e| crate::error::ConfigError::new(name, format!("cannot read it: {e}")))?;
    let secret = Secret::new(line.trim_end_matches(['\r', '\n']).to_string());
    if secret.expose().trim().is_empty() {
        return Err(crate::error::ConfigError::new(name, missing.to_string()));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_secret_and_purpose() {
        let a = ServerSecret::from_bytes(&[1; 32]);
        let b = ServerSecret::from_bytes(&[2; 32]);
        let sealed = a.seal("totp", b"twenty bytes of key!");
        assert!(sealed.starts_with(&format!("{}.", a.kid())));
        assert_eq!(a.open("totp", &sealed).unwrap(), b"twenty bytes of key!");
        assert_ne!(
            sealed,
            a.seal("totp", b"twenty bytes of key!"),
            "a new nonce each time"
        );
        assert_eq!(a.open("other", &sealed), None);
        assert_eq!(b.open("totp", &sealed), None);
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            a.open("totp", std::str::from_utf8(&tampered).unwrap()),
            None
        );
    }

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("gts_supersecret".to_string());
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some([redacted])");
        assert_eq!(s.expose(), "gts_supersecret");
    }

    #[test]
    fn the_server_secret_is_made_once_private_and_macs_by_purpose() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join("server.secret");
        let a = ServerSecret::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = ServerSecret::load_or_create(&path).unwrap();
        assert_eq!(a.kid(), b.kid(), "read back, not made again");
        let tag = a.mac("device", "u1.n1");
        assert!(b.verify("device", "u1.n1", &tag));
        assert!(!b.verify("other", "u1.n1", &tag));
        assert!(!b.verify("device", "u1.n2", &tag));
        assert!(!format!("{a:?}").contains(&tag));
        std::fs::write(&path, "short").unwrap();
        let e = ServerSecret::load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("--server-secret-file"), "{e}");
        // Absent and impossible to write: a configuration error, not a panic.
        let e = ServerSecret::load_or_create(std::path::Path::new("/proc/nope/server.secret"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--server-secret-file"), "{e}");
    }
}
