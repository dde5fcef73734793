//! The session record: what a token stands for. Stored as JSON by every store.

use serde::{Deserialize, Serialize};

/// What a session was issued for. Its token's prefix says so, so that secret scanners can
/// tell a leaked browser session from an API token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    /// A browser session (accounts login, `session create`): `gts_…`.
    #[default]
    User,
    /// An OAuth client access token (registry): `gtc_…`.
    Client,
    /// A personal access token: `gtp_…`.
    Personal,
}

impl SessionKind {
    /// The first four characters of this kind's tokens.
    pub fn prefix(self) -> &'static str {
        match self {
            SessionKind::User => "gts_",
            SessionKind::Client => "gtc_",
            SessionKind::Personal => "gtp_",
        }
    }

    pub(crate) fn from_prefix(p: &[u8]) -> Option<Self> {
        match p {
            b"gts_" => Some(SessionKind::User),
            b"gtc_" => Some(SessionKind::Client),
            b"gtp_" => Some(SessionKind::Personal),
            _ => None,
        }
    }
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
    /// The name its holder gave it (a personal access token's), for lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
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
            label: None,
        }
    }

    pub fn is_live(&self, now: u64) -> bool {
        now < self.expires_at
    }

    /// The roles its holder acts with: a browser session's. A token (an OAuth client's or a
    /// personal one) carries exactly the scopes it was granted and never a role, whatever an
    /// older record holds, so a role rule never admits one (README, Security).
    pub fn acting_roles(&self) -> &[String] {
        match self.kind {
            SessionKind::User => &self.roles,
            SessionKind::Client | SessionKind::Personal => &[],
        }
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
