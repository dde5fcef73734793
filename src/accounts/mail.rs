//! Outgoing mail: over SMTP with `--smtp-url`, or as `.eml` files under `<data-dir>/mail`
//! (the default, so that a first run needs no mail server; the tests read them too).
//!
//! Sending happens off the request: a page answers in the same time whether or not a message
//! went out, so mail cannot tell an attacker which addresses have accounts.

use std::path::PathBuf;
use std::sync::Arc;

use lettre::message::{header::ContentType, Mailbox};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::error::ConfigError;
use crate::secret::Secret;

#[derive(Clone)]
pub struct Mailer {
    from: Mailbox,
    transport: Arc<Transport>,
}

enum Transport {
    Files(PathBuf),
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
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
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose())
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
        })
    }

    /// Sends in the background; a failure is logged (with the recipient's user id, never the
    /// message, which may hold a token).
    pub fn send(&self, user_id: &str, to: &str, subject: &str, body: String) {
        let to: Mailbox = match to.parse() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(user = user_id, error = %e, "mail not sent: bad recipient address");
                return;
            }
        };
        let message = match Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(user = user_id, error = %e, "mail not sent");
                return;
            }
        };
        let transport = self.transport.clone();
        let user = user_id.to_owned();
        let subject = subject.to_owned();
        tokio::spawn(async move {
            let result = match &*transport {
                Transport::Files(dir) => {
                    let name = format!(
                        "{}-{}.eml",
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_millis(),
                        super::db::random_token(6)
                    );
                    let tmp = dir.join(format!(".{name}.tmp"));
                    let formatted = message.formatted();
                    // Whole files only: written aside, then renamed into place.
                    match tokio::fs::write(&tmp, formatted).await {
                        Ok(()) => tokio::fs::rename(&tmp, dir.join(&name))
                            .await
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
                Transport::Smtp(smtp) => smtp
                    .send(message)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
            };
            match result {
                Ok(()) => tracing::info!(user, subject, "mail sent"),
                Err(e) => tracing::warn!(user, subject, error = %e, "mail not sent"),
            }
        });
    }
}
