//! Logging setup: text or JSON lines on stderr, filtered by `--log-level`.
//!
//! `/auth` logs nothing per request at info (a per-request line at info halved a peer's
//! throughput); request-level detail is at debug. Secrets never reach a log: they are
//! [`crate::secret::Secret`] values, which print as `[redacted]`.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{ConfigError, LogArgs, LogFormat};

/// The log on stderr, and `extra` beside it with its own filter (the modules' audit rows,
/// which `--log-level` does not silence).
pub fn init(
    args: &LogArgs,
    extra: Option<Box<dyn Layer<Registry> + Send + Sync>>,
) -> Result<(), ConfigError> {
    let filter = EnvFilter::try_new(&args.log_level)
        .map_err(|e| ConfigError::new("--log-level", e.to_string()))?;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match args.log_format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(extra)
            .with(fmt.with_filter(filter))
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(extra)
            .with(
                fmt.json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_filter(filter),
            )
            .try_init(),
    };
    // Already initialised (several in-process servers in one test binary): keep the first.
    let _ = result;
    Ok(())
}
