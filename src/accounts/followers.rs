//! What the modules built on accounts hold for a user, ended when the user's credentials end:
//! a password reset, change or `set-password`, and deactivation. Accounts knows none of them;
//! each registers a follower once ([`follow`]) and [`end_credentials`] calls every one, so a
//! page, the API and the CLI end the same things in the same order (the registry: the user's
//! grants and consents, and on deactivation the clients they own).
//!
//! A module also says what it keeps about a user ([`keeps`]): its part of `/account/export`,
//! and what it deletes, in the deletion's transaction, when the user is deleted.

use std::future::Future;
use std::pin::Pin;
use std::sync::RwLock;

use super::db::{Db, DbError};
use crate::sessions::{Sessions, SessionsError};

/// Why a user's credentials end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A new password: a reset, a change, `set-password`.
    NewPassword,
    /// `user deactivate`.
    Deactivated,
    /// `user reset-second-factors`: a lost device, which may be in other hands.
    SecondFactorsReset,
    /// The user is deleted (their own choice, or an operator's).
    Deleted,
}

/// A boxed future borrowing its arguments.
pub type Pending<'a> = Pin<Box<dyn Future<Output = Result<u64, EndError>> + Send + 'a>>;

/// Ends what a module holds for the user `user_id` (in the accounts database and the session
/// store), so that nothing of it works again, reactivation included. How many things it ended.
pub type Follower = for<'a> fn(&'a Db, &'a Sessions<'a>, &'a str, Reason) -> Pending<'a>;

static FOLLOWERS: RwLock<Vec<(&'static str, Follower)>> = RwLock::new(Vec::new());

/// Registers `f` under `name`; a second registration of the same name is ignored.
pub fn follow(name: &'static str, f: Follower) {
    let mut all = FOLLOWERS.write().unwrap_or_else(|e| e.into_inner());
    if !all.iter().any(|(n, _)| *n == name) {
        all.push((name, f));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EndError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Sessions(#[from] SessionsError),
}

/// What [`end_credentials`] ended.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ended {
    pub sessions: u64,
    /// What the followers ended (the registry: OAuth grants).
    pub grants: u64,
}

/// Ends the user's credentials: first what the followers hold (so that no refresh token mints
/// a new access token after the sessions are gone), then every session but `keep`'s (the
/// caller's own, after a password change), tokens of every kind included.
pub async fn end_credentials(
    db: &Db,
    sessions: &Sessions<'_>,
    user_id: &str,
    keep: Option<&str>,
    reason: Reason,
) -> Result<Ended, EndError> {
    let followers: Vec<Follower> = FOLLOWERS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(_, f)| *f)
        .collect();
    let mut ended = Ended::default();
    for f in followers {
        ended.grants += f(db, sessions, user_id, reason).await?;
    }
    ended.sessions = sessions.revoke_user(user_id, keep).await?;
    Ok(ended)
}

/// A module's part of a user's export: a section name and what it keeps, as JSON.
pub type Exporter = for<'a> fn(
    &'a Db,
    &'a str,
) -> Pin<
    Box<dyn Future<Output = Result<serde_json::Value, DbError>> + Send + 'a>,
>;

/// Deletes what a module keeps about a user, on the deletion's connection (its transaction).
pub type Forgetter =
    for<'a> fn(
        &'a mut sqlx::AnyConnection,
        &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), sqlx::Error>> + Send + 'a>>;

type Keeper = (&'static str, Exporter, Forgetter);
static KEEPERS: RwLock<Vec<Keeper>> = RwLock::new(Vec::new());

/// Registers what the module `name` keeps about users (once per name): `name` is its section
/// of the export.
pub fn keeps(name: &'static str, export: Exporter, forget: Forgetter) {
    let mut all = KEEPERS.write().unwrap_or_else(|e| e.into_inner());
    if !all.iter().any(|(n, _, _)| *n == name) {
        all.push((name, export, forget));
    }
}

fn keepers() -> Vec<Keeper> {
    KEEPERS.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Every module's part of `user_id`'s export, by section.
pub async fn export(
    db: &Db,
    user_id: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, DbError> {
    let mut all = serde_json::Map::new();
    for (name, export, _) in keepers() {
        all.insert(name.to_owned(), export(db, user_id).await?);
    }
    Ok(all)
}

/// Deletes every module's rows about `user_id` on `conn`.
pub async fn forget(conn: &mut sqlx::AnyConnection, user_id: &str) -> Result<(), sqlx::Error> {
    for (_, _, forget) in keepers() {
        forget(conn, user_id).await?;
    }
    Ok(())
}
