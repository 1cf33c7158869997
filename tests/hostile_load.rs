//! Hostile load against the real binary: a burst of expensive requests.
//! In a file of its own, so that its hundreds of connections never share
//! the machine with the other end-to-end tests' servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use support::{Server, alvryn, post_json};

/// Peak and current resident memory of a process, KiB, from `/proc`.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// 200 concurrent wrong-password logins, no account needed: hashing runs
/// on a fixed set of workers behind a bounded queue, the rest get 503
/// `busy` at once with `Retry-After`, memory stays near idle plus the
/// workers' argon2 blocks, no thread is added per login, and no `busy`
/// is logged as an error.
#[test]
fn a_login_burst_keeps_memory_and_threads_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = alvryn();
    c.current_dir(dir.path())
        .env(
            "JWT_SECRET",
            "load-access-secret-0123456789abcdef0123456789",
        )
        .env(
            "JWT_REFRESH_SECRET",
            "load-refresh-secret-0123456789abcdef01234567",
        )
        .env("ALVRYN_LOG", "info");
    let server = Server::start(c);
    let a = server.addr;
    let pid = server.child.id();
    // Warm up: one login of each kind, so idle includes one worker's block.
    for _ in 0..2 {
        let r = post_json(
            a,
            "/auth/login",
            &json!({"email": "nobody@example.com", "password": "wrong password here"}),
            None,
        );
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let (_, idle_rss) = memory_kib(pid);
    let idle_threads = threads(pid);
    let burst: Vec<_> = (0..200)
        .map(|i| {
            std::thread::spawn(move || {
                post_json(
                    a,
                    "/auth/login",
                    &json!({"email": format!("nobody{i}@example.com"), "password": "wrong password here"}),
                    None,
                )
            })
        })
        .collect();
    let mut during_threads = 0;
    let (mut refused, mut checked) = (0, 0);
    for (i, t) in burst.into_iter().enumerate() {
        if i == 100 {
            during_threads = threads(pid);
        }
        let r = t.join().unwrap();
        match r.status {
            401 => checked += 1,
            503 => {
                assert_eq!(r.code(), "busy");
                assert_eq!(r.header("retry-after"), Some("1"));
                refused += 1;
            }
            s => panic!("unexpected {s}: {}", r.body),
        }
    }
    assert_eq!(checked + refused, 200);
    assert!(refused > 0, "a queue bound was never reached");
    assert!(checked > 0);
    let (peak, after) = memory_kib(pid);
    eprintln!(
        "idle {idle_rss} KiB, peak {peak} KiB, after {after} KiB; threads {idle_threads} -> \
         {during_threads}; {checked} checked, {refused} busy"
    );
    // Two cores: two workers of 19 MiB each, plus the queue's and the
    // connections' small change.
    let bound = idle_rss + 2 * 19 * 1024 + 48 * 1024;
    assert!(
        peak <= bound,
        "peak {peak} KiB over idle {idle_rss} KiB + workers (bound {bound} KiB)"
    );
    assert!(after <= bound, "memory not given back: {after} KiB");
    assert!(
        during_threads <= idle_threads + 4,
        "threads grew from {idle_threads} to {during_threads} during the burst"
    );
    // Still serving, and no error line per refused login.
    assert_eq!(server.request("GET", "/healthz", None).0, 200);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let log = server.log();
    let errors = log.lines().filter(|l| l.contains("ERROR")).count();
    assert_eq!(errors, 0, "{log}");
}
