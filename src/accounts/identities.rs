//! Identities at other providers, linked to users: the rules every door (pages, JSON API, CLI)
//! shares. Linking an identity that belongs to another user is refused (Invenio's
//! `AlreadyLinkedError`); the last way a user has to sign in cannot be removed.

use super::db::{Db, DbError, User};
use super::pages::IdentityRow;
use super::Accounts;

/// What a link came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Linked {
    Done,
    /// The user had it already.
    Already,
    /// Another user holds it.
    OtherUser,
}

/// What an unlink came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Unlinked {
    Done,
    NotLinked,
    /// No password, no passkey and no other identity would be left.
    LastWay,
}

/// A provider `id`: what `--identity-providers` allows in a URL path.
pub fn valid_provider_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub async fn link(db: &Db, user: &User, provider: &str, subject: &str) -> Result<Linked, DbError> {
    if db.link_identity(provider, subject, &user.id).await? {
        return Ok(Linked::Done);
    }
    Ok(match db.identity(provider, subject).await? {
        Some(i) if i.user_id == user.id => Linked::Already,
        _ => Linked::OtherUser,
    })
}

pub async fn unlink(db: &Db, user: &User, provider: &str) -> Result<Unlinked, DbError> {
    let mine = db.identities(&user.id).await?;
    if !mine.iter().any(|i| i.provider == provider) {
        return Ok(Unlinked::NotLinked);
    }
    let others = mine.iter().filter(|i| i.provider != provider).count();
    let passkeys = db.passkeys(&user.id).await?.len();
    if user.password_hash.is_none() && passkeys == 0 && others == 0 {
        return Ok(Unlinked::LastWay);
    }
    db.unlink_identity(&user.id, provider).await?;
    Ok(Unlinked::Done)
}

/// The identities section of `/account/security` and `/api/security`: every provider, and
/// the user's identity at it.
pub async fn rows(app: &Accounts, user: &User) -> Result<Vec<IdentityRow>, DbError> {
    if app.providers.is_empty() {
        return Ok(Vec::new());
    }
    let mine = app.db.identities(&user.id).await?;
    Ok(app
        .providers
        .iter()
        .map(|p| {
            let i = mine.iter().find(|i| i.provider == p.id);
            IdentityRow {
                id: p.id.clone(),
                name: p.name.clone(),
                linked: i.is_some(),
                linked_at: i.map_or(0, |i| i.created_at),
                since: i
                    .map(|i| super::pages::date(i.created_at))
                    .unwrap_or_default(),
                last_used: i
                    .and_then(|i| i.last_used_at)
                    .map_or("never".into(), super::pages::date),
            }
        })
        .collect())
}
