//! Personal access tokens: sessions of kind `personal` (prefix `gtp_`) that a user makes for
//! their own scripts, with a name, some of their scopes and an expiry. The session store holds
//! them like any session, so `/auth` resolves them on the hot path; listing is the user's
//! sessions of that kind, and "last used" is the session's `last_seen`.

use std::time::Duration;

use crate::accounts::db::User;
use crate::accounts::Roles;
use crate::session::{Session, SessionKind};
use crate::sessions::{Issued, Listed, Sessions, SessionsError};

/// "Never expires" (only with `--allow-non-expiring-tokens`): a hundred years.
pub const NEVER: Duration = Duration::from_secs(100 * 365 * 86_400);

#[derive(Debug, thiserror::Error)]
pub enum PatError {
    #[error("a token needs a name (up to 100 characters)")]
    Name,
    #[error("scope {0:?} is not one of yours")]
    Scope(String),
    #[error(transparent)]
    Sessions(#[from] SessionsError),
}

/// Creates a token for `user` with `scopes` (each one the user's own), living `ttl`.
pub async fn create(
    sessions: &Sessions<'_>,
    roles: &Roles,
    user: &User,
    name: &str,
    scopes: &[String],
    ttl: Duration,
) -> Result<Issued, PatError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(PatError::Name);
    }
    let (_, mine) = roles.of(&user.roles);
    if let Some(s) = scopes.iter().find(|s| !mine.contains(s)) {
        return Err(PatError::Scope(s.clone()));
    }
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    let session = Session {
        kind: SessionKind::Personal,
        username: Some(user.username.clone()),
        email: Some(user.email.clone()),
        name: Some(user.name.clone()).filter(|n| !n.is_empty()),
        scopes,
        label: Some(name.to_owned()),
        ..Sessions::draft(user.id.clone(), ttl)
    };
    let issued = sessions.issue(&session).await?;
    tracing::info!(target: "gatehouse::audit", event = "personal_token_created", user = %user.id, sid = %issued.sid, "audit");
    Ok(issued)
}

/// The user's live personal access tokens, newest first.
pub async fn list(sessions: &Sessions<'_>, user_id: &str) -> Result<Vec<Listed>, SessionsError> {
    let mut tokens: Vec<Listed> = sessions
        .list(user_id)
        .await?
        .into_iter()
        .filter(|l| l.session.kind == SessionKind::Personal)
        .collect();
    tokens.sort_by_key(|l| std::cmp::Reverse(l.session.created_at));
    Ok(tokens)
}

/// Revokes one of the user's tokens by its sid; false when they have no such token.
pub async fn revoke(
    sessions: &Sessions<'_>,
    user_id: &str,
    sid: &str,
) -> Result<bool, SessionsError> {
    let theirs = list(sessions, user_id).await?.iter().any(|l| l.sid == sid);
    if !theirs {
        return Ok(false);
    }
    let done = sessions.revoke_sid(user_id, sid).await?;
    tracing::info!(target: "gatehouse::audit", event = "personal_token_revoked", user = %user_id, sid = %sid, "audit");
    Ok(done)
}
