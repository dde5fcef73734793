//! The audit trail in the database: every `audit!` line (target `gatehouse::audit`, logged as
//! before) also becomes a row of `audit_events`, written off the request by one task per
//! process in small batches, and kept `--audit-retention`.
//!
//! A row: when (Unix milliseconds), the actor (the user id; `login:<hash>` for a login name that
//! matched no one, never the name as typed; `cli` for the command line), the action in dotted
//! form (`user.login_failed`, `user.deactivated`, `client.created`: the names of the webhook
//! events), the target (the user a command-line action was about), the client's address, the
//! outcome (`ok`, or `refused` for a failed, throttled or refused attempt) and the line's other
//! fields as JSON. Names of events keep their meaning: a log reader and a row reader see one
//! event.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};

use sqlx::Row;

use super::db::{random_token, Db, DbError};

/// The tracing target of audit lines.
pub const TARGET: &str = "gatehouse::audit";
/// Rows waiting to be written, at most; beyond, a row is dropped (and logged as dropped).
const QUEUE: usize = 10_000;
/// Rows per insert.
const BATCH: usize = 200;

/// One audit row.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at_ms: u64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub ip: String,
    pub outcome: String,
    pub details: Map<String, Value>,
}

/// Where rows go: the writer of the last database opened in this process.
static SINK: Mutex<Option<mpsc::Sender<Event>>> = Mutex::new(None);
/// Rows sent to a writer, and rows done with (written, lost or dropped): a row sent when
/// `SENT` was n is done once `DONE` reaches n + 1 (one writer takes rows in order). For
/// [`settle`].
static SENT: AtomicU64 = AtomicU64::new(0);
static DONE: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicUsize = AtomicUsize::new(0);

/// The layer that turns audit lines into rows, filtered to the audit target alone (so that no
/// other event, at any level, costs anything more).
pub fn layer<S>() -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    Rows.with_filter(
        tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::INFO),
    )
    .boxed()
}

struct Rows;

impl<S: tracing::Subscriber> Layer<S> for Rows {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let Some(tx) = SINK.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return;
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        SENT.fetch_add(1, Ordering::SeqCst);
        if tx.try_send(row(fields.0)).is_err() {
            DONE.fetch_add(1, Ordering::SeqCst);
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `%value` fields arrive here as their Display.
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}

/// A line's fields as a row: `user` is the actor and `target` what they acted on (an admin's
/// action). A line without `ip` came from the command line: its `target`, or else its
/// `user`, is what the operator acted on.
fn row(mut f: Map<String, Value>) -> Event {
    let mut text = |k: &str| match f.remove(k) {
        Some(Value::String(s)) => s,
        Some(v) => v.to_string(),
        None => String::new(),
    };
    let event = text("event");
    let user = text("user");
    let ip = text("ip");
    let target = text("target");
    f.remove("message");
    let (actor, target, ip) = if ip.is_empty() {
        let target = if target.is_empty() { user } else { target };
        ("cli".to_owned(), target, "-".to_owned())
    } else {
        (user, target, ip)
    };
    Event {
        at_ms: crate::store::counters::now_ms(),
        outcome: outcome(&event).into(),
        action: action(&event),
        actor,
        target,
        ip,
        details: f,
    }
}

/// The dotted name of an event: its subject, then what happened (`user_deactivated` →
/// `user.deactivated`, `login_failed` → `user.login_failed`, `client_created` →
/// `client.created`).
pub fn action(event: &str) -> String {
    for subject in [
        "user", "client", "grant", "session", "token", "users", "identity", "role",
    ] {
        if let Some(rest) = event
            .strip_prefix(subject)
            .and_then(|r| r.strip_prefix('_'))
        {
            return format!("{subject}.{rest}");
        }
    }
    if event.is_empty() {
        return "unknown".into();
    }
    format!("user.{event}")
}

/// `refused` for what did not happen (a failed, throttled, limited or refused attempt).
fn outcome(event: &str) -> &'static str {
    let refused = [
        "failed",
        "throttled",
        "limited",
        "refused",
        "inactive",
        "expired",
    ];
    if refused.iter().any(|r| event.contains(r)) {
        "refused"
    } else {
        "ok"
    }
}

/// Makes every database opened from now on (the server's and the command line's) take this
/// process's rows.
pub fn install() {
    super::db::on_open("audit", attach);
}

/// Starts the writer for `db` (the latest database opened wins).
fn attach(db: &Db) {
    let (tx, mut rx) = mpsc::channel::<Event>(QUEUE);
    *SINK.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    let db = db.clone();
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            let n = batch.len();
            let mut tries = 0;
            loop {
                match insert(&db, &batch).await {
                    Ok(()) => break,
                    Err(e) if tries < 5 => {
                        tries += 1;
                        tracing::warn!(error = %e, rows = n, "audit rows not written yet; retrying");
                        tokio::time::sleep(Duration::from_secs(1 << tries)).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, rows = n, "audit rows lost (they are in the log)");
                        break;
                    }
                }
            }
            batch.clear();
            DONE.fetch_add(n as u64, Ordering::SeqCst);
            let dropped = DROPPED.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                tracing::error!(
                    rows = dropped,
                    "audit rows dropped: the writer fell behind (they are in the log)"
                );
            }
        }
    });
}

/// Waits (at most 5 s) until every row sent so far is written (rows sent meanwhile are not
/// waited for): a command's last step, and the first of every read, so that an admin sees
/// what they have just done.
pub async fn settle() {
    let sent = SENT.load(Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while DONE.load(Ordering::SeqCst) < sent && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Which rows `gatehouse audit list` and the admin pages ask for.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Unix milliseconds.
    pub since_ms: Option<u64>,
    /// Rows whose actor or target is this.
    pub actor: Option<String>,
    pub action: Option<String>,
    pub limit: u32,
}

/// Unix milliseconds as RFC 3339 (UTC, milliseconds).
pub fn rfc3339_ms(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// An event as JSON (the CLI's `--json`, the export).
pub fn json(e: &Event) -> Value {
    serde_json::json!({
        "at": rfc3339_ms(e.at_ms), "actor": e.actor, "action": e.action, "target": e.target,
        "ip": e.ip, "outcome": e.outcome, "details": e.details,
    })
}

/// Deletes rows older than `retention`, hourly, for the server.
pub fn keep(db: &Db, retention: Duration) {
    super::hourly(
        "audit events past --audit-retention",
        db,
        move |db, now| async move {
            let cutoff = now.saturating_sub(retention.as_secs()).saturating_mul(1000);
            purge(&db, cutoff).await
        },
    );
}

/// Writes rows, all or none.
async fn insert(db: &Db, rows: &[Event]) -> Result<(), DbError> {
    let mut tx = db.pool().begin().await?;
    for e in rows {
        sqlx::query(
            "INSERT INTO audit_events (id, at, actor, action, target, ip, outcome, details)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(random_token(12))
        .bind(e.at_ms as i64)
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.target)
        .bind(&e.ip)
        .bind(&e.outcome)
        .bind(serde_json::Value::Object(e.details.clone()).to_string())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Rows, newest first.
pub async fn list(db: &Db, f: &Filter) -> Result<Vec<Event>, DbError> {
    settle().await;
    // One statement: an empty filter matches everything (each placeholder once, in
    // order, as both backends read them through Any).
    let actor = f.actor.clone().unwrap_or_default();
    let action = f.action.clone().unwrap_or_default();
    let q = sqlx::query(
        "SELECT * FROM audit_events WHERE at >= $1
           AND ($2 = '' OR actor = $3 OR target = $4)
           AND ($5 = '' OR action = $6)
         ORDER BY at DESC, id LIMIT $7",
    )
    .bind(f.since_ms.unwrap_or(0) as i64)
    .bind(&actor)
    .bind(&actor)
    .bind(&actor)
    .bind(&action)
    .bind(&action)
    .bind(i64::from(f.limit.max(1)));
    let rows = q.fetch_all(db.pool()).await?;
    rows.iter()
        .map(|r| {
            let details: String = r.try_get("details")?;
            Ok(Event {
                at_ms: r.try_get::<i64, _>("at")?.max(0) as u64,
                actor: r.try_get("actor")?,
                action: r.try_get("action")?,
                target: r.try_get("target")?,
                ip: r.try_get("ip")?,
                outcome: r.try_get("outcome")?,
                details: serde_json::from_str(&details).unwrap_or_default(),
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(DbError::from)
}

/// Replaces the deleted user `id` by `pseudonym` in every row (actor, target, and the
/// details' text), on the deletion's connection: the trail keeps what happened, not to whom.
pub async fn pseudonymise(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    pseudonym: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE audit_events SET actor = CASE WHEN actor = $1 THEN $2 ELSE actor END,
            target = CASE WHEN target = $3 THEN $4 ELSE target END,
            details = REPLACE(details, $5, $6)
         WHERE actor = $7 OR target = $8 OR details LIKE $9",
    )
    .bind(id)
    .bind(pseudonym)
    .bind(id)
    .bind(pseudonym)
    .bind(id)
    .bind(pseudonym)
    .bind(id)
    .bind(id)
    .bind(format!("%{id}%"))
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes rows from before `before_ms`.
async fn purge(db: &Db, before_ms: u64) -> Result<u64, DbError> {
    Ok(sqlx::query("DELETE FROM audit_events WHERE at < $1")
        .bind(before_ms as i64)
        .execute(db.pool())
        .await?
        .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_get_dotted_names_and_outcomes() {
        assert_eq!(action("login_failed"), "user.login_failed");
        assert_eq!(action("user_deactivated"), "user.deactivated");
        assert_eq!(action("client_created"), "client.created");
        assert_eq!(action("grant_revoked"), "grant.revoked");
        assert_eq!(action("identity_linked"), "identity.linked");
        assert_eq!(outcome("login_throttled"), "refused");
        assert_eq!(outcome("login"), "ok");
    }

    #[test]
    fn a_line_without_an_address_is_the_command_lines() {
        let mut f = Map::new();
        f.insert("event".into(), "user_deactivated".into());
        f.insert("user".into(), "u1".into());
        f.insert("sessions_ended".into(), 2.into());
        f.insert("message".into(), "audit".into());
        let e = row(f);
        assert_eq!(
            (e.actor.as_str(), e.target.as_str(), e.ip.as_str()),
            ("cli", "u1", "-")
        );
        assert_eq!(
            e.details,
            serde_json::json!({"sessions_ended": 2})
                .as_object()
                .unwrap()
                .clone()
        );
        let mut f = Map::new();
        f.insert("event".into(), "login_failed".into());
        f.insert("user".into(), "login:00ff".into());
        f.insert("ip".into(), "192.0.2.1".into());
        let e = row(f);
        assert_eq!(
            (e.actor.as_str(), e.action.as_str(), e.outcome.as_str()),
            ("login:00ff", "user.login_failed", "refused")
        );
    }
}
