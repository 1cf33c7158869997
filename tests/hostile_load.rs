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
        .env("ALVRYN_LOG", "info")
        // The burst stands for many clients at many addresses: what is
        // proven here is the hashing pool, not the per-IP login limit.
        .env("ALVRYN_RATE_LIMIT_LOGIN", "off");
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

/// A server with short connection limits for these tests.
fn strict_server(header_secs: &str, max_connections: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = alvryn();
    c.current_dir(dir.path())
        .env("ALVRYN_HEADER_TIMEOUT_SECONDS", header_secs)
        .env("ALVRYN_BODY_TIMEOUT_SECONDS", "1")
        .env("ALVRYN_MAX_CONNECTIONS", max_connections);
    (Server::start(c), dir)
}

/// Reads until the server closes the connection; `true` when it did
/// (end of stream or reset) within `patience`, `false` when it was still
/// holding the connection open. Not a timing assertion: the patience is
/// many times the server's timeout.
fn closed_by_server(s: &mut std::net::TcpStream, patience: std::time::Duration) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(patience)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Idle connections, half a header, half a body and an idle kept-alive
/// connection are all closed by the server's timeouts instead of being
/// held for ever.
#[test]
fn slow_and_idle_connections_are_closed() {
    use std::io::Write;
    let (server, _dir) = strict_server("1", "100");
    let patience = std::time::Duration::from_secs(20);
    let connect = || std::net::TcpStream::connect(server.addr).unwrap();

    let mut idle = connect();
    assert!(
        closed_by_server(&mut idle, patience),
        "an idle connection was held"
    );

    let mut half_header = connect();
    half_header
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    assert!(
        closed_by_server(&mut half_header, patience),
        "half a header was held"
    );

    let mut half_body = connect();
    half_body
        .write_all(
            b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"email\":",
        )
        .unwrap();
    assert!(
        closed_by_server(&mut half_body, patience),
        "half a body was held"
    );

    // One request answered, then silence on the kept-alive connection.
    let mut kept = connect();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(
        closed_by_server(&mut kept, patience),
        "an idle keep-alive was held"
    );

    assert_eq!(server.request("GET", "/healthz", None).0, 200);
}

/// Beyond the connection cap, a new connection is closed at once (and
/// the refusal logged), while the ones inside it are kept (their header
/// timeout is 60 s); once they go, the server answers again.
#[test]
fn connections_over_the_cap_are_refused() {
    let (server, _dir) = strict_server("60", "4");
    let mut held: Vec<std::net::TcpStream> = (0..8)
        .map(|_| std::net::TcpStream::connect(server.addr).unwrap())
        .collect();
    // Each is either closed by the server at once (over the cap) or kept
    // (inside it, until its 60 s header timeout): a 2 s look tells them
    // apart.
    let closed = held
        .iter_mut()
        .map(|s| closed_by_server(s, std::time::Duration::from_secs(2)))
        .filter(|&c| c)
        .count();
    assert!(
        closed >= 4,
        "{} connections were kept open with a cap of 4",
        8 - closed
    );
    assert!(closed < 8, "the cap refused everything");
    drop(held);
    // The server frees their slots as it sees them close.
    let answered = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::panic::catch_unwind(|| server.request("GET", "/healthz", None).0)
            .is_ok_and(|status| status == 200)
    });
    assert!(
        answered,
        "the server did not answer once the connections went"
    );
    assert!(
        server
            .log_with(&["the connection cap is reached"])
            .contains("the connection cap is reached"),
        "{}",
        server.log()
    );
}

/// `Expect: 100-continue` with a declared body over the limit gets 413
/// at once, never `100 Continue` inviting the body.
#[test]
fn an_oversized_expect_continue_gets_413_not_100() {
    use std::io::{Read, Write};
    let (server, _dir) = strict_server("10", "100");
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    s.write_all(
        b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 10000000\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap() == 1 {
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(!head.contains("100 Continue"), "{head}");
    // A body within the limit still gets its 100 and an answer.
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    let body = br#"{"email":"nobody@example.com","password":"wrong password here"}"#;
    s.write_all(
        format!(
            "POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut first = [0u8; 25];
    s.read_exact(&mut first).unwrap();
    assert!(
        String::from_utf8_lossy(&first).starts_with("HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&first)
    );
    s.write_all(body).unwrap();
    let mut rest = String::new();
    let _ = s.read_to_string(&mut rest);
    assert!(rest.contains("HTTP/1.1 401"), "{rest}");
}
