//! The data directory's files are private: sessions, users, signing keys, the server secret
//! and mail holding live links are readable by their owner only.

use crate::error::ConfigError;

/// Creates `dir` (and its parents) if needed and makes it private: 0700, so that nothing in it
/// (sessions, users, signing keys, mail holding live links) is readable by other local users.
/// `flag` names the flag that chose it, for the error.
pub fn private_dir(dir: &std::path::Path, flag: &'static str) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .map_err(|e| ConfigError::new(flag, format!("cannot create {}: {e}", dir.display())))?;
    if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        tracing::warn!(path = %dir.display(), error = %e, "cannot make the directory private (0700)");
    }
    Ok(())
}

/// Tightens what an older version left readable in the data directory: every directory in it
/// 0700 and every file 0600 (symbolic links are left alone). Called once at start.
pub fn tighten(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        let mode = if kind.is_dir() {
            tighten(&path);
            0o700
        } else if kind.is_file() {
            0o600
        } else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        if meta.permissions().mode() & 0o077 != 0 {
            if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)) {
                tracing::warn!(path = %path.display(), error = %e, "cannot make private");
            }
        }
    }
}
