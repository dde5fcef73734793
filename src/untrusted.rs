//! What users typed, fit for a log line.

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
