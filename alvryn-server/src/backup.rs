//! `alvryn backup` and `alvryn restore`.
//!
//! * The embedded store (`MONGO_URI` unset): `backup` copies
//!   `alvryn.db` online with SQLite's backup API to
//!   `alvryn-YYYYMMDDTHHMMSSZ.db` (mode 0600), checks the copy
//!   (`PRAGMA integrity_check`, foreign keys) and prints its path;
//!   `restore` refuses while any process has the database open (the lock
//!   file, see [`alvryn_core::store::sqlite::backup`]) and otherwise
//!   replaces it atomically, keeping the previous one as
//!   `alvryn.db.before-restore-YYYYMMDDTHHMMSSZ`.
//! * MongoDB (`MONGO_URI` set): `backup` runs the MongoDB Database Tools'
//!   `mongodump --archive=FILE --gzip` (the connection string in a
//!   temporary 0600 `--config` file, never on the command line, where
//!   any local user could read it) to `alvryn-YYYYMMDDTHHMMSSZ.archive.gz`;
//!   without `mongodump` on `PATH` it fails saying so and how to install
//!   it. `restore` of a MongoDB archive is `mongorestore`'s job.
//!
//! No message ever contains the connection string's password: what
//! `mongodump` prints is passed on with it masked.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use alvryn_core::secret::SecretString;
use alvryn_core::store::sqlite::backup::{self as sqlite_backup, BackupError};

use crate::EMBEDDED_DB_FILE;
use crate::cli::{EXIT_CONFIG, EXIT_FAILURE};
use crate::config::{Config, Mode};

/// How to get `mongodump`, for the error that says it is missing.
pub const MONGODUMP_HELP: &str = "install the MongoDB Database Tools \
     (https://www.mongodb.com/docs/database-tools/installation/; on Debian or Ubuntu \
     'apt-get install mongodb-database-tools' from MongoDB's own repository) and make sure \
     'mongodump' is on PATH";

/// `20261130T120000Z`: the current UTC time, for file names.
fn stamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(['-', ':'], "")
}

/// The default folder for backups: `backups` in the data folder.
#[must_use]
pub fn default_output(config: &Config) -> PathBuf {
    config.data_dir.join("backups")
}

/// `dir/alvryn-{stamp}{ext}`, or with `-2`, `-3`, ... when two backups
/// fall in the same second.
fn free_name(dir: &Path, stamp: &str, ext: &str) -> PathBuf {
    let first = dir.join(format!("alvryn-{stamp}{ext}"));
    if !first.exists() {
        return first;
    }
    (2..1000)
        .map(|n| dir.join(format!("alvryn-{stamp}-{n}{ext}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

fn make_output_dir(dir: &Path) -> Result<(), ExitCode> {
    crate::dev::ensure_data_dir(dir).map_err(|e| {
        eprintln!(
            "alvryn: cannot create the backup folder {}: {e}",
            dir.display()
        );
        ExitCode::from(EXIT_FAILURE)
    })
}

/// `alvryn backup`: prints the backup's path on stdout, a summary on
/// stderr.
pub async fn backup(config: Config, output: Option<PathBuf>) -> ExitCode {
    let out_dir = output.unwrap_or_else(|| default_output(&config));
    if let Err(code) = make_output_dir(&out_dir) {
        return code;
    }
    if let Some(uri) = &config.mongo_uri {
        let uri = uri.clone();
        return tokio::task::spawn_blocking(move || mongo_backup(&uri, &out_dir))
            .await
            .unwrap_or_else(|_| ExitCode::from(EXIT_FAILURE));
    }
    let db = config.data_dir.join(EMBEDDED_DB_FILE);
    let dest = free_name(&out_dir, &stamp(), ".db");
    let started = std::time::Instant::now();
    let result = {
        let (db, dest) = (db.clone(), dest.clone());
        tokio::task::spawn_blocking(move || sqlite_backup::backup(&db, &dest)).await
    };
    match result {
        Ok(Ok(snapshot)) => {
            eprintln!(
                "alvryn: backed up {} ({} accounts, schema version {}, {} bytes) in {} ms; integrity check ok",
                db.display(),
                snapshot.users,
                snapshot.schema_version,
                snapshot.bytes,
                started.elapsed().as_millis()
            );
            if config.mode == Mode::Development
                && crate::dev::secrets_path(&config.data_dir).exists()
            {
                eprintln!(
                    "alvryn: development mode: the generated secrets ({}) are not in the backup; \
                     fields encrypted with the generated key need that file too",
                    crate::dev::secrets_path(&config.data_dir).display()
                );
            }
            println!("{}", snapshot.path.display());
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("alvryn: backup failed: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
        Err(_) => {
            eprintln!("alvryn: backup failed: the copy stopped unexpectedly");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `alvryn restore`.
pub async fn restore(config: Config, file: PathBuf, force: bool) -> ExitCode {
    if config.mongo_uri.is_some() {
        eprintln!(
            "alvryn: MONGO_URI is set: `alvryn restore` restores the embedded store only; restore a \
             `mongodump` archive with `mongorestore --archive=FILE --gzip --drop` (the connection \
             string in a --config file)"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    if let Err(e) = crate::dev::ensure_data_dir(&config.data_dir) {
        eprintln!(
            "alvryn: cannot create the data folder {}: {e}",
            config.data_dir.display()
        );
        return ExitCode::from(EXIT_FAILURE);
    }
    let db = config.data_dir.join(EMBEDDED_DB_FILE);
    let previous = if db.exists() {
        if !force {
            eprintln!(
                "alvryn: {} exists; pass --force to replace it (it is kept as {}.before-restore-<time>)",
                db.display(),
                db.display()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
        Some(PathBuf::from(format!(
            "{}.before-restore-{}",
            db.display(),
            stamp()
        )))
    } else {
        None
    };
    let result = {
        let (file, db, previous) = (file.clone(), db.clone(), previous.clone());
        tokio::task::spawn_blocking(move || sqlite_backup::restore(&file, &db, previous.as_deref()))
            .await
    };
    match result {
        Ok(Ok(snapshot)) => {
            eprintln!(
                "alvryn: restored {} into {} ({} accounts, schema version {})",
                file.display(),
                snapshot.path.display(),
                snapshot.users,
                snapshot.schema_version
            );
            if let Some(p) = previous {
                eprintln!("alvryn: the previous database is kept as {}", p.display());
            }
            ExitCode::SUCCESS
        }
        Ok(Err(e @ BackupError::Exists(_))) => {
            eprintln!("alvryn: restore refused: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Ok(Err(e)) => {
            eprintln!("alvryn: restore refused: {e}; nothing was changed");
            ExitCode::from(EXIT_FAILURE)
        }
        Err(_) => {
            eprintln!("alvryn: restore failed: the copy stopped unexpectedly");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// The password of a `mongodb://` URI's user information, as written and
/// percent-decoded (either may appear in a tool's message).
fn uri_passwords(uri: &str) -> Vec<String> {
    let Some((_, rest)) = uri.split_once("://") else {
        return Vec::new();
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return Vec::new();
    };
    let Some((_, password)) = userinfo.split_once(':') else {
        return Vec::new();
    };
    if password.is_empty() {
        return Vec::new();
    }
    let mut out = vec![password.to_owned()];
    let decoded = percent_decode(password);
    if decoded != password {
        out.push(decoded);
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `text` with every secret in `secrets` replaced by `[redacted]`.
fn redact(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .fold(text.to_owned(), |t, s| t.replace(s.as_str(), "[redacted]"))
}

/// A YAML double-quoted scalar.
fn yaml_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Creates `path` empty, mode 0600, failing if it exists.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

fn mongo_backup(uri: &SecretString, out_dir: &Path) -> ExitCode {
    let secrets = uri_passwords(uri.expose());
    let dest = free_name(out_dir, &stamp(), ".archive.gz");
    let suffix = alvryn_core::random_hex(6);
    let config_file = out_dir.join(format!(".mongodump-{suffix}.yaml"));
    let partial = out_dir.join(format!(".alvryn-{suffix}.archive.gz.partial"));
    let cleanup = || {
        let _ = std::fs::remove_file(&config_file);
        let _ = std::fs::remove_file(&partial);
    };
    let prepared = (|| -> std::io::Result<()> {
        let mut f = create_private(&config_file)?;
        let yaml = zeroize::Zeroizing::new(format!("uri: {}\n", yaml_quoted(uri.expose())));
        f.write_all(yaml.as_bytes())?;
        f.sync_all()?;
        create_private(&partial)?;
        Ok(())
    })();
    if let Err(e) = prepared {
        cleanup();
        eprintln!(
            "alvryn: cannot write in the backup folder {}: {e}",
            out_dir.display()
        );
        return ExitCode::from(EXIT_FAILURE);
    }
    let started = std::time::Instant::now();
    let output = std::process::Command::new("mongodump")
        .arg(format!("--config={}", config_file.display()))
        .arg(format!("--archive={}", partial.display()))
        .arg("--gzip")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output();
    let _ = std::fs::remove_file(&config_file);
    let output = match output {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            cleanup();
            eprintln!(
                "alvryn: MONGO_URI is set, so `alvryn backup` runs mongodump, which is not on PATH: {MONGODUMP_HELP}"
            );
            return ExitCode::from(EXIT_FAILURE);
        }
        Err(e) => {
            cleanup();
            eprintln!("alvryn: could not run mongodump: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    // mongodump reports progress on stderr; pass it on, masked.
    let said = redact(
        &format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        &secrets,
    );
    for line in said.lines().filter(|l| !l.trim().is_empty()) {
        eprintln!("mongodump: {line}");
    }
    if !output.status.success() {
        cleanup();
        eprintln!(
            "alvryn: mongodump failed ({}); no backup was written",
            output
                .status
                .code()
                .map_or_else(|| "killed by a signal".to_owned(), |c| format!("exit {c}"))
        );
        return ExitCode::from(EXIT_FAILURE);
    }
    let finished = (|| -> std::io::Result<u64> {
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600))?;
        let f = std::fs::File::open(&partial)?;
        f.sync_all()?;
        let bytes = f.metadata()?.len();
        std::fs::hard_link(&partial, &dest)?;
        std::fs::remove_file(&partial)?;
        std::fs::File::open(out_dir)?.sync_all()?;
        Ok(bytes)
    })();
    match finished {
        Ok(0) => {
            cleanup();
            let _ = std::fs::remove_file(&dest);
            eprintln!("alvryn: mongodump wrote nothing; no backup was written");
            ExitCode::from(EXIT_FAILURE)
        }
        Ok(bytes) => {
            eprintln!(
                "alvryn: mongodump archive written ({bytes} bytes) in {} ms",
                started.elapsed().as_millis()
            );
            println!("{}", dest.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            cleanup();
            eprintln!(
                "alvryn: could not keep the archive as {}: {e}",
                dest.display()
            );
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_found_as_written_and_decoded() {
        assert_eq!(
            uri_passwords("mongodb://app:p%40ss%2Fw0rd@db1:27017,db2:27017/alvryn?replicaSet=rs0"),
            vec!["p%40ss%2Fw0rd".to_owned(), "p@ss/w0rd".to_owned()]
        );
        assert_eq!(
            uri_passwords("mongodb+srv://u:plain@cluster.example.net/"),
            vec!["plain".to_owned()]
        );
        assert!(uri_passwords("mongodb://db:27017/alvryn").is_empty());
        assert!(uri_passwords("mongodb://onlyuser@db/").is_empty());
        // An `@` in the query is not user information.
        assert!(uri_passwords("mongodb://db/?authMechanismProperties=a:b@c").is_empty());
    }

    #[test]
    fn redaction_masks_every_form() {
        let secrets = uri_passwords("mongodb://u:a%2Bb@h/");
        assert_eq!(
            redact("auth failed for u:a%2Bb and a+b", &secrets),
            "auth failed for u:[redacted] and [redacted]"
        );
    }

    #[test]
    fn yaml_scalars_are_quoted() {
        assert_eq!(yaml_quoted(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(yaml_quoted("x\ny"), r#""x\u000ay""#);
    }

    #[test]
    fn stamps_are_compact_utc() {
        let s = stamp();
        assert_eq!(s.len(), "20261130T120000Z".len(), "{s}");
        assert!(s.ends_with('Z') && s.as_bytes()[8] == b'T', "{s}");
    }
}
