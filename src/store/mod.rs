//! Session stores behind one small trait: Redis (shared by many gatehouse instances) or the
//! embedded SQLite file (a single host, no other service to run).
//!
//! A store keeps sessions by [`TokenHash`], never by token, and tells every running instance
//! about revocations through [`Invalidation`]s so that caches drop revoked sessions. Every
//! call has a deadline; a store that cannot answer in time is [`StoreError::Unavailable`],
//! which `/auth` turns into 503, never into a 200.

pub mod counters;
pub mod embedded;
pub mod redis;

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::credential::TokenHash;
use crate::error::ConfigError;
use crate::secret::Secret;
use crate::session::Session;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer in time or at all: a dependency fault (503).
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with something that is not a session record: a bug or a foreign
    /// writer. Also fails closed.
    #[error("corrupt session record: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn fault(&self) -> crate::error::Fault {
        match self {
            StoreError::Unavailable(_) => crate::error::Fault::Dependency,
            StoreError::Corrupt(_) => crate::error::Fault::Bug,
        }
    }
}

/// What a cache must drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// One session was revoked.
    Key(TokenHash),
    /// Revocations may have been missed (channel lost) or many sessions went at once.
    All,
    /// The revocation channel is followed (again): the cache may be used, after a flush.
    Followed,
    /// The store answers but its revocation channel cannot be followed (e.g. an ACL without
    /// channel rights): nothing may be cached or served from the cache until it is.
    NotFollowed,
}

/// The operations every store offers. Implementations must bound every call by the store
/// timeout and must never log a token.
pub trait SessionStore: Send + Sync {
    /// The live session for `key`, if any. The read path: never writes.
    fn get(
        &self,
        key: &TokenHash,
    ) -> impl Future<Output = Result<Option<Session>, StoreError>> + Send;
    /// Stores a session until its expiry and indexes it under its user.
    fn put(
        &self,
        key: &TokenHash,
        session: &Session,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Deletes one session and tells every instance. `true` when it existed.
    fn revoke(&self, key: &TokenHash) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Deletes every session of a user ("log out everywhere"), but `except` if given ("log
    /// out other sessions"), and tells every instance; the keys deleted. A session created
    /// while this runs is either deleted or stays indexed for the next call.
    fn revoke_user(
        &self,
        sub: &str,
        except: Option<&TokenHash>,
    ) -> impl Future<Output = Result<Vec<TokenHash>, StoreError>> + Send;
    /// Rewrites a live session's record with a new `last_seen`; never brings back a session
    /// that is gone. Off the request path, at most once per `--touch-interval`.
    fn touch(
        &self,
        key: &TokenHash,
        session: &Session,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A user's live sessions with their store keys.
    fn list_user(
        &self,
        sub: &str,
    ) -> impl Future<Output = Result<Vec<(TokenHash, Session)>, StoreError>> + Send;
    /// Whether the store answers.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Starts delivering revocations (from every instance) to `tx`.
    fn watch_invalidations(&self, tx: mpsc::Sender<Invalidation>);
}

/// Where sessions live and how long a store call may take (from `--redis-url`,
/// `--redis-prefix`, `--data-dir`, `--store-timeout`).
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Redis, or (without) the embedded store in `data_dir`.
    pub redis_url: Option<Secret<String>>,
    /// Prefix of every Redis key and channel.
    pub redis_prefix: String,
    pub data_dir: std::path::PathBuf,
    /// Deadline of every store call.
    pub timeout: Duration,
}

/// The configured store. An enum rather than a trait object: the hot path's store call is a
/// plain match, and both arms are visible from here.
#[derive(Clone)]
pub enum Store {
    Redis(redis::RedisStore),
    Embedded(embedded::EmbeddedStore),
}

impl Store {
    /// Opens the store named by the flags. `connect_timeout` bounds the first connection;
    /// `Err(StoreError)` then means the store is unreachable (exit 69 for the CLI).
    pub async fn open(
        settings: &StoreSettings,
        wait: Option<Duration>,
    ) -> Result<Store, OpenError> {
        match &settings.redis_url {
            Some(url) => Ok(Store::Redis(
                redis::RedisStore::connect(settings, url.expose(), wait).await?,
            )),
            None => Ok(Store::Embedded(
                embedded::EmbeddedStore::open(settings).await?,
            )),
        }
    }

    /// The Redis store, when that is the one configured.
    pub fn redis(&self) -> Option<&redis::RedisStore> {
        match self {
            Store::Redis(r) => Some(r),
            Store::Embedded(_) => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Store::Redis(_) => "redis",
            Store::Embedded(_) => "embedded",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Redis($s) => $e,
            Store::Embedded($s) => $e,
        }
    };
}

impl SessionStore for Store {
    async fn get(&self, key: &TokenHash) -> Result<Option<Session>, StoreError> {
        dispatch!(self, s => s.get(key).await)
    }
    async fn put(&self, key: &TokenHash, session: &Session) -> Result<(), StoreError> {
        dispatch!(self, s => s.put(key, session).await)
    }
    async fn revoke(&self, key: &TokenHash) -> Result<bool, StoreError> {
        dispatch!(self, s => s.revoke(key).await)
    }
    async fn revoke_user(
        &self,
        sub: &str,
        except: Option<&TokenHash>,
    ) -> Result<Vec<TokenHash>, StoreError> {
        dispatch!(self, s => s.revoke_user(sub, except).await)
    }
    async fn touch(&self, key: &TokenHash, session: &Session) -> Result<(), StoreError> {
        dispatch!(self, s => s.touch(key, session).await)
    }
    async fn list_user(&self, sub: &str) -> Result<Vec<(TokenHash, Session)>, StoreError> {
        dispatch!(self, s => s.list_user(sub).await)
    }
    async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping().await)
    }
    fn watch_invalidations(&self, tx: mpsc::Sender<Invalidation>) {
        dispatch!(self, s => s.watch_invalidations(tx))
    }
}

fn decode(raw: &[u8]) -> Result<Session, StoreError> {
    serde_json::from_slice(raw).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn encode(session: &Session) -> String {
    serde_json::to_string(session).expect("a session always serialises")
}

/// Where sessions live. The same for every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Redis URL: redis://, rediss://, redis+sentinel://h:p,h:p/service, redis+cluster://h:p,h:p.
    /// Without it, the embedded store in --data-dir is used.
    #[arg(long, env = "GATEHOUSE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Secret<String>>,
    /// Prefix of every Redis key and channel.
    #[arg(long, env = "GATEHOUSE_REDIS_PREFIX", default_value = "gh:")]
    pub redis_prefix: String,
    /// Directory of the embedded store (and of the keys, unless --keys-dir says otherwise).
    #[arg(long, env = "GATEHOUSE_DATA_DIR", default_value = "./gatehouse-data")]
    pub data_dir: std::path::PathBuf,
    /// Deadline of every store call.
    #[arg(long, env = "GATEHOUSE_STORE_TIMEOUT", default_value = "250ms", value_parser = crate::duration::parse_duration)]
    pub store_timeout: Duration,
}

impl StoreArgs {
    /// The store's settings, free of the command line.
    pub fn settings(&self) -> StoreSettings {
        StoreSettings {
            redis_url: self.redis_url.clone(),
            redis_prefix: self.redis_prefix.clone(),
            data_dir: self.data_dir.clone(),
            timeout: self.store_timeout,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.store_timeout.is_zero() {
            return Err(ConfigError::new("--store-timeout", "must be more than 0"));
        }
        if let Some(url) = &self.redis_url {
            redis::parse_url(url.expose())?;
        }
        Ok(())
    }
}

/// How long an administrative command waits at least for the store: to connect and per call.
/// The server's `--store-timeout` (250 ms by default) guards a hot path; an operator would
/// rather wait a moment than see a `revoke` fail halfway on a busy Redis.
pub const COMMAND_WAIT: Duration = Duration::from_secs(5);

impl Store {
    /// The store of an administrative command (`session`, `user`, `client`, `token`), which
    /// waits at least [`COMMAND_WAIT`].
    pub async fn open_for_command(args: &StoreArgs) -> Result<Store, OpenError> {
        args.validate()?;
        let mut settings = args.settings();
        settings.timeout = settings.timeout.max(COMMAND_WAIT);
        Store::open(&settings, Some(COMMAND_WAIT)).await
    }
}
