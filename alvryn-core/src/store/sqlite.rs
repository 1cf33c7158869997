//! The embedded store: one SQLite file (bundled SQLite, no system
//! library), WAL mode so the server and the worker can share it from two
//! processes, schema migrations applied when the store opens.
//!
//! Every call runs on Tokio's blocking pool against one connection per
//! store handle; SQLite serializes writers, and a `busy_timeout` of 5 s
//! makes a second process wait for the lock instead of failing. Rotation
//! is a single conditional `UPDATE ... WHERE current_hash = ?`, so the
//! compare-and-swap is atomic across threads and processes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::{
    AuditEvent, PreviousSlot, RefreshFamily, RefreshSlot, RevokeReason, Rotation, StoreError,
    TokenHash, TokenStore, User,
};
use crate::billing::PlanName;
use crate::crypto::ledger::grant;
use crate::crypto::{KeyId, LedgerError, Reservation, UsageLedger};

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
];

/// The embedded SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::unavailable(e)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies any
    /// pending migrations.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the file cannot be opened or a
    /// migration fails (nothing of a failed migration is applied);
    /// [`StoreError::Corrupt`] when the file was written by a newer
    /// version with more migrations than this one knows.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_owned();
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || Self::open_blocking(&p))
            .await
            .map_err(StoreError::unavailable)??;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: Arc::new(path),
        })
    }

    fn open_blocking(path: &Path) -> Result<Connection, StoreError> {
        let mut conn = Connection::open(path).map_err(unavailable)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(unavailable)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(unavailable)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(unavailable)?;
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

    /// The schema version of the open database.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        self.run(|c| {
            c.query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(unavailable)
        })
        .await
    }

    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut c)
        })
        .await
        .map_err(StoreError::unavailable)?
    }
}

const USER_COLS: &str = "id, email, password_hash, plan, created_at_ms";
const FAMILY_COLS: &str = "id, user_id, created_at_ms, last_used_at_ms, expires_at_ms, user_agent, current_hash, \
     current_jti, current_issued_at, previous_hash, previous_rotated_at_ms, revoked_at_ms, revoke_reason, generation";

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
    let previous = match (previous, previous_at) {
        (Some(h), Some(at)) => match TokenHash::from_slice(&h) {
            Some(token_hash) => Some(PreviousSlot {
                token_hash,
                rotated_at_ms: at,
            }),
            None => return Ok(Err(corrupt("token hash"))),
        },
        _ => None,
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
        revoked_at_ms: r.get(11)?,
        revoke_reason,
        generation: r.get(13)?,
    }))
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        let u = user.clone();
        self.run(move |c| {
            c.execute(
                &format!("INSERT INTO users ({USER_COLS}) VALUES (?1, ?2, ?3, ?4, ?5)"),
                params![
                    u.id,
                    u.email,
                    u.password_hash,
                    u.plan.as_str(),
                    u.created_at_ms
                ],
            )
            .map(|_| ())
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::EmailTaken
                } else {
                    unavailable(e)
                }
            })
        })
        .await
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        let id = id.to_owned();
        self.run(move |c| {
            c.query_row(
                &format!("SELECT {USER_COLS} FROM users WHERE id = ?1"),
                [id],
                user_from_row,
            )
            .optional()
            .map_err(unavailable)?
            .transpose()
        })
        .await
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let email = email.to_owned();
        self.run(move |c| {
            c.query_row(
                &format!("SELECT {USER_COLS} FROM users WHERE email = ?1"),
                [email],
                user_from_row,
            )
            .optional()
            .map_err(unavailable)?
            .transpose()
        })
        .await
    }

    async fn set_password_hash(&self, user_id: &str, phc: &str) -> Result<(), StoreError> {
        let (id, phc) = (user_id.to_owned(), phc.to_owned());
        self.run(move |c| {
            match c
                .execute(
                    "UPDATE users SET password_hash = ?2 WHERE id = ?1",
                    params![id, phc],
                )
                .map_err(unavailable)?
            {
                0 => Err(StoreError::NotFound),
                _ => Ok(()),
            }
        })
        .await
    }

    async fn create_family(&self, family: &RefreshFamily) -> Result<(), StoreError> {
        let f = family.clone();
        self.run(move |c| {
            c.execute(
                &format!("INSERT INTO refresh_families ({FAMILY_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"),
                params![
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
                ],
            )
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }

    async fn family(&self, id: &str) -> Result<Option<RefreshFamily>, StoreError> {
        let id = id.to_owned();
        self.run(move |c| {
            c.query_row(
                &format!("SELECT {FAMILY_COLS} FROM refresh_families WHERE id = ?1"),
                [id],
                family_from_row,
            )
            .optional()
            .map_err(unavailable)?
            .transpose()
        })
        .await
    }

    async fn rotate_family(&self, r: &Rotation) -> Result<Option<RefreshFamily>, StoreError> {
        let r = r.clone();
        self.run(move |c| {
            let f = c
                .query_row(
                    &format!(
                        "UPDATE refresh_families SET
                            previous_hash = current_hash, previous_rotated_at_ms = ?3,
                            current_hash = ?4, current_jti = ?5, current_issued_at = ?6,
                            last_used_at_ms = ?3, expires_at_ms = ?7, generation = generation + 1
                         WHERE id = ?1 AND current_hash = ?2 AND revoked_at_ms IS NULL AND expires_at_ms > ?3
                         RETURNING {FAMILY_COLS}"
                    ),
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
                )
                .optional()
                .map_err(unavailable)?;
            f.transpose()
        })
        .await
    }

    async fn revoke_family(
        &self,
        id: &str,
        reason: RevokeReason,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.run(move |c| {
            c.execute(
                "UPDATE refresh_families SET revoked_at_ms = ?2, revoke_reason = ?3 WHERE id = ?1 AND revoked_at_ms IS NULL",
                params![id, at_ms, reason.as_str()],
            )
            .map(|n| n == 1)
            .map_err(unavailable)
        })
        .await
    }

    async fn revoke_user_families(
        &self,
        user_id: &str,
        reason: RevokeReason,
        at_ms: i64,
    ) -> Result<u64, StoreError> {
        let id = user_id.to_owned();
        self.run(move |c| {
            c.execute(
                "UPDATE refresh_families SET revoked_at_ms = ?2, revoke_reason = ?3 WHERE user_id = ?1 AND revoked_at_ms IS NULL",
                params![id, at_ms, reason.as_str()],
            )
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
        let id = user_id.to_owned();
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {FAMILY_COLS} FROM refresh_families
                     WHERE user_id = ?1 AND revoked_at_ms IS NULL AND expires_at_ms > ?2
                     ORDER BY created_at_ms DESC, id DESC"
                ))
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![id, now_ms], family_from_row)
                .map_err(unavailable)?;
            rows.map(|r| r.map_err(unavailable)?).collect()
        })
        .await
    }

    async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let e = event.clone();
        self.run(move |c| {
            c.execute(
                "INSERT INTO audit_events (at_ms, kind, user_id, family_id) VALUES (?1, ?2, ?3, ?4)",
                params![e.at_ms, e.kind, e.user_id, e.family_id],
            )
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }

    async fn audit_events(&self, user_id: &str) -> Result<Vec<AuditEvent>, StoreError> {
        let id = user_id.to_owned();
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT at_ms, kind, user_id, family_id FROM audit_events WHERE user_id = ?1 ORDER BY seq")
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([id], |r| Ok(AuditEvent { at_ms: r.get(0)?, kind: r.get(1)?, user_id: r.get(2)?, family_id: r.get(3)? }))
                .map_err(unavailable)?;
            rows.map(|r| r.map_err(unavailable)).collect()
        })
        .await
    }
}

fn ledger_err(e: StoreError) -> LedgerError {
    LedgerError::Storage(Box::new(e))
}

#[async_trait]
impl UsageLedger for SqliteStore {
    async fn reserve(
        &self,
        key: &KeyId,
        count: u64,
        limit: u64,
    ) -> Result<Reservation, LedgerError> {
        let key = key.clone();
        self.run(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let current: i64 = tx
                .query_row(
                    "SELECT reserved FROM key_usage WHERE key_id = ?1",
                    [key.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)?
                .unwrap_or(0);
            let r = match grant(u64::try_from(current).unwrap_or(0), count, limit, &key) {
                Ok(r) => r,
                Err(e) => return Ok(Err(e)),
            };
            tx.execute(
                "INSERT INTO key_usage (key_id, reserved) VALUES (?1, ?2)
                     ON CONFLICT(key_id) DO UPDATE SET reserved = excluded.reserved",
                params![key.as_str(), i64::try_from(r.total).unwrap_or(i64::MAX)],
            )
            .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(Ok(r))
        })
        .await
        .map_err(ledger_err)?
    }

    async fn reserved(&self, key: &KeyId) -> Result<u64, LedgerError> {
        let key = key.clone();
        let n: i64 = self
            .run(move |c| {
                c.query_row(
                    "SELECT reserved FROM key_usage WHERE key_id = ?1",
                    [key.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)
                .map(Option::unwrap_or_default)
            })
            .await
            .map_err(ledger_err)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
