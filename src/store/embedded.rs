//! Embedded store: one SQLite file in `--data-dir` (WAL mode), so a single host needs no
//! other service. It survives restarts, and the CLI can use it while the server runs.
//!
//! Revocations are rows in a `revocations` log; every running server polls it (every
//! 250 ms) and drops what it names from its cache, which keeps revocation within 1 s
//! without any channel between processes.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;
use tokio::sync::mpsc;

use super::StoreSettings;
use super::{decode, encode, Invalidation, SessionStore, StoreError};
use crate::credential::TokenHash;
use crate::error::ConfigError;
use crate::session::{unix_now, Session};

const POLL: Duration = Duration::from_millis(250);
/// Revocation rows older than this are pruned; no cache entry lives that long.
const REVOCATION_RETENTION_SECS: i64 = 24 * 3600;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS sessions (
        key TEXT PRIMARY KEY NOT NULL,
        sub TEXT NOT NULL,
        record TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS sessions_sub ON sessions (sub)",
    "CREATE TABLE IF NOT EXISTS revocations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL,
        at INTEGER NOT NULL
    )",
];

#[derive(Clone)]
pub struct EmbeddedStore {
    pool: SqlitePool,
    timeout: Duration,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl EmbeddedStore {
    pub async fn open(settings: &StoreSettings) -> Result<Self, super::OpenError> {
        let dir = &settings.data_dir;
        crate::files::private_dir(dir, "--data-dir")?;
        let pool = Self::open_file(&dir.join("gatehouse.db"))
            .await
            .map_err(|e| {
                ConfigError::new(
                    "--data-dir",
                    format!("cannot open the store in {}: {e}", dir.display()),
                )
            })?;
        for stmt in SCHEMA {
            sqlx::query(*stmt).execute(&pool).await.map_err(|e| {
                ConfigError::new("--data-dir", format!("cannot prepare the store: {e}"))
            })?;
        }
        Ok(EmbeddedStore {
            pool,
            timeout: settings.timeout,
        })
    }

    async fn open_file(path: &Path) -> Result<SqlitePool, sqlx::Error> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL: a crash loses no committed transaction of the database itself,
            // at most the last ones on power loss; sessions are re-creatable by logging in.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options)
            .await
    }

    async fn call<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }

    async fn last_revocation(&self) -> Result<i64, StoreError> {
        let row = self
            .call(sqlx::query("SELECT COALESCE(MAX(id), 0) FROM revocations").fetch_one(&self.pool))
            .await?;
        row.try_get(0).map_err(unavailable)
    }

    /// Revocations after `after`, and housekeeping of old rows.
    async fn revocations_since(&self, after: i64) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = self
            .call(
                sqlx::query("SELECT id, key FROM revocations WHERE id > ? ORDER BY id")
                    .bind(after)
                    .fetch_all(&self.pool),
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0).map_err(unavailable)?,
                    r.try_get(1).map_err(unavailable)?,
                ))
            })
            .collect()
    }

    async fn prune(&self) -> Result<(), StoreError> {
        let now = unix_now() as i64;
        self.call(
            sqlx::query("DELETE FROM sessions WHERE expires_at <= ?")
                .bind(now)
                .execute(&self.pool),
        )
        .await?;
        self.call(
            sqlx::query("DELETE FROM revocations WHERE at < ?")
                .bind(now - REVOCATION_RETENTION_SECS)
                .execute(&self.pool),
        )
        .await?;
        Ok(())
    }
}

impl SessionStore for EmbeddedStore {
    async fn get(&self, key: &TokenHash) -> Result<Option<Session>, StoreError> {
        let now = unix_now();
        let row = self
            .call(
                sqlx::query("SELECT record FROM sessions WHERE key = ? AND expires_at > ?")
                    .bind(key.encode())
                    .bind(now as i64)
                    .fetch_optional(&self.pool),
            )
            .await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let raw: String = row.try_get(0).map_err(unavailable)?;
                Ok(Some(decode(raw.as_bytes())?).filter(|s| s.is_live(now)))
            }
        }
    }

    async fn put(&self, key: &TokenHash, session: &Session) -> Result<(), StoreError> {
        self.call(
            sqlx::query("INSERT OR REPLACE INTO sessions (key, sub, record, expires_at) VALUES (?, ?, ?, ?)")
                .bind(key.encode())
                .bind(&session.sub)
                .bind(encode(session))
                .bind(session.expires_at as i64)
                .execute(&self.pool),
        )
        .await?;
        Ok(())
    }

    async fn revoke(&self, key: &TokenHash) -> Result<bool, StoreError> {
        let key = key.encode();
        let pool = &self.pool;
        self.call(async {
            let mut tx = pool.begin().await?;
            let deleted = sqlx::query("DELETE FROM sessions WHERE key = ?")
                .bind(&key)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("INSERT INTO revocations (key, at) VALUES (?, ?)")
                .bind(&key)
                .bind(unix_now() as i64)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(deleted > 0)
        })
        .await
    }

    async fn revoke_user(
        &self,
        sub: &str,
        except: Option<&TokenHash>,
    ) -> Result<Vec<TokenHash>, StoreError> {
        let pool = &self.pool;
        let except = except.map(TokenHash::encode).unwrap_or_default();
        self.call(async {
            let mut tx = pool.begin().await?;
            // One statement deletes and names what it deleted: nothing created in between
            // can be deleted unlogged or logged undeleted.
            let keys: Vec<String> =
                sqlx::query("DELETE FROM sessions WHERE sub = ? AND key != ? RETURNING key")
                    .bind(sub)
                    .bind(&except)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?;
            for key in &keys {
                sqlx::query("INSERT INTO revocations (key, at) VALUES (?, ?)")
                    .bind(key)
                    .bind(unix_now() as i64)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(keys.iter().filter_map(|k| TokenHash::decode(k)).collect())
        })
        .await
    }

    async fn touch(&self, key: &TokenHash, session: &Session) -> Result<(), StoreError> {
        self.call(
            sqlx::query("UPDATE sessions SET record = ? WHERE key = ?")
                .bind(encode(session))
                .bind(key.encode())
                .execute(&self.pool),
        )
        .await?;
        Ok(())
    }

    async fn list_user(&self, sub: &str) -> Result<Vec<(TokenHash, Session)>, StoreError> {
        let rows = self
            .call(
                sqlx::query("SELECT key, record FROM sessions WHERE sub = ? AND expires_at > ?")
                    .bind(sub)
                    .bind(unix_now() as i64)
                    .fetch_all(&self.pool),
            )
            .await?;
        let mut out = Vec::new();
        for row in rows {
            let key: String = row.try_get(0).map_err(unavailable)?;
            let raw: String = row.try_get(1).map_err(unavailable)?;
            if let Some(h) = TokenHash::decode(&key) {
                out.push((h, decode(raw.as_bytes())?));
            }
        }
        out.sort_by_key(|(_, s)| s.created_at);
        Ok(out)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(sqlx::query("SELECT 1").execute(&self.pool))
            .await
            .map(|_| ())
    }

    fn watch_invalidations(&self, tx: mpsc::Sender<Invalidation>) {
        let store = self.clone();
        tokio::spawn(async move {
            let mut last = loop {
                match store.last_revocation().await {
                    Ok(id) => break id,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the revocation log yet");
                        tokio::time::sleep(POLL).await;
                    }
                }
            };
            if tx.send(Invalidation::Followed).await.is_err() {
                return;
            }
            let mut ticks = 0u64;
            let mut healthy = true;
            loop {
                tokio::time::sleep(POLL).await;
                match store.revocations_since(last).await {
                    Ok(rows) => {
                        if !healthy {
                            // Revocations during the outage are in the log and are read now,
                            // but flush anyway: the log may have been pruned meanwhile.
                            if tx.send(Invalidation::All).await.is_err() {
                                return;
                            }
                            healthy = true;
                        }
                        for (id, key) in rows {
                            last = id;
                            if let Some(h) = TokenHash::decode(&key) {
                                if tx.send(Invalidation::Key(h)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        if healthy {
                            tracing::warn!(error = %e, "cannot read the revocation log");
                        }
                        healthy = false;
                    }
                }
                ticks += 1;
                if ticks.is_multiple_of(240) {
                    if let Err(e) = store.prune().await {
                        tracing::warn!(error = %e, "pruning expired sessions failed");
                    }
                }
            }
        });
    }
}
