//! Online backups of the embedded database, and restoring one.
//!
//! # Who holds the database: the lock file
//!
//! Beside the database (`alvryn.db`) lies `alvryn.db.lock`, an empty
//! file (mode 0600) that only carries an advisory `flock(2)` lock.
//! Every [`SqliteStore`](super::SqliteStore) handle (the server, the
//! worker, a migration) and every [`backup`] holds a **shared** lock on
//! it for as long as it has the database open; [`restore`] takes it
//! **exclusively**, without waiting. So a restore refuses while anything
//! has the database open ([`BackupError::InUse`]), and nothing opens the
//! database while a restore replaces it (it fails at once with
//! [`BackupError::RestoreInProgress`], or `Unavailable` from
//! `SqliteStore::open`; a service manager starts it again). The lock
//! is released by the kernel when the process exits, `kill -9` included,
//! so it never goes stale. A separate file, not the database itself:
//! SQLite's own (`fcntl`) locks stay out of it, and it is never replaced.
//!
//! # Backup
//!
//! [`backup`] copies the database with SQLite's online backup API in a
//! single step: one read transaction over the whole copy, so the copy is
//! the database as it was at one instant (every write committed before
//! that instant, none after it), while the server goes on writing (in WAL
//! mode a reader never blocks the writer). The copy is written to a
//! temporary file beside the destination (mode 0600), switched to a
//! rollback journal (one self-contained file, no `-wal`), checked
//! (`PRAGMA integrity_check` and `foreign_key_check`), synced, and only
//! then given its name. Failure modes, each a [`BackupError`]: no
//! database at the path ([`BackupError::NoDatabase`]), a restore in
//! progress, the destination taken ([`BackupError::Exists`]), SQLite or
//! the file system failing, the copy failing its checks
//! ([`BackupError::Damaged`]). On any failure no file is left behind.
//!
//! # Restore
//!
//! [`restore`] takes the lock exclusively, copies the backup to a
//! temporary file beside the database and checks it there (integrity,
//! foreign keys, an Alvryn schema no newer than this build's). Only then
//! does it touch the current database: it checkpoints it into one file,
//! keeps it under the name given (a hard link: the database never
//! disappears), removes its `-wal` and `-shm` (which must never be read
//! with another database file), and renames the checked copy over it
//! (atomic). A crash at any point leaves either the old database or the
//! new one in place, and the old one also under its kept name.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::{BUSY_TIMEOUT, MIGRATIONS};

/// Why a backup or a restore failed. No message contains data from the
/// database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// There is no database at this path.
    #[error("there is no database at {0}")]
    NoDatabase(PathBuf),
    /// A process has the database open (a server, a worker, a migration,
    /// a backup): a restore would pull it from under it.
    #[error(
        "the database {0} is in use (a server, worker or other alvryn command has it open); stop it first"
    )]
    InUse(PathBuf),
    /// A restore is replacing the database right now.
    #[error("the database {0} is being restored; try again when the restore has finished")]
    RestoreInProgress(PathBuf),
    /// The destination exists and is never overwritten.
    #[error("{0} exists")]
    Exists(PathBuf),
    /// The file is not an Alvryn database, is damaged, or is from a newer
    /// version.
    #[error("{path} cannot be used: {why}")]
    Damaged {
        /// The file checked.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// SQLite failed.
    #[error("SQLite: {0}")]
    Sqlite(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The file system failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn sqlite(e: rusqlite::Error) -> BackupError {
    BackupError::Sqlite(Box::new(e))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a finished backup or restore copied.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The file written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its schema version (`PRAGMA user_version`).
    pub schema_version: i64,
    /// How many accounts it holds.
    pub users: i64,
}

/// The lock file of the database at `db`: `{db}.lock`.
#[must_use]
pub fn lock_path(db: &Path) -> PathBuf {
    with_suffix(db, ".lock")
}

fn open_lock_file(db: &Path) -> Result<File, BackupError> {
    let path = lock_path(db);
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io(&path))
}

/// Takes a shared lock on the database's lock file, without waiting; the
/// lock lasts as long as the returned file is open.
///
/// # Errors
/// [`BackupError::RestoreInProgress`] when a restore holds it;
/// [`BackupError::Io`] when the lock file cannot be opened.
pub fn lock_shared(db: &Path) -> Result<File, BackupError> {
    let file = open_lock_file(db)?;
    match file.try_lock_shared() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(BackupError::RestoreInProgress(db.to_owned()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(BackupError::Io {
            path: lock_path(db),
            source: e,
        }),
    }
}

fn lock_exclusive(db: &Path) -> Result<File, BackupError> {
    let file = open_lock_file(db)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(BackupError::InUse(db.to_owned())),
        Err(std::fs::TryLockError::Error(e)) => Err(BackupError::Io {
            path: lock_path(db),
            source: e,
        }),
    }
}

/// The folder of `path`, `.` for a bare name.
fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// A fresh, empty file (mode 0600) beside `target`, named after it.
fn temporary_beside(target: &Path) -> Result<(PathBuf, File), BackupError> {
    let folder = folder_of(target);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = folder.join(format!(".{name}.{}.partial", crate::random_hex(6)));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    Ok((tmp, file))
}

/// Removes a temporary file and SQLite's companions of it.
fn remove_temporary(tmp: &Path) {
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let _ = std::fs::remove_file(with_suffix(tmp, suffix));
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

fn sync_folder(path: &Path) -> Result<(), BackupError> {
    let folder = folder_of(path);
    File::open(&folder)
        .and_then(|f| f.sync_all())
        .map_err(io(&folder))
}

/// Checks the database file at `path` (opened read-write, alone) and
/// switches it to a rollback journal, so it is one self-contained file.
fn check_and_seal(path: &Path) -> Result<Snapshot, BackupError> {
    let damaged = |why: String| BackupError::Damaged {
        path: path.to_owned(),
        why,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
    // A file that is not SQLite fails here ("file is not a database").
    let mode: String = conn
        .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
        .map_err(|e| damaged(e.to_string()))?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(damaged(format!("its journal mode stays {mode}")));
    }
    let mut stmt = conn
        .prepare("PRAGMA integrity_check")
        .map_err(|e| damaged(e.to_string()))?;
    let problems: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(|e| damaged(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| damaged(e.to_string()))?;
    drop(stmt);
    if problems != ["ok"] {
        return Err(damaged(format!(
            "integrity check: {}",
            problems.into_iter().take(5).collect::<Vec<_>>().join("; ")
        )));
    }
    let orphans: i64 = conn
        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .map_err(|e| damaged(e.to_string()))?;
    if orphans > 0 {
        return Err(damaged(format!(
            "{orphans} rows refer to rows that do not exist"
        )));
    }
    let schema_version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sqlite)?;
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if schema_version > known {
        return Err(damaged(format!(
            "it is at schema version {schema_version}, newer than this build's {known}"
        )));
    }
    let users: i64 = conn
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .map_err(|_| damaged("it is not an Alvryn database (no users table)".into()))?;
    conn.close().map_err(|(_, e)| sqlite(e))?;
    let bytes = std::fs::metadata(path).map_err(io(path))?.len();
    Ok(Snapshot {
        path: path.to_owned(),
        bytes,
        schema_version,
        users,
    })
}

/// Copies the database at `db`, online, to the new file `dest` (mode
/// 0600; never overwritten); see the [module docs](self).
///
/// Blocks: call it from a blocking thread.
///
/// # Errors
/// [`BackupError::NoDatabase`], [`BackupError::RestoreInProgress`],
/// [`BackupError::Exists`], [`BackupError::Damaged`] (the copy failed its
/// checks), [`BackupError::Sqlite`], [`BackupError::Io`]. Nothing is left
/// at `dest` or beside it on failure.
pub fn backup(db: &Path, dest: &Path) -> Result<Snapshot, BackupError> {
    if !db.is_file() {
        return Err(BackupError::NoDatabase(db.to_owned()));
    }
    if dest.exists() {
        return Err(BackupError::Exists(dest.to_owned()));
    }
    let _lock = lock_shared(db)?;
    let (tmp, file) = temporary_beside(dest)?;
    drop(file);
    let result = (|| {
        copy_online(db, &tmp)?;
        let mut snapshot = check_and_seal(&tmp)?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io(&tmp))?;
        // Linked, not renamed: an existing `dest` is never replaced.
        std::fs::hard_link(&tmp, dest).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                BackupError::Exists(dest.to_owned())
            } else {
                io(dest)(e)
            }
        })?;
        snapshot.path = dest.to_owned();
        Ok(snapshot)
    })();
    remove_temporary(&tmp);
    let snapshot = result?;
    sync_folder(dest)?;
    Ok(snapshot)
}

/// The online backup API, in one step: one read transaction over the
/// whole copy.
fn copy_online(db: &Path, tmp: &Path) -> Result<(), BackupError> {
    // Read-write without CREATE: a read-only connection cannot open a
    // WAL database whose `-shm` is missing (no server running). Nothing
    // is written through it.
    let src = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite)?;
    src.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
    let mut dst = Connection::open(tmp).map_err(sqlite)?;
    {
        let copy = Backup::new(&src, &mut dst).map_err(sqlite)?;
        let mut waits = 0;
        loop {
            match copy.step(-1).map_err(sqlite)? {
                StepResult::Done => break,
                StepResult::More => {}
                StepResult::Busy | StepResult::Locked => {
                    waits += 1;
                    if waits > 100 {
                        return Err(BackupError::Sqlite(
                            "the database stayed locked for 5 s".into(),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {}
            }
        }
    }
    dst.close().map_err(|(_, e)| sqlite(e))?;
    src.close().map_err(|(_, e)| sqlite(e))?;
    Ok(())
}

/// Replaces the database at `db` with the backup `source`, keeping the
/// current database (if any) as `previous`; see the [module docs](self).
///
/// Blocks: call it from a blocking thread.
///
/// # Errors
/// [`BackupError::InUse`] while any process has the database open;
/// [`BackupError::Exists`] when a database exists and `previous` is
/// `None`, or `previous` exists; [`BackupError::Damaged`] when `source`
/// is not a sound Alvryn database (nothing is changed);
/// [`BackupError::Sqlite`], [`BackupError::Io`].
pub fn restore(source: &Path, db: &Path, previous: Option<&Path>) -> Result<Snapshot, BackupError> {
    if !source.is_file() {
        return Err(BackupError::NoDatabase(source.to_owned()));
    }
    let _lock = lock_exclusive(db)?;
    let existing = db.exists();
    if existing {
        match previous {
            None => return Err(BackupError::Exists(db.to_owned())),
            Some(p) if p.exists() => return Err(BackupError::Exists(p.to_owned())),
            Some(_) => {}
        }
    }
    let (tmp, mut file) = temporary_beside(db)?;
    let result = (|| {
        let mut input = File::open(source).map_err(io(source))?;
        std::io::copy(&mut input, &mut file).map_err(io(&tmp))?;
        file.flush().map_err(io(&tmp))?;
        let mut snapshot = check_and_seal(&tmp).map_err(|e| match e {
            // Name the file the operator gave, not our temporary copy.
            BackupError::Damaged { why, .. } => BackupError::Damaged {
                path: source.to_owned(),
                why,
            },
            other => other,
        })?;
        file.sync_all().map_err(io(&tmp))?;
        if let (true, Some(previous)) = (existing, previous) {
            keep_aside(db, previous)?;
        } else {
            // `-wal` / `-shm` without their database: kept, never read
            // with the new one.
            for suffix in ["-wal", "-shm"] {
                let stale = with_suffix(db, suffix);
                if stale.exists() {
                    let kept = with_suffix(db, &format!("{suffix}.stale-{}", std::process::id()));
                    std::fs::rename(&stale, &kept).map_err(io(&stale))?;
                }
            }
        }
        std::fs::rename(&tmp, db).map_err(io(db))?;
        snapshot.path = db.to_owned();
        Ok(snapshot)
    })();
    drop(file);
    remove_temporary(&tmp);
    let snapshot = result?;
    sync_folder(db)?;
    Ok(snapshot)
}

/// Folds the current database's WAL into its file, keeps it as
/// `previous` (a hard link: `db` stays in place until the new one is
/// renamed over it) and removes its `-wal` and `-shm`. When it cannot be
/// checkpointed (damaged), its `-wal` and `-shm` are kept beside
/// `previous` instead, so nothing of it is lost.
fn keep_aside(db: &Path, previous: &Path) -> Result<(), BackupError> {
    let folded = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .and_then(|c| {
        c.busy_timeout(BUSY_TIMEOUT)?;
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let mode: String = c.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))?;
        c.close().map_err(|(_, e)| e)?;
        Ok(mode.eq_ignore_ascii_case("delete"))
    })
    .unwrap_or(false);
    std::fs::hard_link(db, previous).map_err(io(previous))?;
    for suffix in ["-wal", "-shm"] {
        let side = with_suffix(db, suffix);
        if !side.exists() {
            continue;
        }
        if folded {
            std::fs::remove_file(&side).map_err(io(&side))?;
        } else {
            let kept = with_suffix(previous, suffix);
            std::fs::rename(&side, &kept).map_err(io(&side))?;
        }
    }
    File::open(previous)
        .and_then(|f| f.sync_all())
        .map_err(io(previous))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::store::StoreError;
    use crate::store::sqlite::SqliteStore;

    #[tokio::test]
    async fn the_lock_file_keeps_a_restore_and_every_opener_apart() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("alvryn.db");
        let store = SqliteStore::open(&db).await.unwrap();
        let copy = dir.path().join("copy.db");
        // A backup beside an open handle: both hold the lock shared.
        let snapshot = backup(&db, &copy).unwrap();
        assert_eq!((snapshot.users, snapshot.path.clone()), (0, copy.clone()));
        // A second backup never overwrites the first.
        assert!(matches!(backup(&db, &copy), Err(BackupError::Exists(_))));
        // An open handle, even in this process, refuses a restore.
        assert!(matches!(
            restore(&copy, &db, Some(&dir.path().join("kept"))),
            Err(BackupError::InUse(_))
        ));
        drop(store);
        // The writer thread lets go of the lock once its connection is
        // closed, a moment after the last handle drops.
        let mut held = lock_exclusive(&db);
        for _ in 0..100 {
            if held.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            held = lock_exclusive(&db);
        }
        let held = held.expect("the lock is released after the last handle");
        // While a restore holds it, neither the store nor a backup opens.
        assert!(matches!(
            SqliteStore::open(&db).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            backup(&db, &dir.path().join("other.db")),
            Err(BackupError::RestoreInProgress(_))
        ));
        drop(held);
        SqliteStore::open(&db).await.unwrap();
    }

    #[test]
    fn a_failed_backup_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("alvryn.db");
        std::fs::write(&db, b"not a database at all, not even close to one").unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        assert!(backup(&db, &out.join("b.db")).is_err());
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
        assert!(matches!(
            backup(&dir.path().join("missing.db"), &out.join("b.db")),
            Err(BackupError::NoDatabase(_))
        ));
    }
}
