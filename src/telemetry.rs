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
