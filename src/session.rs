//! The session record: what a token stands for. Stored as JSON by every store.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    /// A browser session.
    #[default]
    User,
    /// An OAuth client access token.
    Client,
    /// A personal access token.
    Personal,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The user (or client) id: the JWT's `sub`.
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub kind: SessionKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds; the session is dead from this moment on.
    pub expires_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

impl Session {
    /// A user session for `sub` from `created_at` until `expires_at` (Unix seconds), with
    /// nothing else set; the rest is filled in with struct update syntax.
    pub fn new(sub: impl Into<String>, created_at: u64, expires_at: u64) -> Session {
        Session {
            sub: sub.into(),
            username: None,
            email: None,
            name: None,
            scopes: Vec::new(),
            roles: Vec::new(),
            kind: SessionKind::User,
            client_id: None,
            created_at,
            expires_at,
            last_seen: None,
            ip: None,
            user_agent: None,
        }
    }

    pub fn is_live(&self, now: u64) -> bool {
        now < self.expires_at
    }

    /// The name the upstream sees in `X-Auth-Request-User`.
    pub fn display_user(&self) -> &str {
        self.username.as_deref().unwrap_or(&self.sub)
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
