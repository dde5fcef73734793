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
    /// How its holder signed in, RFC 8176 values: `pwd`, `otp`, `hwk` (a passkey), `mfa` (two
    /// factors, or a passkey with user verification). An OAuth access token carries the
    /// consenting session's. Empty for `session create`, client credentials and personal
    /// tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// When its holder last authenticated (Unix seconds); an older record without it counts
    /// its creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<u64>,
    /// The API it is for (an OAuth `resource`, RFC 8707): its JWT's `aud` instead of
    /// `--audience`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The identity provider it was signed in with (`--identity-providers` id): its JWT's
    /// `idp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp: Option<String>,
}

/// The `acr` of a session signed in with one factor.
pub const ACR_ONE_FACTOR: &str = "urn:gatehouse:acr:1fa";
/// The `acr` of a session signed in with two factors, or a passkey with user verification.
pub const ACR_TWO_FACTORS: &str = "urn:gatehouse:acr:2fa";

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
            amr: Vec::new(),
            auth_time: None,
            audience: None,
            idp: None,
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

    /// When its holder last authenticated: `auth_time`, else its creation.
    pub fn auth_time(&self) -> u64 {
        self.auth_time.unwrap_or(self.created_at)
    }

    /// Whether a person stands behind it, signed in with a second factor (`amr` holds
    /// `mfa`). A personal token never counts, whatever its record says: a route that asks
    /// for a second factor is for people at a browser or an app they consented to.
    pub fn has_second_factor(&self) -> bool {
        self.kind != SessionKind::Personal && self.amr.iter().any(|m| m == "mfa")
    }

    /// Whether its holder authenticated at most `max_age` seconds before `now`. Personal and
    /// client-credentials tokens (no `amr`) never do: no person signed in for them.
    pub fn authenticated_within(&self, max_age: u64, now: u64) -> bool {
        self.kind != SessionKind::Personal
            && (self.kind == SessionKind::User || !self.amr.is_empty())
            && now.saturating_sub(self.auth_time()) <= max_age
    }

    /// The `acr` its JWT carries: none without `amr`.
    pub fn acr(&self) -> Option<&'static str> {
        if self.amr.is_empty() {
            None
        } else if self.has_second_factor() {
            Some(ACR_TWO_FACTORS)
        } else {
            Some(ACR_ONE_FACTOR)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_people_who_signed_in_recently_or_with_two_factors_qualify() {
        let now = 10_000;
        let with = |kind, amr: &[&str], auth_time| Session {
            kind,
            amr: amr.iter().map(|s| s.to_string()).collect(),
            auth_time,
            ..Session::new("u", 1_000, 100_000)
        };
        let mfa = ["pwd", "otp", "mfa"];
        assert!(with(SessionKind::User, &mfa, None).has_second_factor());
        assert!(!with(SessionKind::User, &["pwd"], None).has_second_factor());
        // An OAuth token of a consenting session with two factors qualifies; a personal
        // token never, whatever its record says.
        assert!(with(SessionKind::Client, &mfa, None).has_second_factor());
        assert!(!with(SessionKind::Personal, &mfa, None).has_second_factor());

        assert!(with(SessionKind::User, &[], Some(now - 60)).authenticated_within(60, now));
        assert!(!with(SessionKind::User, &[], Some(now - 61)).authenticated_within(60, now));
        // Without auth_time, the creation counts.
        assert!(!with(SessionKind::User, &[], None).authenticated_within(60, now));
        assert!(with(SessionKind::User, &[], None).authenticated_within(9_000, now));
        // Client credentials (no amr) and personal tokens: no person signed in for them.
        assert!(!with(SessionKind::Client, &[], Some(now)).authenticated_within(60, now));
        assert!(with(SessionKind::Client, &["pwd"], Some(now)).authenticated_within(60, now));
        assert!(!with(SessionKind::Personal, &["pwd"], Some(now)).authenticated_within(60, now));

        assert_eq!(with(SessionKind::User, &[], None).acr(), None);
        assert_eq!(
            with(SessionKind::User, &["pwd"], None).acr(),
            Some(ACR_ONE_FACTOR)
        );
        assert_eq!(
            with(SessionKind::User, &mfa, None).acr(),
            Some(ACR_TWO_FACTORS)
        );
    }
}
