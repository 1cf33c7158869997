//! The embedded store: one SQLite file (bundled SQLite, no system
//! library) in WAL mode, shared safely by several handles and several
//! processes (the server and the worker), schema migrations applied when
//! the store opens.
//!
//! # Concurrency
//!
//! * **One writer.** Every write of a handle goes to one thread that owns
//!   the only writing connection. It takes every write that is pending,
//!   runs them in **one** transaction (each inside its own savepoint, so
//!   one failing write undoes only itself), commits once, and only then
//!   answers each waiter. The commit runs with `synchronous=FULL`: a
//!   write that returned `Ok` is in the WAL on disk, and concurrent
//!   writers share one sync instead of queueing for one each. Another
//!   process's writer waits for the write lock (`busy_timeout`, 5 s)
//!   instead of failing.
//! * **Readers beside it.** Reads run on a small pool of read-only
//!   connections on the calling thread: a point read by key takes
//!   microseconds, and in WAL mode a reader never waits for a writer, so
//!   a slow writer (the worker holding the write lock) never stalls a
//!   read. A read sees every write that returned before it began.
//! * **Atomic by construction.** Every compare-and-swap (rotation, lease,
//!   record status, versioned upsert) is a single conditional statement
//!   (`UPDATE ... WHERE`, `INSERT ... ON CONFLICT DO UPDATE ... WHERE`),
//!   and multi-statement writes (the ledger, a status move) run inside
//!   the writer's transaction. Statements are prepared once per
//!   connection (`prepare_cached`).
//!
//! # Failure modes
//!
//! * The file cannot be opened or migrated: [`StoreError::Unavailable`]
//!   at [`SqliteStore::open`], nothing of a failed migration applied.
//! * The commit fails (disk full, I/O error, the lock not obtained in
//!   5 s): every write of that group gets [`StoreError::Unavailable`] and
//!   none of them is applied.
//! * A restore is replacing the file ([`backup::restore`]):
//!   [`StoreError::Unavailable`] at [`SqliteStore::open`]. Every handle
//!   holds a shared lock on the database's lock file while it is open;
//!   see [`backup`].
//! * The writer thread is gone (it never panics on a write; a panicking
//!   write is rolled back and answered as unavailable):
//!   [`StoreError::Unavailable`].

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};

use super::primitives::{window_bounds, window_len};
use super::{
    Advance, AuditEvent, AuditLog, CasOutcome, Lease, LeaseStore, NewLease, OneTimeItem,
    OneTimeStore, PreviousSlot, Purge, Purged, Record, RecordFilter, RecordStore, RefreshFamily,
    RefreshSlot, Revocation, RevokeReason, Rotation, SessionStore, StatusRange, StoreError,
    TokenHash, User, UserStore, Versioned, VersionedStore, WindowCount, WindowCounters,
};
use crate::billing::PlanName;
use crate::crypto::ledger::grant;
use crate::crypto::{KeyFingerprint, LedgerError, Reservation, UsageLedger};
use crate::secret::SecretBytes;

pub mod backup;

/// Schema migrations, applied in order; `PRAGMA user_version` records how
/// many have run. Never edit one that has shipped: append.
const MIGRATIONS: &[&str] = &[
    // 1: users, sessions, audit events, the field cipher's usage ledger.
    "CREATE TABLE users (
        id TEXT PRIMARY KEY,
        email TEXT NOT NULL UNIQUE,
        password_hash TEXT,
        plan TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE refresh_families (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at_ms INTEGER NOT NULL,
        last_used_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        user_agent TEXT,
        current_hash BLOB NOT NULL,
        current_jti TEXT NOT NULL,
        current_issued_at INTEGER NOT NULL,
        previous_hash BLOB,
        previous_rotated_at_ms INTEGER,
        revoked_at_ms INTEGER,
        revoke_reason TEXT,
        generation INTEGER NOT NULL
     ) STRICT;
     CREATE INDEX refresh_families_user ON refresh_families(user_id, created_at_ms);
     CREATE INDEX refresh_families_expiry ON refresh_families(expires_at_ms);
     CREATE TABLE audit_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        user_id TEXT NOT NULL,
        family_id TEXT
     ) STRICT;
     CREATE INDEX audit_events_user ON audit_events(user_id, seq);
     CREATE TABLE key_usage (
        key_id TEXT PRIMARY KEY,
        reserved INTEGER NOT NULL
     ) STRICT;",
    // 2: the generic primitives.
    "CREATE TABLE one_time (
        ns TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        PRIMARY KEY (ns, key)
     ) STRICT, WITHOUT ROWID;
     CREATE INDEX one_time_expiry ON one_time(expires_at_ms);
     CREATE TABLE records (
        ns TEXT NOT NULL,
        key TEXT NOT NULL,
        owner TEXT,
        status INTEGER NOT NULL,
        data BLOB NOT NULL,
        created_at_ms INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER,
        PRIMARY KEY (ns, key)
     ) STRICT;
     CREATE INDEX records_owner ON records(ns, owner, created_at_ms);
     CREATE INDEX records_status ON records(ns, status, created_at_ms);
     CREATE INDEX records_expiry ON records(expires_at_ms) WHERE expires_at_ms IS NOT NULL;
     CREATE TABLE versioned (
        ns TEXT NOT NULL,
        key TEXT NOT NULL,
        version INTEGER NOT NULL,
        data BLOB NOT NULL,
        updated_at_ms INTEGER NOT NULL,
        PRIMARY KEY (ns, key)
     ) STRICT;
     CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        fence INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE window_counters (
        key TEXT NOT NULL,
        window_ms INTEGER NOT NULL,
        window_start_ms INTEGER NOT NULL,
        count INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        PRIMARY KEY (key, window_ms, window_start_ms)
     ) STRICT, WITHOUT ROWID;
     CREATE INDEX window_counters_expiry ON window_counters(expires_at_ms);",
    // 3: the session check of every authenticated request reads the
    // index alone.
    "CREATE INDEX refresh_families_session
        ON refresh_families(id, user_id, revoked_at_ms, expires_at_ms);",
    // 4: the token two rotations back, for a slow tab.
    "ALTER TABLE refresh_families ADD COLUMN older_hash BLOB;
     ALTER TABLE refresh_families ADD COLUMN older_rotated_at_ms INTEGER;",
    // 5: listings page through a namespace in order (oldest first, then
    // by key), with or without a status, from an index range.
    "CREATE INDEX records_page ON records(ns, created_at_ms, key);
     DROP INDEX records_status;
     CREATE INDEX records_status ON records(ns, status, created_at_ms, key);
     DROP INDEX records_owner;
     CREATE INDEX records_owner ON records(ns, owner, created_at_ms, key);",
];

/// How long a connection waits for another process's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Most writes committed together.
const MAX_GROUP: usize = 256;
/// Most idle reader connections kept per handle.
const MAX_IDLE_READERS: usize = 16;
/// Most listings running at once on the blocking pool; more wait for a
/// turn. Below [`MAX_IDLE_READERS`], so the readers they use (and the
/// point reads beside them) are kept rather than opened and closed.
const MAX_LISTINGS: usize = 8;
/// A listing of at most this many records (its filter's `limit`) runs
/// on the caller's thread, like a point read: it reads a bounded range
/// of an index, cheaper than a hand-off to the blocking pool (not a
/// status range without an owner, which reads and sorts the range).
const MAX_INLINE_LISTING: usize = 64;
/// Most writes waiting for the writer; a caller beyond it waits for room
/// (backpressure) instead of growing the queue.
const MAX_QUEUED_WRITES: usize = 4096;

/// What the writer hands back for a write once the group is committed (or
/// failed): it answers the waiter.
type Answer = Box<dyn FnOnce(Option<&str>) + Send>;

/// What the writer does with a job.
enum Step<'a> {
    /// Run it inside the group's transaction.
    Run(&'a Connection),
    /// Answer it with this failure without running it.
    Refuse(&'a str),
}

/// One write: run (or refused), it says whether it succeeded (else its
/// savepoint is rolled back) and how to answer once the group is done.
type Job = Box<dyn FnOnce(Step<'_>) -> (bool, Answer) + Send>;

struct Inner {
    path: PathBuf,
    writes: tokio::sync::mpsc::Sender<Job>,
    readers: Mutex<Vec<Connection>>,
    /// Turns for listings on the blocking pool ([`MAX_LISTINGS`]).
    listings: Arc<tokio::sync::Semaphore>,
    /// The shared lock on the database's lock file (see [`backup`]),
    /// also held by the writer thread until its connection is closed.
    _lock: Arc<std::fs::File>,
}

/// The embedded SQLite store. Cheap to clone; clones share the writer and
/// the readers.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::unavailable(e)
}

fn writer_gone() -> StoreError {
    StoreError::Unavailable("the embedded store's writer has stopped".into())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies any
    /// pending migrations and starts the writer thread.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the file cannot be opened or a
    /// migration fails (nothing of a failed migration is applied);
    /// [`StoreError::Corrupt`] when the file was written by a newer
    /// version with more migrations than this one knows.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_owned();
        let p = path.clone();
        let (lock, writer, reader) = tokio::task::spawn_blocking(
            move || -> Result<(std::fs::File, Connection, Connection), StoreError> {
                let lock = backup::lock_shared(&p).map_err(StoreError::unavailable)?;
                let w = open_writer(&p)?;
                let r = open_reader(&p)?;
                Ok((lock, w, r))
            },
        )
        .await
        .map_err(StoreError::unavailable)??;
        let lock = Arc::new(lock);
        let writer_lock = Arc::clone(&lock);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Job>(MAX_QUEUED_WRITES);
        std::thread::Builder::new()
            .name("alvryn-sqlite-writer".into())
            .spawn(move || {
                write_loop(&writer, &mut rx);
                drop(writer);
                drop(writer_lock);
            })
            .map_err(StoreError::unavailable)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writes: tx,
                readers: Mutex::new(vec![reader]),
                listings: Arc::new(tokio::sync::Semaphore::new(MAX_LISTINGS)),
                _lock: lock,
            }),
        })
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The schema version of the open database.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        self.read(|c| {
            c.query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(unavailable)
        })
    }

    /// Runs a read on a pooled reader connection, on this thread.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = lock(&self.inner.readers).pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_reader(&self.inner.path)?,
        };
        let out = f(&conn);
        let mut idle = lock(&self.inner.readers);
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        out
    }

    /// Runs a read that may scan many rows (a listing) on the blocking
    /// pool, so it never holds an executor thread; at most
    /// [`MAX_LISTINGS`] at once.
    async fn read_listing<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        // The turn goes with the read: a caller that gives up (a timeout)
        // does not free it while the read still runs.
        let turn = Arc::clone(&self.inner.listings)
            .acquire_owned()
            .await
            .map_err(StoreError::unavailable)?;
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let out = store.read(f);
            drop(turn);
            out
        })
        .await
        .map_err(StoreError::unavailable)?
    }

    /// Queues a write for the writer and waits until its group is
    /// committed.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<T, StoreError>>();
        let job: Job = Box::new(move |step| {
            let c = match step {
                // A caller that gave up (a timeout layer, a dropped
                // request) before its write ran: the write is not applied.
                Step::Run(_) if tx.is_closed() => {
                    return (true, Box::new(|_: Option<&str>| {}) as Answer);
                }
                Step::Run(c) => c,
                Step::Refuse(why) => {
                    let _ = tx.send(Err(StoreError::Unavailable(why.to_owned().into())));
                    return (false, Box::new(|_: Option<&str>| {}) as Answer);
                }
            };
            let out = f(c);
            let ok = out.is_ok();
            let answer: Answer = Box::new(move |commit_error| {
                let _ = tx.send(match commit_error {
                    None => out,
                    Some(e) => Err(StoreError::Unavailable(e.to_owned().into())),
                });
            });
            (ok, answer)
        });
        self.inner
            .writes
            .send(job)
            .await
            .map_err(|_| writer_gone())?;
        rx.await.map_err(|_| writer_gone())?
    }
}

/// Creates the database file readable by its owner only, whatever the
/// folder's mode and the umask; SQLite gives its `-wal` and `-shm` files
/// the database file's mode. An existing file is left as it is.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::unavailable(e)),
    }
}

fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    create_private(path)?;
    let mut conn = Connection::open(path).map_err(unavailable)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(unavailable)?;
    // Every commit is synced before any write of its group is answered.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(unavailable)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(unavailable)?;
    conn.set_prepared_statement_cache_capacity(64);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(unavailable)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(unavailable)?;
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if version > known {
        return Err(StoreError::Corrupt(format!(
            "the database is at schema version {version}, newer than this build's {known}"
        )));
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        tx.execute_batch(sql).map_err(unavailable)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )
        .map_err(unavailable)?;
    }
    tx.commit().map_err(unavailable)?;
    Ok(conn)
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(unavailable)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// The writer thread: group pending writes into one transaction and one
/// sync. Ends when every handle is dropped.
///
/// If SQLite abandons the transaction mid-group (it rolls back on its own
/// after some I/O errors, a full disk, no memory), no later write of the
/// group runs outside it: every write of the group is answered as failed
/// and none is applied.
fn write_loop(conn: &Connection, jobs: &mut tokio::sync::mpsc::Receiver<Job>) {
    while let Some(first) = jobs.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        if !conn.is_autocommit() {
            // Left over from a failure both COMMIT and ROLLBACK hit.
            let _ = conn.execute_batch("ROLLBACK");
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let why = format!("the embedded store could not start a write: {e}");
            tracing::error!(error = %e, writes = group.len(), "the embedded store could not start a write");
            for job in group {
                let _ = job(Step::Refuse(&why));
            }
            continue;
        }
        let mut answers = Vec::with_capacity(group.len());
        let mut broken: Option<String> = None;
        for job in group {
            if let Some(why) = &broken {
                let _ = job(Step::Refuse(why));
                continue;
            }
            if conn.is_autocommit() {
                broken = Some("the write transaction was rolled back".into());
                let _ = job(Step::Refuse("the write transaction was rolled back"));
                continue;
            }
            if let Err(e) = conn.execute_batch("SAVEPOINT w") {
                broken = Some(format!("the embedded store could not start a write: {e}"));
                let _ = job(Step::Refuse("the embedded store could not start a write"));
                continue;
            }
            let (ok, answer) = match catch_unwind(AssertUnwindSafe(|| job(Step::Run(conn)))) {
                Ok(r) => r,
                Err(_) => {
                    tracing::error!("a write to the embedded store panicked; rolled back");
                    (false, Box::new(|_: Option<&str>| {}) as Answer)
                }
            };
            answers.push(answer);
            if conn.is_autocommit() {
                // The job's statement made SQLite roll the whole
                // transaction back: nothing of the group survives.
                broken = Some("the write transaction was rolled back".into());
                continue;
            }
            let end = if ok {
                "RELEASE w"
            } else {
                "ROLLBACK TO w; RELEASE w"
            };
            if let Err(e) = conn.execute_batch(end) {
                tracing::error!(error = %e, "the embedded store could not end a savepoint");
                broken = Some(format!("the embedded store could not end a write: {e}"));
            }
        }
        let failure = match broken {
            Some(why) => Some(why),
            None => conn
                .execute_batch("COMMIT")
                .err()
                .map(|e| format!("the commit failed: {e}")),
        };
        match failure {
            None => answers.into_iter().for_each(|a| a(None)),
            Some(why) => {
                tracing::error!(error = %why, writes = answers.len(), "the embedded store could not commit");
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                answers.into_iter().for_each(|a| a(Some(&why)));
            }
        }
    }
}

/// The columns of a family, in `family_from_row` order.
macro_rules! family_cols {
    () => {
        "id, user_id, created_at_ms, last_used_at_ms, expires_at_ms, user_agent, current_hash, \
     current_jti, current_issued_at, previous_hash, previous_rotated_at_ms, revoked_at_ms, revoke_reason, generation, \
     older_hash, older_rotated_at_ms"
    };
}

fn user_from_row(r: &Row<'_>) -> rusqlite::Result<Result<User, StoreError>> {
    let plan: String = r.get(3)?;
    Ok(match PlanName::new(&plan) {
        Ok(plan) => Ok(User {
            id: r.get(0)?,
            email: r.get(1)?,
            password_hash: r.get(2)?,
            plan,
            created_at_ms: r.get(4)?,
        }),
        Err(_) => Err(StoreError::Corrupt(
            "a user has an invalid plan name".into(),
        )),
    })
}

fn family_from_row(r: &Row<'_>) -> rusqlite::Result<Result<RefreshFamily, StoreError>> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("a session has an invalid {what}"));
    let current: Vec<u8> = r.get(6)?;
    let previous: Option<Vec<u8>> = r.get(9)?;
    let previous_at: Option<i64> = r.get(10)?;
    let reason: Option<String> = r.get(12)?;
    let Some(current_hash) = TokenHash::from_slice(&current) else {
        return Ok(Err(corrupt("token hash")));
    };
    let slot = |hash: Option<Vec<u8>>, at: Option<i64>| match (hash, at) {
        (Some(h), Some(at)) => match TokenHash::from_slice(&h) {
            Some(token_hash) => Ok(Some(PreviousSlot {
                token_hash,
                rotated_at_ms: at,
            })),
            None => Err(corrupt("token hash")),
        },
        (None, None) => Ok(None),
        _ => Err(corrupt("previous token")),
    };
    let previous = match slot(previous, previous_at) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let older = match slot(r.get(14)?, r.get(15)?) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let revoke_reason = match reason.as_deref().map(RevokeReason::parse) {
        None => None,
        Some(Some(r)) => Some(r),
        Some(None) => return Ok(Err(corrupt("revoke reason"))),
    };
    Ok(Ok(RefreshFamily {
        id: r.get(0)?,
        user_id: r.get(1)?,
        created_at_ms: r.get(2)?,
        last_used_at_ms: r.get(3)?,
        expires_at_ms: r.get(4)?,
        user_agent: r.get(5)?,
        current: RefreshSlot {
            token_hash: current_hash,
            jti: r.get(7)?,
            issued_at: r.get(8)?,
        },
        previous,
        older,
        revoked_at_ms: r.get(11)?,
        revoke_reason,
        generation: r.get(13)?,
    }))
}

/// The one row `sql` selects (or returns), if any, read by `f`: the
/// shape of every point read and every single-row write.
fn row<T>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Option<T>, StoreError> {
    c.prepare_cached(sql)
        .and_then(|mut s| s.query_row(params, f).optional())
        .map_err(unavailable)
}

fn is_constraint(e: &rusqlite::Error, codes: &[std::ffi::c_int]) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if codes.contains(&f.extended_code))
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    is_constraint(
        e,
        &[
            rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE,
            rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY,
        ],
    )
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        let u = user.clone();
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO users (id, email, password_hash, plan, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    u.id,
                    u.email,
                    u.password_hash,
                    u.plan.as_str(),
                    u.created_at_ms
                ])
            })
            .map(|_| ())
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict
                } else {
                    unavailable(e)
                }
            })
        })
        .await
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.read(|c| {
            row(
                c,
                "SELECT id, email, password_hash, plan, created_at_ms FROM users WHERE id = ?1",
                [id],
                user_from_row,
            )?
            .transpose()
        })
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.read(|c| {
            row(
                c,
                "SELECT id, email, password_hash, plan, created_at_ms FROM users WHERE email = ?1",
                [email],
                user_from_row,
            )?
            .transpose()
        })
    }

    async fn set_password_hash(&self, user_id: &str, phc: &str) -> Result<(), StoreError> {
        let (id, phc) = (user_id.to_owned(), phc.to_owned());
        self.write(move |c| {
            match c
                .prepare_cached("UPDATE users SET password_hash = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id, phc]))
                .map_err(unavailable)?
            {
                0 => Err(StoreError::NotFound),
                _ => Ok(()),
            }
        })
        .await
    }

    async fn active_session_user(
        &self,
        family_id: &str,
        user_id: &str,
        now_ms: i64,
    ) -> Result<Option<User>, StoreError> {
        self.read(|c| {
            row(c, "SELECT u.id, u.email, u.password_hash, u.plan, u.created_at_ms
                 FROM refresh_families f JOIN users u ON u.id = f.user_id
                 WHERE f.id = ?1 AND f.user_id = ?2 AND f.revoked_at_ms IS NULL AND f.expires_at_ms > ?3", params![family_id, user_id, now_ms], user_from_row)?
            .transpose()
        })
    }
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn create_family(&self, family: &RefreshFamily) -> Result<(), StoreError> {
        let f = family.clone();
        self.write(move |c| {
            c.prepare_cached(concat!(
                "INSERT INTO refresh_families (",
                family_cols!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
            ))
            .and_then(|mut s| {
                s.execute(params![
                    f.id,
                    f.user_id,
                    f.created_at_ms,
                    f.last_used_at_ms,
                    f.expires_at_ms,
                    f.user_agent,
                    &f.current.token_hash.0[..],
                    f.current.jti,
                    f.current.issued_at,
                    f.previous.as_ref().map(|p| p.token_hash.0.to_vec()),
                    f.previous.as_ref().map(|p| p.rotated_at_ms),
                    f.revoked_at_ms,
                    f.revoke_reason.map(RevokeReason::as_str),
                    f.generation,
                    f.older.as_ref().map(|p| p.token_hash.0.to_vec()),
                    f.older.as_ref().map(|p| p.rotated_at_ms),
                ])
            })
            .map(|_| ())
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict
                } else if is_constraint(&e, &[rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY]) {
                    StoreError::NotFound
                } else {
                    unavailable(e)
                }
            })
        })
        .await
    }

    async fn family(&self, id: &str) -> Result<Option<RefreshFamily>, StoreError> {
        self.read(|c| {
            row(
                c,
                concat!(
                    "SELECT ",
                    family_cols!(),
                    " FROM refresh_families WHERE id = ?1"
                ),
                [id],
                family_from_row,
            )?
            .transpose()
        })
    }

    async fn rotate_family(&self, r: &Rotation) -> Result<Option<RefreshFamily>, StoreError> {
        let r = r.clone();
        self.write(move |c| {
            row(
                c,
                ROTATE_SQL,
                params![
                    r.family_id,
                    &r.expected.0[..],
                    r.now_ms,
                    &r.next.token_hash.0[..],
                    r.next.jti,
                    r.next.issued_at,
                    r.expires_at_ms
                ],
                family_from_row,
            )?
            .transpose()
        })
        .await
    }

    async fn revoke(&self, r: &Revocation) -> Result<u64, StoreError> {
        let r = r.clone();
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE refresh_families SET revoked_at_ms = ?3, revoke_reason = ?4
                 WHERE user_id = ?1 AND (?2 IS NULL OR id = ?2) AND revoked_at_ms IS NULL",
            )
            .and_then(|mut s| {
                s.execute(params![r.user_id, r.family_id, r.at_ms, r.reason.as_str()])
            })
            .map(|n| n as u64)
            .map_err(unavailable)
        })
        .await
    }

    async fn active_families(
        &self,
        user_id: &str,
        now_ms: i64,
    ) -> Result<Vec<RefreshFamily>, StoreError> {
        let user_id = user_id.to_owned();
        self.read_listing(move |c| {
            let mut stmt = c
                .prepare_cached(concat!(
                    "SELECT ",
                    family_cols!(),
                    " FROM refresh_families
                     WHERE user_id = ?1 AND revoked_at_ms IS NULL AND expires_at_ms > ?2
                     ORDER BY created_at_ms DESC, id DESC"
                ))
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![user_id, now_ms], family_from_row)
                .map_err(unavailable)?;
            rows.map(|r| r.map_err(unavailable)?).collect()
        })
        .await
    }
}

const ROTATE_SQL: &str = concat!(
    "UPDATE refresh_families SET
        older_hash = previous_hash, older_rotated_at_ms = previous_rotated_at_ms,
        previous_hash = current_hash, previous_rotated_at_ms = ?3,
        current_hash = ?4, current_jti = ?5, current_issued_at = ?6,
        last_used_at_ms = ?3, expires_at_ms = ?7, generation = generation + 1
     WHERE id = ?1 AND current_hash = ?2 AND revoked_at_ms IS NULL AND expires_at_ms > ?3
     RETURNING ",
    family_cols!()
);

#[async_trait]
impl AuditLog for SqliteStore {
    async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let e = event.clone();
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO audit_events (at_ms, kind, user_id, family_id) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![e.at_ms, e.kind, e.user_id, e.family_id]))
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }

    async fn audit_events(&self, user_id: &str) -> Result<Vec<AuditEvent>, StoreError> {
        let user_id = user_id.to_owned();
        self.read_listing(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT at_ms, kind, user_id, family_id FROM audit_events WHERE user_id = ?1 ORDER BY at_ms, seq")
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([user_id], |r| {
                    Ok(AuditEvent {
                        at_ms: r.get(0)?,
                        kind: r.get(1)?,
                        user_id: r.get(2)?,
                        family_id: r.get(3)?,
                    })
                })
                .map_err(unavailable)?;
            rows.map(|r| r.map_err(unavailable)).collect()
        })
        .await
    }
}

fn ledger_err(e: StoreError) -> LedgerError {
    LedgerError::Storage(Box::new(e))
}

fn read_reserved(c: &Connection, key: &str) -> Result<i64, StoreError> {
    row(
        c,
        "SELECT reserved FROM key_usage WHERE key_id = ?1",
        [key],
        |r| r.get(0),
    )
    .map(Option::unwrap_or_default)
}

#[async_trait]
impl UsageLedger for SqliteStore {
    async fn reserve(
        &self,
        key: &KeyFingerprint,
        count: u64,
        limit: u64,
    ) -> Result<Reservation, LedgerError> {
        let key = key.clone();
        // Read and write inside the writer's transaction: no other write
        // of any process can come between them.
        self.write(move |c| {
            let current = read_reserved(c, key.as_str())?;
            let r = match grant(u64::try_from(current).unwrap_or(0), count, limit, &key) {
                Ok(r) => r,
                Err(e) => return Ok(Err(e)),
            };
            c.prepare_cached(
                "INSERT INTO key_usage (key_id, reserved) VALUES (?1, ?2)
                 ON CONFLICT(key_id) DO UPDATE SET reserved = excluded.reserved",
            )
            .and_then(|mut s| {
                s.execute(params![
                    key.as_str(),
                    i64::try_from(r.total).unwrap_or(i64::MAX)
                ])
            })
            .map_err(unavailable)?;
            Ok(Ok(r))
        })
        .await
        .map_err(ledger_err)?
    }

    async fn reserved(&self, key: &KeyFingerprint) -> Result<u64, LedgerError> {
        let n = self
            .read(|c| read_reserved(c, key.as_str()))
            .map_err(ledger_err)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

#[async_trait]
impl OneTimeStore for SqliteStore {
    async fn put_once(&self, item: &OneTimeItem, now_ms: i64) -> Result<(), StoreError> {
        let item = item.clone();
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "INSERT INTO one_time (ns, key, value, expires_at_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(ns, key) DO UPDATE SET value = excluded.value, expires_at_ms = excluded.expires_at_ms
                     WHERE one_time.expires_at_ms <= ?5",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        item.ns,
                        item.key,
                        item.value.expose(),
                        item.expires_at_ms,
                        now_ms
                    ])
                })
                .map_err(unavailable)?;
            if n == 0 {
                Err(StoreError::Conflict)
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn take_once(
        &self,
        ns: &str,
        key: &str,
        now_ms: i64,
    ) -> Result<Option<SecretBytes>, StoreError> {
        let (ns, key) = (ns.to_owned(), key.to_owned());
        self.write(move |c| {
            let taken: Option<(Vec<u8>, i64)> = row(
                c,
                "DELETE FROM one_time WHERE ns = ?1 AND key = ?2 RETURNING value, expires_at_ms",
                [ns, key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(taken
                .map(|(v, exp)| (SecretBytes::new(v), exp))
                .filter(|(_, exp)| *exp > now_ms)
                .map(|(v, _)| v))
        })
        .await
    }
}

/// The columns of a record, in `record_from_row` order.
macro_rules! record_cols {
    () => {
        "ns, key, owner, status, data, created_at_ms, updated_at_ms, expires_at_ms"
    };
}

/// Which statuses a listing's statement takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Statuses {
    Any,
    One,
    Range,
}

impl Statuses {
    fn of(range: Option<StatusRange>) -> Self {
        match range {
            None => Self::Any,
            Some(r) if r.is_single() => Self::One,
            Some(_) => Self::Range,
        }
    }
}

/// The listing of records for a filter with or without an owner, and
/// with any status, one, or a range. One statement per shape, each
/// planned on the index that serves it (owner, status, or the whole
/// namespace) and planned once: no `LIMIT ?` (a bound limit makes
/// SQLite plan the statement again at every run; the caller stops
/// reading instead), no bound value the planner looks at. A range
/// without an owner is read from the status index (the planner would
/// otherwise walk the whole namespace in order) and sorted. Parameters:
/// `?1` namespace, `?2` owner, `?3`/`?7` the lowest/highest status, `?4`
/// now (ms), `?5`/`?6` the cursor (created ms, key).
fn listing_sql(owner: bool, statuses: Statuses) -> &'static str {
    macro_rules! listing {
        ($index:literal, $where:literal) => {
            concat!(
                "SELECT ",
                record_cols!(),
                " FROM records ",
                $index,
                " WHERE ns = ?1 AND ",
                $where,
                " AND (expires_at_ms IS NULL OR expires_at_ms > ?4)
                  AND (created_at_ms, key) > (?5, ?6)
                  ORDER BY created_at_ms, key"
            )
        };
    }
    match (owner, statuses) {
        (true, Statuses::One) => listing!("", "owner = ?2 AND status = ?3 AND ?7 IS NOT NULL"),
        (true, Statuses::Range) => listing!("", "owner = ?2 AND status BETWEEN ?3 AND ?7"),
        (true, Statuses::Any) => listing!("", "owner = ?2 AND ?3 IS NULL AND ?7 IS NULL"),
        (false, Statuses::One) => listing!("", "?2 IS NULL AND status = ?3 AND ?7 IS NOT NULL"),
        (false, Statuses::Range) => listing!(
            "INDEXED BY records_status",
            "?2 IS NULL AND status BETWEEN ?3 AND ?7"
        ),
        (false, Statuses::Any) => listing!("", "?2 IS NULL AND ?3 IS NULL AND ?7 IS NULL"),
    }
}

fn record_from_row(r: &Row<'_>) -> rusqlite::Result<Result<Record, StoreError>> {
    let status: i64 = r.get(3)?;
    let Ok(status) = u32::try_from(status) else {
        return Ok(Err(StoreError::Corrupt(
            "a record has an invalid status".into(),
        )));
    };
    Ok(Ok(Record {
        ns: r.get(0)?,
        key: r.get(1)?,
        owner: r.get(2)?,
        status,
        data: r.get(4)?,
        created_at_ms: r.get(5)?,
        updated_at_ms: r.get(6)?,
        expires_at_ms: r.get(7)?,
    }))
}

fn live_record_exists(
    c: &Connection,
    ns: &str,
    key: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    c.prepare_cached(
        "SELECT 1 FROM records WHERE ns = ?1 AND key = ?2 AND (expires_at_ms IS NULL OR expires_at_ms > ?3)",
    )
    .and_then(|mut s| s.exists(params![ns, key, now_ms]))
    .map_err(unavailable)
}

#[async_trait]
impl RecordStore for SqliteStore {
    async fn insert_if_absent(&self, record: &Record) -> Result<(), StoreError> {
        let r = record.clone();
        self.write(move |c| {
            // An expired record under the key is replaced; a live one wins.
            let n = c
                .prepare_cached(concat!("INSERT INTO records (", record_cols!(), ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT(ns, key) DO UPDATE SET owner = excluded.owner, status = excluded.status,
                        data = excluded.data, created_at_ms = excluded.created_at_ms,
                        updated_at_ms = excluded.updated_at_ms, expires_at_ms = excluded.expires_at_ms
                     WHERE records.expires_at_ms IS NOT NULL AND records.expires_at_ms <= excluded.created_at_ms"))
                .and_then(|mut s| {
                    s.execute(params![
                        r.ns,
                        r.key,
                        r.owner,
                        i64::from(r.status),
                        r.data,
                        r.created_at_ms,
                        r.updated_at_ms,
                        r.expires_at_ms
                    ])
                })
                .map_err(unavailable)?;
            if n == 0 {
                Err(StoreError::Conflict)
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn record(&self, ns: &str, key: &str, now_ms: i64) -> Result<Option<Record>, StoreError> {
        self.read(|c| {
            row(
                c,
                concat!(
                    "SELECT ",
                    record_cols!(),
                    " FROM records
                 WHERE ns = ?1 AND key = ?2 AND (expires_at_ms IS NULL OR expires_at_ms > ?3)"
                ),
                params![ns, key, now_ms],
                record_from_row,
            )?
            .transpose()
        })
    }

    async fn advance(&self, a: &Advance) -> Result<bool, StoreError> {
        let a = a.clone();
        self.write(move |c| {
            let moved = c
                .prepare_cached(
                    "UPDATE records SET status = ?3, data = COALESCE(?4, data), updated_at_ms = ?5
                     WHERE ns = ?1 AND key = ?2 AND status < ?3
                       AND (expires_at_ms IS NULL OR expires_at_ms > ?5)",
                )
                .and_then(|mut s| {
                    s.execute(params![a.ns, a.key, i64::from(a.to), a.data, a.now_ms])
                })
                .map_err(unavailable)?;
            if moved == 1 {
                Ok(true)
            } else if live_record_exists(c, &a.ns, &a.key, a.now_ms)? {
                Ok(false)
            } else {
                Err(StoreError::NotFound)
            }
        })
        .await
    }

    async fn records(
        &self,
        ns: &str,
        filter: &RecordFilter,
        now_ms: i64,
    ) -> Result<Vec<Record>, StoreError> {
        let limit = match filter.limit {
            0 => usize::MAX,
            n => n,
        };
        // A range of statuses without an owner reads and sorts all the
        // range holds (see `listing_sql`), whatever the limit.
        let sorted = filter.owner.is_none() && Statuses::of(filter.status) == Statuses::Range;
        let inline = (1..=MAX_INLINE_LISTING).contains(&filter.limit) && !sorted;
        let (ns, filter) = (ns.to_owned(), filter.clone());
        let list = move |c: &Connection| {
            let sql = listing_sql(filter.owner.is_some(), Statuses::of(filter.status));
            let mut stmt = c.prepare_cached(sql).map_err(unavailable)?;
            // Without a cursor, from before the first record: one
            // statement, and the comparison stays an index range.
            let (after_ms, after_key) = filter
                .after
                .as_ref()
                .map_or((i64::MIN, String::new()), |c| {
                    (c.created_at_ms, c.key.clone())
                });
            let rows = stmt
                .query_map(
                    params![
                        ns,
                        filter.owner,
                        filter.status.map(|s| i64::from(s.from)),
                        now_ms,
                        after_ms,
                        after_key,
                        filter.status.map(|s| i64::from(s.to))
                    ],
                    record_from_row,
                )
                .map_err(unavailable)?;
            // The rows come in index order, one step at a time: taking
            // the first `limit` reads no more.
            rows.take(limit).map(|r| r.map_err(unavailable)?).collect()
        };
        if inline {
            self.read(list)
        } else {
            self.read_listing(list).await
        }
    }

    async fn remove_record(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        let (ns, key) = (ns.to_owned(), key.to_owned());
        self.write(move |c| {
            c.prepare_cached("DELETE FROM records WHERE ns = ?1 AND key = ?2")
                .and_then(|mut s| s.execute([ns, key]))
                .map(|n| n == 1)
                .map_err(unavailable)
        })
        .await
    }
}

fn read_version(c: &Connection, ns: &str, key: &str) -> Result<Option<Versioned>, StoreError> {
    row(
        c,
        "SELECT ns, key, version, data, updated_at_ms FROM versioned WHERE ns = ?1 AND key = ?2",
        [ns, key],
        |r| {
            Ok(Versioned {
                ns: r.get(0)?,
                key: r.get(1)?,
                version: r.get(2)?,
                data: r.get(3)?,
                updated_at_ms: r.get(4)?,
            })
        },
    )
}

#[async_trait]
impl VersionedStore for SqliteStore {
    async fn upsert_versioned(&self, value: &Versioned) -> Result<CasOutcome, StoreError> {
        let v = value.clone();
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "INSERT INTO versioned (ns, key, version, data, updated_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(ns, key) DO UPDATE SET version = excluded.version, data = excluded.data,
                        updated_at_ms = excluded.updated_at_ms
                     WHERE versioned.version < excluded.version",
                )
                .and_then(|mut s| s.execute(params![v.ns, v.key, v.version, v.data, v.updated_at_ms]))
                .map_err(unavailable)?;
            if n == 1 {
                return Ok(CasOutcome::Applied);
            }
            let current = read_version(c, &v.ns, &v.key)?.map_or(v.version, |s| s.version);
            Ok(CasOutcome::Stale { current })
        })
        .await
    }

    async fn versioned(&self, ns: &str, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.read(|c| read_version(c, ns, key))
    }
}

fn lease_from_row(r: &Row<'_>) -> rusqlite::Result<Lease> {
    Ok(Lease {
        name: r.get(0)?,
        holder: r.get(1)?,
        fence: r.get(2)?,
        expires_at_ms: r.get(3)?,
    })
}

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn acquire(&self, req: &NewLease) -> Result<Option<Lease>, StoreError> {
        let req = req.clone();
        self.write(move |c| {
            row(
                c,
                "INSERT INTO leases (name, holder, fence, expires_at_ms) VALUES (?1, ?2, 1, ?3)
                 ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, fence = leases.fence + 1,
                    expires_at_ms = excluded.expires_at_ms
                 WHERE leases.expires_at_ms <= ?4
                 RETURNING name, holder, fence, expires_at_ms",
                params![
                    req.name,
                    req.holder,
                    req.now_ms.saturating_add(req.ttl_ms),
                    req.now_ms
                ],
                lease_from_row,
            )
        })
        .await
    }

    async fn renew(&self, lease: &Lease, ttl_ms: i64, now_ms: i64) -> Result<Lease, StoreError> {
        let l = lease.clone();
        self.write(move |c| {
            row(
                c,
                "UPDATE leases SET expires_at_ms = ?4
                 WHERE name = ?1 AND fence = ?2 AND holder = ?3 AND expires_at_ms > ?5
                 RETURNING name, holder, fence, expires_at_ms",
                params![
                    l.name,
                    l.fence,
                    l.holder,
                    now_ms.saturating_add(ttl_ms),
                    now_ms
                ],
                lease_from_row,
            )?
            .ok_or(StoreError::Conflict)
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<bool, StoreError> {
        let l = lease.clone();
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE leases SET expires_at_ms = 0
                 WHERE name = ?1 AND fence = ?2 AND holder = ?3 AND expires_at_ms > 0",
            )
            .and_then(|mut s| s.execute(params![l.name, l.fence, l.holder]))
            .map(|n| n == 1)
            .map_err(unavailable)
        })
        .await
    }

    async fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        self.read(|c| {
            row(
                c,
                "SELECT name, holder, fence, expires_at_ms FROM leases WHERE name = ?1",
                [name],
                lease_from_row,
            )
        })
    }
}

#[async_trait]
impl WindowCounters for SqliteStore {
    async fn hit(&self, key: &str, window_ms: i64, now_ms: i64) -> Result<WindowCount, StoreError> {
        let key = key.to_owned();
        let (start, end) = window_bounds(window_ms, now_ms);
        self.write(move |c| {
            let count: i64 = c
                .prepare_cached(
                    "INSERT INTO window_counters (key, window_ms, window_start_ms, count, expires_at_ms)
                     VALUES (?1, ?2, ?3, 1, ?4)
                     ON CONFLICT(key, window_ms, window_start_ms) DO UPDATE SET count = count + 1
                     RETURNING count",
                )
                .and_then(|mut s| {
                    s.query_row(params![key, window_len(window_ms), start, end], |r| r.get(0))
                })
                .map_err(unavailable)?;
            Ok(WindowCount {
                count: u64::try_from(count).unwrap_or(0),
                resets_at_ms: end,
            })
        })
        .await
    }
}

#[async_trait]
impl Purge for SqliteStore {
    async fn purge_expired(&self, now_ms: i64) -> Result<Purged, StoreError> {
        self.write(move |c| {
            let del = |sql: &str| {
                c.prepare_cached(sql)
                    .and_then(|mut s| s.execute([now_ms]))
                    .map(|n| n as u64)
                    .map_err(unavailable)
            };
            Ok(Purged {
                one_time: del("DELETE FROM one_time WHERE expires_at_ms <= ?1")?,
                records: del(
                    "DELETE FROM records WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ?1",
                )?,
                counters: del("DELETE FROM window_counters WHERE expires_at_ms <= ?1")?,
                sessions: del("DELETE FROM refresh_families WHERE expires_at_ms <= ?1")?,
            })
        })
        .await
    }
}

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// Record `k{i}` of namespace `n`, created at `i` ms.
    fn record(i: i64, owner: Option<String>, status: u32) -> Record {
        Record {
            ns: "n".into(),
            key: format!("k{i}"),
            owner,
            status,
            data: vec![1],
            created_at_ms: i,
            updated_at_ms: i,
            expires_at_ms: None,
        }
    }

    /// A listing's statement is prepared once per connection and never
    /// planned again, whatever its bindings: a bound `LIMIT` made SQLite
    /// re-plan it at every run, a fifth of `/auth/me`'s time.
    #[tokio::test]
    async fn listings_are_never_planned_again_whatever_their_bindings() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("alvryn.db"))
            .await
            .unwrap();
        for i in 0..20_i64 {
            let owner = Some(format!("u{}", i % 3));
            let status = u32::try_from(i % 4).unwrap();
            store
                .insert_if_absent(&record(i, owner, status))
                .await
                .unwrap();
        }
        for run in 0..30_usize {
            let filter = RecordFilter {
                owner: (run % 2 == 0).then(|| format!("u{}", run % 3)),
                status: match run % 3 {
                    0 => Some(u32::try_from(run % 4).unwrap().into()),
                    1 => Some(StatusRange::new(1, u32::try_from(run % 4).unwrap() + 1)),
                    _ => None,
                },
                // Inline (small), on the blocking pool (none), varying.
                limit: [1, 5, 0, 64, 65][run % 5],
                after: (run % 4 == 0).then(|| crate::store::RecordCursor {
                    created_at_ms: i64::try_from(run % 7).unwrap(),
                    key: format!("k{}", run % 7),
                }),
            };
            let listed = store.records("n", &filter, 100).await.unwrap();
            if filter.limit > 0 {
                assert!(listed.len() <= filter.limit);
            }
        }
        // One idle reader served every listing (they ran one at a time).
        let replanned = store
            .read(|c| {
                let mut total = 0;
                for owner in [true, false] {
                    for statuses in [Statuses::Any, Statuses::One, Statuses::Range] {
                        let stmt = c.prepare_cached(listing_sql(owner, statuses)).unwrap();
                        total += stmt.get_status(rusqlite::StatementStatus::RePrepare);
                    }
                }
                Ok(total)
            })
            .unwrap();
        assert_eq!(replanned, 0);
    }

    #[tokio::test]
    async fn a_listing_stops_at_its_limit_in_listing_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("alvryn.db"))
            .await
            .unwrap();
        for i in (0..10_i64).rev() {
            store.insert_if_absent(&record(i, None, 1)).await.unwrap();
        }
        for limit in [1, 3, 64, 100] {
            let filter = RecordFilter {
                limit,
                ..RecordFilter::default()
            };
            let keys: Vec<String> = store
                .records("n", &filter, 0)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.key)
                .collect();
            let expected: Vec<String> = (0..limit.min(10)).map(|i| format!("k{i}")).collect();
            assert_eq!(keys, expected, "limit {limit}");
        }
    }

    #[tokio::test]
    async fn database_files_are_private_even_in_an_open_folder() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("data");
        std::fs::create_dir(&folder).unwrap();
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = folder.join("alvryn.db");
        let store = SqliteStore::open(&path).await.unwrap();
        // A write, so the WAL and its index exist.
        store.hit("k", 1000, 0).await.unwrap();
        for name in ["alvryn.db", "alvryn.db-wal", "alvryn.db-shm"] {
            let mode = std::fs::metadata(folder.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name} is {:o}", mode & 0o777);
        }
    }
}
