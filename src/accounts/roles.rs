//! Roles in the database: each with a description and the scopes it grants, changed at run
//! time by the CLI (`gatehouse role …`) and the admin console, one home for every rule.
//!
//! - `--roles FILE` seeds and updates its roles at every start ([`seed`]); the roles it names
//!   are read-only elsewhere. Roles it named before and no longer does are deleted.
//! - `user` and `admin` always exist and are never deleted; the last active admin keeps the
//!   role and stays active ([`keep_an_admin`]).
//! - A change that alters what a role grants ends the sessions of the users holding it: the
//!   next sign-in carries the new scopes. Sessions read the table at sign-in.

use std::collections::BTreeSet;

use sqlx::Row;

use super::config::{valid_role_name, valid_scope, RoleSpec, Roles};
use super::db::{Db, DbError, User};
use crate::session::unix_now;
use crate::sessions::{Sessions, SessionsError};

/// The roles that always exist.
pub const BUILTIN: [&str; 2] = ["user", "admin"];

/// A role as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Role {
    pub name: String,
    pub description: String,
    pub scopes: Vec<String>,
    /// Named by `--roles`: read-only here.
    pub from_file: bool,
    pub builtin: bool,
    /// Users holding it (every user holds `user`).
    pub users: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    /// A rule said no: why, in words for the operator.
    #[error("{0}")]
    Refused(String),
    #[error("no role {0:?}")]
    Unknown(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Sessions(#[from] SessionsError),
}

impl From<super::followers::EndError> for RoleError {
    fn from(e: super::followers::EndError) -> Self {
        match e {
            super::followers::EndError::Db(d) => RoleError::Db(d),
            super::followers::EndError::Sessions(s) => RoleError::Sessions(s),
        }
    }
}

impl From<sqlx::Error> for RoleError {
    fn from(e: sqlx::Error) -> Self {
        RoleError::Db(e.into())
    }
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

/// `scopes` sorted, each once, or why not.
fn clean_scopes(scopes: &[String]) -> Result<Vec<String>, RoleError> {
    if let Some(bad) = scopes.iter().find(|s| !valid_scope(s)) {
        return Err(RoleError::Refused(format!(
            "scope {bad:?}: a scope is a word without spaces"
        )));
    }
    let set: BTreeSet<&String> = scopes.iter().collect();
    Ok(set.into_iter().cloned().collect())
}

/// Every role, by name, with how many users hold it.
pub async fn list(db: &Db) -> Result<Vec<Role>, DbError> {
    let rows = sqlx::query("SELECT name, description, scopes, from_file FROM roles ORDER BY name")
        .fetch_all(db.pool())
        .await?;
    let (all, held) = db.role_counts().await?;
    rows.iter()
        .map(|r| {
            let name: String = r.try_get("name")?;
            Ok(Role {
                users: if name == "user" {
                    all
                } else {
                    held.get(&name).copied().unwrap_or(0)
                },
                builtin: BUILTIN.contains(&name.as_str()),
                description: r.try_get("description")?,
                scopes: words(&r.try_get::<String, _>("scopes")?),
                from_file: r.try_get::<i64, _>("from_file")? != 0,
                name,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(DbError::from)
}

/// One role.
pub async fn get(db: &Db, name: &str) -> Result<Role, RoleError> {
    list(db)
        .await?
        .into_iter()
        .find(|r| r.name == name)
        .ok_or_else(|| RoleError::Unknown(name.to_owned()))
}

/// The table as it is now: what a sign-in grants.
pub async fn table(db: &Db) -> Result<Roles, DbError> {
    let rows = sqlx::query("SELECT name, description, scopes FROM roles")
        .fetch_all(db.pool())
        .await?;
    let mut roles = Roles::default();
    for r in rows {
        roles.insert(
            r.try_get("name")?,
            words(&r.try_get::<String, _>("scopes")?),
            r.try_get("description")?,
        );
    }
    Ok(roles)
}

/// Ends the sessions of every user holding one of `roles` (`user`: everyone); how many.
async fn end_sessions_of(
    db: &Db,
    sessions: &Sessions<'_>,
    roles: &BTreeSet<String>,
) -> Result<(u64, u64), RoleError> {
    let ids: BTreeSet<String> = if roles.contains("user") {
        db.list().await?.into_iter().map(|u| u.id).collect()
    } else {
        let mut ids = BTreeSet::new();
        for role in roles {
            ids.extend(db.holding(role).await?.into_iter().map(|u| u.id));
        }
        ids
    };
    let mut ended = 0;
    for id in &ids {
        ended += sessions.revoke_user(id, None).await?;
    }
    Ok((ids.len() as u64, ended))
}

fn writable(role: &Role) -> Result<(), RoleError> {
    if role.from_file {
        return Err(RoleError::Refused(format!(
            "role {:?} comes from --roles: change it in that file",
            role.name
        )));
    }
    Ok(())
}

/// Creates a role.
pub async fn create(
    db: &Db,
    name: &str,
    description: &str,
    scopes: &[String],
) -> Result<(), RoleError> {
    if !valid_role_name(name) {
        return Err(RoleError::Refused(format!(
            "role {name:?}: a name is letters, digits and -_:. (at most 64)"
        )));
    }
    let scopes = clean_scopes(scopes)?;
    let now = unix_now() as i64;
    let done = sqlx::query(
        "INSERT INTO roles (name, description, scopes, from_file, created_at, updated_at)
         SELECT $1, $2, $3, 0, $4, $5 WHERE NOT EXISTS (SELECT 1 FROM roles WHERE name = $6)",
    )
    .bind(name)
    .bind(description.trim())
    .bind(scopes.join(" "))
    .bind(now)
    .bind(now)
    .bind(name)
    .execute(db.pool())
    .await?;
    if done.rows_affected() == 0 {
        return Err(RoleError::Refused(format!("role {name:?} exists")));
    }
    Ok(())
}

/// Changes a role's description and scopes (`None`: as they are); a change of scopes ends
/// its holders' sessions. How many sessions ended.
pub async fn update(
    db: &Db,
    sessions: &Sessions<'_>,
    name: &str,
    description: Option<&str>,
    scopes: Option<&[String]>,
) -> Result<u64, RoleError> {
    let role = get(db, name).await?;
    writable(&role)?;
    let scopes = match scopes {
        Some(s) => clean_scopes(s)?,
        None => role.scopes.clone(),
    };
    sqlx::query("UPDATE roles SET description = $1, scopes = $2, updated_at = $3 WHERE name = $4")
        .bind(description.map_or(role.description.as_str(), str::trim))
        .bind(scopes.join(" "))
        .bind(unix_now() as i64)
        .bind(name)
        .execute(db.pool())
        .await?;
    if scopes == role.scopes {
        return Ok(0);
    }
    let (_, ended) = end_sessions_of(db, sessions, &BTreeSet::from([name.to_owned()])).await?;
    Ok(ended)
}

/// Deletes a role: its holders lose it and their sessions end. How many users held it.
pub async fn delete(db: &Db, sessions: &Sessions<'_>, name: &str) -> Result<u64, RoleError> {
    let role = get(db, name).await?;
    if role.builtin {
        return Err(RoleError::Refused(format!(
            "role {name:?} cannot be deleted"
        )));
    }
    writable(&role)?;
    let users = db.holding(name).await?;
    for u in &users {
        let rest: Vec<String> = u.roles.iter().filter(|r| *r != name).cloned().collect();
        db.set_roles(&u.id, &rest).await?;
        sessions.revoke_user(&u.id, None).await?;
    }
    sqlx::query("DELETE FROM roles WHERE name = $1")
        .bind(name)
        .execute(db.pool())
        .await?;
    Ok(users.len() as u64)
}

/// Refuses what would leave no active admin: `user` losing the role (`keeps_role` false) or
/// being deactivated or deleted (`stays_active` false) while no other active user holds it.
pub async fn keep_an_admin(
    db: &Db,
    user: &User,
    keeps_role: bool,
    stays_active: bool,
) -> Result<(), RoleError> {
    let is_admin = user.active && user.roles.iter().any(|r| r == "admin");
    if !is_admin || (keeps_role && stays_active) {
        return Ok(());
    }
    let others = db
        .holding("admin")
        .await?
        .into_iter()
        .any(|u| u.active && u.id != user.id);
    if others {
        Ok(())
    } else {
        Err(RoleError::Refused(format!(
            "{} is the last active admin: make another admin first",
            user.username
        )))
    }
}

/// Gives `user` exactly `roles` beyond `user` (each must exist), keeping an admin; their
/// sessions end so the next sign-in carries the new scopes. How many ended.
pub async fn set_user_roles(
    db: &Db,
    sessions: &Sessions<'_>,
    user: &User,
    roles: &[String],
) -> Result<u64, RoleError> {
    let table = table(db).await?;
    let mut wanted: Vec<String> = Vec::new();
    for r in roles.iter().filter(|r| *r != "user") {
        if !table.exists(r) {
            return Err(RoleError::Unknown(r.clone()));
        }
        if !wanted.contains(r) {
            wanted.push(r.clone());
        }
    }
    keep_an_admin(db, user, wanted.iter().any(|r| r == "admin"), true).await?;
    db.set_roles(&user.id, &wanted).await?;
    Ok(sessions.revoke_user(&user.id, None).await?)
}

/// What `--roles` changes at start: the file's roles as they will be stored, the roles that
/// go, and every role whose grant changes (whose holders' sessions end first).
pub struct Seed {
    file: Option<Roles>,
    gone: Vec<String>,
    pub changed: BTreeSet<String>,
}

/// Compares `file` (`None`: no `--roles`, nothing is read-only) with the table.
pub async fn plan(db: &Db, file: Option<&Roles>) -> Result<Seed, DbError> {
    let now = list(db).await?;
    let mut changed = BTreeSet::new();
    let mut gone = Vec::new();
    if let Some(file) = file {
        for (name, spec) in file.iter() {
            let before = now.iter().find(|r| &r.name == name);
            if before.is_none_or(|r| r.scopes != spec.scopes) {
                changed.insert(name.clone());
            }
        }
        for r in now.iter().filter(|r| r.from_file && !file.exists(&r.name)) {
            if !r.builtin {
                gone.push(r.name.clone());
                changed.insert(r.name.clone());
            }
        }
    }
    Ok(Seed {
        file: file.cloned(),
        gone,
        changed,
    })
}

/// Ends the sessions of the users `seed` changes, then stores it: the file's roles read-only
/// and as written, the roles it dropped deleted (builtin ones kept, writable again); without a
/// file every role is writable. How many users' sessions ended.
pub async fn seed(db: &Db, sessions: &Sessions<'_>, seed: &Seed) -> Result<u64, RoleError> {
    let (users, _) = end_sessions_of(db, sessions, &seed.changed).await?;
    let now = unix_now() as i64;
    let mut tx = db.pool().begin().await?;
    sqlx::query("UPDATE roles SET from_file = 0")
        .execute(&mut *tx)
        .await?;
    for name in &seed.gone {
        sqlx::query("DELETE FROM roles WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
    }
    for (
        name,
        RoleSpec {
            scopes,
            description,
        },
    ) in seed.file.iter().flat_map(Roles::iter)
    {
        sqlx::query("DELETE FROM roles WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO roles (name, description, scopes, from_file, created_at, updated_at)
             VALUES ($1, $2, $3, 1, $4, $5)",
        )
        .bind(name)
        .bind(description)
        .bind(scopes.join(" "))
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    // Users holding a role that went lose it.
    for name in &seed.gone {
        for u in db.holding(name).await? {
            let rest: Vec<String> = u.roles.iter().filter(|r| *r != name).cloned().collect();
            db.set_roles(&u.id, &rest).await?;
        }
    }
    Ok(users)
}
