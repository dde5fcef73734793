//! The durable outbox: everything that must reach another system (a client's back-channel
//! logout today) is written here, in the accounts database, and delivered by a worker.
//!
//! - **At least once.** An item stays pending until its deliverer says it arrived; a failure
//!   is tried again with a growing delay (1 s, 2 s, 4 s … at most an hour) until
//!   `--outbox-retention` after it was written, then it is marked failed.
//! - **A stable id.** The id is made when the item is written and travels with every attempt
//!   (a logout_token's `jti`), so a receiver can drop a duplicate.
//! - **Survives restarts.** Items are rows; a worker that stops mid-delivery leaves its claim
//!   to lapse (`locked_until`), and any worker takes the item again.
//! - **One worker per item.** Claiming is one `UPDATE … RETURNING`; on PostgreSQL its
//!   candidates are chosen `FOR UPDATE SKIP LOCKED`, so replicas never take the same item.
//!   (SQLite has one writer at a time.)
//!
//! The module that writes an item of a kind registers how to deliver it ([`deliver_with`]);
//! accounts knows no kind.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sqlx::Row;

use super::db::{random_token, Db, DbError};
use crate::session::unix_now;

/// How long a claim holds: longer than any delivery's time cap.
const CLAIM_SECS: u64 = 60;
/// The most items one worker takes at a time.
const BATCH: i64 = 16;
/// How often the worker looks for due items when nothing wakes it.
const POLL: Duration = Duration::from_secs(5);
/// The longest wait between two attempts.
const MAX_BACKOFF_SECS: u64 = 3600;

/// An item as its deliverer sees it.
#[derive(Debug, Clone)]
pub struct Item {
    /// Stable across attempts.
    pub id: String,
    pub kind: String,
    /// Where it goes (a URL), as written.
    pub target: String,
    pub payload: serde_json::Value,
    /// Attempts before this one.
    pub attempts: u32,
}

/// Delivers one item: `Ok` once it arrived, `Err(why)` to try again later.
pub type Deliver =
    Arc<dyn Fn(Item) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

static DELIVERERS: RwLock<Vec<(&'static str, Deliver)>> = RwLock::new(Vec::new());

/// Makes `deliver` the way items of `kind` are delivered (replacing an earlier one).
pub fn deliver_with(kind: &'static str, deliver: Deliver) {
    let mut all = DELIVERERS.write().unwrap_or_else(|e| e.into_inner());
    all.retain(|(k, _)| *k != kind);
    all.push((kind, deliver));
}

fn deliverer(kind: &str) -> Option<Deliver> {
    DELIVERERS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, d)| d.clone())
}

/// Kinds whose items are deleted once delivered (a message that held a live link), not kept
/// for `--outbox-retention`.
static FORGET: RwLock<Vec<&'static str>> = RwLock::new(Vec::new());

/// Makes delivered items of `kind` go at once.
pub fn forget_when_delivered(kind: &'static str) {
    let mut all = FORGET.write().unwrap_or_else(|e| e.into_inner());
    if !all.contains(&kind) {
        all.push(kind);
    }
}

fn forgotten(kind: &str) -> bool {
    FORGET
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&kind)
}

/// The outbox's metrics: items waiting (as the last round of this process's worker counted
/// them), and attempts by kind and result (`delivered`, `retry`, `failed`: given up).
struct Metrics {
    pending: Gauge,
    attempts: Family<[(&'static str, String); 2], Counter>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();
const KINDS: [&str; 3] = ["backchannel_logout", "mail", "webhook"];
const RESULTS: [&str; 3] = ["delivered", "retry", "failed"];

/// Registers `gatehouse_outbox_pending` and `gatehouse_outbox_delivered_total{kind,result}`.
pub fn register_metrics(registry: &mut prometheus_client::registry::Registry) {
    let m = METRICS.get_or_init(|| Metrics {
        pending: Gauge::default(),
        attempts: Family::default(),
    });
    // Every series from the start, at 0.
    for kind in KINDS {
        for result in RESULTS {
            let _ = m
                .attempts
                .get_or_create(&[("kind", kind.to_owned()), ("result", result.to_owned())]);
        }
    }
    registry.register(
        "outbox_pending",
        "Outbox items waiting for delivery (mail, webhooks, back-channel logouts), counted every round",
        m.pending.clone(),
    );
    registry.register(
        "outbox_delivered",
        "Outbox delivery attempts by kind and result (delivered, retry, failed: given up after --outbox-retention)",
        m.attempts.clone(),
    );
}

fn count_attempt(kind: &str, result: &'static str) {
    if let Some(m) = METRICS.get() {
        m.attempts
            .get_or_create(&[("kind", kind.to_owned()), ("result", result.to_owned())])
            .inc();
    }
}

/// Wakes this process's worker when an item is written, so delivery starts at once.
static WAKE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Starts this process's worker's next round now: an item was just committed.
pub fn wake() {
    WAKE.notify_one();
}

/// Writes an item of `kind` for `target`; its id.
pub async fn enqueue(
    db: &Db,
    kind: &str,
    target: &str,
    payload: &serde_json::Value,
) -> Result<String, DbError> {
    let mut conn = db.pool().acquire().await?;
    let id = enqueue_on(&mut conn, kind, target, payload).await?;
    wake();
    Ok(id)
}

/// Writes an item on `conn`, in the transaction of the change it reports (the caller wakes
/// the worker once that is committed); its id.
pub async fn enqueue_on(
    conn: &mut sqlx::AnyConnection,
    kind: &str,
    target: &str,
    payload: &serde_json::Value,
) -> Result<String, sqlx::Error> {
    let id = random_token(16);
    let written = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    sqlx::query(
        "INSERT INTO outbox (id, kind, target, payload, status, attempts, created_at, next_at,
            locked_until, last_error, written_us)
         VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5, 0, '', $6)",
    )
    .bind(&id)
    .bind(kind)
    .bind(target)
    .bind(payload.to_string())
    .bind(written.as_secs() as i64)
    .bind(written.as_micros() as i64)
    .execute(conn)
    .await?;
    Ok(id)
}

/// Takes up to [`BATCH`] due items for this worker, oldest written first.
async fn claim(db: &Db, now: u64) -> Result<Vec<(Item, u64)>, DbError> {
    const CLAIM: &str = "UPDATE outbox SET locked_until = $1 WHERE id IN (
            SELECT id FROM outbox
            WHERE status = 'pending' AND next_at <= $2 AND locked_until <= $2
            ORDER BY next_at LIMIT $3)
         RETURNING id, kind, target, payload, attempts, created_at, written_us";
    const CLAIM_SKIP_LOCKED: &str = "UPDATE outbox SET locked_until = $1 WHERE id IN (
            SELECT id FROM outbox
            WHERE status = 'pending' AND next_at <= $2 AND locked_until <= $2
            ORDER BY next_at LIMIT $3 FOR UPDATE SKIP LOCKED)
         RETURNING id, kind, target, payload, attempts, created_at, written_us";
    let sql = if db.backend() == "postgres" {
        CLAIM_SKIP_LOCKED
    } else {
        CLAIM
    };
    let rows = sqlx::query(sql)
        .bind((now + CLAIM_SECS) as i64)
        .bind(now as i64)
        .bind(BATCH)
        .fetch_all(db.pool())
        .await?;
    let mut items = rows
        .iter()
        .map(|r| {
            let payload: String = r.try_get("payload")?;
            Ok((
                r.try_get::<i64, _>("written_us")?,
                Item {
                    id: r.try_get("id")?,
                    kind: r.try_get("kind")?,
                    target: r.try_get("target")?,
                    payload: serde_json::from_str(&payload).unwrap_or_default(),
                    attempts: r.try_get::<i64, _>("attempts")?.max(0) as u32,
                },
                r.try_get::<i64, _>("created_at")?.max(0) as u64,
            ))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    // RETURNING keeps no order: oldest written first.
    items.sort_by_key(|(written, ..)| *written);
    Ok(items
        .into_iter()
        .map(|(_, item, created_at)| (item, created_at))
        .collect())
}

/// The wait after the `attempts`-th failed attempt: 1 s, doubling, at most an hour.
fn backoff(attempts: u32) -> u64 {
    1u64.checked_shl(attempts.saturating_sub(1))
        .unwrap_or(MAX_BACKOFF_SECS)
        .min(MAX_BACKOFF_SECS)
}

/// Records an attempt's outcome.
async fn settle(
    db: &Db,
    item: &Item,
    created_at: u64,
    outcome: Result<(), String>,
    retention: Duration,
) -> Result<(), DbError> {
    let now = unix_now();
    let attempts = item.attempts + 1;
    let (status, next_at, error) = match outcome {
        Ok(()) => ("delivered", now, String::new()),
        Err(why) => {
            let next = now + backoff(attempts);
            let status = if next > created_at + retention.as_secs() {
                "failed"
            } else {
                "pending"
            };
            (status, next, why)
        }
    };
    count_attempt(
        &item.kind,
        match status {
            "delivered" => "delivered",
            "failed" => "failed",
            _ => "retry",
        },
    );
    if status == "delivered" && forgotten(&item.kind) {
        sqlx::query("DELETE FROM outbox WHERE id = $1")
            .bind(&item.id)
            .execute(db.pool())
            .await?;
    } else {
        sqlx::query(
            "UPDATE outbox SET status = $1, attempts = $2, next_at = $3, locked_until = 0,
                last_error = $4 WHERE id = $5",
        )
        .bind(status)
        .bind(i64::from(attempts))
        .bind(next_at as i64)
        .bind(&error)
        .bind(&item.id)
        .execute(db.pool())
        .await?;
    }
    // Logged once recorded: a line saying "tried again" is true of the database.
    match status {
        "delivered" => {
            tracing::info!(id = %item.id, kind = %item.kind, attempts, "outbox item delivered")
        }
        "failed" => {
            tracing::error!(id = %item.id, kind = %item.kind, attempts, error = %error, "outbox item given up after --outbox-retention")
        }
        _ => {
            tracing::warn!(id = %item.id, kind = %item.kind, attempts, retry_in_secs = next_at - now, error = %error, "outbox item not delivered; it will be tried again")
        }
    }
    Ok(())
}

/// One round: claims what is due and delivers it. Items for different targets go side by
/// side; those for one target (one recipient, one webhook, one client) go one after another,
/// oldest first, so that the last mail a person gets is the newest (two confirmation links:
/// the one that arrives last is the one that works). How many were claimed (items of a kind
/// nothing here delivers are claimed and left alone, to be taken by another replica once the
/// claim lapses).
pub async fn run_once(db: &Db, retention: Duration) -> Result<usize, DbError> {
    let claimed = claim(db, unix_now()).await?;
    let n = claimed.len();
    let mut lines: Vec<Vec<(Item, u64)>> = Vec::new();
    for entry in claimed {
        let same = |line: &&mut Vec<(Item, u64)>| {
            let first = &line[0].0;
            first.kind == entry.0.kind && first.target == entry.0.target
        };
        match lines.iter_mut().find(same) {
            Some(line) => line.push(entry),
            None => lines.push(vec![entry]),
        }
    }
    let mut rounds = tokio::task::JoinSet::new();
    for line in lines {
        let db = db.clone();
        rounds.spawn(async move {
            for (item, created_at) in line {
                // A kind another replica delivers (one that runs the module this one does
                // not): left to it, the claim held so this worker does not take it again at
                // once, and no attempt counted.
                let Some(deliver) = deliverer(&item.kind) else {
                    return Ok(());
                };
                let outcome = deliver(item.clone()).await;
                settle(&db, &item, created_at, outcome, retention).await?;
            }
            Ok::<(), DbError>(())
        });
    }
    while let Some(r) = rounds.join_next().await {
        if let Ok(Err(e)) = r {
            return Err(e);
        }
    }
    Ok(n)
}

/// Items waiting for delivery.
async fn pending(db: &Db) -> Result<i64, DbError> {
    Ok(
        sqlx::query("SELECT COUNT(*) AS n FROM outbox WHERE status = 'pending'")
            .fetch_one(db.pool())
            .await?
            .try_get("n")?,
    )
}

/// An item as `gatehouse outbox list` shows it: never its payload (a sealed message, a token).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    pub id: String,
    pub kind: String,
    pub target: String,
    pub status: String,
    pub attempts: i64,
    pub created_at: i64,
    pub next_at: i64,
    pub last_error: String,
}

/// The items of `status` (every one with `None`), oldest first.
pub async fn list(db: &Db, status: Option<&str>) -> Result<Vec<Listed>, DbError> {
    let rows = sqlx::query(
        "SELECT id, kind, target, status, attempts, created_at, next_at, last_error FROM outbox
         WHERE ($1 = '' OR status = $2) ORDER BY created_at, id",
    )
    .bind(status.unwrap_or(""))
    .bind(status.unwrap_or(""))
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Listed {
                id: r.try_get("id")?,
                kind: r.try_get("kind")?,
                target: r.try_get("target")?,
                status: r.try_get("status")?,
                attempts: r.try_get("attempts")?,
                created_at: r.try_get("created_at")?,
                next_at: r.try_get("next_at")?,
                last_error: r.try_get("last_error")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(DbError::from)
}

/// Makes a pending or given-up item due now, with a new `--outbox-retention` from now: whether
/// there was such an item. A delivered one stays delivered.
pub async fn retry(db: &Db, id: &str) -> Result<bool, DbError> {
    let now = unix_now() as i64;
    let done = sqlx::query(
        "UPDATE outbox SET status = 'pending', next_at = $1, created_at = $2, locked_until = 0
         WHERE id = $3 AND status <> 'delivered'",
    )
    .bind(now)
    .bind(now)
    .bind(id)
    .execute(db.pool())
    .await?;
    WAKE.notify_one();
    Ok(done.rows_affected() == 1)
}

/// Starts this process's worker: a round whenever an item is written here, and every few
/// seconds for items written elsewhere or due again. Finished items are purged
/// `retention` after they were written.
pub fn start(db: &Db, retention: Duration) {
    let worker = db.clone();
    tokio::spawn(async move {
        loop {
            match run_once(&worker, retention).await {
                // A full batch: there may be more.
                Ok(n) if n as i64 == BATCH => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "outbox: cannot read the database"),
            }
            if let (Some(m), Ok(n)) = (METRICS.get(), pending(&worker).await) {
                m.pending.set(n);
            }
            let _ = tokio::time::timeout(POLL, WAKE.notified()).await;
        }
    });
    super::hourly("finished outbox items", db, move |db, now| async move {
        let before = now.saturating_sub(retention.as_secs()) as i64;
        let done = sqlx::query("DELETE FROM outbox WHERE status <> 'pending' AND created_at < $1")
            .bind(before)
            .execute(db.pool())
            .await?;
        Ok(done.rows_affected())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_second_to_an_hour() {
        let waits: Vec<u64> = (1..=14).map(backoff).collect();
        assert_eq!(&waits[..5], &[1, 2, 4, 8, 16]);
        assert_eq!(waits[12], 3600);
        assert_eq!(backoff(200), 3600);
    }

    #[tokio::test]
    async fn an_item_nothing_here_delivers_is_left_for_another_replica() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(None, dir.path()).await.unwrap();
        let id = enqueue(&db, "test-elsewhere", "http://x", &serde_json::json!({}))
            .await
            .unwrap();
        assert_eq!(run_once(&db, Duration::from_secs(60)).await.unwrap(), 1);
        let (status, attempts): (String, i64) =
            sqlx::query_as("SELECT status, attempts FROM outbox WHERE id = $1")
                .bind(&id)
                .fetch_one(db.pool())
                .await
                .unwrap();
        assert_eq!((status.as_str(), attempts), ("pending", 0));
        // Held by the claim meanwhile: not taken again at once.
        assert_eq!(run_once(&db, Duration::from_secs(60)).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn an_item_is_retried_until_delivered_and_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(None, dir.path()).await.unwrap();
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let seen = calls.clone();
        deliver_with(
            "test-flaky",
            Arc::new(move |item: Item| {
                let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Box::pin(async move {
                    assert_eq!(item.attempts, n);
                    if n == 0 {
                        Err("down".into())
                    } else {
                        Ok(())
                    }
                })
            }),
        );
        let id = enqueue(&db, "test-flaky", "http://x", &serde_json::json!({"a": 1}))
            .await
            .unwrap();
        assert_eq!(run_once(&db, Duration::from_secs(60)).await.unwrap(), 1);
        // Not due again for a second: a second round takes nothing.
        assert_eq!(run_once(&db, Duration::from_secs(60)).await.unwrap(), 0);
        sqlx::query("UPDATE outbox SET next_at = 0 WHERE id = $1")
            .bind(&id)
            .execute(db.pool())
            .await
            .unwrap();
        assert_eq!(run_once(&db, Duration::from_secs(60)).await.unwrap(), 1);
        let status: String = sqlx::query_scalar("SELECT status FROM outbox WHERE id = $1")
            .bind(&id)
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(status, "delivered");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn items_for_one_target_arrive_in_the_order_written() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(None, dir.path()).await.unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = order.clone();
        deliver_with(
            "test-ordered",
            Arc::new(move |item: Item| {
                let seen = seen.clone();
                Box::pin(async move {
                    // The first written is the slowest to deliver: side by side, it would
                    // arrive last.
                    let n = item.payload["n"].as_u64().unwrap();
                    tokio::time::sleep(Duration::from_millis(60 - 10 * n)).await;
                    seen.lock().unwrap().push(n);
                    Ok(())
                })
            }),
        );
        for n in 0..5 {
            enqueue(
                &db,
                "test-ordered",
                "ana@example.org",
                &serde_json::json!({"n": n}),
            )
            .await
            .unwrap();
        }
        assert_eq!(run_once(&db, Duration::from_secs(60)).await.unwrap(), 5);
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
    }
}
