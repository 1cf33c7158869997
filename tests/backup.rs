//! `alvryn backup` and `alvryn restore` against the real binary: an
//! online backup of the embedded store while a server takes sign-ups and
//! refresh rotations without pause, restored into a fresh data folder
//! where every account made before the backup began can log in; a
//! restore refused while a server holds the database, refused for files
//! that are not sound backups, and one that keeps the database it
//! replaces (WAL included); MongoDB backups through `mongodump`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{PASSWORD, Server, alvryn, post_json, run, signup};

fn server(data: &Path) -> Server {
    let mut c = alvryn();
    c.env("ALVRYN_DATA_DIR", data);
    // One client makes every request of the load: per-address limits
    // (where the server has them) would measure themselves, not backups.
    for group in ["SIGNUP", "LOGIN", "LOGIN_ACCOUNT", "REFRESH"] {
        c.env(format!("ALVRYN_RATE_LIMIT_{group}"), "off");
    }
    Server::start(c)
}

fn login_status(addr: SocketAddr, email: &str) -> u16 {
    post_json(
        addr,
        "/auth/login",
        &json!({"email": email, "password": PASSWORD}),
        None,
    )
    .status
}

fn backup(data: &Path, output: &Path) -> support::Output {
    let mut c = alvryn();
    c.args(["backup", "--data-dir"])
        .arg(data)
        .arg("--output")
        .arg(output);
    run(c)
}

fn restore(file: &Path, data: &Path, force: bool) -> support::Output {
    let mut c = alvryn();
    c.arg("restore").arg(file).arg("--data-dir").arg(data);
    if force {
        c.arg("--force");
    }
    run(c)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The backup file named on stdout, checked for its name and mode.
fn backup_path(out: &support::Output, folder: &Path) -> PathBuf {
    assert_eq!(out.code, 0, "backup failed: {}", out.stderr);
    let path = PathBuf::from(out.stdout.trim());
    assert_eq!(path.parent(), Some(folder), "{}", out.stdout);
    let name = path.file_name().unwrap().to_str().unwrap();
    let stamp = name
        .strip_prefix("alvryn-")
        .and_then(|n| n.strip_suffix(".db"))
        .unwrap_or_else(|| panic!("unexpected name {name}"));
    let b = stamp.as_bytes();
    assert!(
        b.len() == 16
            && b[8] == b'T'
            && b[15] == b'Z'
            && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit),
        "not alvryn-YYYYMMDDTHHMMSSZ.db: {name}"
    );
    assert_eq!(mode(&path), 0o600, "the backup must be private");
    path
}

/// Every check a sound backup passes, read with SQLite itself; returns
/// the emails it holds.
fn check_backup(path: &Path) -> BTreeSet<String> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let orphans: i64 = conn
        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(orphans, 0, "rows pointing at rows that are not there");
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "delete", "a backup is one self-contained file");
    // No partial rows: every account is whole.
    let mut stmt = conn
        .prepare("SELECT id, email, password_hash, plan FROM users")
        .unwrap();
    let users: Vec<(String, String, Option<String>, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (id, email, hash, plan) in &users {
        assert!(!id.is_empty() && email.contains('@') && !plan.is_empty());
        assert!(
            hash.as_deref().is_some_and(|h| h.starts_with("$argon2id$")),
            "account {email} has no whole password hash"
        );
    }
    let families_without_user: i64 = conn
        .query_row(
            "SELECT count(*) FROM refresh_families f WHERE NOT EXISTS \
             (SELECT 1 FROM users u WHERE u.id = f.user_id) OR length(f.current_hash) = 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(families_without_user, 0);
    users.into_iter().map(|(_, email, _, _)| email).collect()
}

/// The load: two threads signing up new accounts, two rotating refresh
/// tokens, until told to stop.
struct Load {
    stop: Arc<AtomicBool>,
    /// Each account whose sign-up was answered 201, and when.
    created: Arc<Mutex<Vec<(String, Instant)>>>,
    /// Writes answered successfully so far.
    writes: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let load = Load {
            stop: Arc::default(),
            created: Arc::default(),
            writes: Arc::default(),
            failures: Arc::default(),
            threads: Vec::new(),
        };
        let mut threads = Vec::new();
        for t in 0..2 {
            let (stop, created, writes, failures) = (
                load.stop.clone(),
                load.created.clone(),
                load.writes.clone(),
                load.failures.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let email = format!("load-{t}-{n}@example.com");
                    let r = signup(addr, &email);
                    if r.status == 201 {
                        created.lock().unwrap().push((email, Instant::now()));
                        writes.fetch_add(1, Ordering::SeqCst);
                    } else {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("signup {email}: {} {}", r.status, r.body));
                    }
                }
            }));
        }
        for t in 0..2 {
            let (stop, writes, failures) = (
                load.stop.clone(),
                load.writes.clone(),
                load.failures.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let r = signup(addr, &format!("rotating-{t}@example.com"));
                assert_eq!(r.status, 201, "{}", r.body);
                let mut token = r.json()["refresh_token"].as_str().unwrap().to_owned();
                while !stop.load(Ordering::SeqCst) {
                    let r = post_json(
                        addr,
                        "/auth/refresh",
                        &json!({ "refresh_token": token }),
                        None,
                    );
                    if r.status == 200 {
                        token = r.json()["refresh_token"].as_str().unwrap().to_owned();
                        writes.fetch_add(1, Ordering::SeqCst);
                    } else {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("refresh: {} {}", r.status, r.body));
                        return;
                    }
                }
            }));
        }
        Load { threads, ..load }
    }

    fn created(&self) -> usize {
        self.created.lock().unwrap().len()
    }

    fn finish(self) -> Vec<(String, Instant)> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        let failures = self.failures.lock().unwrap();
        assert!(failures.is_empty(), "the load failed: {failures:?}");
        self.created.lock().unwrap().clone()
    }
}

#[test]
fn a_backup_taken_under_write_load_restores_every_account_made_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (data_a, data_b, out) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("backups"),
    );
    let a = server(&data_a);
    let load = Load::start(a.addr);
    let deadline = Instant::now() + Duration::from_secs(180);
    while load.created() < 6 {
        assert!(Instant::now() < deadline, "the load made too few accounts");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the rotations run for a moment, so the WAL holds fresh writes.
    std::thread::sleep(Duration::from_millis(300));

    let writes_before = load.writes.load(Ordering::SeqCst);
    let began = Instant::now();
    let out_backup = backup(&data_a, &out);
    let writes_during = load.writes.load(Ordering::SeqCst) - writes_before;
    let path = backup_path(&out_backup, &out);
    assert!(
        writes_during > 0,
        "no write was answered while the backup ran: not a backup under load"
    );
    std::thread::sleep(Duration::from_millis(300));
    let created = load.finish();
    // One account surely made after the backup finished.
    assert_eq!(signup(a.addr, "after@example.com").status, 201);

    let before: BTreeSet<String> = created
        .iter()
        .filter(|(_, at)| *at < began)
        .map(|(e, _)| e.clone())
        .collect();
    let all: BTreeSet<String> = created.iter().map(|(e, _)| e.clone()).collect();
    assert!(before.len() >= 6);

    let in_backup = check_backup(&path);
    assert!(
        before.is_subset(&in_backup),
        "accounts made before the backup are missing from it: {:?}",
        before.difference(&in_backup).collect::<Vec<_>>()
    );
    let unknown: Vec<_> = in_backup
        .iter()
        .filter(|e| !all.contains(*e) && !e.starts_with("rotating-"))
        .collect();
    assert!(unknown.is_empty(), "{unknown:?}");
    assert!(!in_backup.contains("after@example.com"));

    // While the server holds the database, a restore over it is refused
    // and changes nothing.
    let refused = restore(&path, &data_a, true);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(refused.stderr.contains("in use"), "{}", refused.stderr);
    assert_eq!(login_status(a.addr, "after@example.com"), 200);
    assert!(
        std::fs::read_dir(&data_a).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("before-restore")),
        "a refused restore kept something aside"
    );

    // Restored into a fresh data folder, a server on it knows every
    // account made before the backup, and not the one made after.
    let restored = restore(&path, &data_b, false);
    assert_eq!(restored.code, 0, "{}", restored.stderr);
    assert_eq!(mode(&data_b.join("alvryn.db")), 0o600);
    let b = server(&data_b);
    for email in &before {
        assert_eq!(login_status(b.addr, email), 200, "{email} cannot log in");
    }
    assert_eq!(login_status(b.addr, "after@example.com"), 401);
    drop(b);
    drop(a);
}

#[test]
fn a_restore_keeps_the_database_it_replaces_and_refuses_what_is_not_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = (dir.path().join("data"), dir.path().join("out"));

    // No database yet: nothing to back up.
    let none = backup(&data, &out);
    assert_eq!(none.code, 1);
    assert!(none.stderr.contains("no database"), "{}", none.stderr);
    assert!(none.stdout.is_empty());

    let mut a = server(&data);
    assert_eq!(signup(a.addr, "kept@example.com").status, 201);
    let path = backup_path(&backup(&data, &out), &out);
    assert_eq!(signup(a.addr, "later@example.com").status, 201);
    // Killed: what came after the backup may be in the WAL alone.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    drop(a);

    let files_now = || -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let untouched = files_now();

    let exists = restore(&path, &data, false);
    assert_eq!(exists.code, 2, "{}", exists.stderr);
    assert!(exists.stderr.contains("--force"), "{}", exists.stderr);

    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![0x5a; 8192]).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let truncated = dir.path().join("truncated.db");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let empty = dir.path().join("empty.db");
    rusqlite::Connection::open(&empty)
        .unwrap()
        .execute_batch("CREATE TABLE t(x)")
        .unwrap();
    for bad in [&junk, &truncated, &empty] {
        let r = restore(bad, &data, true);
        assert_eq!(r.code, 1, "{}: {}", bad.display(), r.stderr);
        assert!(
            r.stderr.contains("cannot be used") && r.stderr.contains("nothing was changed"),
            "{}",
            r.stderr
        );
        assert_eq!(
            files_now(),
            untouched,
            "a refused restore changed the data folder"
        );
    }
    let missing = restore(&dir.path().join("nope.db"), &data, true);
    assert_eq!(missing.code, 1, "{}", missing.stderr);

    let done = restore(&path, &data, true);
    assert_eq!(done.code, 0, "{}", done.stderr);
    let kept: Vec<PathBuf> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".before-restore-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        done.stderr.contains(&*kept[0].to_string_lossy()),
        "{}",
        done.stderr
    );
    assert_eq!(mode(&kept[0]), 0o600);
    // The kept database is whole on its own, the writes that were only in
    // its WAL included.
    let previous = check_backup(&kept[0]);
    assert!(previous.contains("kept@example.com") && previous.contains("later@example.com"));
    assert!(!data.join("alvryn.db-wal").exists());

    let b = server(&data);
    assert_eq!(login_status(b.addr, "kept@example.com"), 200);
    assert_eq!(login_status(b.addr, "later@example.com"), 401);
}

/// `MONGO_URI` with a password, on the MongoDB stand-in, and the secrets
/// development mode then requires.
fn mongo_env(c: &mut std::process::Command, password: &str) -> bool {
    let Some(uri) = support::service("ALVRYN_TEST_MONGO_STANDIN_URI") else {
        return false;
    };
    let uri = uri.replacen("mongodb://", &format!("mongodb://alvryn:{password}@"), 1);
    c.env("MONGO_URI", uri)
        .env("JWT_SECRET", "a".repeat(40))
        .env("JWT_REFRESH_SECRET", "b".repeat(40))
        .env(
            "FIELD_ENCRYPTION_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        );
    true
}

#[test]
fn a_mongodb_backup_without_mongodump_says_what_to_install_and_never_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let (empty_path, out) = (dir.path().join("bin"), dir.path().join("out"));
    std::fs::create_dir(&empty_path).unwrap();
    let password = "Pw-7f3e9a1c-not-for-logs";
    let mut c = alvryn();
    if !mongo_env(&mut c, password) {
        return;
    }
    c.env("PATH", &empty_path)
        .args(["backup", "--output"])
        .arg(&out);
    let r = run(c);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("mongodump")
            && r.stderr.contains("not on PATH")
            && r.stderr.contains("MongoDB Database Tools"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(!r.stderr.contains(password) && !r.stdout.contains(password));
    // Nothing left behind: no archive, and no file with the URI in it.
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A stand-in for the MongoDB Database Tools' `mongodump` (not installable
/// on these machines): records how it was called and the `--config` file
/// it was given, writes an archive, and prints the password to stderr
/// (as a careless tool might) unless told to fail.
const FAKE_MONGODUMP: &str = r#"#!/bin/sh
printf '%s\n' "$@" > "$CAPTURE/argv"
for a in "$@"; do
  case "$a" in
    --config=*) cfg="${a#--config=}"; cp "$cfg" "$CAPTURE/config"; stat -c %a "$cfg" > "$CAPTURE/config-mode" ;;
    --archive=*) archive="${a#--archive=}" ;;
  esac
done
pw=$(sed -n 's/.*alvryn:\([^@]*\)@.*/\1/p' "$cfg")
echo "connected with password $pw" >&2
if [ -n "$FAIL" ]; then echo "Failed: could not connect" >&2; exit 3; fi
printf 'fake-archive' > "$archive"
echo "done dumping" >&2
"#;

#[test]
fn a_mongodb_backup_runs_mongodump_with_the_uri_in_a_private_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, out, capture) = (
        dir.path().join("bin"),
        dir.path().join("out"),
        dir.path().join("capture"),
    );
    std::fs::create_dir(&bin).unwrap();
    std::fs::create_dir(&capture).unwrap();
    let tool = bin.join("mongodump");
    std::fs::write(&tool, FAKE_MONGODUMP).unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let password = "Pw-4b1d-secret-value";
    let path_var = format!("{}:/usr/bin:/bin", bin.display());

    let mut c = alvryn();
    if !mongo_env(&mut c, password) {
        return;
    }
    c.env("PATH", &path_var)
        .env("CAPTURE", &capture)
        .args(["backup", "--output"])
        .arg(&out);
    let r = run(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let archive = PathBuf::from(r.stdout.trim());
    assert_eq!(archive.parent(), Some(out.as_path()));
    let name = archive.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("alvryn-") && name.ends_with("Z.archive.gz"),
        "{name}"
    );
    assert_eq!(std::fs::read(&archive).unwrap(), b"fake-archive");
    assert_eq!(mode(&archive), 0o600);

    let argv = std::fs::read_to_string(capture.join("argv")).unwrap();
    assert!(
        !argv.contains(password),
        "the password is on the command line: {argv}"
    );
    assert!(argv.lines().any(|l| l == "--gzip"), "{argv}");
    assert!(argv.lines().any(|l| l.starts_with("--archive=")), "{argv}");
    let config = std::fs::read_to_string(capture.join("config")).unwrap();
    assert!(
        config.starts_with("uri: \"mongodb://alvryn:") && config.contains(password),
        "{config}"
    );
    assert_eq!(
        std::fs::read_to_string(capture.join("config-mode"))
            .unwrap()
            .trim(),
        "600"
    );
    // The tool's words are passed on with the password masked.
    assert!(
        r.stderr
            .contains("mongodump: connected with password [redacted]"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains(password) && !r.stdout.contains(password));
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        vec![name],
        "the config file or a partial archive remains"
    );

    // mongodump failing: exit 1, no archive, no config file left.
    let out2 = dir.path().join("out2");
    let mut c = alvryn();
    mongo_env(&mut c, password);
    c.env("PATH", &path_var)
        .env("CAPTURE", &capture)
        .env("FAIL", "1")
        .args(["backup", "--output"])
        .arg(&out2);
    let r = run(c);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("mongodump failed (exit 3)"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains(password));
    assert_eq!(std::fs::read_dir(&out2).unwrap().count(), 0);
}
