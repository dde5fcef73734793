//! `gatehouse user …`: the administrators' side of accounts, on the same database and
//! session store as the server, while it runs. Passwords come from stdin or a prompt, never
//! from argv.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use super::db::{Db, NewUser, Purpose, User};
use super::followers::{end_credentials, EndError, Ended, Reason};
use super::{DatabaseArgs, Roles};
use crate::error::ConfigError;
use crate::sessions::Sessions;
use crate::store::StoreArgs;
use crate::Failure;

/// The flags of every `user` subcommand: the same store and database as `serve`.
#[derive(Debug, Clone, Args)]
pub struct Common {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Print JSON (one object, or one per line for `list`).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum UserCommand {
    /// Create an active user with a confirmed email; the password is read from stdin.
    Create {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        username: String,
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "")]
        name: String,
        /// A role beyond `user` (repeatable).
        #[arg(long = "role", id = "role")]
        role: Vec<String>,
        /// Shortest password accepted, in characters.
        #[arg(long, default_value_t = 12)]
        password_min_length: usize,
    },
    /// Every user.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// One user, by username or email.
    Show {
        #[command(flatten)]
        common: Common,
        user: String,
    },
    /// Let the user sign in again.
    Activate {
        #[command(flatten)]
        common: Common,
        user: String,
    },
    /// End all the user's sessions now, as "sign out everywhere" does: the applications they
    /// signed in to are told (back-channel logout). They may sign in again.
    SignOut {
        #[command(flatten)]
        common: Common,
        user: String,
    },
    /// Stop the user signing in, and end all their sessions now.
    Deactivate {
        #[command(flatten)]
        common: Common,
        user: String,
    },
    /// Delete the user and everything stored about them: sessions, tokens and grants end,
    /// their rows go (the audit trail keeps a pseudonym), `user.deleted` is sent, and the id
    /// is never given again. No mail (the pages' and the admin console's deletion send one).
    Delete {
        #[command(flatten)]
        common: Common,
        user: String,
    },
    /// Remove the user's second factors (a lost device) and end all their sessions: the
    /// password alone signs in again, and the user sets up a new factor.
    ResetSecondFactors {
        #[command(flatten)]
        common: Common,
        user: String,
    },
    /// Set the password (read from stdin) and end all the user's sessions.
    SetPassword {
        #[command(flatten)]
        common: Common,
        user: String,
        #[arg(long, default_value_t = 12)]
        password_min_length: usize,
    },
    /// Print an invitation link to register with this address (--registration invite).
    Invite {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        email: String,
        /// The public URL of the pages, as `serve --public-url`.
        #[arg(
            long,
            env = "GATEHOUSE_PUBLIC_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        public_url: String,
    },
    /// Add or remove a role; the user's sessions end, so the next login carries the change.
    #[command(subcommand)]
    Role(RoleCommand),
    /// Take in users from another system: JSON Lines (`-` for stdin), one user per line,
    /// with their password hashes as that system made them. All or nothing: every bad line
    /// is reported with its number, and nothing is written while one is bad.
    Import {
        #[command(flatten)]
        common: Common,
        file: PathBuf,
        /// Check every line and say what would be done; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Change users whose username exists (their sessions end); otherwise they are
        /// reported and skipped.
        #[arg(long)]
        update: bool,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Every user as JSON Lines on stdout, password hashes included, in the form `import`
    /// takes: for backups, and for leaving.
    Export {
        #[command(flatten)]
        common: Common,
        /// Authenticator-app (TOTP) secrets too, in clear.
        #[arg(long)]
        include_secrets: bool,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// A user's identities at other providers (--identity-providers).
    #[command(subcommand)]
    Identity(IdentityCommand),
}

/// The server secret (TOTP secrets are sealed with it): the same file as `serve`'s.
#[derive(Debug, Clone, Args)]
pub struct SecretArgs {
    /// Default `<data-dir>/server.secret`.
    #[arg(long, env = "GATEHOUSE_SERVER_SECRET_FILE")]
    pub server_secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum IdentityCommand {
    /// The user's linked providers.
    List {
        #[command(flatten)]
        common: Common,
        user: String,
    },
    /// Unlink the user's identity at PROVIDER (refused when it is their last way to sign in).
    Remove {
        #[command(flatten)]
        common: Common,
        user: String,
        provider: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum RoleCommand {
    Add {
        #[command(flatten)]
        common: Common,
        user: String,
        role: String,
    },
    Remove {
        #[command(flatten)]
        common: Common,
        user: String,
        role: String,
    },
}

impl UserCommand {
    fn common(&self) -> &Common {
        match self {
            UserCommand::Create { common, .. }
            | UserCommand::List { common }
            | UserCommand::Show { common, .. }
            | UserCommand::Activate { common, .. }
            | UserCommand::SignOut { common, .. }
            | UserCommand::Deactivate { common, .. }
            | UserCommand::Delete { common, .. }
            | UserCommand::ResetSecondFactors { common, .. }
            | UserCommand::SetPassword { common, .. }
            | UserCommand::Invite { common, .. }
            | UserCommand::Import { common, .. }
            | UserCommand::Export { common, .. }
            | UserCommand::Identity(
                IdentityCommand::List { common, .. } | IdentityCommand::Remove { common, .. },
            )
            | UserCommand::Role(
                RoleCommand::Add { common, .. } | RoleCommand::Remove { common, .. },
            ) => common,
        }
    }
}

pub(crate) fn other(e: impl std::fmt::Display) -> Failure {
    Failure::Other(anyhow::anyhow!("{e}"))
}

pub(crate) async fn find(db: &Db, login: &str) -> Result<User, Failure> {
    db.find(login)
        .await
        .map_err(other)?
        .ok_or_else(|| ConfigError::new("USER", format!("no user {login:?}")).into())
}

fn record(u: &User, roles: &Roles) -> serde_json::Value {
    let (roles, scopes) = roles.of(&u.roles);
    json!({
        "password_scheme": super::import::password_scheme(u),
        "id": u.id, "username": u.username, "email": u.email, "name": u.name,
        "affiliation": u.affiliation, "country": u.country, "active": u.active,
        "email_confirmed_at": u.email_confirmed_at, "roles": roles, "scopes": scopes,
        "created_at": u.created_at, "updated_at": u.updated_at, "login_at": u.login_at,
        "login_ip": u.login_ip, "previous_login_at": u.previous_login_at,
        "previous_login_ip": u.previous_login_ip, "login_count": u.login_count,
    })
}

pub(crate) fn print(
    json_out: bool,
    value: &serde_json::Value,
    text: String,
) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    if json_out {
        writeln!(out, "{value}")
    } else {
        writeln!(out, "{text}")
    }
    .map_err(other)
}

/// Ends every session of `sub` (a user, or a client's tokens) from the command line.
pub(crate) async fn end_sessions(store: &StoreArgs, sub: &str) -> Result<u64, Failure> {
    let store = crate::store::Store::open_for_command(store).await?;
    Sessions::new(&store, None)
        .revoke_user(sub, None)
        .await
        .map_err(sessions_failure)
}

fn sessions_failure(e: crate::sessions::SessionsError) -> Failure {
    match e {
        crate::sessions::SessionsError::Store(s) => Failure::Store(s),
        other => Failure::Other(other.into()),
    }
}

/// Ends a user's credentials from the command line, as a reset does on the pages: what the
/// modules hold (OAuth grants), then every session and token.
async fn end_user(
    store: &StoreArgs,
    db: &Db,
    user_id: &str,
    reason: Reason,
) -> Result<Ended, Failure> {
    let store = crate::store::Store::open_for_command(store).await?;
    end_credentials(db, &Sessions::new(&store, None), user_id, None, reason)
        .await
        .map_err(end_failure)
}

/// A role rule's refusal names what was refused (exit 64); the store's and database's
/// failures are theirs.
pub(crate) fn role_failure(e: super::roles::RoleError) -> Failure {
    use super::roles::RoleError;
    match e {
        RoleError::Refused(why) => ConfigError::new("ROLE", why).into(),
        RoleError::Unknown(name) => ConfigError::new("ROLE", format!("no role {name:?}")).into(),
        RoleError::Db(d) => other(d),
        RoleError::Sessions(s) => sessions_failure(s),
    }
}

fn end_failure(e: EndError) -> Failure {
    match e {
        EndError::Sessions(s) => sessions_failure(s),
        EndError::Db(d) => other(d),
    }
}

/// `--roles` given to the command line seeds its roles as `serve` does (a first user can hold
/// a file's role before any server ran), ending the sessions of changed roles' holders.
async fn seed_roles(common: &Common, db: &Db) -> Result<(), Failure> {
    let Some(file) = Roles::load(common.database.roles.as_deref())? else {
        return Ok(());
    };
    let plan = super::roles::plan(db, Some(&file)).await.map_err(other)?;
    if plan.changed.is_empty() {
        return Ok(());
    }
    let store = crate::store::Store::open_for_command(&common.store).await?;
    super::roles::seed(db, &Sessions::new(&store, None), &plan)
        .await
        .map_err(role_failure)?;
    Ok(())
}

async fn new_password(user: &str, email: &str, min: usize) -> Result<String, Failure> {
    let password =
        crate::secret::read_secret("PASSWORD", "password:", "give the password on stdin")?;
    let passwords = super::password::Passwords::new(
        super::password::OWASP_M_KIB,
        super::password::OWASP_T,
        super::password::OWASP_P,
        min,
    );
    if let Some(why) = passwords.refuse(password.expose(), &[user, email]) {
        return Err(ConfigError::new("PASSWORD", why).into());
    }
    passwords.hash(&password).await.map_err(other)
}

pub async fn user(command: UserCommand) -> Result<(), Failure> {
    let common = command.common();
    let db = common.database.open(&common.store.data_dir).await?;
    seed_roles(common, &db).await?;
    let roles = super::roles::table(&db).await.map_err(other)?;
    let json_out = common.json;
    let store = common.store.clone();
    match command {
        UserCommand::Create {
            username,
            email,
            name,
            role: extra,
            password_min_length,
            ..
        } => {
            if let Some(p) = super::ops::username_problem(&username) {
                return Err(ConfigError::new("--username", p).into());
            }
            if let Some(p) = super::ops::email_problem(&email) {
                return Err(ConfigError::new("--email", p).into());
            }
            if let Some(r) = extra.iter().find(|r| !roles.exists(r)) {
                return Err(
                    ConfigError::new("--role", format!("no role {r:?} in the role file")).into(),
                );
            }
            let hash = new_password(&username, &email, password_min_length).await?;
            let user = db
                .create_user(&NewUser {
                    username: &username,
                    email: &email,
                    name: &name,
                    password_hash: Some(&hash),
                    active: true,
                    confirmed: true,
                    roles: &extra,
                })
                .await
                .map_err(|e| match e {
                    super::db::DbError::Taken(what) => ConfigError::new(
                        if what == "email" {
                            "--email"
                        } else {
                            "--username"
                        },
                        "already taken",
                    )
                    .into(),
                    e => other(e),
                })?;
            tracing::info!(target: "gatehouse::audit", event = "user_created", user = %user.id, "audit");
            print(json_out, &record(&user, &roles), user.id.clone())
        }
        UserCommand::List { .. } => {
            let users = db.list().await.map_err(other)?;
            let mut out = std::io::stdout().lock();
            for u in &users {
                if json_out {
                    writeln!(out, "{}", record(u, &roles))
                } else {
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\t{}",
                        u.id,
                        u.username,
                        u.email,
                        if u.active { "active" } else { "inactive" },
                        roles.of(&u.roles).0.join(",")
                    )
                }
                .map_err(other)?;
            }
            Ok(())
        }
        UserCommand::Show { user, .. } => {
            let u = find(&db, &user).await?;
            let r = record(&u, &roles);
            print(
                json_out,
                &r,
                serde_json::to_string_pretty(&r).map_err(other)?,
            )
        }
        UserCommand::Activate { user, .. } => {
            let u = find(&db, &user).await?;
            super::manage::activate(&db, &u)
                .await
                .map_err(role_failure)?;
            tracing::info!(target: "gatehouse::audit", event = "user_activated", user = %u.id, "audit");
            eprintln!("{} is active", u.username);
            Ok(())
        }
        UserCommand::SignOut { user, .. } => {
            let u = find(&db, &user).await?;
            let n = end_sessions(&store, &u.id).await?;
            tracing::info!(target: "gatehouse::audit", event = "user_signed_out", user = %u.id, sessions_ended = n, "audit");
            eprintln!("{} is signed out; {n} session(s) ended", u.username);
            Ok(())
        }
        UserCommand::Deactivate { user, .. } => {
            let u = find(&db, &user).await?;
            let store = crate::store::Store::open_for_command(&store).await?;
            let n = super::manage::deactivate(&db, &Sessions::new(&store, None), &u)
                .await
                .map_err(role_failure)?;
            tracing::info!(target: "gatehouse::audit", event = "user_deactivated", user = %u.id, sessions_ended = n.sessions, grants_ended = n.grants, "audit");
            eprintln!(
                "{} is deactivated; {} session(s) and {} grant(s) ended",
                u.username, n.sessions, n.grants
            );
            Ok(())
        }
        UserCommand::Delete { user, .. } => {
            let u = find(&db, &user).await?;
            let store = crate::store::Store::open_for_command(&store).await?;
            let name = super::userdata::pseudonym();
            let n = super::userdata::delete(&db, &Sessions::new(&store, None), &u, &name)
                .await
                .map_err(role_failure)?;
            tracing::info!(target: "gatehouse::audit", event = "user_deleted", user = %name, sessions_ended = n.sessions, grants_ended = n.grants, "audit");
            eprintln!(
                "{} is deleted (audit trail: {name}); {} session(s) and {} grant(s) ended",
                u.username, n.sessions, n.grants
            );
            Ok(())
        }
        UserCommand::ResetSecondFactors { user, .. } => {
            let u = find(&db, &user).await?;
            let store = crate::store::Store::open_for_command(&store).await?;
            let reset = super::manage::reset_second_factors(&db, &Sessions::new(&store, None), &u)
                .await
                .map_err(role_failure)?;
            let (totp, passkeys, n) = (reset.authenticator_app, reset.passkeys, reset.ended);
            tracing::info!(target: "gatehouse::audit", event = "second_factors_reset", user = %u.id, authenticator_app = totp, passkeys, sessions_ended = n.sessions, grants_ended = n.grants, "audit");
            eprintln!(
                "{}: second factors removed; {} session(s) and {} grant(s) ended",
                u.username, n.sessions, n.grants
            );
            Ok(())
        }
        UserCommand::SetPassword {
            user,
            password_min_length,
            ..
        } => {
            let u = find(&db, &user).await?;
            let hash = new_password(&u.username, &u.email, password_min_length).await?;
            db.set_password(&u.id, &hash).await.map_err(other)?;
            let n = end_user(&store, &db, &u.id, Reason::NewPassword).await?;
            tracing::info!(target: "gatehouse::audit", event = "password_set", user = %u.id, sessions_ended = n.sessions, grants_ended = n.grants, "audit");
            eprintln!(
                "password set for {}; {} session(s) and {} grant(s) ended",
                u.username, n.sessions, n.grants
            );
            Ok(())
        }
        UserCommand::Invite {
            email, public_url, ..
        } => {
            if let Some(p) = super::ops::email_problem(&email) {
                return Err(ConfigError::new("--email", p).into());
            }
            let token = db
                .issue_token(
                    &format!("invite:{}", super::db::key(&email)),
                    Purpose::Invite,
                    &email,
                    super::INVITE_TTL,
                )
                .await
                .map_err(other)?;
            let link = format!(
                "{}/register?invite={}",
                public_url.trim_end_matches('/'),
                token.expose()
            );
            print(
                json_out,
                &json!({ "email": email, "link": link }),
                link.clone(),
            )
        }
        UserCommand::Import {
            file,
            dry_run,
            update,
            secret,
            ..
        } => import(&db, &roles, &store, &file, dry_run, update, &secret).await,
        UserCommand::Export {
            include_secrets,
            secret,
            ..
        } => {
            let secret = match include_secrets {
                true => Some(server_secret(&store, &secret, false)?),
                false => None,
            };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let n = super::import::export(&db, &mut out, secret.as_ref())
                .await
                .map_err(other)?;
            out.flush().map_err(other)?;
            tracing::info!(target: "gatehouse::audit", event = "users_exported", users = n, totp_secrets = include_secrets, "audit");
            eprintln!("{n} user(s) exported");
            Ok(())
        }
        UserCommand::Identity(IdentityCommand::List { user, .. }) => {
            let u = find(&db, &user).await?;
            let mut out = std::io::stdout().lock();
            for i in db.identities(&u.id).await.map_err(other)? {
                let r = json!({
                    "provider": i.provider, "subject": i.subject,
                    "created_at": i.created_at, "last_used_at": i.last_used_at,
                });
                if json_out {
                    writeln!(out, "{r}")
                } else {
                    writeln!(out, "{}\t{}", i.provider, i.subject)
                }
                .map_err(other)?;
            }
            Ok(())
        }
        UserCommand::Identity(IdentityCommand::Remove { user, provider, .. }) => {
            let u = find(&db, &user).await?;
            match super::identities::unlink(&db, &u, &provider)
                .await
                .map_err(other)?
            {
                super::identities::Unlinked::Done => {
                    tracing::info!(target: "gatehouse::audit", event = "identity_unlinked", user = %u.id, provider = provider.as_str(), by = "cli", "audit");
                    eprintln!("{}: {provider} unlinked", u.username);
                    Ok(())
                }
                super::identities::Unlinked::NotLinked => Err(ConfigError::new(
                    "PROVIDER",
                    format!("{} has no identity at {provider:?}", u.username),
                )
                .into()),
                super::identities::Unlinked::LastWay => Err(ConfigError::new(
                    "PROVIDER",
                    format!(
                        "{provider} is {}'s last way to sign in: set a password first",
                        u.username
                    ),
                )
                .into()),
            }
        }
        UserCommand::Role(cmd) => {
            let (login, role, add) = match cmd {
                RoleCommand::Add { user, role, .. } => (user, role, true),
                RoleCommand::Remove { user, role, .. } => (user, role, false),
            };
            if role == "user" {
                return Err(ConfigError::new("ROLE", "every user has the role user").into());
            }
            let u = find(&db, &login).await?;
            let mut now: Vec<String> = u.roles.iter().filter(|r| **r != role).cloned().collect();
            if add {
                now.push(role.clone());
            }
            let store = crate::store::Store::open_for_command(&store).await?;
            let n = super::roles::set_user_roles(&db, &Sessions::new(&store, None), &u, &now)
                .await
                .map_err(role_failure)?;
            tracing::info!(target: "gatehouse::audit", event = if add { "user_role_added" } else { "user_role_removed" }, user = %u.id, role = role.as_str(), sessions_ended = n, "audit");
            eprintln!(
                "{}: roles {}; {n} session(s) ended",
                u.username,
                roles.of(&now).0.join(",")
            );
            Ok(())
        }
    }
}

/// The server secret for TOTP secrets: `serve`'s file, made if `create` and absent.
fn server_secret(
    store: &StoreArgs,
    args: &SecretArgs,
    create: bool,
) -> Result<crate::secret::ServerSecret, Failure> {
    let path = args
        .server_secret_file
        .clone()
        .unwrap_or_else(|| store.data_dir.join("server.secret"));
    if !create && !path.exists() {
        return Err(ConfigError::new(
            "--server-secret-file",
            format!("{} does not exist", path.display()),
        )
        .into());
    }
    Ok(crate::secret::ServerSecret::load_or_create(&path)?)
}

async fn import(
    db: &Db,
    roles: &Roles,
    store: &StoreArgs,
    file: &std::path::Path,
    dry_run: bool,
    update: bool,
    secret: &SecretArgs,
) -> Result<(), Failure> {
    let input: Box<dyn std::io::BufRead> = if file == std::path::Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(file)
            .map_err(|e| ConfigError::new("FILE", format!("{}: {e}", file.display())))?;
        Box::new(std::io::BufReader::new(f))
    };
    let started = std::time::Instant::now();
    let sealer = || server_secret(store, secret, true).map_err(|e| e.to_string());
    let report = super::import::import(db, roles, input, update, dry_run, &sealer)
        .await
        .map_err(other)?;
    let report = match report {
        Ok(r) => r,
        Err(problems) => {
            let mut err = std::io::stderr().lock();
            for (line, why) in &problems {
                let _ = writeln!(err, "line {line}: {why}");
            }
            return Err(ConfigError::new(
                "FILE",
                format!("{} bad line(s); nothing was imported", problems.len()),
            )
            .into());
        }
    };
    for name in &report.skipped {
        eprintln!("skipped {name}: the username exists (--update changes it)");
    }
    if !dry_run {
        for id in &report.updated_ids {
            end_sessions(store, id).await?;
        }
        tracing::info!(target: "gatehouse::audit", event = "users_imported", created = report.created, updated = report.updated, skipped = report.skipped.len(), "audit");
    }
    eprintln!(
        "{}{} created, {} updated, {} skipped in {:.1}s",
        if dry_run {
            "dry run, nothing written: "
        } else {
            ""
        },
        report.created,
        report.updated,
        report.skipped.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[derive(Debug, Clone, Subcommand)]
pub enum AuditCommand {
    /// Audit events, newest first: who did what, from where, and how it ended.
    List {
        #[command(flatten)]
        common: Common,
        /// From this time on: RFC 3339, or a duration back from now (`24h`, `7d`).
        #[arg(long)]
        since: Option<String>,
        /// Events by or about this user (username, email or id; `cli` for the command line).
        #[arg(long)]
        actor: Option<String>,
        /// One action, e.g. `user.login_failed`.
        #[arg(long)]
        action: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
}

/// `--since`: RFC 3339, or a duration before now; Unix milliseconds.
pub(crate) fn since_ms(text: &str) -> Result<u64, Failure> {
    let now = crate::session::unix_now();
    if let Ok(d) = crate::duration::parse_duration(text) {
        return Ok(now.saturating_sub(d.as_secs()) * 1000);
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
        .map_err(|_| {
            ConfigError::new(
                "--since",
                "an RFC 3339 time (2026-12-01T00:00:00Z) or a duration (24h, 7d)",
            )
            .into()
        })
}

pub async fn audit(command: AuditCommand) -> Result<(), Failure> {
    let AuditCommand::List {
        common,
        since,
        actor,
        action,
        limit,
    } = command;
    let db = common.database.open(&common.store.data_dir).await?;
    let since_ms = since.as_deref().map(since_ms).transpose()?;
    // A user named by username or email is their id; anything else is taken as it is.
    let actor = match actor {
        Some(a) => Some(match db.find(&a).await.map_err(other)? {
            Some(u) => u.id,
            None => a,
        }),
        None => None,
    };
    let events = super::audit::list(
        &db,
        &super::audit::Filter {
            since_ms,
            actor,
            action,
            limit,
        },
    )
    .await
    .map_err(other)?;
    let mut out = std::io::stdout().lock();
    for e in &events {
        if common.json {
            writeln!(out, "{}", super::audit::json(e))
        } else {
            writeln!(
                out,
                "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                super::audit::rfc3339_ms(e.at_ms),
                e.action,
                e.outcome,
                e.actor,
                if e.target.is_empty() { "-" } else { &e.target },
                e.ip,
                serde_json::Value::Object(e.details.clone())
            )
        }
        .map_err(other)?;
    }
    Ok(())
}

#[derive(Debug, Clone, Subcommand)]
pub enum OutboxCommand {
    /// What waits to reach other systems (mail, back-channel logouts), oldest first: kind,
    /// target, status, attempts, last error. Never a message or a token.
    List {
        #[command(flatten)]
        common: Common,
        /// Only `pending`, `failed` (given up) or `delivered` items.
        #[arg(long)]
        status: Option<String>,
    },
    /// Try an item again now, with a new --outbox-retention (a given-up one too).
    Retry {
        #[command(flatten)]
        common: Common,
        id: String,
    },
}

pub async fn outbox(command: OutboxCommand) -> Result<(), Failure> {
    let common = match &command {
        OutboxCommand::List { common, .. } | OutboxCommand::Retry { common, .. } => common,
    };
    let db = common.database.open(&common.store.data_dir).await?;
    match &command {
        OutboxCommand::List { status, .. } => {
            if let Some(s) = status.as_deref() {
                if !["pending", "failed", "delivered"].contains(&s) {
                    return Err(ConfigError::new("--status", "pending, failed or delivered").into());
                }
            }
            let items = super::outbox::list(&db, status.as_deref())
                .await
                .map_err(other)?;
            let mut out = std::io::stdout().lock();
            for i in &items {
                if common.json {
                    writeln!(out, "{}", serde_json::to_string(i).map_err(other)?)
                } else {
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        i.id, i.kind, i.target, i.status, i.attempts, i.last_error
                    )
                }
                .map_err(other)?;
            }
            Ok(())
        }
        OutboxCommand::Retry { id, .. } => {
            if !super::outbox::retry(&db, id).await.map_err(other)? {
                return Err(
                    ConfigError::new("ID", format!("no pending or failed item {id:?}")).into(),
                );
            }
            tracing::info!(target: "gatehouse::audit", event = "outbox_retried", user = "-", item = id.as_str(), "audit");
            eprintln!("{id} is due now");
            Ok(())
        }
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum RolesCommand {
    /// Every role: name, scopes, users holding it, and whether --roles owns it.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// One role.
    Show {
        #[command(flatten)]
        common: Common,
        name: String,
    },
    /// A new role (not one --roles names: those change in that file).
    Create {
        #[command(flatten)]
        common: Common,
        name: String,
        /// A scope it grants (repeat for more).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Change a role's scopes (all of them, as given) or description; a change of scopes
    /// ends the sessions of the users holding it.
    Update {
        #[command(flatten)]
        common: Common,
        name: String,
        /// The scopes it grants from now on (repeat for more).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Grant no scope at all.
        #[arg(long, conflicts_with = "scopes")]
        no_scopes: bool,
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete a role: its holders lose it, and their sessions end. `user` and `admin` stay.
    Delete {
        #[command(flatten)]
        common: Common,
        name: String,
    },
}

pub async fn roles(command: RolesCommand) -> Result<(), Failure> {
    use super::roles;
    let common = match &command {
        RolesCommand::List { common }
        | RolesCommand::Show { common, .. }
        | RolesCommand::Create { common, .. }
        | RolesCommand::Update { common, .. }
        | RolesCommand::Delete { common, .. } => common.clone(),
    };
    let db = common.database.open(&common.store.data_dir).await?;
    let line = |r: &roles::Role| {
        format!(
            "{}\t{}\t{} user(s)\t{}\t{}",
            r.name,
            if r.scopes.is_empty() {
                "-".to_owned()
            } else {
                r.scopes.join(" ")
            },
            r.users,
            if r.from_file { "--roles" } else { "database" },
            r.description
        )
    };
    let show = |r: &roles::Role| -> Result<(), Failure> {
        let json = serde_json::to_string(r).map_err(other)?;
        println!("{}", if common.json { json } else { line(r) });
        Ok(())
    };
    match command {
        RolesCommand::List { .. } => {
            for r in roles::list(&db).await.map_err(other)? {
                show(&r)?;
            }
        }
        RolesCommand::Show { name, .. } => {
            show(&roles::get(&db, &name).await.map_err(role_failure)?)?
        }
        RolesCommand::Create {
            name,
            scopes,
            description,
            ..
        } => {
            roles::create(&db, &name, &description, &scopes)
                .await
                .map_err(role_failure)?;
            tracing::info!(target: "gatehouse::audit", event = "role_created", user = %name, scopes = scopes.join(" "), "audit");
            show(&roles::get(&db, &name).await.map_err(role_failure)?)?;
        }
        RolesCommand::Update {
            name,
            scopes,
            no_scopes,
            description,
            ..
        } => {
            let store = crate::store::Store::open_for_command(&common.store).await?;
            let new_scopes = (no_scopes || !scopes.is_empty()).then_some(scopes.as_slice());
            let n = roles::update(
                &db,
                &Sessions::new(&store, None),
                &name,
                description.as_deref(),
                new_scopes,
            )
            .await
            .map_err(role_failure)?;
            tracing::info!(target: "gatehouse::audit", event = "role_updated", user = %name, sessions_ended = n, "audit");
            show(&roles::get(&db, &name).await.map_err(role_failure)?)?;
            eprintln!("{n} session(s) ended");
        }
        RolesCommand::Delete { name, .. } => {
            let store = crate::store::Store::open_for_command(&common.store).await?;
            let n = roles::delete(&db, &Sessions::new(&store, None), &name)
                .await
                .map_err(role_failure)?;
            tracing::info!(target: "gatehouse::audit", event = "role_deleted", user = %name, users = n, "audit");
            eprintln!("role {name} deleted; {n} user(s) lost it and were signed out");
        }
    }
    Ok(())
}
