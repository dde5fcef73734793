//! Webhooks (`--webhooks FILE`): other systems hear that a user registered, was deactivated
//! or deleted, that a session began or ended, signed per the Standard Webhooks specification
//! (<https://www.standardwebhooks.com>).
//!
//! - **Written with the change.** Every change that reports an event ([`super::db::Event`])
//!   writes one outbox item per webhook that wants it, in its own transaction; `session.*`
//!   events are written just after the session store's call. A change that is rolled back
//!   reports nothing; one that is committed is delivered, at least once, whatever restarts.
//! - **Signed.** `webhook-id` (the outbox item's id, the same on every attempt: receivers drop
//!   duplicates by it), `webhook-timestamp` (Unix seconds of the attempt) and
//!   `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">` under the
//!   webhook's `whsec_` secret. The body is `{"type", "timestamp", "data"}`: ids and changed
//!   fields, never a secret.
//! - The file is read at start by `serve` and by the command line alike, so `gatehouse user
//!   deactivate` is reported as the pages' deactivation is; the server delivers.

use std::path::Path;
use std::sync::{Arc, RwLock};

use base64::Engine;
use serde::Deserialize;
use serde_json::json;

use super::db::{Db, Event};
use super::outbound::{Outbound, Trust};
use super::outbox;
use crate::error::ConfigError;
use crate::secret::Secret;

/// Every event a webhook may ask for.
pub const EVENTS: [&str; 13] = [
    "user.registered",
    "user.confirmed",
    "user.updated",
    "user.deactivated",
    "user.activated",
    "user.deleted",
    "session.created",
    "session.revoked",
    "password.changed",
    "second_factor.changed",
    "client.created",
    "client.disabled",
    "grant.revoked",
];

const KIND: &str = "webhook";
const FLAG: &str = "--webhooks";

/// One receiver: where, which events, and its signing key.
struct Webhook {
    url: String,
    events: Vec<String>,
    key: Secret<Vec<u8>>,
}

impl Webhook {
    fn wants(&self, kind: &str) -> bool {
        self.events.iter().any(|e| e == kind || e == "*")
    }
}

/// The webhooks of this process, from `--webhooks`.
static HOOKS: RwLock<Vec<Arc<Webhook>>> = RwLock::new(Vec::new());

fn hooks() -> Vec<Arc<Webhook>> {
    HOOKS.read().unwrap_or_else(|e| e.into_inner()).clone()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    webhook: Vec<toml::Spanned<Entry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    url: String,
    events: Vec<String>,
    secret_file: std::path::PathBuf,
}

/// Reads `--webhooks` (none without it) and makes every change from now on report to them.
pub fn load(path: Option<&Path>) -> Result<(), ConfigError> {
    let loaded = match path {
        Some(path) => read(path)?,
        None => Vec::new(),
    };
    if !loaded.is_empty() {
        tracing::info!(webhooks = loaded.len(), "webhooks configured");
    }
    *HOOKS.write().unwrap_or_else(|e| e.into_inner()) = loaded;
    super::db::on_event("webhooks", write, outbox::wake);
    super::db::on_open("webhooks", listen);
    Ok(())
}

fn read(path: &Path) -> Result<Vec<Arc<Webhook>>, ConfigError> {
    let bad = |what: String| ConfigError::new(FLAG, format!("{}: {what}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let line = |at: usize| crate::error::line_at(&text, at);
    let file: File = toml::from_str(&text).map_err(|e| {
        let at = e.span().map(|s| format!("line {}: ", line(s.start)));
        bad(format!("{}{}", at.unwrap_or_default(), e.message()))
    })?;
    let mut hooks = Vec::new();
    for spanned in file.webhook {
        let at = line(spanned.span().start);
        let entry = spanned.into_inner();
        let here = |what: String| bad(format!("line {at}: {what}"));
        if !(entry.url.starts_with("https://") || entry.url.starts_with("http://")) {
            return Err(here(format!("url {:?} is not http(s)", entry.url)));
        }
        if entry.events.is_empty() {
            return Err(here("events is empty: name them, or \"*\" for all".into()));
        }
        if let Some(e) = entry
            .events
            .iter()
            .find(|e| *e != "*" && !EVENTS.contains(&e.as_str()))
        {
            return Err(here(format!(
                "unknown event {e:?} (known: {})",
                EVENTS.join(", ")
            )));
        }
        let secret = std::fs::read_to_string(&entry.secret_file).map_err(|e| {
            here(format!(
                "cannot read secret_file {}: {e}",
                entry.secret_file.display()
            ))
        })?;
        let key = secret_key(secret.trim()).ok_or_else(|| {
            here(format!(
                "secret_file {} must hold whsec_ and the base64 of 24 to 64 random bytes",
                entry.secret_file.display()
            ))
        })?;
        hooks.push(Arc::new(Webhook {
            url: entry.url,
            events: entry.events,
            key: Secret::new(key),
        }));
    }
    Ok(hooks)
}

/// The signing key of a `whsec_<base64>` secret.
fn secret_key(secret: &str) -> Option<Vec<u8>> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_")?)
        .ok()?;
    (24..=64).contains(&key.len()).then_some(key)
}

/// A new secret in its written form, for `gatehouse webhook secret`-style use and the tests.
pub fn new_secret() -> String {
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).expect("the system's random source");
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// The body of an event: `{"type", "timestamp", "data"}`.
fn body(event: &Event) -> serde_json::Value {
    json!({
        "type": event.kind,
        "timestamp": super::audit::rfc3339_ms(crate::store::counters::now_ms()),
        "data": event.data,
    })
}

/// The outbox writer of [`super::db::on_event`]: an item per webhook that wants `event`.
fn write<'c>(
    conn: &'c mut sqlx::AnyConnection,
    event: &'c Event,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), sqlx::Error>> + Send + 'c>> {
    Box::pin(async move {
        let wanted: Vec<_> = hooks()
            .into_iter()
            .filter(|h| h.wants(event.kind))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let body = body(event);
        for hook in wanted {
            outbox::enqueue_on(conn, KIND, &hook.url, &body).await?;
        }
        Ok(())
    })
}

/// Reports an event that has no transaction of its own (a session's, from the session store):
/// written at once, after the store's call. Failures are logged, not the caller's.
pub async fn report(db: &Db, event: Event) {
    let wanted: Vec<_> = hooks()
        .into_iter()
        .filter(|h| h.wants(event.kind))
        .collect();
    if wanted.is_empty() {
        return;
    }
    let body = body(&event);
    for hook in wanted {
        if let Err(e) = outbox::enqueue(db, KIND, &hook.url, &body).await {
            tracing::error!(event = event.kind, error = %e, "cannot write a webhook event");
        }
    }
}

/// `session.created`, after the store issued it.
pub async fn session_created(db: &Db, user: &str, sid: &str, amr: &[&str]) {
    report(
        db,
        Event::new(
            "session.created",
            json!({"user": user, "sid": sid, "amr": amr}),
        ),
    )
    .await;
}

/// Makes `session.revoked` follow every ended session of the sessions API (sign-out,
/// revocation, reset, deactivation), on `db`.
pub fn listen(db: &Db) {
    let db = db.clone();
    crate::sessions::on_end(
        "webhooks",
        Arc::new(move |ended| {
            let db = db.clone();
            Box::pin(async move {
                for e in ended {
                    let data = json!({"user": e.sub, "sid": e.sid});
                    report(&db, Event::new("session.revoked", data)).await;
                }
            })
        }),
    );
}

/// The signature header of `body` sent as item `id` at `timestamp`.
fn signature(key: &[u8], id: &str, timestamp: u64, body: &str) -> String {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&key, format!("{id}.{timestamp}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

/// Makes this server deliver webhook items through `outbound` (the operator's URLs, as
/// written). An item whose URL is no longer in the file is kept and retried, so that an edit
/// that restores it loses nothing.
pub fn deliver_with(outbound: Arc<Outbound>) {
    outbox::deliver_with(
        KIND,
        Arc::new(move |item: outbox::Item| {
            let outbound = outbound.clone();
            Box::pin(async move {
                let Some(hook) = hooks().into_iter().find(|h| h.url == item.target) else {
                    return Err(format!("no webhook for {} in --webhooks", item.target));
                };
                let body = item.payload.to_string();
                let timestamp = crate::session::unix_now();
                let headers = [
                    ("webhook-id", item.id.clone()),
                    ("webhook-timestamp", timestamp.to_string()),
                    (
                        "webhook-signature",
                        signature(hook.key.expose(), &item.id, timestamp, &body),
                    ),
                ];
                let answer = outbound
                    .post_with(
                        &item.target,
                        Trust::Operator,
                        &headers,
                        "application/json",
                        body,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if answer.status.is_success() {
                    Ok(())
                } else {
                    Err(format!("the receiver answered {}", answer.status))
                }
            })
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_specifications() {
        // The example of the Standard Webhooks specification's reference libraries.
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_whsec_and_24_to_64_bytes() {
        assert!(secret_key(&new_secret()).is_some());
        assert!(secret_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_none());
        assert!(secret_key("whsec_c2hvcnQ=").is_none());
        assert!(secret_key("whsec_not base64!").is_none());
    }
}
