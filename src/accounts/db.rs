//! The accounts database: users and their one-time tokens, in SQLite (a file in
//! `--data-dir`, the default) or PostgreSQL (`--database-url postgres://…`).
//!
//! One type, both backends: sqlx's `Any` driver with runtime queries written once in the SQL
//! both understand (text ids, `BIGINT` Unix seconds, `$n` placeholders in order, no
//! booleans). Case-insensitive uniqueness is a lower-cased key column with a unique index, so
//! it holds the same way on both. Each module's migrations are numbered statements applied
//! once, in a transaction each, recorded in `gatehouse_schema` by module and version
//! (`Schema`, `add_schema`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyConnection, AnyPool, Row, Transaction};

use crate::error::{ConfigError, Fault};
use crate::secret::Secret;
use crate::session::unix_now;

/// One module's tables: its migrations, numbered from 1 within the module and recorded in
/// `gatehouse_schema` under its name. accounts' own is `ACCOUNTS`; another module adds its
/// with `add_schema` before the database is opened, so that a build without it creates none
/// of its tables.
pub struct Schema {
    pub module: &'static str,
    pub migrations: &'static [(i64, &'static [&'static str])],
}

static ACCOUNTS: Schema = Schema {
    module: "accounts",
    migrations: MIGRATIONS,
};

/// The schemas of the other modules, in the order they were added.
static SCHEMAS: std::sync::Mutex<Vec<&'static Schema>> = std::sync::Mutex::new(Vec::new());

/// Makes every `Db::open` from now on create and migrate `schema`'s tables too (idempotent).
pub fn add_schema(schema: &'static Schema) {
    let mut schemas = SCHEMAS.lock().unwrap_or_else(|e| e.into_inner());
    if !schemas.iter().any(|s| s.module == schema.module) {
        schemas.push(schema);
    }
}

/// What the modules do with each database opened (in the server and the CLI alike): the
/// registry listens for ended sessions with it.
type OnOpen = (&'static str, fn(&Db));
static OPENED: std::sync::RwLock<Vec<OnOpen>> = std::sync::RwLock::new(Vec::new());

/// Makes every `Db::open` from now on call `f` with the opened database (once per name).
pub fn on_open(name: &'static str, f: fn(&Db)) {
    let mut all = OPENED.write().unwrap_or_else(|e| e.into_inner());
    if !all.iter().any(|(n, _)| *n == name) {
        all.push((name, f));
    }
}

/// A change other systems may hear of (`user.deactivated`: a webhook's event type), with the
/// ids and changed fields it reports, never a secret. Every hook registered with [`on_event`]
/// writes it in the transaction of the change itself: it is stored exactly when the change is.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: &'static str,
    pub data: serde_json::Value,
}

impl Event {
    pub fn new(kind: &'static str, data: serde_json::Value) -> Event {
        Event { kind, data }
    }
}

/// Writes an event on the change's connection (inside its transaction).
pub type EventWriter = for<'c> fn(
    &'c mut AnyConnection,
    &'c Event,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), sqlx::Error>> + Send + 'c>,
>;
/// What hears of events: a writer, and what to do once they are committed (wake a worker).
type OnEvent = (&'static str, EventWriter, fn());
static EVENTS: std::sync::RwLock<Vec<OnEvent>> = std::sync::RwLock::new(Vec::new());

/// Makes every change from now on that reports an event call `write` in its transaction,
/// and `committed` after it (once per name).
pub fn on_event(name: &'static str, write: EventWriter, committed: fn()) {
    let mut all = EVENTS.write().unwrap_or_else(|e| e.into_inner());
    all.retain(|(n, _, _)| *n != name);
    all.push((name, write, committed));
}

fn event_hooks() -> Vec<OnEvent> {
    EVENTS.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Commits `tx` with `events` written in it.
pub async fn commit_with(mut tx: Transaction<'_, Any>, events: &[Event]) -> Result<(), DbError> {
    let hooks = event_hooks();
    for event in events {
        for (_, write, _) in &hooks {
            write(&mut tx, event).await?;
        }
    }
    tx.commit().await?;
    if !events.is_empty() {
        for (_, _, committed) in &hooks {
            committed();
        }
    }
    Ok(())
}

/// Before schemas were per module, one global sequence numbered every migration: what each of
/// its versions is now (module, version). A database migrated then is adopted as it stands.
const GLOBAL_VERSIONS: [(i64, &str, i64); 6] = [
    (1, "accounts", 1),
    (2, "accounts", 2),
    (3, "registry", 1),
    (4, "registry", 2),
    (5, "registry", 3),
    (6, "registry", 4),
];

/// Every change to accounts' tables, in order; never edit one that has shipped, append.
const MIGRATIONS: &[(i64, &[&str])] = &[
    (
        1,
        &[
            "CREATE TABLE users (
            id TEXT PRIMARY KEY,
            username TEXT NOT NULL,
            username_key TEXT NOT NULL UNIQUE,
            email TEXT NOT NULL,
            email_key TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            affiliation TEXT NOT NULL,
            country TEXT NOT NULL,
            password_hash TEXT,
            active BIGINT NOT NULL,
            email_confirmed_at BIGINT,
            roles TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            login_at BIGINT,
            login_ip TEXT,
            previous_login_at BIGINT,
            previous_login_ip TEXT,
            login_count BIGINT NOT NULL
        )",
            "CREATE TABLE user_tokens (
            hash TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            purpose TEXT NOT NULL,
            email TEXT NOT NULL,
            expires_at BIGINT NOT NULL
        )",
            "CREATE INDEX user_tokens_user ON user_tokens (user_id, purpose)",
        ],
    ),
    (
        2,
        // The scopes each role granted when the server last started: a role file changed
        // between two starts ends the sessions of the users whose scopes it changed.
        &["CREATE TABLE role_scopes (role TEXT PRIMARY KEY, scopes TEXT NOT NULL)"],
    ),
    (
        3,
        // Second factors. An authenticator app per user: its secret sealed with the server
        // secret, confirmed once a first code was right, and the last step used (no code
        // twice). Recovery codes as SHA-256, each used once.
        &[
            "CREATE TABLE user_totp (
                user_id TEXT PRIMARY KEY,
                secret TEXT NOT NULL,
                confirmed_at BIGINT,
                last_step BIGINT NOT NULL,
                created_at BIGINT NOT NULL
            )",
            "CREATE TABLE user_recovery_codes (
                user_id TEXT NOT NULL,
                hash TEXT NOT NULL,
                used_at BIGINT,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (user_id, hash)
            )",
        ],
    ),
    (
        4,
        // Passkeys. One row per credential: webauthn-rs' record of it (JSON: the public key,
        // counter and backup flags) beside the fields the pages list and the counter and flags
        // again as columns for operators. A credential id is unique across every user; the
        // user handle is the random id the user's passkeys carry (never their user id). The
        // ceremonies hold the state between a ceremony's two requests, used once; a "not now"
        // to the offer of a passkey is remembered.
        &[
            "CREATE TABLE user_passkeys (
                id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL,
                credential_id TEXT NOT NULL UNIQUE,
                user_handle TEXT NOT NULL,
                name TEXT NOT NULL,
                passkey TEXT NOT NULL,
                counter BIGINT NOT NULL,
                backup_eligible BIGINT NOT NULL,
                backup_state BIGINT NOT NULL,
                created_at BIGINT NOT NULL,
                last_used_at BIGINT
            )",
            "CREATE INDEX user_passkeys_user ON user_passkeys (user_id)",
            "CREATE TABLE webauthn_ceremonies (
                hash TEXT PRIMARY KEY,
                user_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                state TEXT NOT NULL,
                expires_at BIGINT NOT NULL
            )",
            "CREATE TABLE passkey_offers_declined (
                user_id TEXT PRIMARY KEY,
                declined_at BIGINT NOT NULL
            )",
        ],
    ),
    (
        5,
        // The outbox: what must reach another system (a back-channel logout), written
        // beside the change it reports and delivered by a worker, at least once, under a
        // stable id. `status` is pending, delivered or failed (given up after
        // --outbox-retention); `locked_until` keeps an item to the worker that claimed it.
        &[
            "CREATE TABLE outbox (
                id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                target TEXT NOT NULL,
                payload TEXT NOT NULL,
                status TEXT NOT NULL,
                attempts BIGINT NOT NULL,
                created_at BIGINT NOT NULL,
                next_at BIGINT NOT NULL,
                locked_until BIGINT NOT NULL,
                last_error TEXT NOT NULL
            )",
            "CREATE INDEX outbox_due ON outbox (status, next_at)",
        ],
    ),
    (
        6,
        // Identities at other providers (--identity-providers, user import): the provider's
        // `id` and its subject, one user each.
        &[
            "CREATE TABLE user_identities (
                provider TEXT NOT NULL,
                subject TEXT NOT NULL,
                user_id TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                last_used_at BIGINT,
                PRIMARY KEY (provider, subject)
            )",
            "CREATE INDEX user_identities_user ON user_identities (user_id)",
            // The sessions signed in through a provider, with the provider's own session
            // (`upstream_sid`, empty when it named none): its back-channel logout ends them.
            "CREATE TABLE federated_sessions (
                provider TEXT NOT NULL,
                upstream_sid TEXT NOT NULL,
                sid TEXT NOT NULL,
                user_id TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (provider, upstream_sid, sid)
            )",
            "CREATE INDEX federated_sessions_user ON federated_sessions (user_id)",
        ],
    ),
    (
        7,
        // The audit trail (accounts::audit): every audit line, kept --audit-retention.
        &[
            "CREATE TABLE audit_events (
                id TEXT PRIMARY KEY,
                at BIGINT NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                target TEXT NOT NULL,
                ip TEXT NOT NULL,
                outcome TEXT NOT NULL,
                details TEXT NOT NULL
            )",
            "CREATE INDEX audit_events_at ON audit_events (at)",
            "CREATE INDEX audit_events_actor ON audit_events (actor, at)",
            "CREATE INDEX audit_events_target ON audit_events (target, at)",
        ],
    ),
    (
        8,
        // Deleted users' ids, never given to anyone again (their rows are gone).
        &["CREATE TABLE user_tombstones (id TEXT PRIMARY KEY, deleted_at BIGINT NOT NULL)"],
    ),
    (
        9,
        // Roles in the database (accounts::roles): each with a description and its scopes;
        // `from_file`: named by --roles, read-only elsewhere. The scopes recorded at the last
        // start become the roles; `user` and `admin` always exist.
        &[
            "CREATE TABLE roles (
                name TEXT PRIMARY KEY,
                description TEXT NOT NULL,
                scopes TEXT NOT NULL,
                from_file BIGINT NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL
            )",
            "INSERT INTO roles (name, description, scopes, from_file, created_at, updated_at)
                SELECT role, '', scopes, 0, 0, 0 FROM role_scopes",
            "INSERT INTO roles (name, description, scopes, from_file, created_at, updated_at)
                SELECT 'user', 'Every user', '', 0, 0, 0
                WHERE NOT EXISTS (SELECT 1 FROM roles WHERE name = 'user')",
            "INSERT INTO roles (name, description, scopes, from_file, created_at, updated_at)
                SELECT 'admin', 'Administrators: the admin console', 'admin', 0, 0, 0
                WHERE NOT EXISTS (SELECT 1 FROM roles WHERE name = 'admin')",
            "DROP TABLE role_scopes",
        ],
    ),
    (
        10,
        // When an outbox item was written, in microseconds: the items for one target are
        // delivered in that order (`created_at`, in seconds, ties within a second).
        &["ALTER TABLE outbox ADD COLUMN written_us BIGINT NOT NULL DEFAULT 0"],
    ),
    (
        11,
        // The logout tokens a provider has sent (`<provider> <jti>`), until they expire: one
        // sent again is refused (OpenID Back-Channel Logout 1.0, 2.6).
        &["CREATE TABLE logout_tokens_seen (
            id TEXT PRIMARY KEY,
            until_at BIGINT NOT NULL
        )"],
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A unique key taken: which one (`username` or `email`).
    #[error("{0} already taken")]
    Taken(&'static str),
    /// The database did not answer, or answered an error.
    #[error("accounts database: {0}")]
    Unavailable(String),
}

impl DbError {
    pub fn fault(&self) -> Fault {
        match self {
            DbError::Taken(_) => Fault::Caller,
            DbError::Unavailable(_) => Fault::Dependency,
        }
    }
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(d) = &e {
            if d.is_unique_violation() {
                let msg = d.message();
                return DbError::Taken(if msg.contains("email") {
                    "email"
                } else {
                    "username"
                });
            }
        }
        DbError::Unavailable(e.to_string())
    }
}

/// A user as stored. The password hash stays in here; nothing renders it.
#[derive(Clone)]
pub struct User {
    pub id: String,
    pub username: String,
    pub email: String,
    pub name: String,
    pub affiliation: String,
    pub country: String,
    pub password_hash: Option<Secret<String>>,
    pub active: bool,
    pub email_confirmed_at: Option<u64>,
    /// Roles beyond `user`, which every user has.
    pub roles: Vec<String>,
    pub created_at: u64,
    pub updated_at: u64,
    pub login_at: Option<u64>,
    pub login_ip: Option<String>,
    pub previous_login_at: Option<u64>,
    pub previous_login_ip: Option<String>,
    pub login_count: u64,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// What a new user is made of.
pub struct NewUser<'a> {
    pub username: &'a str,
    pub email: &'a str,
    pub name: &'a str,
    pub password_hash: Option<&'a str>,
    pub active: bool,
    pub confirmed: bool,
    pub roles: &'a [String],
}

/// What a one-time token is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Confirms the address in the token's `email` (registration, or an email change).
    Confirm,
    /// Sets a new password.
    Reset,
    /// Lets the address in `email` register (`--registration invite`); its user id is
    /// `invite:<address>`, so a newer invitation to the same address voids the older.
    Invite,
    /// A sign-in whose password was right and whose second step is pending (5 minutes, in an
    /// HttpOnly cookie of the browser that gave the password); a newer one voids the older.
    SecondStep,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Confirm => "confirm",
            Purpose::Reset => "reset",
            Purpose::Invite => "invite",
            Purpose::SecondStep => "second_step",
        }
    }
}

/// The lower-cased form under which usernames and emails are unique.
pub fn key(s: &str) -> String {
    s.trim().to_lowercase()
}

fn ts(v: Option<i64>) -> Option<u64> {
    v.map(|t| t.max(0) as u64)
}

fn roles_of(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

fn user_of(row: &AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        affiliation: row.try_get("affiliation")?,
        country: row.try_get("country")?,
        password_hash: row
            .try_get::<Option<String>, _>("password_hash")?
            .map(Secret::new),
        active: row.try_get::<i64, _>("active")? != 0,
        email_confirmed_at: ts(row.try_get("email_confirmed_at")?),
        roles: roles_of(&row.try_get::<String, _>("roles")?),
        created_at: ts(Some(row.try_get("created_at")?)).unwrap_or(0),
        updated_at: ts(Some(row.try_get("updated_at")?)).unwrap_or(0),
        login_at: ts(row.try_get("login_at")?),
        login_ip: row.try_get("login_ip")?,
        previous_login_at: ts(row.try_get("previous_login_at")?),
        previous_login_ip: row.try_get("previous_login_ip")?,
        login_count: ts(Some(row.try_get("login_count")?)).unwrap_or(0),
    })
}

/// A user's identity at another provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub provider: String,
    pub subject: String,
    pub user_id: String,
    pub created_at: u64,
    pub last_used_at: Option<u64>,
}

fn identity_of(row: &AnyRow) -> Result<Identity, sqlx::Error> {
    Ok(Identity {
        provider: row.try_get("provider")?,
        subject: row.try_get("subject")?,
        user_id: row.try_get("user_id")?,
        created_at: ts(Some(row.try_get("created_at")?)).unwrap_or(0),
        last_used_at: ts(row.try_get("last_used_at")?),
    })
}

/// One user of `gatehouse user import`, checked: `existing` is the id of the user with
/// this username, updated in place (`--update`).
pub struct ImportedUser {
    pub existing: Option<String>,
    pub username: String,
    pub email: String,
    pub email_confirmed: bool,
    pub name: String,
    pub affiliation: String,
    pub country: String,
    pub active: bool,
    pub roles: Vec<String>,
    pub created_at: Option<u64>,
    pub password_hash: Option<String>,
    pub identities: Vec<(String, String)>,
    /// The TOTP secret sealed with the server secret, confirmed.
    pub sealed_totp: Option<String>,
}

/// What the admin console's user list asks for.
#[derive(Debug, Clone, Default)]
pub struct UserQuery {
    /// Part of a username, email or name ("" for everyone).
    pub text: String,
    /// `active`, `inactive`, `unconfirmed`, or "".
    pub status: String,
    /// Holders of this role (beyond `user`), or "".
    pub role: String,
    /// Newest sign-in first, else newest account first.
    pub by_login: bool,
    pub limit: i64,
    pub offset: i64,
}

/// A new user's id: random, and never a deleted user's.
async fn new_user_id(conn: &mut AnyConnection) -> Result<String, sqlx::Error> {
    loop {
        let id = random_token(12);
        let dead = sqlx::query("SELECT 1 AS x FROM user_tombstones WHERE id = $1")
            .bind(&id)
            .fetch_optional(&mut *conn)
            .await?;
        if dead.is_none() {
            return Ok(id);
        }
    }
}

/// Deletes the user `id` and every row accounts keeps about them (tokens, second factors,
/// identities, pending mail), leaving a tombstone so the id is never given again; whether
/// there was such a user. On the deletion's connection: its transaction.
pub async fn erase_user_rows(conn: &mut AnyConnection, id: &str) -> Result<bool, sqlx::Error> {
    for sql in [
        "DELETE FROM user_tokens WHERE user_id = $1",
        "DELETE FROM user_totp WHERE user_id = $1",
        "DELETE FROM user_recovery_codes WHERE user_id = $1",
        "DELETE FROM user_passkeys WHERE user_id = $1",
        "DELETE FROM webauthn_ceremonies WHERE user_id = $1",
        "DELETE FROM passkey_offers_declined WHERE user_id = $1",
        "DELETE FROM user_identities WHERE user_id = $1",
        "DELETE FROM federated_sessions WHERE user_id = $1",
        // Mail not yet sent to them (it holds their address).
        "DELETE FROM outbox WHERE kind = 'mail' AND target = $1",
    ] {
        sqlx::query(sql).bind(id).execute(&mut *conn).await?;
    }
    let gone = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    sqlx::query("INSERT INTO user_tombstones (id, deleted_at) VALUES ($1, $2)")
        .bind(id)
        .bind(unix_now() as i64)
        .execute(&mut *conn)
        .await?;
    Ok(gone == 1)
}

/// `second_factor.changed`: which factor, `added` or `removed`.
fn second_factor(user: &str, factor: &str, change: &str) -> Event {
    Event::new(
        "second_factor.changed",
        serde_json::json!({"user": user, "factor": factor, "change": change}),
    )
}

/// A random identifier or token: `bytes` random bytes, base64url.
pub fn random_token(bytes: usize) -> String {
    use base64::Engine;
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).expect("the system RNG");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// How a one-time token is stored: its SHA-256, so the database never holds a usable one.
pub fn token_hash(token: &str) -> String {
    use base64::Engine;
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref())
}

/// The flag a database problem names: the URL when one was given, else the data dir.
fn flag_of(url: Option<&Secret<String>>) -> &'static str {
    if url.is_some() {
        "--database-url"
    } else {
        "--data-dir"
    }
}

#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    backend: &'static str,
}

impl Db {
    /// Opens (and migrates) the database of `--database-url`, or `accounts.db` in `data_dir`.
    pub async fn open(url: Option<&Secret<String>>, data_dir: &Path) -> Result<Db, ConfigError> {
        let db = Db::connect(url, data_dir).await?;
        let added = SCHEMAS.lock().unwrap_or_else(|e| e.into_inner()).clone();
        db.migrate(&added).await.map_err(|e| {
            ConfigError::new(
                flag_of(url),
                format!("cannot migrate the accounts database: {e}"),
            )
        })?;
        let opened: Vec<fn(&Db)> = OPENED
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, f)| *f)
            .collect();
        for f in opened {
            f(&db);
        }
        Ok(db)
    }

    async fn connect(given: Option<&Secret<String>>, data_dir: &Path) -> Result<Db, ConfigError> {
        sqlx::any::install_default_drivers();
        let (url, backend) = match given {
            Some(u)
                if u.expose().starts_with("postgres://")
                    || u.expose().starts_with("postgresql://") =>
            {
                (u.expose().clone(), "postgres")
            }
            Some(u) if u.expose().starts_with("sqlite:") => (u.expose().clone(), "sqlite"),
            Some(_) => {
                return Err(ConfigError::new(
                    "--database-url",
                    "must be postgres://… or sqlite:…",
                ))
            }
            None => {
                crate::files::private_dir(data_dir, "--data-dir")?;
                (
                    format!(
                        "sqlite://{}?mode=rwc",
                        data_dir.join("accounts.db").display()
                    ),
                    "sqlite",
                )
            }
        };
        let flag = flag_of(given);
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == "sqlite" { 4 } else { 16 })
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .map_err(|e| {
                ConfigError::new(flag, format!("cannot open the accounts database: {e}"))
            })?;
        let db = Db { pool, backend };
        if backend == "sqlite" {
            // Readers beside a writer (the CLI while the server runs), and a wait, not an
            // error, when another process holds the write lock.
            for pragma in ["PRAGMA journal_mode = WAL", "PRAGMA busy_timeout = 5000"] {
                sqlx::query(pragma)
                    .execute(&db.pool)
                    .await
                    .map_err(|e| ConfigError::new(flag, e.to_string()))?;
            }
        }
        Ok(db)
    }

    /// The pool, for the `registry` module's tables in the same database.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Brings accounts' tables and those of `added` up to date, adopting a record
    /// kept in the one global sequence of earlier versions first.
    async fn migrate(&self, added: &[&Schema]) -> Result<(), sqlx::Error> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS gatehouse_schema (
                module TEXT NOT NULL,
                version BIGINT NOT NULL,
                applied_at BIGINT NOT NULL,
                PRIMARY KEY (module, version)
            )",
        )
        .execute(&self.pool)
        .await?;
        self.adopt_global_versions().await?;
        for schema in std::iter::once(&ACCOUNTS).chain(added.iter().copied()) {
            self.apply(schema).await?;
        }
        Ok(())
    }

    async fn apply(&self, schema: &Schema) -> Result<(), sqlx::Error> {
        for (version, statements) in schema.migrations {
            let mut tx = self.pool.begin().await?;
            let done = sqlx::query(
                "SELECT version FROM gatehouse_schema WHERE module = $1 AND version = $2",
            )
            .bind(schema.module)
            .bind(*version)
            .fetch_optional(&mut *tx)
            .await?;
            if done.is_some() {
                continue;
            }
            for statement in *statements {
                sqlx::query(*statement).execute(&mut *tx).await?;
            }
            sqlx::query(
                "INSERT INTO gatehouse_schema (module, version, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(schema.module)
            .bind(*version)
            .bind(unix_now() as i64)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(
                module = schema.module,
                version,
                backend = self.backend,
                "accounts database migrated"
            );
        }
        Ok(())
    }

    /// A database made before schemas were per module records its versions in
    /// `gatehouse_migrations`: copied into `gatehouse_schema` once, by `GLOBAL_VERSIONS`. The
    /// old table stays as it was, so that the previous release still starts on it.
    async fn adopt_global_versions(&self) -> Result<(), sqlx::Error> {
        let legacy = if self.backend == "sqlite" {
            "SELECT 1 AS present FROM sqlite_master WHERE type = 'table' AND name = 'gatehouse_migrations'"
        } else {
            // (a constant: the Any driver cannot decode PostgreSQL's `name` type)
            "SELECT 1 AS present FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_name = 'gatehouse_migrations'"
        };
        if sqlx::query(legacy)
            .fetch_optional(&self.pool)
            .await?
            .is_none()
        {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let recorded: i64 = sqlx::query("SELECT COUNT(*) AS n FROM gatehouse_schema")
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if recorded > 0 {
            return Ok(());
        }
        let rows = sqlx::query("SELECT version, applied_at FROM gatehouse_migrations")
            .fetch_all(&mut *tx)
            .await?;
        for row in &rows {
            let global: i64 = row.try_get("version")?;
            let Some(&(_, module, version)) = GLOBAL_VERSIONS.iter().find(|v| v.0 == global) else {
                return Err(sqlx::Error::Protocol(format!(
                    "gatehouse_migrations holds version {global}, which this release does not know: a newer gatehouse made this database"
                )));
            };
            sqlx::query(
                "INSERT INTO gatehouse_schema (module, version, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(module)
            .bind(version)
            .bind(row.try_get::<i64, _>("applied_at")?)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        tracing::info!(
            versions = rows.len(),
            "adopted the global migration record (gatehouse_migrations) per module"
        );
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn create_user(&self, new: &NewUser<'_>) -> Result<User, DbError> {
        let now = unix_now() as i64;
        let mut tx = self.pool.begin().await?;
        let id = new_user_id(&mut tx).await?;
        sqlx::query(
            "INSERT INTO users (id, username, username_key, email, email_key, name, affiliation,
                country, password_hash, active, email_confirmed_at, roles, created_at, updated_at,
                login_count)
             VALUES ($1, $2, $3, $4, $5, $6, '', '', $7, $8, $9, $10, $11, $12, 0)",
        )
        .bind(&id)
        .bind(new.username.trim())
        .bind(key(new.username))
        .bind(new.email.trim())
        .bind(key(new.email))
        .bind(new.name.trim())
        .bind(new.password_hash)
        .bind(i64::from(new.active))
        .bind(new.confirmed.then_some(now))
        .bind(new.roles.join(" "))
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let event = Event::new(
            "user.registered",
            serde_json::json!({"user": id, "username": new.username.trim(),
                "email": new.email.trim(), "email_confirmed": new.confirmed, "roles": new.roles}),
        );
        commit_with(tx, &[event]).await?;
        self.user(&id)
            .await?
            .ok_or_else(|| DbError::Unavailable("a new user vanished".into()))
    }

    pub async fn user(&self, id: &str) -> Result<Option<User>, DbError> {
        let row = sqlx::query("SELECT * FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(user_of).transpose()?)
    }

    /// The user whose username or email is `login` (case-insensitively).
    pub async fn find(&self, login: &str) -> Result<Option<User>, DbError> {
        let k = key(login);
        let row = sqlx::query("SELECT * FROM users WHERE username_key = $1 OR email_key = $2")
            .bind(&k)
            .bind(&k)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(user_of).transpose()?)
    }

    /// A page of users matching `q` (the admin console's list), and how many match.
    pub async fn search_users(&self, q: &UserQuery) -> Result<(Vec<User>, i64), DbError> {
        macro_rules! matching {
            () => {
                "FROM users WHERE ($1 = '' OR username_key LIKE $2 OR email_key LIKE $3
                    OR LOWER(name) LIKE $4)
                  AND ($5 = '' OR ($6 = 'active' AND active = 1 AND email_confirmed_at IS NOT NULL)
                    OR ($7 = 'inactive' AND active = 0)
                    OR ($8 = 'unconfirmed' AND email_confirmed_at IS NULL))
                  AND ($9 = '' OR (' ' || roles || ' ') LIKE $10)"
            };
        }
        const BY_CREATED: &str = concat!(
            "SELECT * ",
            matching!(),
            " ORDER BY created_at DESC, id LIMIT $11 OFFSET $12"
        );
        const BY_LOGIN: &str = concat!(
            "SELECT * ",
            matching!(),
            " ORDER BY COALESCE(login_at, 0) DESC, id LIMIT $11 OFFSET $12"
        );
        const COUNT: &str = concat!("SELECT COUNT(*) AS n ", matching!());
        let text = q.text.trim().to_lowercase();
        let like = format!("%{text}%");
        let role = format!("% {} %", q.role);
        let bind = |sql: &'static str| {
            sqlx::query(sql)
                .bind(text.clone())
                .bind(like.clone())
                .bind(like.clone())
                .bind(like.clone())
                .bind(q.status.clone())
                .bind(q.status.clone())
                .bind(q.status.clone())
                .bind(q.status.clone())
                .bind(q.role.clone())
                .bind(role.clone())
        };
        let total: i64 = bind(COUNT).fetch_one(&self.pool).await?.try_get("n")?;
        let sql = if q.by_login { BY_LOGIN } else { BY_CREATED };
        let rows = bind(sql)
            .bind(q.limit)
            .bind(q.offset)
            .fetch_all(&self.pool)
            .await?;
        let users = rows.iter().map(user_of).collect::<Result<_, _>>()?;
        Ok((users, total))
    }

    /// Whether logout token `jti` from `provider` was taken before.
    pub async fn logout_token_seen(&self, provider: &str, jti: &str) -> Result<bool, DbError> {
        let row = sqlx::query("SELECT 1 FROM logout_tokens_seen WHERE id = $1")
            .bind(format!("{provider} {jti}"))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Remembers logout token `jti` from `provider` until `until` (Unix seconds); those past
    /// their time are forgotten.
    pub async fn remember_logout_token(
        &self,
        provider: &str,
        jti: &str,
        until: u64,
    ) -> Result<(), DbError> {
        sqlx::query("DELETE FROM logout_tokens_seen WHERE until_at < $1")
            .bind(unix_now() as i64)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO logout_tokens_seen (id, until_at) VALUES ($1, $2)
               ON CONFLICT (id) DO NOTHING",
        )
        .bind(format!("{provider} {jti}"))
        .bind(until as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The users holding `role` (beyond `user`), without reading the others.
    pub async fn holding(&self, role: &str) -> Result<Vec<User>, DbError> {
        // LIKE narrows (`_` in a name matches any one character there); the words decide.
        let rows = sqlx::query("SELECT * FROM users WHERE (' ' || roles || ' ') LIKE $1")
            .bind(format!("% {role} %"))
            .fetch_all(&self.pool)
            .await?;
        let users: Vec<User> = rows.iter().map(user_of).collect::<Result<_, _>>()?;
        Ok(users
            .into_iter()
            .filter(|u| u.roles.iter().any(|r| r == role))
            .collect())
    }

    /// How many users there are, and how many hold each role beyond `user`: one row per
    /// distinct set of roles, however many users.
    pub async fn role_counts(&self) -> Result<(i64, BTreeMap<String, i64>), DbError> {
        let rows = sqlx::query("SELECT roles, COUNT(*) AS n FROM users GROUP BY roles")
            .fetch_all(&self.pool)
            .await?;
        let (mut all, mut held) = (0, BTreeMap::new());
        for r in rows {
            let n: i64 = r.try_get("n")?;
            all += n;
            for role in roles_of(&r.try_get::<String, _>("roles")?) {
                *held.entry(role).or_default() += n;
            }
        }
        Ok((all, held))
    }

    pub async fn list(&self) -> Result<Vec<User>, DbError> {
        let rows = sqlx::query("SELECT * FROM users ORDER BY created_at, username_key")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(user_of).collect::<Result<_, _>>()?)
    }

    /// A new password (`password.changed`).
    pub async fn set_password(&self, id: &str, hash: &str) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
            .bind(hash)
            .bind(unix_now() as i64)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let event = Event::new("password.changed", serde_json::json!({"user": id}));
        commit_with(tx, &[event]).await
    }

    /// The same password stored in a newer hash (a sign-in upgrading an old scheme): no
    /// change anyone hears of.
    pub async fn rehash_password(&self, id: &str, hash: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(hash)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Activates or deactivates (`user.activated`, `user.deactivated`).
    pub async fn set_active(&self, id: &str, active: bool) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE users SET active = $1, updated_at = $2 WHERE id = $3")
            .bind(i64::from(active))
            .bind(unix_now() as i64)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let kind = if active {
            "user.activated"
        } else {
            "user.deactivated"
        };
        commit_with(tx, &[Event::new(kind, serde_json::json!({"user": id}))]).await
    }

    /// The user's roles beyond `user` (`user.updated` with `roles`).
    pub async fn set_roles(&self, id: &str, roles: &[String]) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE users SET roles = $1, updated_at = $2 WHERE id = $3")
            .bind(roles.join(" "))
            .bind(unix_now() as i64)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let event = Event::new(
            "user.updated",
            serde_json::json!({"user": id, "changed": {"roles": roles}}),
        );
        commit_with(tx, &[event]).await
    }

    pub async fn set_profile(
        &self,
        id: &str,
        name: &str,
        affiliation: &str,
        country: &str,
    ) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE users SET name = $1, affiliation = $2, country = $3, updated_at = $4 WHERE id = $5",
        )
        .bind(name.trim())
        .bind(affiliation.trim())
        .bind(country.trim())
        .bind(unix_now() as i64)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let event = Event::new(
            "user.updated",
            serde_json::json!({"user": id, "changed": {"name": name.trim(),
                "affiliation": affiliation.trim(), "country": country.trim()}}),
        );
        commit_with(tx, &[event]).await
    }

    /// Records a successful login: the previous one moves down.
    pub async fn record_login(&self, id: &str, ip: &str) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE users SET previous_login_at = login_at, previous_login_ip = login_ip,
                login_at = $1, login_ip = $2, login_count = login_count + 1 WHERE id = $3",
        )
        .bind(unix_now() as i64)
        .bind(ip)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A new one-time token for `user_id`; any older one of the same purpose is voided.
    /// Returns the token (only here; the database keeps its hash).
    pub async fn issue_token(
        &self,
        user_id: &str,
        purpose: Purpose,
        email: &str,
        ttl: Duration,
    ) -> Result<Secret<String>, DbError> {
        let token = random_token(24); // 192 bits
        let mut tx = self.pool.begin().await?;
        // The user's row is locked first (PostgreSQL: a row lock; SQLite: the write lock), so
        // that of two overlapping issues the second waits, then deletes the first one's token.
        // Without it both deleted nothing under READ COMMITTED and both links stayed live.
        sqlx::query("UPDATE users SET updated_at = updated_at WHERE id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM user_tokens WHERE user_id = $1 AND purpose = $2")
            .bind(user_id)
            .bind(purpose.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO user_tokens (hash, user_id, purpose, email, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash(&token))
        .bind(user_id)
        .bind(purpose.as_str())
        .bind(email)
        .bind((unix_now() + ttl.as_secs()) as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Secret::new(token))
    }

    /// Whether `token` is a live token of `purpose`: its user id and email, without using it.
    pub async fn peek_token(
        &self,
        token: &str,
        purpose: Purpose,
    ) -> Result<Option<(String, String)>, DbError> {
        let row = sqlx::query(
            "SELECT user_id, email FROM user_tokens WHERE hash = $1 AND purpose = $2 AND expires_at > $3",
        )
        .bind(token_hash(token))
        .bind(purpose.as_str())
        .bind(unix_now() as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some((r.try_get("user_id")?, r.try_get("email")?)),
            None => None,
        })
    }

    /// Uses `token` up: deletes it and returns its user id and email when it was live. Two
    /// requests racing with one token: only one gets it.
    pub async fn take_token(
        &self,
        token: &str,
        purpose: Purpose,
    ) -> Result<Option<(String, String)>, DbError> {
        let Some((user_id, email)) = self.peek_token(token, purpose).await? else {
            return Ok(None);
        };
        let deleted = sqlx::query("DELETE FROM user_tokens WHERE hash = $1")
            .bind(token_hash(token))
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok((deleted == 1).then_some((user_id, email)))
    }

    /// Deletes the one-time tokens that expired unused before `now` (Unix seconds); a used one
    /// is deleted when used. The number deleted.
    pub async fn purge_expired_tokens(&self, now: u64) -> Result<u64, DbError> {
        let mut n = 0;
        for query in [
            "DELETE FROM user_tokens WHERE expires_at < $1",
            "DELETE FROM webauthn_ceremonies WHERE expires_at < $1",
        ] {
            n += sqlx::query(query)
                .bind(now as i64)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(n)
    }

    /// Confirms `email` for the user: it becomes their address if it is not taken meanwhile.
    pub async fn confirm_email(&self, id: &str, email: &str) -> Result<(), DbError> {
        let now = unix_now() as i64;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE users SET email = $1, email_key = $2, email_confirmed_at = $3, updated_at = $4 WHERE id = $5",
        )
        .bind(email.trim())
        .bind(key(email))
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let event = Event::new(
            "user.confirmed",
            serde_json::json!({"user": id, "email": email.trim()}),
        );
        commit_with(tx, &[event]).await
    }

    /// Whether an address belongs to someone already.
    pub async fn email_taken(&self, email: &str) -> Result<bool, DbError> {
        let row = sqlx::query("SELECT id FROM users WHERE email_key = $1")
            .bind(key(email))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }
}

/// A user's authenticator app, as stored.
pub struct Totp {
    /// Sealed with the server secret (`factors::TOTP_PURPOSE`).
    pub sealed_secret: String,
    /// Whether a first code confirmed it: until then it is no factor.
    pub confirmed: bool,
}

/// A user's second factors.
pub struct Factors {
    /// Passkeys registered.
    pub passkeys: u64,
    /// A confirmed authenticator app.
    pub totp: bool,
    /// Unused recovery codes.
    pub recovery_left: u64,
}

impl Factors {
    /// Whether the user has a second factor (recovery codes alone are none: they stand in
    /// for one).
    pub fn any(&self) -> bool {
        self.passkeys > 0 || self.totp
    }

    /// What a second step can be finished with: `passkey` and `totp` when the user has them,
    /// and then `recovery` while recovery codes are left. Empty: no second factor.
    pub fn methods(&self) -> Vec<&'static str> {
        let mut methods = Vec::new();
        if self.passkeys > 0 {
            methods.push("passkey");
        }
        if self.totp {
            methods.push("totp");
        }
        if self.any() && self.recovery_left > 0 {
            methods.push("recovery");
        }
        methods
    }
}

/// A passkey as stored.
pub struct StoredPasskey {
    /// Ours, random: what the pages and the API name it by.
    pub id: String,
    pub user_id: String,
    /// The user handle the credential carries (a UUID, random per user).
    pub user_handle: String,
    pub name: String,
    /// webauthn-rs' record of it, JSON.
    pub passkey: String,
    pub backup_eligible: bool,
    pub backup_state: bool,
    pub created_at: u64,
    pub last_used_at: Option<u64>,
}

fn passkey_of(r: &AnyRow) -> Result<StoredPasskey, sqlx::Error> {
    Ok(StoredPasskey {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        user_handle: r.try_get("user_handle")?,
        name: r.try_get("name")?,
        passkey: r.try_get("passkey")?,
        backup_eligible: r.try_get::<i64, _>("backup_eligible")? != 0,
        backup_state: r.try_get::<i64, _>("backup_state")? != 0,
        created_at: r.try_get::<i64, _>("created_at")?.max(0) as u64,
        last_used_at: ts(r.try_get("last_used_at")?),
    })
}

/// A passkey to store: `passkey` is webauthn-rs' record (JSON), with its counter and flags.
pub struct NewPasskey<'a> {
    pub user_id: &'a str,
    pub credential_id: &'a str,
    pub user_handle: &'a str,
    pub name: &'a str,
    pub passkey: &'a str,
    pub counter: u32,
    pub backup_eligible: bool,
    pub backup_state: bool,
}

/// Second factors.
impl Db {
    pub async fn factors(&self, user_id: &str) -> Result<Factors, DbError> {
        let passkeys: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM user_passkeys WHERE user_id = $1")
                .bind(user_id)
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?;
        Ok(Factors {
            passkeys: passkeys.max(0) as u64,
            totp: self.totp(user_id).await?.is_some_and(|t| t.confirmed),
            recovery_left: self.recovery_codes_left(user_id).await?,
        })
    }

    /// The user's passkeys, oldest first.
    pub async fn passkeys(&self, user_id: &str) -> Result<Vec<StoredPasskey>, DbError> {
        let rows = sqlx::query(
            "SELECT id, user_id, user_handle, name, passkey, backup_eligible, backup_state,
                created_at, last_used_at
             FROM user_passkeys WHERE user_id = $1 ORDER BY created_at, id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(passkey_of).collect::<Result<_, _>>()?)
    }

    /// The passkey of a credential id (base64url), whoever's it is.
    pub async fn passkey_by_credential(
        &self,
        credential_id: &str,
    ) -> Result<Option<StoredPasskey>, DbError> {
        let row = sqlx::query(
            "SELECT id, user_id, user_handle, name, passkey, backup_eligible, backup_state,
                created_at, last_used_at
             FROM user_passkeys WHERE credential_id = $1",
        )
        .bind(credential_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(passkey_of).transpose()?)
    }

    /// Stores a new passkey; `None` when its credential id is registered already (to this
    /// user or another), else its id.
    pub async fn add_passkey(&self, new: &NewPasskey<'_>) -> Result<Option<String>, DbError> {
        let id = random_token(12);
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO user_passkeys (id, user_id, credential_id, user_handle, name, passkey,
                counter, backup_eligible, backup_state, created_at, last_used_at)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL
             WHERE NOT EXISTS (SELECT 1 FROM user_passkeys WHERE credential_id = $11)",
        )
        .bind(&id)
        .bind(new.user_id)
        .bind(new.credential_id)
        .bind(new.user_handle)
        .bind(new.name)
        .bind(new.passkey)
        .bind(i64::from(new.counter))
        .bind(i64::from(new.backup_eligible))
        .bind(i64::from(new.backup_state))
        .bind(unix_now() as i64)
        .bind(new.credential_id)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(r) if r.rows_affected() == 1 => {
                let event = second_factor(new.user_id, "passkey", "added");
                commit_with(tx, &[event]).await?;
                Ok(Some(id))
            }
            Ok(_) => Ok(None),
            // Two registrations of one credential racing: the unique index refused the second.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Records a sign-in with the passkey: when, and its record after it (a higher counter,
    /// changed backup flags). Refused (`false`) when another sign-in stored a counter at or
    /// above this one's meanwhile: of two racing assertions with one counter, one counts.
    pub async fn used_passkey(
        &self,
        id: &str,
        passkey: &str,
        counter: u32,
        backup: (bool, bool),
    ) -> Result<bool, DbError> {
        let n = sqlx::query(
            "UPDATE user_passkeys SET passkey = $1, counter = $2, backup_eligible = $3,
                backup_state = $4, last_used_at = $5
             WHERE id = $6 AND (counter < $7 OR $8 = 0)",
        )
        .bind(passkey)
        .bind(i64::from(counter))
        .bind(i64::from(backup.0))
        .bind(i64::from(backup.1))
        .bind(unix_now() as i64)
        .bind(id)
        .bind(i64::from(counter))
        .bind(i64::from(counter))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Renames the user's passkey; whether it was theirs.
    pub async fn rename_passkey(
        &self,
        user_id: &str,
        id: &str,
        name: &str,
    ) -> Result<bool, DbError> {
        let n = sqlx::query("UPDATE user_passkeys SET name = $1 WHERE user_id = $2 AND id = $3")
            .bind(name)
            .bind(user_id)
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Removes the user's passkey (`None`: every passkey of the user); how many went.
    pub async fn remove_passkeys(&self, user_id: &str, id: Option<&str>) -> Result<u64, DbError> {
        let q = match id {
            Some(id) => sqlx::query("DELETE FROM user_passkeys WHERE user_id = $1 AND id = $2")
                .bind(user_id)
                .bind(id),
            None => sqlx::query("DELETE FROM user_passkeys WHERE user_id = $1").bind(user_id),
        };
        let mut tx = self.pool.begin().await?;
        let n = q.execute(&mut *tx).await?.rows_affected();
        let events = if n > 0 {
            vec![second_factor(user_id, "passkey", "removed")]
        } else {
            vec![]
        };
        commit_with(tx, &events).await?;
        Ok(n)
    }

    /// Keeps the state of a WebAuthn ceremony of `kind` for `user_id` (empty: a sign-in that
    /// names no one yet) until `ttl`; the token for the browser's cookie.
    pub async fn begin_ceremony(
        &self,
        user_id: &str,
        kind: &str,
        state: &str,
        ttl: Duration,
    ) -> Result<Secret<String>, DbError> {
        let token = random_token(24);
        sqlx::query(
            "INSERT INTO webauthn_ceremonies (hash, user_id, kind, state, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash(&token))
        .bind(user_id)
        .bind(kind)
        .bind(state)
        .bind((unix_now() + ttl.as_secs()) as i64)
        .execute(&self.pool)
        .await?;
        Ok(Secret::new(token))
    }

    /// Uses up the ceremony of `token`: its user id, kind and state when it was live. Of two
    /// requests with one token, one gets it.
    pub async fn take_ceremony(
        &self,
        token: &str,
    ) -> Result<Option<(String, String, String)>, DbError> {
        let hash = token_hash(token);
        let Some(row) = sqlx::query(
            "SELECT user_id, kind, state FROM webauthn_ceremonies WHERE hash = $1 AND expires_at > $2",
        )
        .bind(&hash)
        .bind(unix_now() as i64)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let deleted = sqlx::query("DELETE FROM webauthn_ceremonies WHERE hash = $1")
            .bind(&hash)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if deleted != 1 {
            return Ok(None);
        }
        Ok(Some((
            row.try_get("user_id")?,
            row.try_get("kind")?,
            row.try_get("state")?,
        )))
    }

    /// Whether the user said "not now" to the offer of a passkey.
    pub async fn passkey_offer_declined(&self, user_id: &str) -> Result<bool, DbError> {
        Ok(
            sqlx::query("SELECT 1 AS n FROM passkey_offers_declined WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    /// Remembers the user's "not now" to the offer of a passkey.
    pub async fn decline_passkey_offer(&self, user_id: &str) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO passkey_offers_declined (user_id, declined_at)
             SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM passkey_offers_declined WHERE user_id = $3)",
        )
        .bind(user_id)
        .bind(unix_now() as i64)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The identities of `user_id`, oldest first.
    pub async fn identities(&self, user_id: &str) -> Result<Vec<Identity>, DbError> {
        let rows = sqlx::query(
            "SELECT * FROM user_identities WHERE user_id = $1 ORDER BY created_at, provider",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(identity_of).collect::<Result<_, _>>()?)
    }

    /// Every identity, for import's checks and export.
    pub async fn all_identities(&self) -> Result<Vec<Identity>, DbError> {
        let rows = sqlx::query("SELECT * FROM user_identities ORDER BY user_id, created_at")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(identity_of).collect::<Result<_, _>>()?)
    }

    /// The identity `subject` at `provider`, whoever holds it.
    pub async fn identity(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<Option<Identity>, DbError> {
        let row = sqlx::query("SELECT * FROM user_identities WHERE provider = $1 AND subject = $2")
            .bind(provider)
            .bind(subject)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(identity_of).transpose()?)
    }

    /// Links `subject` at `provider` to `user_id`: `false` when the identity is already
    /// linked (to anyone: the caller tells who).
    pub async fn link_identity(
        &self,
        provider: &str,
        subject: &str,
        user_id: &str,
    ) -> Result<bool, DbError> {
        let done = sqlx::query(
            "INSERT INTO user_identities (provider, subject, user_id, created_at, last_used_at)
             VALUES ($1, $2, $3, $4, NULL) ON CONFLICT (provider, subject) DO NOTHING",
        )
        .bind(provider)
        .bind(subject)
        .bind(user_id)
        .bind(unix_now() as i64)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(done == 1)
    }

    /// Removes `user_id`'s identity at `provider`: whether there was one.
    pub async fn unlink_identity(&self, user_id: &str, provider: &str) -> Result<bool, DbError> {
        let done = sqlx::query("DELETE FROM user_identities WHERE user_id = $1 AND provider = $2")
            .bind(user_id)
            .bind(provider)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(done > 0)
    }

    /// Records a sign-in with the identity.
    pub async fn used_identity(&self, provider: &str, subject: &str) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE user_identities SET last_used_at = $1 WHERE provider = $2 AND subject = $3",
        )
        .bind(unix_now() as i64)
        .bind(provider)
        .bind(subject)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that session `sid` of `user_id` began with `upstream_sid` at `provider`.
    pub async fn record_federated_session(
        &self,
        provider: &str,
        upstream_sid: Option<&str>,
        sid: &str,
        user_id: &str,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO federated_sessions (provider, upstream_sid, sid, user_id, created_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(provider)
        .bind(upstream_sid.unwrap_or(""))
        .bind(sid)
        .bind(user_id)
        .bind(unix_now() as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The (user, sid) of the sessions begun at `provider`: those of its session
    /// `upstream_sid`, or with none, every one of `user_id`'s.
    pub async fn federated_sessions(
        &self,
        provider: &str,
        upstream_sid: Option<&str>,
        user_id: Option<&str>,
    ) -> Result<Vec<(String, String)>, DbError> {
        let rows = match (upstream_sid, user_id) {
            (Some(up), Some(user)) => sqlx::query(
                "SELECT user_id, sid FROM federated_sessions
                 WHERE provider = $1 AND upstream_sid = $2 AND user_id = $3",
            )
            .bind(provider)
            .bind(up)
            .bind(user),
            (Some(up), None) => sqlx::query(
                "SELECT user_id, sid FROM federated_sessions WHERE provider = $1 AND upstream_sid = $2",
            )
            .bind(provider)
            .bind(up),
            (None, Some(user)) => sqlx::query(
                "SELECT user_id, sid FROM federated_sessions WHERE provider = $1 AND user_id = $2",
            )
            .bind(provider)
            .bind(user),
            (None, None) => return Ok(Vec::new()),
        }
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("user_id")?, r.try_get("sid")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(DbError::from)
    }

    /// Forgets the records of sessions begun before `before` (they have ended).
    pub async fn purge_federated_sessions(&self, before: u64) -> Result<u64, DbError> {
        Ok(
            sqlx::query("DELETE FROM federated_sessions WHERE created_at < $1")
                .bind(before as i64)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    /// Every user's sealed, confirmed TOTP secret (`user export --include-secrets`).
    pub async fn all_totp(&self) -> Result<BTreeMap<String, String>, DbError> {
        let rows =
            sqlx::query("SELECT user_id, secret FROM user_totp WHERE confirmed_at IS NOT NULL")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("user_id")?, r.try_get("secret")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(DbError::from)
    }

    /// Writes checked imported users in one transaction: all or nothing. (created, updated)
    pub async fn import_users(&self, users: &[ImportedUser]) -> Result<(u64, u64), DbError> {
        let now = unix_now() as i64;
        let (mut created, mut updated) = (0, 0);
        let mut events = Vec::new();
        let mut tx = self.pool.begin().await?;
        for u in users {
            let confirmed_at = u.email_confirmed.then_some(now);
            let id = match &u.existing {
                None => {
                    let id = new_user_id(&mut tx).await?;
                    sqlx::query(
                        "INSERT INTO users (id, username, username_key, email, email_key, name,
                            affiliation, country, password_hash, active, email_confirmed_at,
                            roles, created_at, updated_at, login_count)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 0)",
                    )
                    .bind(&id)
                    .bind(u.username.trim())
                    .bind(key(&u.username))
                    .bind(u.email.trim())
                    .bind(key(&u.email))
                    .bind(u.name.trim())
                    .bind(u.affiliation.trim())
                    .bind(u.country.trim())
                    .bind(u.password_hash.as_deref())
                    .bind(i64::from(u.active))
                    .bind(confirmed_at)
                    .bind(u.roles.join(" "))
                    .bind(u.created_at.map_or(now, |t| t as i64))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    created += 1;
                    events.push(Event::new(
                        "user.registered",
                        serde_json::json!({"user": id, "username": u.username, "email": u.email,
                            "email_confirmed": u.email_confirmed, "roles": u.roles,
                            "imported": true}),
                    ));
                    id
                }
                Some(id) => {
                    // What the line leaves out stays as it is: the hash, the creation time,
                    // and a confirmation already made.
                    sqlx::query(
                        "UPDATE users SET email = $1, email_key = $2, name = $3, affiliation = $4,
                            country = $5, password_hash = COALESCE($6, password_hash),
                            active = $7,
                            email_confirmed_at = CASE WHEN email_key = $8
                                THEN COALESCE(email_confirmed_at, $9) ELSE $10 END,
                            roles = $11, created_at = COALESCE($12, created_at), updated_at = $13
                         WHERE id = $14",
                    )
                    .bind(u.email.trim())
                    .bind(key(&u.email))
                    .bind(u.name.trim())
                    .bind(u.affiliation.trim())
                    .bind(u.country.trim())
                    .bind(u.password_hash.as_deref())
                    .bind(i64::from(u.active))
                    .bind(key(&u.email))
                    .bind(confirmed_at)
                    .bind(confirmed_at)
                    .bind(u.roles.join(" "))
                    .bind(u.created_at.map(|t| t as i64))
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    updated += 1;
                    events.push(Event::new(
                        "user.updated",
                        serde_json::json!({"user": id, "changed": {"email": u.email,
                            "name": u.name, "affiliation": u.affiliation, "country": u.country,
                            "active": u.active, "roles": u.roles}, "imported": true}),
                    ));
                    id.clone()
                }
            };
            for (provider, subject) in &u.identities {
                sqlx::query(
                    "INSERT INTO user_identities (provider, subject, user_id, created_at,
                        last_used_at)
                     VALUES ($1, $2, $3, $4, NULL) ON CONFLICT (provider, subject) DO NOTHING",
                )
                .bind(provider)
                .bind(subject)
                .bind(&id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            if let Some(sealed) = &u.sealed_totp {
                sqlx::query("DELETE FROM user_totp WHERE user_id = $1")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO user_totp (user_id, secret, confirmed_at, last_step, created_at)
                     VALUES ($1, $2, $3, 0, $4)",
                )
                .bind(&id)
                .bind(sealed)
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        commit_with(tx, &events).await?;
        Ok((created, updated))
    }

    /// The user's authenticator app, confirmed or not.
    pub async fn totp(&self, user_id: &str) -> Result<Option<Totp>, DbError> {
        let row = sqlx::query("SELECT secret, confirmed_at FROM user_totp WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(Totp {
                sealed_secret: r.try_get("secret")?,
                confirmed: r.try_get::<Option<i64>, _>("confirmed_at")?.is_some(),
            }),
            None => None,
        })
    }

    /// Starts an enrolment: `sealed_secret`, unconfirmed, in place of any unconfirmed one. A
    /// confirmed app stays until removed (`false`).
    pub async fn begin_totp(&self, user_id: &str, sealed_secret: &str) -> Result<bool, DbError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM user_totp WHERE user_id = $1 AND confirmed_at IS NULL")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO user_totp (user_id, secret, confirmed_at, last_step, created_at)
             SELECT $1, $2, NULL, 0, $3 WHERE NOT EXISTS (SELECT 1 FROM user_totp WHERE user_id = $4)",
        )
        .bind(user_id)
        .bind(sealed_secret)
        .bind(unix_now() as i64)
        .bind(user_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(inserted == 1)
    }

    /// Records that the code of `step` was used, if no code of it or a later step was: the
    /// replay check, atomic on both backends. With `confirm`, the enrolment is confirmed too.
    pub async fn use_totp_step(
        &self,
        user_id: &str,
        step: u64,
        confirm: bool,
    ) -> Result<bool, DbError> {
        // (Each placeholder once and in order: how both backends read them through Any.)
        let query = if confirm {
            sqlx::query(
                "UPDATE user_totp SET last_step = $1, confirmed_at = $2
                 WHERE user_id = $3 AND last_step < $4 AND confirmed_at IS NULL",
            )
            .bind(step as i64)
            .bind(unix_now() as i64)
        } else {
            sqlx::query(
                "UPDATE user_totp SET last_step = $1
                 WHERE user_id = $2 AND last_step < $3 AND confirmed_at IS NOT NULL",
            )
            .bind(step as i64)
        };
        let mut tx = self.pool.begin().await?;
        let n = query
            .bind(user_id)
            .bind(step as i64)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let events = if confirm && n == 1 {
            vec![second_factor(user_id, "totp", "added")]
        } else {
            vec![]
        };
        commit_with(tx, &events).await?;
        Ok(n == 1)
    }

    /// Removes the user's authenticator app; whether there was one.
    pub async fn remove_totp(&self, user_id: &str) -> Result<bool, DbError> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query("DELETE FROM user_totp WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let events = if n > 0 {
            vec![second_factor(user_id, "totp", "removed")]
        } else {
            vec![]
        };
        commit_with(tx, &events).await?;
        Ok(n > 0)
    }

    /// Replaces the user's recovery codes with these hashes (an empty list removes them).
    pub async fn replace_recovery_codes(
        &self,
        user_id: &str,
        hashes: &[String],
    ) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM user_recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let now = unix_now() as i64;
        for hash in hashes {
            sqlx::query(
                "INSERT INTO user_recovery_codes (user_id, hash, used_at, created_at) VALUES ($1, $2, NULL, $3)",
            )
            .bind(user_id)
            .bind(hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Uses the recovery code of `hash`, once: whether it was the user's and unused.
    pub async fn use_recovery_code(&self, user_id: &str, hash: &str) -> Result<bool, DbError> {
        let n = sqlx::query(
            "UPDATE user_recovery_codes SET used_at = $1 WHERE user_id = $2 AND hash = $3 AND used_at IS NULL",
        )
        .bind(unix_now() as i64)
        .bind(user_id)
        .bind(hash)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// How many of the user's recovery codes are unused.
    pub async fn recovery_codes_left(&self, user_id: &str) -> Result<u64, DbError> {
        let n: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM user_recovery_codes WHERE user_id = $1 AND used_at IS NULL",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?
        .try_get("n")?;
        Ok(n.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn tables(db: &Db) -> Vec<String> {
        sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(db.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>("name"))
            .collect()
    }

    /// Issue 17, §3: accounts creates its own tables and those of the schemas added, no
    /// other (an accounts-only build adds none: no `oauth_*` table), each version once.
    #[tokio::test]
    async fn a_database_holds_only_the_tables_of_the_modules_that_run() {
        static EXTRA: Schema = Schema {
            module: "extra",
            migrations: &[(1, &["CREATE TABLE extra_things (id TEXT PRIMARY KEY)"])],
        };
        let dir = tempfile::tempdir().unwrap();
        let url = Secret::new(format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("a.db").display()
        ));
        let db = Db::connect(Some(&url), dir.path()).await.unwrap();
        db.migrate(&[]).await.unwrap();
        let only_accounts = tables(&db).await;
        assert_eq!(
            only_accounts,
            [
                "audit_events",
                "federated_sessions",
                "gatehouse_schema",
                "logout_tokens_seen",
                "outbox",
                "passkey_offers_declined",
                "roles",
                "user_identities",
                "user_passkeys",
                "user_recovery_codes",
                "user_tokens",
                "user_tombstones",
                "user_totp",
                "users",
                "webauthn_ceremonies"
            ],
        );
        db.migrate(&[&EXTRA]).await.unwrap();
        db.migrate(&[&EXTRA]).await.unwrap();
        assert!(tables(&db).await.contains(&"extra_things".to_owned()));
        let versions: Vec<(String, i64)> =
            sqlx::query("SELECT module, version FROM gatehouse_schema ORDER BY module, version")
                .fetch_all(db.pool())
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get("module"), r.get("version")))
                .collect();
        assert_eq!(
            versions,
            [
                ("accounts".to_owned(), 1),
                ("accounts".to_owned(), 2),
                ("accounts".to_owned(), 3),
                ("accounts".to_owned(), 4),
                ("accounts".to_owned(), 5),
                ("accounts".to_owned(), 6),
                ("accounts".to_owned(), 7),
                ("accounts".to_owned(), 8),
                ("accounts".to_owned(), 9),
                ("accounts".to_owned(), 10),
                ("accounts".to_owned(), 11),
                ("extra".to_owned(), 1)
            ]
        );
    }

    /// Holders of a role and the counts of the roles page come from the database, exactly:
    /// a role whose name LIKE would also match (`_`) counts no one else.
    #[tokio::test]
    async fn role_holders_and_counts_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(None, dir.path()).await.unwrap();
        for (name, roles) in [
            ("ann", vec!["admin", "a_b"]),
            ("bob", vec!["axb"]),
            ("cy", vec![]),
            ("di", vec!["a_b"]),
        ] {
            let roles: Vec<String> = roles.into_iter().map(String::from).collect();
            db.create_user(&NewUser {
                username: name,
                email: &format!("{name}@example.org"),
                name,
                password_hash: None,
                active: true,
                confirmed: true,
                roles: &roles,
            })
            .await
            .unwrap();
        }
        let names = |users: Vec<User>| {
            let mut n: Vec<String> = users.into_iter().map(|u| u.username).collect();
            n.sort();
            n
        };
        assert_eq!(names(db.holding("a_b").await.unwrap()), ["ann", "di"]);
        assert_eq!(names(db.holding("admin").await.unwrap()), ["ann"]);
        assert!(db.holding("a").await.unwrap().is_empty());
        let (all, held) = db.role_counts().await.unwrap();
        assert_eq!(all, 4);
        assert_eq!(
            held.into_iter().collect::<Vec<_>>(),
            [
                ("a_b".to_owned(), 2),
                ("admin".to_owned(), 1),
                ("axb".to_owned(), 1)
            ]
        );
    }

    /// Issue 18, in-process: an authenticator app is no factor until confirmed, a step is
    /// used once and never one older than the last, and recovery codes work once and are
    /// voided by a new set.
    #[tokio::test]
    async fn totp_steps_and_recovery_codes_are_used_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(None, dir.path()).await.unwrap();
        assert!(db.begin_totp("u", "sealed-1").await.unwrap());
        assert!(!db.totp("u").await.unwrap().unwrap().confirmed);
        assert!(
            !db.use_totp_step("u", 10, false).await.unwrap(),
            "unconfirmed"
        );
        assert!(db.use_totp_step("u", 10, true).await.unwrap());
        assert!(db.totp("u").await.unwrap().unwrap().confirmed);
        assert!(
            !db.begin_totp("u", "sealed-2").await.unwrap(),
            "a confirmed app stays"
        );
        assert_eq!(
            db.totp("u").await.unwrap().unwrap().sealed_secret,
            "sealed-1"
        );
        assert!(!db.use_totp_step("u", 10, false).await.unwrap(), "a replay");
        assert!(
            !db.use_totp_step("u", 9, false).await.unwrap(),
            "an older step"
        );
        assert!(db.use_totp_step("u", 11, false).await.unwrap());
        assert!(!db.use_totp_step("other", 12, false).await.unwrap());

        let first = ["h1".to_owned(), "h2".to_owned()];
        db.replace_recovery_codes("u", &first).await.unwrap();
        assert_eq!(db.recovery_codes_left("u").await.unwrap(), 2);
        assert!(db.use_recovery_code("u", "h1").await.unwrap());
        assert!(
            !db.use_recovery_code("u", "h1").await.unwrap(),
            "used twice"
        );
        assert!(
            !db.use_recovery_code("other", "h2").await.unwrap(),
            "another user's"
        );
        assert_eq!(db.recovery_codes_left("u").await.unwrap(), 1);
        db.replace_recovery_codes("u", &["h3".to_owned()])
            .await
            .unwrap();
        assert!(
            !db.use_recovery_code("u", "h2").await.unwrap(),
            "the old set"
        );
        assert!(db.use_recovery_code("u", "h3").await.unwrap());
        assert!(db.remove_totp("u").await.unwrap());
        assert!(db.totp("u").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn expired_one_time_tokens_are_purged_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(None, dir.path()).await.unwrap();
        let ttl = Duration::from_secs(60);
        let reset = db
            .issue_token("u", Purpose::Reset, "a@example.org", ttl)
            .await
            .unwrap();
        let now = unix_now();
        assert_eq!(db.purge_expired_tokens(now).await.unwrap(), 0);
        assert!(db
            .peek_token(reset.expose(), Purpose::Reset)
            .await
            .unwrap()
            .is_some());
        assert_eq!(db.purge_expired_tokens(now + 61).await.unwrap(), 1);
        assert_eq!(db.purge_expired_tokens(now + 61).await.unwrap(), 0);
    }
}
