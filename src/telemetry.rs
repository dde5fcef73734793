//! Logging setup: text or JSON lines on stderr, filtered by `--log-level`.
//!
//! `/auth` logs nothing per request at info (a per-request line at info halved a peer's
//! throughput); request-level detail is at debug. Secrets never reach a log: they are
//! [`crate::secret::Secret`] values, which print as `[redacted]`.

use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, LogArgs, LogFormat};

pub fn init(args: &LogArgs) -> Result<(), ConfigError> {
    let filter = EnvFilter::try_new(&args.log_level)
        .map_err(|e| ConfigError::new("--log-level", e.to_string()))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    // Already initialised (several in-process servers in one test binary): keep the first.
    let _ = result;
    Ok(())
}

/// A string someone else chose (a name typed into a form, an id from a request), fit for a
/// log line: control characters, quotes and backslashes escaped, so that a newline cannot
/// forge a line, and at most [`Untrusted::MAX`] characters, so that a large value costs the
/// log nothing.
pub struct Untrusted<'a>(pub &'a str);

impl Untrusted<'_> {
    pub const MAX: usize = 64;
}

impl std::fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(Self::MAX) {
            std::fmt::Display::fmt(&c.escape_debug(), f)?;
        }
        if chars.next().is_some() {
            f.write_str("…")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Untrusted;

    #[test]
    fn untrusted_strings_are_escaped_and_truncated() {
        assert_eq!(
            Untrusted("eve\nINFO audit event=login user=admin").to_string(),
            "eve\\nINFO audit event=login user=admin"
        );
        let long = "x".repeat(2_000_000);
        let shown = Untrusted(&long).to_string();
        assert_eq!(shown.chars().count(), Untrusted::MAX + 1);
        assert!(shown.ends_with('…'));
        assert_eq!(Untrusted("rosa").to_string(), "rosa");
    }
}
