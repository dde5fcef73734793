//! `--legacy-password-hook`: for users imported with `{"scheme": "legacy-hook"}`, the old
//! system says whether a password is right, once; the password is then stored as Argon2id
//! (as Ory Kratos' password migration hook does).

use std::time::Duration;

use serde_json::{json, Value};

use super::outbound::{Outbound, Trust};
use crate::error::ConfigError;
use crate::secret::Secret;

/// How long the old system has to answer.
pub const TIMEOUT: Duration = Duration::from_secs(5);

pub struct LegacyHook {
    url: String,
    /// `Bearer <the secret>`.
    authorization: Secret<String>,
}

/// The hook did not answer, or answered something else than `{"valid": bool}`: the user is
/// asked to try again later, and no failure is counted against them.
#[derive(Debug, thiserror::Error)]
#[error("the legacy password hook did not answer: {0}")]
pub struct HookDown(String);

impl LegacyHook {
    /// From the flags: none without a URL; a URL needs https (or http on loopback) and a
    /// secret file.
    pub fn from_flags(
        url: Option<&str>,
        secret_file: Option<&std::path::Path>,
    ) -> Result<Option<LegacyHook>, ConfigError> {
        let Some(url) = url else {
            if secret_file.is_some() {
                return Err(ConfigError::new(
                    "--legacy-password-hook-secret-file",
                    "needs --legacy-password-hook",
                ));
            }
            return Ok(None);
        };
        let loopback = [
            "http://127.0.0.1:",
            "http://127.0.0.1/",
            "http://[::1]",
            "http://localhost:",
            "http://localhost/",
        ];
        if !(url.starts_with("https://") || loopback.iter().any(|p| url.starts_with(p))) {
            return Err(ConfigError::new(
                "--legacy-password-hook",
                "must be an https:// URL (or http:// on loopback)",
            ));
        }
        let Some(file) = secret_file else {
            return Err(ConfigError::new(
                "--legacy-password-hook-secret-file",
                "is needed with --legacy-password-hook",
            ));
        };
        let secret = crate::secret::read_secret_file(file, "--legacy-password-hook-secret-file")?;
        Ok(Some(LegacyHook {
            url: url.to_owned(),
            authorization: Secret::new(format!("Bearer {}", secret.expose())),
        }))
    }

    /// Whether the old system takes `password` for `username`.
    pub async fn check(
        &self,
        outbound: &Outbound,
        username: &str,
        password: &Secret<String>,
    ) -> Result<bool, HookDown> {
        let body = json!({ "username": username, "password": password.expose() }).to_string();
        let answer = tokio::time::timeout(
            TIMEOUT,
            outbound.authorized(
                &self.url,
                Trust::Operator,
                &self.authorization,
                Some(("application/json", body)),
            ),
        )
        .await
        .map_err(|_| HookDown(format!("no answer within {}s", TIMEOUT.as_secs())))?
        .map_err(|e| HookDown(e.to_string()))?;
        if !answer.status.is_success() {
            return Err(HookDown(format!("status {}", answer.status)));
        }
        serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("valid")?.as_bool())
            .ok_or_else(|| HookDown("the answer is not {\"valid\": bool}".into()))
    }
}
