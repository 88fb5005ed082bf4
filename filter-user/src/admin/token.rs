//! The admin bearer token: loaded from `admin.token_file`, created 0600 on first run, compared in
//! constant time.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use subtle::ConstantTimeEq;

/// Token file problems.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading, creating or writing the file failed.
    #[error("admin token file {path}: {source}")]
    Io {
        /// The token file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file exists but holds no token.
    #[error("admin token file {0} is empty: delete it to have a new token generated")]
    Empty(PathBuf),
}

/// The admin token. Its `Debug` output never shows it.
#[derive(Clone)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

impl AdminToken {
    /// Reads the token at `path`, or creates it (parent directories too) with 32 random bytes
    /// as hex and mode 0600 when the file does not exist.
    ///
    /// # Errors
    /// [`TokenError`] when the file cannot be read or created, or is empty.
    pub fn load_or_create(path: &Path) -> Result<Self, TokenError> {
        let io = |source| TokenError::Io {
            path: path.to_path_buf(),
            source,
        };
        match Self::load(path) {
            Err(TokenError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            }
            other => return other,
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        match file {
            Ok(mut f) => {
                f.write_all(token.as_bytes())
                    .and_then(|()| f.write_all(b"\n"))
                    .and_then(|()| f.sync_all())
                    .map_err(io)?;
                tracing::info!(path = %path.display(), "created the admin token file (mode 0600)");
                Ok(Self(token))
            }
            // Another process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(io(e)),
        }
    }

    /// Reads an existing token file (the CLI side).
    ///
    /// # Errors
    /// [`TokenError`] when the file cannot be read or is empty.
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty(path.to_path_buf()));
        }
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                "the admin token file is readable by group or others: chmod 600 it"
            );
        }
        Ok(Self(token.to_string()))
    }

    /// Whether `presented` is this token; constant time in the token's content.
    #[must_use]
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }

    /// The token, for the CLI's `Authorization` header only.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_0600_then_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/dir/admin.token");
        let t = AdminToken::load_or_create(&path).expect("create");
        assert_eq!(t.expose().len(), 64);
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = AdminToken::load_or_create(&path).expect("reload");
        assert!(again.matches(t.expose().as_bytes()));
        assert!(!again.matches(b"nope"));
        assert!(!format!("{t:?}").contains(t.expose()));
    }

    #[test]
    fn empty_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t");
        std::fs::write(&path, "\n").expect("write");
        assert!(matches!(
            AdminToken::load_or_create(&path),
            Err(TokenError::Empty(_))
        ));
    }
}
