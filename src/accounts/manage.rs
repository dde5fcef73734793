//! What an operator does to a user, the same from the command line and the admin console:
//! activate, deactivate (the last active admin stays), reset the second factors. Each ends
//! what it must end through [`super::followers::end_credentials`].

use super::db::{Db, User};
use super::followers::{end_credentials, Ended, Reason};
use super::roles::{keep_an_admin, RoleError};
use crate::sessions::Sessions;

/// Lets the user sign in again.
pub async fn activate(db: &Db, user: &User) -> Result<(), RoleError> {
    db.set_active(&user.id, true).await?;
    Ok(())
}

/// Stops the user signing in and ends their sessions, grants and owned clients' tokens.
pub async fn deactivate(db: &Db, sessions: &Sessions<'_>, user: &User) -> Result<Ended, RoleError> {
    keep_an_admin(db, user, true, false).await?;
    db.set_active(&user.id, false).await?;
    Ok(end_credentials(db, sessions, &user.id, None, Reason::Deactivated).await?)
}

/// What [`reset_second_factors`] removed.
pub struct FactorsReset {
    pub authenticator_app: bool,
    pub passkeys: u64,
    pub ended: Ended,
}

/// A lost device: the user's authenticator app, passkeys and recovery codes go, and every
/// session and grant ends (the device may be in other hands).
pub async fn reset_second_factors(
    db: &Db,
    sessions: &Sessions<'_>,
    user: &User,
) -> Result<FactorsReset, RoleError> {
    let authenticator_app = db.remove_totp(&user.id).await?;
    let passkeys = db.remove_passkeys(&user.id, None).await?;
    db.replace_recovery_codes(&user.id, &[]).await?;
    let ended = end_credentials(db, sessions, &user.id, None, Reason::SecondFactorsReset).await?;
    Ok(FactorsReset {
        authenticator_app,
        passkeys,
        ended,
    })
}
