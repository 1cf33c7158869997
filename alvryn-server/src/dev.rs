//! Development mode: secrets generated once and kept in the data folder.
//!
//! Never used when `ALVRYN_ENV=production`. The file is created with mode
//! 0600 in a folder created with mode 0700; a file found with wider
//! permissions is narrowed and a warning logged.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use alvryn_core::secret::SecretBytes;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

/// The generated secrets.
#[derive(Debug)]
pub struct DevSecrets {
    /// Access-token secret.
    pub jwt_secret: SecretBytes,
    /// Refresh-token secret.
    pub jwt_refresh_secret: SecretBytes,
    /// Field-encryption key.
    pub field_key: SecretBytes,
}

/// Why the development secrets could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum DevSecretsError {
    /// Reading or writing the file failed.
    #[error("could not read or write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file exists but is not what this version writes.
    #[error(
        "{0} is damaged; delete it to generate new development secrets (data encrypted with the old key will be unreadable)"
    )]
    Damaged(PathBuf),
}

/// Creates `dir` (mode 0700) if needed.
///
/// # Errors
/// When the folder cannot be created.
pub fn ensure_data_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The secrets file inside `data_dir`.
#[must_use]
pub fn secrets_path(data_dir: &Path) -> PathBuf {
    data_dir.join("dev-secrets.json")
}

impl DevSecrets {
    /// Loads `dev-secrets.json` from `data_dir`, or generates and writes it.
    ///
    /// # Errors
    /// I/O failures, or a damaged file (never silently replaced: the old
    /// key may still protect data).
    pub fn load_or_create(data_dir: &Path) -> Result<Self, DevSecretsError> {
        let path = secrets_path(data_dir);
        let io = |source| DevSecretsError::Io {
            path: path.clone(),
            source,
        };
        ensure_data_dir(data_dir).map_err(io)?;
        match fs::read(&path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let mode = fs::metadata(&path).map_err(io)?.permissions().mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), "development secrets were readable by others; narrowing to 0600");
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(io)?;
                }
                Self::parse(&bytes).ok_or(DevSecretsError::Damaged(path))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let random = || SecretBytes::random(32).map_err(|e| io(std::io::Error::other(e)));
                let s = Self {
                    jwt_secret: random()?,
                    jwt_refresh_secret: random()?,
                    field_key: random()?,
                };
                let body = Zeroizing::new(
                    serde_json::json!({
                        "jwt_secret": STANDARD.encode(s.jwt_secret.expose()),
                        "jwt_refresh_secret": STANDARD.encode(s.jwt_refresh_secret.expose()),
                        "field_key": STANDARD.encode(s.field_key.expose()),
                    })
                    .to_string(),
                );
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io)?;
                f.write_all(body.as_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                Ok(s)
            }
            Err(e) => Err(io(e)),
        }
    }

    fn parse(bytes: &[u8]) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct File {
            jwt_secret: String,
            jwt_refresh_secret: String,
            field_key: String,
        }
        impl Drop for File {
            fn drop(&mut self) {
                use zeroize::Zeroize;
                self.jwt_secret.zeroize();
                self.jwt_refresh_secret.zeroize();
                self.field_key.zeroize();
            }
        }
        let f: File = serde_json::from_slice(bytes).ok()?;
        let decode = |s: &str| {
            STANDARD
                .decode(s)
                .ok()
                .map(SecretBytes::new)
                .filter(|k| k.len() == 32)
        };
        Some(Self {
            jwt_secret: decode(&f.jwt_secret)?,
            jwt_refresh_secret: decode(&f.jwt_refresh_secret)?,
            field_key: decode(&f.field_key)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_persist_with_private_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let a = DevSecrets::load_or_create(&data).unwrap();
        let b = DevSecrets::load_or_create(&data).unwrap();
        assert_eq!(a.field_key, b.field_key);
        assert_eq!(a.jwt_secret, b.jwt_secret);
        assert_ne!(a.jwt_secret, a.jwt_refresh_secret);
        let mode = fs::metadata(secrets_path(&data))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn wide_permissions_are_narrowed_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        DevSecrets::load_or_create(dir.path()).unwrap();
        let path = secrets_path(dir.path());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        DevSecrets::load_or_create(dir.path()).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::write(&path, b"{}").unwrap();
        let err = DevSecrets::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, DevSecretsError::Damaged(_)), "{err}");
    }
}
