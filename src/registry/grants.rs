//! What users granted clients: authorization codes, grants (token families), refresh tokens,
//! the access tokens each grant produced, and remembered consent. All in the accounts
//! database; codes and refresh tokens only as SHA-256.
//!
//! A grant is one authorization code redeemed. Its refresh tokens rotate on every use; a used
//! one presented again (a stolen copy, or the thief's) revokes the grant: every refresh token
//! and every access token it produced. So does a replayed authorization code.

use sqlx::Row;

use crate::accounts::db::{commit_with, random_token, token_hash, Db, DbError, Event};
use crate::secret::Secret;
use crate::session::unix_now;
use crate::sessions::{Sessions, SessionsError};

/// An authorization code lives this long (RFC 6749 §4.1.2 recommends at most 10 minutes).
pub const CODE_TTL_SECS: u64 = 60;

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

/// A `scope` parameter as a sorted list without repeats.
pub fn scope_list(asked: &str) -> Vec<String> {
    let mut scopes: Vec<String> = asked
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    scopes.sort();
    scopes.dedup();
    scopes
}

/// An authorization code's record.
pub struct Code {
    pub client_id: String,
    pub user_id: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub challenge: String,
    pub expired: bool,
    pub used: bool,
    /// The grant it produced once redeemed: what a replay revokes.
    pub grant_id: Option<String>,
    /// How and when the consenting user had signed in.
    pub signed_in: SignedIn,
    /// The OpenID Connect request's nonce, for the id_token ("" when none).
    pub nonce: String,
}

/// How and when a consenting user had signed in (`amr`, `auth_time`), and in which browser
/// session (`sid`): what their grant's access tokens and id_tokens say of them, and the
/// session whose end is the grant's logout. Empty for grants made before it was recorded.
#[derive(Clone, Debug, Default)]
pub struct SignedIn {
    pub amr: Vec<String>,
    pub auth_time: u64,
    pub sid: String,
    /// The API (RFC 8707 `resource`) the grant's tokens are for; "" for none.
    pub resource: String,
}

impl SignedIn {
    fn of(r: &sqlx::any::AnyRow) -> Result<SignedIn, sqlx::Error> {
        Ok(SignedIn {
            amr: words(&r.try_get::<String, _>("amr")?),
            auth_time: r.try_get::<i64, _>("auth_time")?.max(0) as u64,
            sid: r.try_get("sid")?,
            resource: r.try_get("resource")?,
        })
    }
}

pub struct NewCode<'a> {
    pub client_id: &'a str,
    pub user_id: &'a str,
    pub redirect_uri: &'a str,
    pub scopes: &'a [String],
    pub challenge: &'a str,
    pub signed_in: &'a SignedIn,
    pub nonce: &'a str,
}

pub async fn issue_code(db: &Db, new: &NewCode<'_>) -> Result<Secret<String>, DbError> {
    let code = Secret::new(random_token(32));
    sqlx::query(
        "INSERT INTO oauth_codes (hash, client_id, user_id, redirect_uri, scopes, challenge,
            expires_at, used, grant_id, amr, auth_time, sid, nonce, resource)
            VALUES ($1, $2, $3, $4, $5, $6, $7, 0, NULL, $8, $9, $10, $11, $12)",
    )
    .bind(token_hash(code.expose()))
    .bind(new.client_id)
    .bind(new.user_id)
    .bind(new.redirect_uri)
    .bind(new.scopes.join(" "))
    .bind(new.challenge)
    .bind((unix_now() + CODE_TTL_SECS) as i64)
    .bind(new.signed_in.amr.join(" "))
    .bind(new.signed_in.auth_time as i64)
    .bind(&new.signed_in.sid)
    .bind(new.nonce)
    .bind(&new.signed_in.resource)
    .execute(db.pool())
    .await?;
    Ok(code)
}

pub async fn find_code(db: &Db, code: &str) -> Result<Option<Code>, DbError> {
    let row = sqlx::query("SELECT * FROM oauth_codes WHERE hash = $1")
        .bind(token_hash(code))
        .fetch_optional(db.pool())
        .await?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some(Code {
        client_id: r.try_get("client_id")?,
        user_id: r.try_get("user_id")?,
        redirect_uri: r.try_get("redirect_uri")?,
        scopes: words(&r.try_get::<String, _>("scopes")?),
        challenge: r.try_get("challenge")?,
        expired: r.try_get::<i64, _>("expires_at")? <= unix_now() as i64,
        used: r.try_get::<i64, _>("used")? != 0,
        grant_id: r.try_get("grant_id")?,
        signed_in: SignedIn::of(&r)?,
        nonce: r.try_get("nonce")?,
    }))
}

/// Marks the code used, recording the grant it produced (None: burnt without one). False
/// when another request used it first.
pub async fn use_code(db: &Db, code: &str, grant: Option<&str>) -> Result<bool, DbError> {
    let done =
        sqlx::query("UPDATE oauth_codes SET used = 1, grant_id = $1 WHERE hash = $2 AND used = 0")
            .bind(grant)
            .bind(token_hash(code))
            .execute(db.pool())
            .await?;
    Ok(done.rows_affected() == 1)
}

/// A new grant of `scopes` by `user_id` to `client_id`; its id.
pub async fn create_grant(
    db: &Db,
    client_id: &str,
    user_id: &str,
    scopes: &[String],
    signed_in: &SignedIn,
) -> Result<String, DbError> {
    let id = random_token(16);
    sqlx::query(
        "INSERT INTO oauth_grants (id, client_id, user_id, scopes, created_at, revoked, amr,
            auth_time, sid, resource)
         VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8, $9)",
    )
    .bind(&id)
    .bind(client_id)
    .bind(user_id)
    .bind(scopes.join(" "))
    .bind(unix_now() as i64)
    .bind(signed_in.amr.join(" "))
    .bind(signed_in.auth_time as i64)
    .bind(&signed_in.sid)
    .bind(&signed_in.resource)
    .execute(db.pool())
    .await?;
    Ok(id)
}

/// A refresh token's record, with its grant's.
pub struct Refresh {
    pub grant_id: String,
    pub client_id: String,
    pub user_id: String,
    pub scopes: Vec<String>,
    pub expired: bool,
    pub used: bool,
    pub grant_revoked: bool,
    /// The grant's.
    pub signed_in: SignedIn,
}

pub async fn issue_refresh(
    db: &Db,
    grant_id: &str,
    scopes: &[String],
    ttl_secs: u64,
) -> Result<Secret<String>, DbError> {
    let token = Secret::new(format!("grt_{}", random_token(32)));
    sqlx::query(
        "INSERT INTO oauth_refresh (hash, grant_id, scopes, expires_at, used)
         VALUES ($1, $2, $3, $4, 0)",
    )
    .bind(token_hash(token.expose()))
    .bind(grant_id)
    .bind(scopes.join(" "))
    .bind((unix_now() + ttl_secs) as i64)
    .execute(db.pool())
    .await?;
    Ok(token)
}

pub async fn find_refresh(db: &Db, token: &str) -> Result<Option<Refresh>, DbError> {
    let row = sqlx::query(
        "SELECT r.grant_id, r.scopes, r.expires_at, r.used, g.client_id, g.user_id, g.revoked,
                g.amr, g.auth_time, g.sid, g.resource
         FROM oauth_refresh r JOIN oauth_grants g ON g.id = r.grant_id WHERE r.hash = $1",
    )
    .bind(token_hash(token))
    .fetch_optional(db.pool())
    .await?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some(Refresh {
        grant_id: r.try_get("grant_id")?,
        client_id: r.try_get("client_id")?,
        user_id: r.try_get("user_id")?,
        scopes: words(&r.try_get::<String, _>("scopes")?),
        expired: r.try_get::<i64, _>("expires_at")? <= unix_now() as i64,
        used: r.try_get::<i64, _>("used")? != 0,
        grant_revoked: r.try_get::<i64, _>("revoked")? != 0,
        signed_in: SignedIn::of(&r)?,
    }))
}

/// Marks a refresh token used; false when another request used it first.
pub async fn use_refresh(db: &Db, token: &str) -> Result<bool, DbError> {
    let done = sqlx::query("UPDATE oauth_refresh SET used = 1 WHERE hash = $1 AND used = 0")
        .bind(token_hash(token))
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The most access tokens one grant keeps live: each refresh mints one, and a client that
/// refreshes in a loop must not pile up live tokens. Past it, the oldest ends first.
pub const LIVE_ACCESS_PER_GRANT: usize = 10;

/// Ends and forgets the access tokens of `grant_id` past [`LIVE_ACCESS_PER_GRANT`], oldest
/// first (called after a new one is recorded). How many ended.
pub async fn cap_access(
    db: &Db,
    sessions: &Sessions<'_>,
    grant_id: &str,
) -> Result<u64, RevokeError> {
    let rows = sqlx::query(
        "SELECT sid, sub FROM oauth_access WHERE grant_id = $1 ORDER BY created_us DESC, sid",
    )
    .bind(grant_id)
    .fetch_all(db.pool())
    .await
    .map_err(DbError::from)?;
    let mut ended = 0;
    for r in rows.iter().skip(LIVE_ACCESS_PER_GRANT) {
        let sid: String = r.try_get("sid").map_err(DbError::from)?;
        let sub: String = r.try_get("sub").map_err(DbError::from)?;
        ended += sessions
            .revoke_sids(&sub, std::slice::from_ref(&sid))
            .await?;
        sqlx::query("DELETE FROM oauth_access WHERE grant_id = $1 AND sid = $2")
            .bind(grant_id)
            .bind(&sid)
            .execute(db.pool())
            .await
            .map_err(DbError::from)?;
    }
    Ok(ended)
}

/// Remembers that the access token `sid` (a session of `sub`) belongs to `grant_id`.
pub async fn record_access(
    db: &Db,
    grant_id: &str,
    sid: &str,
    sub: &str,
    expires_at: u64,
) -> Result<(), DbError> {
    let created_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    sqlx::query(
        "INSERT INTO oauth_access (sid, grant_id, sub, expires_at, created_us)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(sid)
    .bind(grant_id)
    .bind(sub)
    .bind(expires_at as i64)
    .bind(created_us)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// How long a spent code or refresh token is kept past its expiry, so that a replay within it
/// is still recognised as one (and revokes its grant) rather than refused as unknown.
pub const KEEP_SPENT_SECS: u64 = 24 * 3600;

/// Deletes what can never matter again, as of `now` (Unix seconds): codes and refresh tokens
/// [`KEEP_SPENT_SECS`] past their expiry, the records of expired access tokens (their
/// sessions are gone from the store), and grants with no refresh token or access token left
/// that are at least as old (a grant being created is never taken). Consent stays until
/// withdrawn. The number of rows deleted.
pub async fn purge(db: &Db, now: u64) -> Result<u64, DbError> {
    let spent = now.saturating_sub(KEEP_SPENT_SECS) as i64;
    let mut deleted = 0;
    for (sql, before) in [
        ("DELETE FROM oauth_codes WHERE expires_at < $1", spent),
        ("DELETE FROM oauth_refresh WHERE expires_at < $1", spent),
        ("DELETE FROM oauth_access WHERE expires_at < $1", now as i64),
        (
            "DELETE FROM oauth_grants WHERE created_at < $1
               AND NOT EXISTS (SELECT 1 FROM oauth_refresh r WHERE r.grant_id = oauth_grants.id)
               AND NOT EXISTS (SELECT 1 FROM oauth_access a WHERE a.grant_id = oauth_grants.id)",
            spent,
        ),
    ] {
        deleted += sqlx::query(sql)
            .bind(before)
            .execute(db.pool())
            .await?
            .rows_affected();
    }
    Ok(deleted)
}

#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Sessions(#[from] SessionsError),
}

impl From<RevokeError> for crate::accounts::followers::EndError {
    fn from(e: RevokeError) -> Self {
        match e {
            RevokeError::Db(d) => Self::Db(d),
            RevokeError::Sessions(s) => Self::Sessions(s),
        }
    }
}

/// Revokes a grant: no refresh token of it works again, and each access token it produced
/// ends now. The number of access tokens ended.
pub async fn revoke_grant(
    db: &Db,
    sessions: &Sessions<'_>,
    grant_id: &str,
) -> Result<u64, RevokeError> {
    let mut tx = db.pool().begin().await.map_err(DbError::from)?;
    let newly = sqlx::query(
        "UPDATE oauth_grants SET revoked = 1 WHERE id = $1 AND revoked = 0
         RETURNING user_id, client_id",
    )
    .bind(grant_id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(DbError::from)?;
    sqlx::query("UPDATE oauth_refresh SET used = 1 WHERE grant_id = $1")
        .bind(grant_id)
        .execute(&mut *tx)
        .await
        .map_err(DbError::from)?;
    let events = match newly {
        Some(r) => vec![revoked(
            grant_id,
            &r.try_get::<String, _>("user_id").map_err(DbError::from)?,
            &r.try_get::<String, _>("client_id").map_err(DbError::from)?,
        )],
        None => vec![],
    };
    commit_with(tx, &events).await?;
    let rows = sqlx::query("SELECT sid, sub FROM oauth_access WHERE grant_id = $1")
        .bind(grant_id)
        .fetch_all(db.pool())
        .await
        .map_err(DbError::from)?;
    // By subject: one listing each (a grant's tokens all have its user as subject).
    let mut by_sub: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for r in rows {
        let sid: String = r.try_get("sid").map_err(DbError::from)?;
        let sub: String = r.try_get("sub").map_err(DbError::from)?;
        by_sub.entry(sub).or_default().push(sid);
    }
    let mut ended = 0;
    for (sub, sids) in &by_sub {
        ended += sessions.revoke_sids(sub, sids).await?;
    }
    sqlx::query("DELETE FROM oauth_access WHERE grant_id = $1")
        .bind(grant_id)
        .execute(db.pool())
        .await
        .map_err(DbError::from)?;
    Ok(ended)
}

/// `grant.revoked`.
fn revoked(grant: &str, user: &str, client_id: &str) -> Event {
    Event::new(
        "grant.revoked",
        serde_json::json!({"grant": grant, "user": user, "client_id": client_id}),
    )
}

/// Revokes every live grant of `client_id` (disabled, or its secret rotated), or only those
/// `user_id` made (the user withdrew access). The number of access tokens ended.
pub async fn revoke_grants(
    db: &Db,
    sessions: &Sessions<'_>,
    client_id: &str,
    user_id: Option<&str>,
) -> Result<u64, RevokeError> {
    let rows =
        sqlx::query("SELECT id, user_id FROM oauth_grants WHERE client_id = $1 AND revoked = 0")
            .bind(client_id)
            .fetch_all(db.pool())
            .await
            .map_err(DbError::from)?;
    let mut ended = 0;
    for r in rows {
        let (id, user): (String, String) = (
            r.try_get("id").map_err(DbError::from)?,
            r.try_get("user_id").map_err(DbError::from)?,
        );
        if user_id.is_none_or(|u| u == user) {
            ended += revoke_grant(db, sessions, &id).await?;
        }
    }
    Ok(ended)
}

/// Ends the access tokens still recorded under revoked grants (a migration revokes grants
/// but cannot reach the session store). The number ended.
pub async fn end_revoked_access(db: &Db, sessions: &Sessions<'_>) -> Result<u64, RevokeError> {
    let rows = sqlx::query(
        "SELECT DISTINCT a.grant_id FROM oauth_access a
         JOIN oauth_grants g ON g.id = a.grant_id WHERE g.revoked = 1",
    )
    .fetch_all(db.pool())
    .await
    .map_err(DbError::from)?;
    let mut ended = 0;
    for r in rows {
        let id: String = r.try_get("grant_id").map_err(DbError::from)?;
        ended += revoke_grant(db, sessions, &id).await?;
    }
    Ok(ended)
}

/// What the registry ends with a user's credentials ([`crate::accounts::followers`]): every
/// grant the user made; on deactivation also every client they own, disabled with all its
/// tokens, as `client disable` does. How many grants and clients ended.
pub async fn user_ended(
    db: &Db,
    sessions: &Sessions<'_>,
    user_id: &str,
    reason: crate::accounts::followers::Reason,
) -> Result<u64, crate::accounts::followers::EndError> {
    let mut ended = end_user_grants(db, user_id).await?;
    use crate::accounts::followers::Reason;
    if matches!(reason, Reason::Deactivated | Reason::Deleted) {
        for c in super::clients::list_clients(db, Some(user_id)).await? {
            if c.disabled {
                continue;
            }
            super::clients::set_disabled(db, &c.client_id, true).await?;
            let tokens = end_client_tokens(db, sessions, &c.client_id).await?;
            tracing::info!(target: "gatehouse::audit", event = "client_disabled", client_id = %c.client_id, owner = %user_id, tokens, "audit");
            ended += 1;
        }
    }
    Ok(ended)
}

/// Ends everything `user_id` granted clients (their credentials ended: a reset, a password
/// change, deactivation): every grant is revoked, its refresh tokens spent, and the consents
/// forgotten, since an attacker who held the password may have given them. The access tokens
/// are sessions of the user and end with them. The number of grants ended.
pub async fn end_user_grants(db: &Db, user_id: &str) -> Result<u64, DbError> {
    let mut tx = db.pool().begin().await?;
    sqlx::query(
        "UPDATE oauth_refresh SET used = 1
         WHERE grant_id IN (SELECT id FROM oauth_grants WHERE user_id = $1)",
    )
    .bind(user_id)
    .execute(&mut *tx)
    .await?;
    let rows = sqlx::query(
        "UPDATE oauth_grants SET revoked = 1 WHERE user_id = $1 AND revoked = 0
         RETURNING id, client_id",
    )
    .bind(user_id)
    .fetch_all(&mut *tx)
    .await?;
    let events = rows
        .iter()
        .map(|r| {
            Ok(revoked(
                &r.try_get::<String, _>("id")?,
                user_id,
                &r.try_get::<String, _>("client_id")?,
            ))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    sqlx::query("DELETE FROM oauth_consents WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    commit_with(tx, &events).await?;
    Ok(events.len() as u64)
}

/// The scopes `user_id` already consented to for `client_id`; None when they never consented
/// (or withdrew), which is not the same as consenting to no scope.
pub async fn consent(
    db: &Db,
    user_id: &str,
    client_id: &str,
) -> Result<Option<Vec<String>>, DbError> {
    let row =
        sqlx::query("SELECT scopes FROM oauth_consents WHERE user_id = $1 AND client_id = $2")
            .bind(user_id)
            .bind(client_id)
            .fetch_optional(db.pool())
            .await?;
    Ok(row
        .map(|r| r.try_get::<String, _>("scopes"))
        .transpose()?
        .map(|s| words(&s)))
}

pub async fn remember_consent(
    db: &Db,
    user_id: &str,
    client_id: &str,
    scopes: &[String],
) -> Result<(), DbError> {
    let mut tx = db.pool().begin().await?;
    sqlx::query("DELETE FROM oauth_consents WHERE user_id = $1 AND client_id = $2")
        .bind(user_id)
        .bind(client_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO oauth_consents (user_id, client_id, scopes, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(user_id)
    .bind(client_id)
    .bind(scopes.join(" "))
    .bind(unix_now() as i64)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Every client `user_id` consented to: client id, scopes, when.
pub async fn consents_of(
    db: &Db,
    user_id: &str,
) -> Result<Vec<(String, Vec<String>, u64)>, DbError> {
    let rows = sqlx::query(
        "SELECT client_id, scopes, created_at FROM oauth_consents WHERE user_id = $1 ORDER BY created_at",
    )
    .bind(user_id)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("client_id")?,
                words(&r.try_get::<String, _>("scopes")?),
                r.try_get::<i64, _>("created_at")?.max(0) as u64,
            ))
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(DbError::from)
}

/// The user withdraws a client's access: the consent is forgotten and every grant they made
/// it is revoked. The number of access tokens ended.
pub async fn withdraw(
    db: &Db,
    sessions: &Sessions<'_>,
    user_id: &str,
    client_id: &str,
) -> Result<u64, RevokeError> {
    sqlx::query("DELETE FROM oauth_consents WHERE user_id = $1 AND client_id = $2")
        .bind(user_id)
        .bind(client_id)
        .execute(db.pool())
        .await
        .map_err(DbError::from)?;
    revoke_grants(db, sessions, client_id, Some(user_id)).await
}

/// Ends every token of a client (disabled, or its secret rotated): its own
/// (`client_credentials`, whose sessions have the client as subject) and those of every grant
/// users made it. How many access tokens ended.
pub async fn end_client_tokens(
    db: &Db,
    sessions: &Sessions<'_>,
    client_id: &str,
) -> Result<u64, RevokeError> {
    let own = sessions.revoke_user(client_id, None).await?;
    Ok(own + revoke_grants(db, sessions, client_id, None).await?)
}

/// The registry's part of a user's export: the applications they authorized (with the
/// scopes consented), their grants, and the clients they own. Never a secret or token hash.
pub async fn export_user(db: &Db, user_id: &str) -> Result<serde_json::Value, DbError> {
    let consents = consents_of(db, user_id).await?;
    let rows = sqlx::query(
        "SELECT g.id, g.client_id, c.name, g.scopes, g.created_at, g.revoked FROM oauth_grants g
         LEFT JOIN oauth_clients c ON c.id = g.client_id WHERE g.user_id = $1
         ORDER BY g.created_at, g.id",
    )
    .bind(user_id)
    .fetch_all(db.pool())
    .await?;
    let grants = rows
        .iter()
        .map(|r| {
            Ok(serde_json::json!({
                "id": r.try_get::<String, _>("id")?,
                "client_id": r.try_get::<String, _>("client_id")?,
                "client_name": r.try_get::<Option<String>, _>("name")?,
                "scopes": words(&r.try_get::<String, _>("scopes")?),
                "created_at": r.try_get::<i64, _>("created_at")?,
                "revoked": r.try_get::<i64, _>("revoked")? != 0,
            }))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let owned = super::clients::list_clients(db, Some(user_id)).await?;
    Ok(serde_json::json!({
        "authorized_applications": consents.iter().map(|(client, scopes, at)| serde_json::json!({
            "client_id": client, "scopes": scopes, "consented_at": at,
        })).collect::<Vec<_>>(),
        "grants": grants,
        "clients_owned": owned.iter().map(|c| serde_json::json!({
            "client_id": c.client_id, "name": c.name, "disabled": c.disabled,
        })).collect::<Vec<_>>(),
    }))
}

/// Deletes what the registry keeps about a deleted user, in the deletion's transaction: their
/// codes, grants with their refresh and access records, consents. The clients they owned
/// (disabled with their tokens as the deletion began) stay, owned by no one.
pub async fn forget_user(conn: &mut sqlx::AnyConnection, user_id: &str) -> Result<(), sqlx::Error> {
    for sql in [
        "DELETE FROM oauth_refresh WHERE grant_id IN (SELECT id FROM oauth_grants WHERE user_id = $1)",
        "DELETE FROM oauth_access WHERE sub = $1",
        "DELETE FROM oauth_grants WHERE user_id = $1",
        "DELETE FROM oauth_codes WHERE user_id = $1",
        "DELETE FROM oauth_device_codes WHERE user_id = $1",
        "DELETE FROM oauth_consents WHERE user_id = $1",
        "UPDATE oauth_clients SET owner = NULL WHERE owner = $1",
    ] {
        sqlx::query(sql).bind(user_id).execute(&mut *conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of each table, counted (queries are static strings: sqlx audits dynamic SQL).
    const COUNTS: [&str; 4] = [
        "SELECT COUNT(*) AS n FROM oauth_codes",
        "SELECT COUNT(*) AS n FROM oauth_grants",
        "SELECT COUNT(*) AS n FROM oauth_refresh",
        "SELECT COUNT(*) AS n FROM oauth_access",
    ];

    async fn count(db: &Db, sql: &'static str) -> i64 {
        sqlx::query(sql)
            .fetch_one(db.pool())
            .await
            .unwrap()
            .get("n")
    }

    #[tokio::test]
    async fn purge_keeps_what_may_matter_and_deletes_what_never_will() {
        crate::registry::install();
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(None, dir.path()).await.unwrap();
        let scopes = ["read".to_owned()];
        let code = NewCode {
            client_id: "c",
            user_id: "u",
            redirect_uri: "https://app.example.org/cb",
            scopes: &scopes,
            challenge: "x",
            signed_in: &SignedIn::default(),
            nonce: "",
        };
        issue_code(&db, &code).await.unwrap();
        let grant = create_grant(&db, "c", "u", &scopes, &SignedIn::default())
            .await
            .unwrap();
        issue_refresh(&db, &grant, &scopes, 3600).await.unwrap();
        let now = unix_now();
        record_access(&db, &grant, "sid", "client:c", now + 60)
            .await
            .unwrap();

        // Nothing is spent yet; a spent code is kept for a day past its expiry.
        assert_eq!(purge(&db, now).await.unwrap(), 0);
        assert_eq!(
            purge(&db, now + KEEP_SPENT_SECS).await.unwrap(),
            1,
            "the access record"
        );
        assert_eq!(count(&db, COUNTS[0]).await, 1, "the code");

        // A day past every expiry: all of it, the grant last, once nothing refers to it.
        let later = now + 3600 + KEEP_SPENT_SECS + 1;
        assert_eq!(purge(&db, later).await.unwrap(), 3);
        for sql in COUNTS {
            assert_eq!(count(&db, sql).await, 0, "{sql}");
        }
        assert_eq!(purge(&db, later).await.unwrap(), 0);
    }
}
