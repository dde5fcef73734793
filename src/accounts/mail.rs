//! Outgoing mail: over SMTP with `--smtp-url`, or as `.eml` files under `<data-dir>/mail`
//! (the default, so that a first run needs no mail server; the tests read them too).
//!
//! Sending happens off the request: a page answers in the same time whether or not a message
//! went out, so mail cannot tell an attacker which addresses have accounts. In the server every
//! message goes through the durable outbox (accounts::outbox, kind `mail`): written first,
//! sealed with the server secret (it may hold a live link), delivered by the outbox's worker
//! with its retries, and deleted once delivered. With SMTP down, a confirmation goes out when
//! it is back: nothing is lost.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use lettre::message::{header::ContentType, Mailbox};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::json;

use super::db::Db;
use super::outbox;
use crate::error::ConfigError;
use crate::secret::{Secret, ServerSecret};

/// The outbox kind of a message.
const KIND: &str = "mail";
/// The server secret's purpose for a queued message.
const PURPOSE: &str = "outbox mail";

#[derive(Clone)]
pub struct Mailer {
    from: Mailbox,
    transport: Arc<Transport>,
    /// Where messages are queued (the server's database), once [`Mailer::use_outbox`] ran.
    outbox: Arc<OnceLock<(Db, Arc<ServerSecret>)>>,
}

enum Transport {
    Files(PathBuf),
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

/// `smtp://` without a `tls` parameter means STARTTLS required, except on loopback (a local
/// relay): credentials and links never cross a network in clear by default. `?tls=opportunistic`
/// and `smtps://` as lettre reads them.
fn with_default_tls(url: &str) -> String {
    let Some(rest) = url.strip_prefix("smtp://") else {
        return url.to_owned();
    };
    if url.contains("tls=") {
        return url.to_owned();
    }
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    let loopback = ["127.", "localhost", "[::1]"]
        .iter()
        .any(|p| host.starts_with(p));
    if loopback {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}tls=required")
}

impl Mailer {
    pub fn new(
        smtp_url: Option<&Secret<String>>,
        from: &str,
        data_dir: &std::path::Path,
    ) -> Result<Mailer, ConfigError> {
        let from: Mailbox = from
            .parse()
            .map_err(|e| ConfigError::new("--mail-from", format!("not an address: {e}")))?;
        let transport = match smtp_url {
            Some(url) => Transport::Smtp(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(&with_default_tls(url.expose()))
                    .map_err(|e| ConfigError::new("--smtp-url", e.to_string()))?
                    .build(),
            ),
            None => {
                let dir = data_dir.join("mail");
                crate::files::private_dir(&dir, "--data-dir")?;
                Transport::Files(dir)
            }
        };
        Ok(Mailer {
            from,
            transport: Arc::new(transport),
            outbox: Arc::new(OnceLock::new()),
        })
    }

    /// From now on, messages are queued in `db`'s outbox, sealed with `secret`, and this
    /// process's outbox worker delivers them.
    pub fn use_outbox(&self, db: &Db, secret: Arc<ServerSecret>) {
        let _ = self.outbox.set((db.clone(), secret.clone()));
        let (transport, from) = (self.transport.clone(), self.from.clone());
        outbox::deliver_with(
            KIND,
            Arc::new(move |item: outbox::Item| {
                let (transport, from, secret) = (transport.clone(), from.clone(), secret.clone());
                Box::pin(async move {
                    let sealed = item.payload["sealed"].as_str().unwrap_or_default();
                    let Some(plain) = secret.open(PURPOSE, sealed) else {
                        // Sealed under another server secret: no attempt will ever open it.
                        return Err("sealed under another --server-secret-file".into());
                    };
                    let m: serde_json::Value =
                        serde_json::from_slice(&plain).map_err(|e| e.to_string())?;
                    let text = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
                    deliver(
                        &transport,
                        &from,
                        &text("user"),
                        &text("to"),
                        &text("subject"),
                        text("body"),
                    )
                    .await
                })
            }),
        );
        outbox::forget_when_delivered(KIND);
    }

    /// Sends in the background (queued in the outbox in the server); a failure is logged with
    /// the recipient's user id, never the message, which may hold a token.
    pub fn send(&self, user_id: &str, to: &str, subject: &str, body: String) {
        if let Err(e) = to.parse::<Mailbox>() {
            tracing::warn!(user = user_id, error = %e, "mail not sent: bad recipient address");
            return;
        }
        let (user, to, subject) = (user_id.to_owned(), to.to_owned(), subject.to_owned());
        match self.outbox.get() {
            Some((db, secret)) => {
                let message = json!({"user": user, "to": to, "subject": subject, "body": body});
                let sealed = secret.seal(PURPOSE, message.to_string().as_bytes());
                let db = db.clone();
                tokio::spawn(async move {
                    if let Err(e) =
                        outbox::enqueue(&db, KIND, &user, &json!({ "sealed": sealed })).await
                    {
                        tracing::error!(user, subject, error = %e, "mail not queued");
                    }
                });
            }
            None => {
                let (transport, from) = (self.transport.clone(), self.from.clone());
                tokio::spawn(async move {
                    let _ = deliver(&transport, &from, &user, &to, &subject, body).await;
                });
            }
        }
    }
}

/// Sends one message now: an `.eml` file, or over SMTP. Logged either way.
async fn deliver(
    transport: &Transport,
    from: &Mailbox,
    user: &str,
    to: &str,
    subject: &str,
    body: String,
) -> Result<(), String> {
    let result = async {
        let to: Mailbox = to
            .parse()
            .map_err(|e| format!("bad recipient address: {e}"))?;
        let message = Message::builder()
            .from(from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| e.to_string())?;
        match transport {
            Transport::Files(dir) => {
                // Named by the time written, to the nanosecond: a folder listed by name is
                // in the order the mail went out.
                let name = format!(
                    "{}-{}.eml",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_nanos(),
                    super::db::random_token(6)
                );
                let tmp = dir.join(format!(".{name}.tmp"));
                // Whole files only: written aside, then renamed into place.
                tokio::fs::write(&tmp, message.formatted())
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::fs::rename(&tmp, dir.join(&name))
                    .await
                    .map_err(|e| e.to_string())
            }
            Transport::Smtp(smtp) => smtp
                .send(message)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }
    .await;
    match &result {
        Ok(()) => tracing::info!(user, subject, "mail sent"),
        Err(e) => tracing::warn!(user, subject, error = %e, "mail not sent"),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_smtp_asks_for_starttls_except_on_loopback() {
        assert_eq!(
            with_default_tls("smtp://u:p@mail.example.org:587"),
            "smtp://u:p@mail.example.org:587?tls=required"
        );
        assert_eq!(
            with_default_tls("smtp://mail.example.org/gatehouse.example.org?x=1"),
            "smtp://mail.example.org/gatehouse.example.org?x=1&tls=required"
        );
        for same in [
            "smtp://127.0.0.1:2525",
            "smtp://localhost",
            "smtp://mail.example.org?tls=opportunistic",
            "smtps://mail.example.org",
        ] {
            assert_eq!(with_default_tls(same), same);
        }
    }
}
