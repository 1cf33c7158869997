//! Shared helpers of the end-to-end tests: the `alvryn` binary, free
//! ports, the test services started by `scripts/test`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `alvryn` binary, built by Cargo for these tests (it belongs to
/// this package), so it is never stale.
pub fn alvryn_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_alvryn"))
}

/// A command for the binary with a clean environment: only PATH and HOME
/// survive, so a developer's own settings never leak into a test.
pub fn alvryn() -> Command {
    clean_command(alvryn_bin())
}

/// `bin` with a clean environment, as [`alvryn`] runs the test build.
pub fn clean_command(bin: PathBuf) -> Command {
    let mut c = Command::new(bin);
    c.env_clear();
    for var in ["PATH", "HOME"] {
        if let Some(v) = std::env::var_os(var) {
            c.env(var, v);
        }
    }
    c.env("ALVRYN_LOG", "info");
    c
}

/// Output of a finished command.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(mut c: Command) -> Output {
    let out = c.stdin(Stdio::null()).output().unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A port nothing listens on, for tests of an unreachable service. (Never
/// used to start a server: those bind port 0 and report their address.)
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `alvryn serve`, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
    /// The secrets of its environment (see [`configured_secrets`]).
    secrets: Vec<String>,
}

impl Server {
    /// Starts `alvryn serve` with `c`'s environment on port 0 and waits
    /// until it logs the address it listens on (or panics with its log).
    pub fn start(c: Command) -> Server {
        Server::start_with(c, &["serve", "--bind", "127.0.0.1:0"])
    }

    /// Starts the binary with `args` (a command that logs `listening
    /// local=ADDR` once it accepts, e.g. `worker --metrics-bind
    /// 127.0.0.1:0`) and waits for that line.
    pub fn start_with(mut c: Command, args: &[&str]) -> Server {
        c.args(args);
        let secrets = configured_secrets(&c);
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = listening_addr(&log.lock().unwrap());
            if let Some(addr) = found {
                return Server {
                    child,
                    addr,
                    log,
                    secrets,
                };
            }
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                panic!("server exited with {status}:\n{}", log.lock().unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "server did not start:\n{}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The log once it holds every one of `needles`, or as it is after
    /// 10 s: a line is read from the server's output by another thread,
    /// so it may land a little after the answer that follows it.
    pub fn log_with(&self, needles: &[&str]) -> String {
        eventually(10, || {
            let log = self.log();
            needles.iter().all(|n| log.contains(n)).then_some(log)
        })
        .unwrap_or_else(|| self.log())
    }

    /// One HTTP/1.1 request over a fresh connection; returns status and body.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http(self.addr, method, path, body)
    }
}

impl Drop for Server {
    /// Stops the server, then holds its whole log to the rule that no
    /// secret reaches a log: no configured secret, and no password, token
    /// or code any test sent to or received from a server
    /// ([`watch_secret`]). Every end-to-end test that starts a server this
    /// way is checked.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
        let log = self.log();
        if let Some(leak) = leaked(&log, &self.secrets) {
            panic!("a secret reached the server's log ({leak}):\n{log}");
        }
    }
}

/// Passwords, tokens and one-time codes the tests have exchanged with a
/// server: no server log may contain one.
static WATCHED: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Adds `secret` to what no server log may contain (shorter than 8
/// characters: too likely to occur by chance, ignored).
pub fn watch_secret(secret: &str) {
    if secret.len() >= 8 {
        WATCHED.lock().unwrap().insert(secret.to_owned());
    }
}

/// Watches the secrets a JSON body carries at its top level.
fn watch_body(body: &[u8]) {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return;
    };
    for key in ["password", "access_token", "refresh_token", "code"] {
        if let Some(v) = map.get(key).and_then(|v| v.as_str()) {
            watch_secret(v);
        }
    }
}

/// The secret values of a command's environment: every variable whose
/// name says it holds one (`*SECRET*`, `*PASSWORD*`, `*TOKEN*`, `*_KEY`,
/// `*_KEYS`, `*_KEY_ENC`), each entry of a comma-separated list, and the
/// password of a connection string.
fn configured_secrets(c: &Command) -> Vec<String> {
    let mut out = Vec::new();
    for (name, value) in c.get_envs() {
        let (Some(name), Some(value)) = (name.to_str(), value.and_then(|v| v.to_str())) else {
            continue;
        };
        let secret = ["SECRET", "PASSWORD", "TOKEN"]
            .iter()
            .any(|w| name.contains(w))
            || name.ends_with("_KEY")
            || name.ends_with("_KEYS")
            || name.ends_with("_KEY_ENC")
            || name.ends_with("_KEYS_ENC");
        if secret {
            out.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|v| v.len() >= 8)
                    .map(str::to_owned),
            );
        }
        if name.ends_with("_URI") {
            // scheme://user:PASSWORD@host
            if let Some(pw) = value
                .split_once("://")
                .and_then(|(_, rest)| rest.split_once('@'))
                .and_then(|(auth, _)| auth.split_once(':'))
                .map(|(_, pw)| pw)
                .filter(|pw| pw.len() >= 8)
            {
                out.push(pw.to_owned());
            }
        }
    }
    out
}

/// What leaked into `log`, if anything: a configured secret, a watched
/// one, or anything shaped like a JWT.
pub fn leaked(log: &str, configured: &[String]) -> Option<String> {
    if let Some(s) = configured.iter().find(|s| log.contains(s.as_str())) {
        return Some(format!("a configured secret of {} characters", s.len()));
    }
    if let Some(s) = WATCHED
        .lock()
        .unwrap()
        .iter()
        .find(|s| log.contains(s.as_str()))
    {
        return Some(format!(
            "a password, token or code of {} characters",
            s.len()
        ));
    }
    // The base64url of a JWT header ({"typ":... or {"alg":...).
    ["eyJ0eXAiOi", "eyJhbGciOi"]
        .iter()
        .find(|p| log.contains(*p))
        .map(|_| "something shaped like a JWT".to_owned())
}

/// The address in the server's `listening local=ADDR` log line (or, in
/// JSON logs, `{"message": "listening", "local": "ADDR", ...}`).
pub fn listening_addr(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|l| l.contains("listening"))
        .find_map(|l| {
            if l.starts_with('{') {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                return v["local"].as_str()?.parse().ok();
            }
            l.split("local=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

/// A minimal HTTP/1.1 client over a real socket (Connection: close).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let r = raw_request(
        addr,
        method,
        path,
        &[("Content-Type", "application/json")],
        body.unwrap_or("").as_bytes(),
    );
    (r.status, r.body)
}

/// A response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The stable error code of a JSON error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {}", self.body))
            .to_owned()
    }
}

/// One request with explicit headers and a raw body. `Content-Length` is
/// added; nothing else is.
pub fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    send_request(
        TcpStream::connect(addr).unwrap(),
        addr,
        method,
        path,
        headers,
        body,
    )
}

/// As [`raw_request`], from the local address `source` (any of
/// 127.0.0.0/8 on Linux), so a test can be several clients.
pub fn raw_request_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let stream = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap()
        .block_on(async {
            let socket = match source {
                std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
            }
            .unwrap();
            socket.bind(SocketAddr::new(source, 0)).unwrap();
            let stream = socket.connect(addr).await.unwrap().into_std().unwrap();
            stream.set_nonblocking(false).unwrap();
            stream
        });
    send_request(stream, addr, method, path, headers, body)
}

fn send_request(
    mut s: TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    use std::io::Write;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    watch_body(body);
    s.write_all(req.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body; ignore a reset.
    let _ = s.write_all(body);
    read_response(s)
}

/// Sends `bytes` as they are (anything, not necessarily HTTP) and reads
/// the answer until the server closes the connection.
pub fn raw_bytes(addr: SocketAddr, bytes: &[u8]) -> Response {
    use std::io::Write;
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // The server may answer and close before it has read everything.
    let _ = s.write_all(bytes);
    read_response(s)
}

fn read_response(mut s: TcpStream) -> Response {
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    watch_body(body.as_bytes());
    Response {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A JSON POST.
pub fn post_json(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
    bearer: Option<&str>,
) -> Response {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    raw_request(addr, "POST", path, &headers, body.to_string().as_bytes())
}

/// A request with a bearer token and no body.
pub fn with_bearer(addr: SocketAddr, method: &str, path: &str, token: &str) -> Response {
    raw_request(
        addr,
        method,
        path,
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    )
}

/// The URL of a test service started by `scripts/test`, or `None` (and a
/// note on stderr) when the suite runs without it. Under
/// `ALVRYN_TEST_REQUIRE_SERVICES` set to anything but `0` (`scripts/test`
/// sets `1`) a missing service fails the test instead.
pub fn service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var_os("ALVRYN_TEST_REQUIRE_SERVICES").is_none_or(|v| v == "0"),
                "{var} is not set: run the suite with scripts/test, which starts the test services"
            );
            eprintln!("SKIPPED: {var} not set (run scripts/test to start the test services)");
            None
        }
    }
}

/// Environment that points the AWS SDK at moto.
pub fn moto_env(c: &mut Command, moto: &str) {
    c.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", moto)
        .env("AWS_EC2_METADATA_DISABLED", "true");
}

/// A KMS client for moto.
pub fn kms_client(moto: &str) -> aws_sdk_kms::Client {
    let conf = aws_sdk_kms::Config::builder()
        .behavior_version_latest()
        .endpoint_url(moto)
        .region(aws_sdk_kms::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .build();
    aws_sdk_kms::Client::from_conf(conf)
}

/// Creates a symmetric KMS key in moto and returns its id.
pub async fn create_kms_key(client: &aws_sdk_kms::Client) -> String {
    let out = client
        .create_key()
        .description("alvryn test key")
        .send()
        .await
        .unwrap();
    out.key_metadata.unwrap().key_id
}

/// A request to localstripe (`ALVRYN_TEST_LOCALSTRIPE_URL`) with the
/// API key `key`: a form body, or a JSON one for its `/_config` routes.
pub fn localstripe_request(
    base: &str,
    key: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> Response {
    let addr = url::Url::parse(base)
        .unwrap()
        .socket_addrs(|| None)
        .unwrap()[0];
    let auth = format!("Bearer {key}");
    raw_request(
        addr,
        method,
        path,
        &[("Authorization", &auth), ("Content-Type", content_type)],
        body.as_bytes(),
    )
}

/// A form request to localstripe that must succeed; its JSON (`Null` for
/// an empty answer).
pub fn localstripe_ok(
    base: &str,
    key: &str,
    method: &str,
    path: &str,
    form: &[(&str, &str)],
) -> serde_json::Value {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let r = localstripe_request(
        base,
        key,
        method,
        path,
        "application/x-www-form-urlencoded",
        &body,
    );
    assert!(
        (200..300).contains(&r.status),
        "{method} {path}: {} {}",
        r.status,
        r.body
    );
    if r.body.trim().is_empty() {
        serde_json::Value::Null
    } else {
        r.json()
    }
}

/// What Stripe Checkout would do, in localstripe: gives `customer` a
/// card, makes a monthly plan with our own `price` id (localstripe has
/// plans, the older name of prices) and subscribes the customer to it
/// with `user` in the metadata. Returns the subscription.
pub fn localstripe_subscribe(
    base: &str,
    key: &str,
    customer: &str,
    user: &str,
    price: &str,
) -> serde_json::Value {
    localstripe_ok(
        base,
        key,
        "POST",
        &format!("/v1/customers/{customer}"),
        &[("invoice_settings[default_payment_method]", "pm_card_visa")],
    );
    let product = localstripe_ok(base, key, "POST", "/v1/products", &[("name", "Pro")]);
    localstripe_ok(
        base,
        key,
        "POST",
        "/v1/plans",
        &[
            ("id", price),
            ("product", product["id"].as_str().unwrap()),
            ("amount", "900"),
            ("currency", "usd"),
            ("interval", "month"),
        ],
    );
    localstripe_ok(
        base,
        key,
        "POST",
        "/v1/subscriptions",
        &[
            ("customer", customer),
            ("items[0][plan]", price),
            ("metadata[alvryn_user_id]", user),
        ],
    )
}

/// An S3 client for moto (path-style addressing, test credentials).
pub fn s3_client(moto: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version_latest()
        .endpoint_url(moto)
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        // moto on 127.0.0.1: no virtual-host addressing.
        .force_path_style(true)
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(20))
                .build(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Every operation `/openapi.json` describes, as (METHOD, path template).
pub fn documented_operations(addr: SocketAddr) -> std::collections::BTreeSet<(String, String)> {
    let doc = raw_request(addr, "GET", "/openapi.json", &[], b"").json();
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect()
}

/// `prefix` and 12 random hex digits: a name no other test run uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", alvryn::core::random_hex(6))
}

/// The password the end-to-end tests sign up with.
pub const PASSWORD: &str = "correct horse battery staple";

/// `POST /auth/signup` for `email` with [`PASSWORD`], whatever answers.
pub fn signup(addr: SocketAddr, email: &str) -> Response {
    post_json(
        addr,
        "/auth/signup",
        &serde_json::json!({"email": email, "password": PASSWORD}),
        None,
    )
}

/// As [`signup`], and the sign-up succeeded (201).
pub fn signed_up(addr: SocketAddr, email: &str) -> Response {
    let r = signup(addr, email);
    assert_eq!(r.status, 201, "{}", r.body);
    r
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `secs`
/// seconds; `None` when it never did.
pub fn eventually<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Configures billing on `c`: the data folder `dir`, Stripe's secret key
/// `key`, the webhook secret `whsec`, the price map `prices`, and
/// Stripe's API at `api_base`, or with `None` at a loopback port where
/// nothing listens (for a test whose requests never reach Stripe).
pub fn billing_env(
    c: &mut Command,
    dir: &std::path::Path,
    key: &str,
    whsec: &str,
    prices: &str,
    api_base: Option<&str>,
) {
    let api_base = api_base.map_or_else(
        || format!("http://127.0.0.1:{}", free_port()),
        str::to_owned,
    );
    c.env("ALVRYN_DATA_DIR", dir)
        .env("STRIPE_SECRET_KEY", key)
        .env("STRIPE_WEBHOOK_SECRET", whsec)
        .env("STRIPE_PRICE_MAP", prices)
        .env("STRIPE_API_BASE", api_base);
}

/// Raw events to the S3 bucket `bucket` at the S3 endpoint `endpoint`
/// (moto's, or one where nothing listens), with moto's credentials.
pub fn s3_archive_env(c: &mut Command, bucket: &str, endpoint: &str) {
    c.env("STRIPE_EVENT_S3_BUCKET", bucket);
    moto_env(c, endpoint);
}
