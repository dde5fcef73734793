//! Signing keys and JWT minting.
//!
//! Keys are PEM files in `--keys-dir` (PKCS#8 Ed25519, P-256 or RSA); on first run with no
//! key for the configured algorithm, one is generated there. Several instances starting at
//! once on an empty directory end up with one key: the new key is written to a temporary file
//! and hard-linked into place, which fails for every instance but the first.
//!
//! Every asymmetric key in the directory is published in the JWKS (a retired key stays
//! there until its file is removed, which should be no sooner than `--jwt-ttl` after it last
//! signed). Of the keys of the configured algorithm, the one whose file name ends in the
//! highest number signs: `keys generate` names keys `<alg>-<unix milliseconds>.pem`, so that
//! is the newest. The order comes from the names, not from file times, so every replica
//! that reads the same directory (a Kubernetes Secret volume, whose file times are whatever
//! the kubelet made them) picks the same key. HS256 keys are never published.
//! This module must never log key material.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use aws_lc_rs::digest;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::credential::Method;
use crate::error::ConfigError;
use crate::secret::Secret;
use crate::session::Session;

impl JwtAlg {
    pub fn algorithm(self) -> Algorithm {
        match self {
            JwtAlg::EdDsa => Algorithm::EdDSA,
            JwtAlg::Es256 => Algorithm::ES256,
            JwtAlg::Rs256 => Algorithm::RS256,
            JwtAlg::Hs256 => Algorithm::HS256,
        }
    }

    fn file_stem(self) -> &'static str {
        match self {
            JwtAlg::EdDsa => "ed25519",
            JwtAlg::Es256 => "es256",
            JwtAlg::Rs256 => "rs256",
            JwtAlg::Hs256 => "hs256",
        }
    }
}

/// Where the signing keys are (`--keys-dir`): for `serve`, `keys generate`, and the client
/// commands that check a client's id_token algorithm has a key.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyArgs {
    /// Directory of PEM signing keys [default: <data-dir>/keys].
    #[arg(long, env = "GATEHOUSE_KEYS_DIR")]
    pub keys_dir: Option<PathBuf>,
}

impl KeyArgs {
    pub fn dir(&self, data_dir: &Path) -> PathBuf {
        self.keys_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("keys"))
    }
}

/// The algorithm minted JWTs are signed with (`--jwt-alg`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum JwtAlg {
    #[value(name = "EdDSA", alias = "eddsa")]
    EdDsa,
    #[value(name = "ES256", alias = "es256")]
    Es256,
    #[value(name = "RS256", alias = "rs256")]
    Rs256,
    #[value(name = "HS256", alias = "hs256")]
    Hs256,
}

/// Settings of minted tokens.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub issuer: String,
    pub audience: Option<String>,
    pub ttl_secs: u64,
}

struct SigningKey {
    header: Header,
    key: EncodingKey,
    kid: String,
    /// Unix seconds from which it signs.
    from: u64,
}

pub struct Signer {
    /// The keys of the configured algorithm in signing order; the last whose `from` has come
    /// signs (the first, if none has).
    signing: Vec<SigningKey>,
    /// Every asymmetric key in the directory, in signing order: what tokens signed with an
    /// algorithm of their own (an OpenID Connect client's id_token) are signed with.
    any: Vec<SigningKey>,
    jwks: Bytes,
    settings: TokenSettings,
}

/// A minted JWT.
pub struct Minted<'a> {
    pub jwt: String,
    /// Unix seconds.
    pub exp: u64,
    /// The key that signed it.
    pub kid: &'a str,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    sub: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
    sid: &'a str,
    scope: String,
    roles: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    preferred_username: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    auth_method: &'static str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    amr: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_time: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    acr: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idp: Option<&'a str>,
}

/// A key file found in the keys directory.
struct LoadedKey {
    path: PathBuf,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Jwk,
}

impl Signer {
    /// Loads (or on first run creates) the keys. Errors name `--keys-dir` or `--jwt-secret`.
    pub fn load(
        keys_dir: &Path,
        alg: JwtAlg,
        secret: Option<&Secret<String>>,
        settings: TokenSettings,
    ) -> Result<Signer, ConfigError> {
        if alg != JwtAlg::Hs256 {
            ensure_key(keys_dir, alg)?;
        }
        let mut keys = load_dir(keys_dir)?;
        keys.sort_by_cached_key(|k| signing_order(&k.path));
        let jwks = {
            let set = JwkSet {
                keys: keys.iter().map(|k| k.jwk.clone()).collect(),
            };
            Bytes::from(serde_json::to_vec(&set).expect("a JWK set always serialises"))
        };
        let header = |alg: Algorithm, kid: &str| {
            let mut h = Header::new(alg);
            h.kid = Some(kid.to_string());
            h
        };
        let any: Vec<SigningKey> = keys
            .iter()
            .map(|k| {
                let kid = k.jwk.common.key_id.clone().unwrap_or_default();
                SigningKey {
                    header: header(k.alg, &kid),
                    from: activation(signing_order(&k.path).0),
                    key: k.key.clone(),
                    kid,
                }
            })
            .collect();
        let signing = match (alg, secret) {
            (JwtAlg::Hs256, Some(secret)) => {
                let d = digest::digest(&digest::SHA256, secret.expose().as_bytes());
                let kid = format!("hs256-{}", URL_SAFE_NO_PAD.encode(&d.as_ref()[..6]));
                vec![SigningKey {
                    header: header(Algorithm::HS256, &kid),
                    key: EncodingKey::from_secret(secret.expose().as_bytes()),
                    kid,
                    from: 0,
                }]
            }
            (JwtAlg::Hs256, None) => {
                return Err(ConfigError::new(
                    "--jwt-secret",
                    "is required with --jwt-alg HS256",
                ))
            }
            _ => any
                .iter()
                .filter(|k| k.header.alg == alg.algorithm())
                .map(|k| SigningKey {
                    header: k.header.clone(),
                    key: k.key.clone(),
                    kid: k.kid.clone(),
                    from: k.from,
                })
                .collect(),
        };
        if signing.is_empty() {
            return Err(ConfigError::new("--keys-dir", "holds no usable key"));
        }
        Ok(Signer {
            signing,
            any,
            jwks,
            settings,
        })
    }

    /// The key that signs at `now` (Unix seconds).
    fn current(&self, now: u64) -> &SigningKey {
        self.signing
            .iter()
            .rev()
            .find(|k| k.from <= now)
            .unwrap_or(&self.signing[0])
    }

    /// Whether a key of `alg` is in the directory (and so in the JWKS).
    pub fn has(&self, alg: Algorithm) -> bool {
        self.any.iter().any(|k| k.header.alg == alg)
    }

    /// Signs `claims` with the current key of `alg`, whatever `--jwt-alg` is, with the
    /// header's `typ` (`JWT`, `logout+jwt`, `at+jwt`). An error when the directory holds no key
    /// of `alg` (the caller checked [`Signer::has`] at start).
    pub fn sign<T: Serialize>(
        &self,
        alg: Algorithm,
        typ: &str,
        claims: &T,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = crate::session::unix_now();
        let key = self
            .any
            .iter()
            .rev()
            .filter(|k| k.header.alg == alg)
            .find(|k| k.from <= now)
            .or_else(|| self.any.iter().find(|k| k.header.alg == alg))
            .ok_or(jsonwebtoken::errors::ErrorKind::InvalidAlgorithm)?;
        let mut header = key.header.clone();
        header.typ = Some(typ.to_owned());
        jsonwebtoken::encode(&header, claims, &key.key)
    }

    /// The `kid` of the key that signs now.
    pub fn kid(&self) -> &str {
        &self.current(crate::session::unix_now()).kid
    }

    /// The JWKS document (`application/json`).
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }

    pub fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    /// Mints a JWT for `session`, valid from `now` for `--jwt-ttl`, never past the session.
    pub fn mint(
        &self,
        session: &Session,
        sid: &str,
        method: Method,
        now: u64,
    ) -> Result<Minted<'_>, jsonwebtoken::errors::Error> {
        let exp = (now + self.settings.ttl_secs).min(session.expires_at);
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).expect("the OS random number generator failed");
        let claims = Claims {
            iss: &self.settings.issuer,
            aud: session
                .audience
                .as_deref()
                .or(self.settings.audience.as_deref()),
            sub: &session.sub,
            iat: now,
            nbf: now,
            exp,
            jti: URL_SAFE_NO_PAD.encode(jti),
            sid,
            scope: session.scopes.join(" "),
            roles: session.acting_roles(),
            preferred_username: session.username.as_deref(),
            email: session.email.as_deref(),
            name: session.name.as_deref(),
            client_id: session.client_id.as_deref(),
            auth_method: match method {
                Method::Cookie => "session",
                Method::Bearer => "bearer",
            },
            amr: &session.amr,
            auth_time: (!session.amr.is_empty()).then(|| session.auth_time()),
            acr: session.acr(),
            idp: session.idp.as_deref(),
        };
        let signing = self.current(now);
        let jwt = jsonwebtoken::encode(&signing.header, &claims, &signing.key)?;
        Ok(Minted {
            jwt,
            exp,
            kid: &signing.kid,
        })
    }
}

/// Whether `dir` holds a key of `alg`.
pub fn has_key(dir: &Path, alg: JwtAlg) -> Result<bool, ConfigError> {
    Ok(load_dir(dir)?.iter().any(|k| k.alg == alg.algorithm()))
}

/// Makes sure `dir` holds a key of `alg`, generating `<alg>-0.pem` when it holds none (so that
/// it signs at once, and every replica starting on the same empty directory writes the same
/// name: one wins).
pub fn ensure_key(dir: &Path, alg: JwtAlg) -> Result<(), ConfigError> {
    if !has_key(dir, alg)? {
        generate_into(dir, alg, &format!("{}-0", alg.file_stem()))?;
    }
    Ok(())
}

fn keys_dir_error(dir: &Path, what: impl std::fmt::Display) -> ConfigError {
    ConfigError::new("--keys-dir", format!("{}: {what}", dir.display()))
}

fn load_dir(dir: &Path) -> Result<Vec<LoadedKey>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(keys_dir_error(dir, e)),
    };
    let mut keys = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| keys_dir_error(dir, e))?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pem") {
            continue;
        }
        let pem = std::fs::read(&path).map_err(|e| keys_dir_error(&path, e))?;
        let (alg, key) = parse_pem(&pem).ok_or_else(|| {
            keys_dir_error(
                &path,
                "not a PKCS#8 Ed25519, P-256 or RSA private key in PEM",
            )
        })?;
        let mut jwk = Jwk::from_encoding_key(&key, alg).map_err(|e| keys_dir_error(&path, e))?;
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| keys_dir_error(&path, e))?;
        jwk.common.key_id = Some(kid);
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        keys.push(LoadedKey {
            path,
            alg,
            key,
            jwk,
        });
    }
    Ok(keys)
}

/// From when a key signs (Unix seconds), given the number at the end of its name: one that
/// reads as Unix milliseconds (`keys generate --activate-in` names keys by a time to come),
/// else at once.
fn activation(number: u128) -> u64 {
    match number {
        ms if ms >= 1_000_000_000_000 => u64::try_from(ms / 1000).unwrap_or(u64::MAX),
        _ => 0,
    }
}

/// Which key signs: the highest number at the end of the file stem (`ed25519-1764000000000`),
/// then the name. A stem without a trailing number counts as 0.
fn signing_order(path: &Path) -> (u128, String) {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let digits = stem.len() - stem.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let number = stem[stem.len() - digits..].parse().unwrap_or(0);
    (number, stem.to_string())
}

fn parse_pem(pem: &[u8]) -> Option<(Algorithm, EncodingKey)> {
    if let Ok(k) = EncodingKey::from_ed_pem(pem) {
        return Some((Algorithm::EdDSA, k));
    }
    if let Ok(k) = EncodingKey::from_ec_pem(pem) {
        return Some((Algorithm::ES256, k));
    }
    if let Ok(k) = EncodingKey::from_rsa_pem(pem) {
        return Some((Algorithm::RS256, k));
    }
    None
}

/// How long consumers may cache the JWKS (`Cache-Control: max-age` of the JWKS endpoint).
pub const JWKS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(300);

/// The default delay of `keys generate`: a consumer that fetched the JWKS just before the
/// new key was published must have fetched it again before the key signs, so past the
/// JWKS max-age, with a minute for replicas to load it. A first key of its algorithm signs at
/// once: there is no other key that could sign meanwhile.
pub fn default_activation(dir: &Path, alg: JwtAlg) -> std::time::Duration {
    let has_one = load_dir(dir).is_ok_and(|keys| keys.iter().any(|k| k.alg == alg.algorithm()));
    if has_one {
        JWKS_MAX_AGE + std::time::Duration::from_secs(60)
    } else {
        std::time::Duration::ZERO
    }
}

/// The name `keys generate` gives a key: `<alg>-<unix milliseconds>`, the time from which
/// it signs: now plus `activate_in` (it is published at once, so a delay gives every replica
/// time to publish it before any signs with it).
pub fn key_name(alg: JwtAlg, activate_in: std::time::Duration) -> String {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        + activate_in;
    format!("{}-{}", alg.file_stem(), t.as_millis())
}

/// Writes a new private key for `alg` into `dir` as `<name>.pem`. Returns the path, or the
/// existing file's path if another process won the race to the same name.
pub fn generate_into(dir: &Path, alg: JwtAlg, name: &str) -> Result<PathBuf, ConfigError> {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let der: Vec<u8> = match alg {
        // PKCS#8 v1: the form jsonwebtoken reads for Ed25519.
        JwtAlg::EdDsa => Ed25519KeyPair::generate_pkcs8v1(&rng).map(|d| d.as_ref().to_vec()),
        JwtAlg::Es256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map(|d| d.as_ref().to_vec()),
        JwtAlg::Rs256 => aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .and_then(|k| k.as_der().map(|d| d.as_ref().to_vec())),
        JwtAlg::Hs256 => {
            return Err(ConfigError::new(
                "--alg",
                "HS256 uses --jwt-secret, not a key file",
            ))
        }
    }
    .map_err(|_| keys_dir_error(dir, "key generation failed"))?;
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in STANDARD.encode(&der).as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");

    crate::files::private_dir(dir, "--keys-dir")?;
    let path = dir.join(format!("{name}.pem"));
    let mut rand = [0u8; 8];
    aws_lc_rs::rand::fill(&mut rand).map_err(|_| keys_dir_error(dir, "no randomness"))?;
    let tmp = dir.join(format!(".{name}.{}.tmp", URL_SAFE_NO_PAD.encode(rand)));
    write_private(&tmp, pem.as_bytes()).map_err(|e| keys_dir_error(&tmp, e))?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), alg = ?alg, "generated a signing key");
            Ok(path)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(path),
        Err(e) => Err(keys_dir_error(&path, e)),
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    fn settings() -> TokenSettings {
        TokenSettings {
            issuer: "https://gh.test".into(),
            audience: Some("api".into()),
            ttl_secs: 300,
        }
    }

    fn session(expires_at: u64) -> Session {
        Session {
            username: Some("alice".into()),
            email: Some("a@example.org".into()),
            scopes: vec!["read".into(), "write".into()],
            roles: vec!["admin".into()],
            ..Session::new("u1", 0, expires_at)
        }
    }

    fn verify_with_jwks(signer: &Signer, jwt: &str, alg: Algorithm) -> serde_json::Value {
        let set: JwkSet = serde_json::from_slice(&signer.jwks()).unwrap();
        let jwk = set
            .find(signer.kid())
            .expect("the signing key is published");
        let key = DecodingKey::from_jwk(jwk).unwrap();
        let mut v = Validation::new(alg);
        v.set_audience(&["api"]);
        v.set_issuer(&["https://gh.test"]);
        jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &v)
            .unwrap()
            .claims
    }

    #[test]
    fn every_asymmetric_algorithm_signs_and_verifies_against_its_jwks() {
        for alg in [JwtAlg::EdDsa, JwtAlg::Es256, JwtAlg::Rs256] {
            let dir = tempfile::tempdir().unwrap();
            let signer = Signer::load(dir.path(), alg, None, settings()).unwrap();
            let now = crate::session::unix_now();
            let minted = signer
                .mint(&session(now + 1000), "sid1", Method::Cookie, now)
                .unwrap();
            let claims = verify_with_jwks(&signer, &minted.jwt, alg.algorithm());
            assert_eq!(claims["sub"], "u1");
            assert_eq!(claims["exp"], now + 300);
            assert_eq!(claims["scope"], "read write");
            assert_eq!(claims["auth_method"], "session");
            let header = jsonwebtoken::decode_header(&minted.jwt).unwrap();
            assert_eq!(header.kid.as_deref(), Some(signer.kid()));
            assert_eq!(header.typ.as_deref(), Some("JWT"));
        }
    }

    #[test]
    fn jwt_never_outlives_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load(dir.path(), JwtAlg::EdDsa, None, settings()).unwrap();
        let now = crate::session::unix_now();
        let minted = signer
            .mint(&session(now + 10), "s", Method::Bearer, now)
            .unwrap();
        assert_eq!(minted.exp, now + 10);
    }

    #[test]
    fn restart_reuses_the_generated_key() {
        let dir = tempfile::tempdir().unwrap();
        let a = Signer::load(dir.path(), JwtAlg::EdDsa, None, settings()).unwrap();
        let b = Signer::load(dir.path(), JwtAlg::EdDsa, None, settings()).unwrap();
        assert_eq!(a.kid(), b.kid());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn concurrent_first_runs_end_with_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let kids: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        Signer::load(dir.path(), JwtAlg::EdDsa, None, settings())
                            .unwrap()
                            .kid()
                            .to_string()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(kids.iter().all(|k| k == &kids[0]));
        let pems = std::fs::read_dir(dir.path()).unwrap().filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .and_then(|x| x.to_str())
                == Some("pem")
        });
        assert_eq!(pems.count(), 1);
    }

    #[test]
    fn hs256_signs_with_the_secret_and_publishes_nothing_secret() {
        let dir = tempfile::tempdir().unwrap();
        let secret = Secret::new("x".repeat(32));
        let signer = Signer::load(dir.path(), JwtAlg::Hs256, Some(&secret), settings()).unwrap();
        let now = crate::session::unix_now();
        let minted = signer
            .mint(&session(now + 100), "s", Method::Cookie, now)
            .unwrap();
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&["api"]);
        jsonwebtoken::decode::<serde_json::Value>(
            &minted.jwt,
            &DecodingKey::from_secret(secret.expose().as_bytes()),
            &v,
        )
        .unwrap();
        assert!(!String::from_utf8_lossy(&signer.jwks())
            .contains(&URL_SAFE_NO_PAD.encode(secret.expose())));
    }

    #[test]
    fn the_key_named_last_signs_whatever_the_file_times() {
        let dir = tempfile::tempdir().unwrap();
        let newer = generate_into(dir.path(), JwtAlg::EdDsa, "ed25519-1764000000000").unwrap();
        let older = generate_into(dir.path(), JwtAlg::EdDsa, "ed25519-999").unwrap();
        generate_into(dir.path(), JwtAlg::EdDsa, "imported").unwrap();
        // File times say the opposite of the names, as a Secret volume may.
        let past = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        std::fs::File::options()
            .write(true)
            .open(&newer)
            .unwrap()
            .set_modified(past)
            .unwrap();
        let signer = Signer::load(dir.path(), JwtAlg::EdDsa, None, settings()).unwrap();
        let kid_of = |path: &Path| {
            let key = parse_pem(&std::fs::read(path).unwrap()).unwrap().1;
            Jwk::from_encoding_key(&key, Algorithm::EdDSA)
                .unwrap()
                .thumbprint(ThumbprintHash::SHA256)
                .unwrap()
        };
        assert_eq!(signer.kid(), kid_of(&newer));
        assert_ne!(signer.kid(), kid_of(&older));
        assert_eq!(signing_order(Path::new("a/ed25519-10.pem")).0, 10);
        assert!(
            signing_order(Path::new("ed25519-10.pem")) > signing_order(Path::new("ed25519-9.pem"))
        );
        assert_eq!(signing_order(Path::new("imported.pem")).0, 0);
    }

    #[test]
    fn a_scheduled_key_is_published_at_once_and_signs_from_its_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = Signer::load(dir.path(), JwtAlg::EdDsa, None, settings()).unwrap();
        let old_kid = first.kid().to_string();
        let name = key_name(JwtAlg::EdDsa, std::time::Duration::from_secs(3600));
        let path = generate_into(dir.path(), JwtAlg::EdDsa, &name).unwrap();
        let signer = Signer::load(dir.path(), JwtAlg::EdDsa, None, settings()).unwrap();
        let jwks = String::from_utf8_lossy(&signer.jwks()).into_owned();
        let new_kid = Jwk::from_encoding_key(
            &parse_pem(&std::fs::read(&path).unwrap()).unwrap().1,
            Algorithm::EdDSA,
        )
        .unwrap()
        .thumbprint(ThumbprintHash::SHA256)
        .unwrap();
        assert!(jwks.contains(&new_kid), "not published");
        assert_eq!(signer.kid(), old_kid, "signs before its time");
        let kid_at = |now: u64| {
            let jwt = signer
                .mint(&session(now + 7200), "s", Method::Cookie, now)
                .unwrap()
                .jwt;
            jsonwebtoken::decode_header(&jwt).unwrap().kid.unwrap()
        };
        let now = crate::session::unix_now();
        assert_eq!(kid_at(now), old_kid);
        assert_eq!(kid_at(now + 3601), new_kid);
    }

    #[test]
    fn a_bad_key_file_names_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.pem"), "not a key").unwrap();
        let e = Signer::load(dir.path(), JwtAlg::EdDsa, None, settings())
            .err()
            .unwrap();
        assert_eq!(e.flag, "--keys-dir");
    }
}
