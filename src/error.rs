//! Whose fault an error is, so that every caller maps errors the same way without reading
//! their text: the caller's (a 4xx: 401, 403 or 400 by context), a dependency's (503: the
//! store or the mail server is down; try again), or a bug (500).

/// Where the fault of an error lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The request or the input: refuse it (4xx) and say why.
    Caller,
    /// A service gatehouse depends on: 503, fail closed.
    Dependency,
    /// gatehouse itself, or data it should never have stored: 500.
    Bug,
}

impl Fault {
    /// The HTTP status for this fault, given the caller's status in this context.
    pub fn status(self, caller: u16) -> u16 {
        match self {
            Fault::Caller => caller,
            Fault::Dependency => 503,
            Fault::Bug => 500,
        }
    }
}

/// The line (from 1) of byte `offset` in a configuration file's `text`: where a TOML error's
/// span, or a `[[table]]`'s, begins.
pub fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Bad configuration: exit code 64, one line naming the flag.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {reason}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub fn new(flag: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            flag,
            reason: reason.into(),
        }
    }
}
