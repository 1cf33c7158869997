//! Every setting of the server, read from the environment in one place,
//! validated once, with all problems reported together.
//!
//! | variable | meaning |
//! |---|---|
//! | `ALVRYN_ENV` | `production` makes every required value mandatory; anything else (or unset) is development |
//! | `ALVRYN_BIND`, `ALVRYN_DATA_DIR` | listen address, embedded data folder (also `--bind`, `--data-dir`) |
//! | `MONGO_URI` | MongoDB connection string; unset means the embedded store |
//! | `JWT_SECRET`, `JWT_REFRESH_SECRET` | HMAC secrets for access and refresh tokens, at least 32 bytes each, different |
//! | `JWT_SECRET_PREVIOUS`, `JWT_REFRESH_SECRET_PREVIOUS` | previous secrets, verify only, for rotation |
//! | `JWT_AUDIENCE` | the `aud` claim, default `alvryn` |
//! | `ALVRYN_REFRESH_GRACE_SECONDS` | how long concurrent refreshes of one token share a successor, default 10 |
//! | `ALVRYN_HEADER_TIMEOUT_SECONDS`, `ALVRYN_BODY_TIMEOUT_SECONDS`, `ALVRYN_REQUEST_TIMEOUT_SECONDS`, `ALVRYN_MAX_CONNECTIONS` | connection limits, see [`ConnectionLimits`] |
//! | `ALVRYN_LOG_FORMAT` | `json` (one JSON object per line) or `text`; default `json` in production, `text` in development |
//! | `CORS_ORIGINS` | comma-separated browser origins allowed besides `FRONTEND_URL`'s, e.g. `https://admin.example.com` |
//! | `ALVRYN_SESSION_MAX_AGE` | a session's absolute lifetime from login, seconds or like `90d`; default 90 days, 0 for none |
//! | `ALVRYN_TRUSTED_PROXIES` | comma-separated address ranges whose `X-Forwarded-For` is believed; default none |
//! | `ALVRYN_RATE_LIMIT_STORE_TIMEOUT` | how long a rate-limit counter update may take before the request goes through unlimited: seconds or like `250ms`, 50 ms to 30 s and shorter than the request timeout; default 1 s (half the request timeout if that is shorter) |
//! | `ALVRYN_RATE_LIMIT_{SIGNUP,LOGIN,LOGIN_ACCOUNT,REFRESH,OAUTH,BILLING,WEBHOOK}` | each group's limit, `REQUESTS/WINDOW` like `30/5m`, or `off`; see [`crate::ratelimit`] |
//! | `BACKEND_URL`, `FRONTEND_URL` | public URLs of this server and of the web app |
//! | `STRIPE_SECRET_KEY`, `STRIPE_WEBHOOK_SECRET` | Stripe API key (`sk_`/`rk_`) and webhook signing secret (`whsec_`) |
//! | `STRIPE_PRICE_MAP` / `STRIPE_PRICE_MAP_JSON` | which plan each price grants: `price_a:pro,price_b:team` or JSON |
//! | `STRIPE_EVENT_S3_BUCKET` | S3 bucket for the raw webhook archive |
//! | `STRIPE_EVENT_S3_PREFIX` | folder of the archive inside the bucket, default `stripe/events/` |
//! | `STRIPE_API_BASE` | Stripe's API, default `https://api.stripe.com` (`http` only to a loopback address) |
//! | `STRIPE_WEBHOOK_TOLERANCE_SECONDS` | how old a webhook signature may be, 1-3600, default 300 |
//! | `GOOGLE_CLIENT_ID/SECRET`, `MICROSOFT_CLIENT_ID/SECRET` | OAuth clients; each pair all or nothing |
//! | `MICROSOFT_TENANT` | `common` (default), `organizations`, `consumers`, a tenant id or domain |
//! | `GOOGLE_DISCOVERY_URL` + `GOOGLE_ISSUER`, `MICROSOFT_DISCOVERY_URL` + `MICROSOFT_ISSUER` | another OpenID provider (sovereign cloud, tests); the Microsoft issuer may contain `{tenantid}` |
//! | `FIELD_ENCRYPTION_KEY` / `FIELD_ENCRYPTION_KEY_ENC` | field key: 32 raw bytes or base64, or a KMS-wrapped blob |
//! | `FIELD_ENCRYPTION_PREVIOUS_KEYS` / `FIELD_ENCRYPTION_PREVIOUS_KEYS_ENC` | comma-separated decrypt-only keys (base64) or KMS blobs |
//! | `FIELD_ENCRYPTION_KMS_KEY_ID` | optional: the KMS key the blobs must come from (recommended) |
//! | `ALVRYN_WORKER_METRICS_BIND` | where `alvryn worker` serves `/metrics` and `/healthz`, default `127.0.0.1:9091` (`--metrics-bind` wins) |
//! | `ALVRYN_WORKER_LEASE_TTL_SECONDS` | how long a worker's job lease lasts unrenewed (how soon another worker takes over from a dead one), 1-3600, default 60 |
//! | `ALVRYN_WORKER_ARCHIVE_BATCH` | raw events the archive drain moves to S3 per run, 1-10000, default 100 |
//! | `ALVRYN_WORKER_UPLOAD_PAUSE_MS` | pause after each of the drain's uploads, 0-60000, default 0 |

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use alvryn_core::billing::{PriceMap, WebhookSecrets};
use alvryn_core::key::kms::WrappedKey;
use alvryn_core::key::parse_key;
use alvryn_core::oauth::oidc::IssuerRule;
use alvryn_core::oauth::{Provider, ProviderSettings};
use alvryn_core::secret::{SecretBytes, SecretString};
use url::Url;

use crate::ratelimit::{Group, Limit, RateLimitSettings, TrustedProxies};

/// Shortest JWT secret accepted, in bytes.
pub const MIN_JWT_SECRET_LEN: usize = 32;

/// Development or production.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Missing values are generated or defaulted, loudly.
    Development,
    /// Every required value must be set and valid.
    Production,
}

/// One thing wrong with the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The variable concerned.
    pub var: &'static str,
    /// What is wrong; never contains the value.
    pub message: String,
}

/// Every problem found, in one error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in the order of the variable table.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "the configuration has {} problem(s):",
            self.problems.len()
        )?;
        for p in &self.problems {
            writeln!(f, "  - {}: {}", p.var, p.message)?;
        }
        Ok(())
    }
}

/// Where the field-encryption keys come from.
#[derive(Clone, Debug)]
pub enum FieldKeys {
    /// Keys given directly (`FIELD_ENCRYPTION_KEY`).
    Static {
        /// The active key.
        active: SecretBytes,
        /// Decrypt-only keys.
        previous: Vec<SecretBytes>,
    },
    /// KMS-wrapped keys (`FIELD_ENCRYPTION_KEY_ENC`), unwrapped at startup.
    Kms {
        /// The active key's blob.
        active: WrappedKey,
        /// Decrypt-only keys' blobs.
        previous: Vec<WrappedKey>,
        /// `FIELD_ENCRYPTION_KMS_KEY_ID`: accept only blobs of this KMS key.
        expected_key_id: Option<String>,
    },
    /// Development only: generate (or reuse) a key in the data folder.
    DevGenerated,
}

/// How log lines are written to stderr (`ALVRYN_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Lines for people (the development default).
    Text,
    /// One JSON object per line (the production default).
    Json,
}

impl LogFormat {
    /// The format the process environment asks for, read before anything
    /// is logged. An invalid value gives the mode's default here; the
    /// full configuration check ([`Config::from_env`]) reports it.
    #[must_use]
    pub fn from_env() -> Self {
        Self::from_lookup(&|name| std::env::var_os(name))
    }

    /// As [`LogFormat::from_env`], through `get`.
    #[must_use]
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<OsString>) -> Self {
        let mut r = Reader {
            get,
            problems: Vec::new(),
            mode: Mode::Development,
        };
        r.mode = r.mode();
        r.log_format()
    }
}

/// Stripe settings.
#[derive(Clone, Debug)]
pub struct StripeConfig {
    /// API key.
    pub secret_key: SecretString,
    /// Webhook signing secrets (comma-separated: several while rolling).
    pub webhook_secrets: WebhookSecrets,
    /// Which plan each price grants.
    pub price_map: PriceMap,
    /// Stripe's API (`STRIPE_API_BASE`).
    pub api_base: String,
    /// How old a webhook signature may be (`STRIPE_WEBHOOK_TOLERANCE_SECONDS`).
    pub webhook_tolerance: std::time::Duration,
    /// The archive's folder in the bucket (`STRIPE_EVENT_S3_PREFIX`).
    pub event_prefix: String,
}

/// Connection and request limits of the HTTP server (each an
/// `ALVRYN_*` variable; the defaults keep idle and slow clients from
/// holding the server).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// `ALVRYN_HEADER_TIMEOUT_SECONDS` (default 10): a request's headers,
    /// and the wait for the next request on a kept-alive connection, must
    /// arrive within this, or the connection is closed.
    pub header_timeout: std::time::Duration,
    /// `ALVRYN_BODY_TIMEOUT_SECONDS` (default 10): a request body must
    /// arrive within this.
    pub body_timeout: std::time::Duration,
    /// `ALVRYN_REQUEST_TIMEOUT_SECONDS` (default 30): a request is
    /// answered within this, or with 503 `timeout`.
    pub request_timeout: std::time::Duration,
    /// `ALVRYN_MAX_CONNECTIONS` (default 4096): connections beyond it are
    /// closed at once (and the refusal logged, at most once a minute).
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: std::time::Duration::from_secs(10),
            body_timeout: std::time::Duration::from_secs(10),
            request_timeout: std::time::Duration::from_secs(30),
            max_connections: 4096,
        }
    }
}

/// Settings of `alvryn worker` (each an `ALVRYN_WORKER_*` variable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerSettings {
    /// `ALVRYN_WORKER_METRICS_BIND` (default `127.0.0.1:9091`): where the
    /// worker serves `/metrics` and `/healthz`.
    pub metrics_bind: SocketAddr,
    /// `ALVRYN_WORKER_LEASE_TTL_SECONDS` (default 60): how long a job's
    /// lease lasts unrenewed, so how soon another worker takes over a
    /// job from a dead one. Renewed every third of it while a job runs.
    pub lease_ttl: std::time::Duration,
    /// `ALVRYN_WORKER_ARCHIVE_BATCH` (default 100): raw events the
    /// archive drain moves to S3 per run (a full batch runs again at once).
    pub archive_batch: usize,
    /// `ALVRYN_WORKER_UPLOAD_PAUSE_MS` (default 0): a pause after each of
    /// the archive drain's uploads, to spread the load on S3 (the tests
    /// use it to make a run last long enough to interrupt).
    pub upload_pause: std::time::Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            metrics_bind: SocketAddr::from(([127, 0, 0, 1], 9091)),
            lease_ttl: alvryn_core::jobs::DEFAULT_LEASE_TTL,
            archive_batch: 100,
            upload_pause: std::time::Duration::ZERO,
        }
    }
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Development or production.
    pub mode: Mode,
    /// Listen address.
    pub bind: SocketAddr,
    /// Embedded data folder.
    pub data_dir: PathBuf,
    /// MongoDB URI; `None` selects the embedded store.
    pub mongo_uri: Option<SecretString>,
    /// Access-token secret; `None` in development means generate.
    pub jwt_secret: Option<SecretBytes>,
    /// Refresh-token secret; `None` in development means generate.
    pub jwt_refresh_secret: Option<SecretBytes>,
    /// Previous access-token secret, verify only (`JWT_SECRET_PREVIOUS`).
    pub jwt_secret_previous: Option<SecretBytes>,
    /// Previous refresh-token secret, verify only (`JWT_REFRESH_SECRET_PREVIOUS`).
    pub jwt_refresh_secret_previous: Option<SecretBytes>,
    /// The `aud` claim of every token (`JWT_AUDIENCE`, default `alvryn`).
    pub jwt_audience: String,
    /// How long a just-retired refresh token still yields the same
    /// successor (`ALVRYN_REFRESH_GRACE_SECONDS`, 0-300, default 10).
    pub refresh_grace: std::time::Duration,
    /// `ALVRYN_SESSION_MAX_AGE`: a session's absolute lifetime from login
    /// (default 90 days); `None` (set to 0) for none.
    pub session_max_age: Option<std::time::Duration>,
    /// How long connections and requests may take, and how many
    /// connections may be open at once.
    pub limits: ConnectionLimits,
    /// Rate limits per route group and the trusted proxies
    /// (`ALVRYN_RATE_LIMIT_*`, `ALVRYN_TRUSTED_PROXIES`).
    pub rate_limits: RateLimitSettings,
    /// Public URL of this server.
    pub backend_url: Url,
    /// Public URL of the web app (CORS origin, redirects).
    pub frontend_url: Url,
    /// Browser origins allowed by CORS besides the frontend's
    /// (`CORS_ORIGINS`), each `scheme://host[:port]`, lower case, the
    /// default port left out (as browsers send `Origin`).
    pub cors_origins: Vec<String>,
    /// How log lines are written (`ALVRYN_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// `ALVRYN_METRICS_TOKEN`: when set, the server's `/metrics` answers
    /// only `Authorization: Bearer <token>` (at least 16 characters).
    pub metrics_token: Option<SecretString>,
    /// Stripe, when configured.
    pub stripe: Option<StripeConfig>,
    /// Raw webhook archive bucket.
    pub stripe_event_bucket: Option<String>,
    /// Google login, when configured.
    pub google: Option<ProviderSettings>,
    /// Microsoft login, when configured.
    pub microsoft: Option<ProviderSettings>,
    /// Field-encryption keys.
    pub field_keys: FieldKeys,
    /// `alvryn worker`'s settings.
    pub worker: WorkerSettings,
}

/// Values given on the command line, which win over the environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--bind`.
    pub bind: Option<SocketAddr>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
}

struct Reader<'a> {
    get: &'a dyn Fn(&str) -> Option<OsString>,
    problems: Vec<Problem>,
    mode: Mode,
}

impl Reader<'_> {
    fn problem(&mut self, var: &'static str, message: impl Into<String>) {
        self.problems.push(Problem {
            var,
            message: message.into(),
        });
    }

    fn has_problem(&self, var: &str) -> bool {
        self.problems.iter().any(|p| p.var == var)
    }

    /// The raw value; empty counts as unset.
    fn raw(&mut self, var: &'static str) -> Option<OsString> {
        (self.get)(var).filter(|v| !v.is_empty())
    }

    /// A value that must be UTF-8.
    fn text(&mut self, var: &'static str) -> Option<String> {
        let raw = self.raw(var)?;
        match raw.into_string() {
            Ok(s) => Some(s),
            Err(_) => {
                self.problem(var, "is not valid UTF-8");
                None
            }
        }
    }

    fn required_in_production<T>(&mut self, var: &'static str, value: Option<T>) -> Option<T> {
        if value.is_none() && self.mode == Mode::Production {
            self.problem(var, "is required in production");
        }
        value
    }

    fn url(&mut self, var: &'static str) -> Option<Url> {
        let text = self.text(var);
        let text = self.required_in_production(var, text)?;
        let url = match Url::parse(text.trim()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
            _ => {
                self.problem(
                    var,
                    "must be an absolute http(s) URL, e.g. https://api.example.com",
                );
                return None;
            }
        };
        if self.mode == Mode::Production && url.scheme() != "https" {
            self.problem(var, "must use https in production");
        }
        if !url.username().is_empty() || url.password().is_some() {
            self.problem(var, "must not contain credentials");
            return None;
        }
        Some(url)
    }

    /// `ALVRYN_ENV`.
    fn mode(&mut self) -> Mode {
        match self.text("ALVRYN_ENV").as_deref().map(str::trim) {
            Some("production" | "prod") => Mode::Production,
            None | Some("development" | "dev") => Mode::Development,
            Some(_) => {
                self.problem("ALVRYN_ENV", "must be production or development");
                Mode::Development
            }
        }
    }

    /// `ALVRYN_LOG_FORMAT`: `json` or `text`, by default `json` in
    /// production and `text` in development.
    fn log_format(&mut self) -> LogFormat {
        let default = match self.mode {
            Mode::Production => LogFormat::Json,
            Mode::Development => LogFormat::Text,
        };
        match self
            .text("ALVRYN_LOG_FORMAT")
            .map(|t| t.trim().to_ascii_lowercase())
        {
            None => default,
            Some(t) if t == "json" => LogFormat::Json,
            Some(t) if t == "text" => LogFormat::Text,
            Some(_) => {
                self.problem("ALVRYN_LOG_FORMAT", "must be json or text");
                default
            }
        }
    }

    /// `CORS_ORIGINS`: comma-separated origins, each an http(s) scheme, a
    /// host and an optional port, and nothing else (no path, query,
    /// credentials or wildcard); https in production. Each entry in
    /// error is named by its position, not its value.
    fn cors_origins(&mut self) -> Vec<String> {
        const VAR: &str = "CORS_ORIGINS";
        const MAX: usize = 64;
        let Some(list) = self.text(VAR) else {
            return Vec::new();
        };
        let mut origins: Vec<String> = Vec::new();
        let entries: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        if entries.len() > MAX {
            self.problem(
                VAR,
                format!("lists {} origins; at most {MAX}", entries.len()),
            );
            return Vec::new();
        }
        for (i, entry) in entries.into_iter().enumerate() {
            let n = i + 1;
            let url = match Url::parse(entry) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
                _ => {
                    self.problem(
                        VAR,
                        format!(
                            "entry {n} is not an origin like https://app.example.com \
                             (http or https, a host, an optional port)"
                        ),
                    );
                    continue;
                }
            };
            // A wildcard or another odd character is no host a browser
            // sends (the URL parser lets `*` through).
            if let Some(url::Host::Domain(d)) = url.host()
                && !d
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
            {
                self.problem(
                    VAR,
                    format!("entry {n} has a host with characters no origin has (no wildcards)"),
                );
                continue;
            }
            // `Url` reads `https://a.example` and `https://a.example/`
            // alike (path `/`); anything longer is a path.
            if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
                self.problem(
                    VAR,
                    format!("entry {n} must be an origin only: no path, query or fragment"),
                );
                continue;
            }
            if !url.username().is_empty() || url.password().is_some() {
                self.problem(VAR, format!("entry {n} must not contain credentials"));
                continue;
            }
            if self.mode == Mode::Production && url.scheme() != "https" {
                self.problem(VAR, format!("entry {n} must use https in production"));
                continue;
            }
            let origin = url.origin().ascii_serialization();
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        origins
    }

    fn jwt_secret(&mut self, var: &'static str) -> Option<SecretBytes> {
        if self.raw(var).is_none() {
            return self.required_in_production(var, None);
        }
        self.optional_jwt_secret(var)
    }

    fn optional_jwt_secret(&mut self, var: &'static str) -> Option<SecretBytes> {
        let raw = self.raw(var)?;
        let bytes = SecretBytes::new(raw.as_bytes().to_vec());
        if bytes.len() < MIN_JWT_SECRET_LEN {
            self.problem(
                var,
                format!(
                    "is {} bytes long; it must be at least {MIN_JWT_SECRET_LEN} random bytes",
                    bytes.len()
                ),
            );
            return None;
        }
        Some(bytes)
    }

    fn prefixed_secret(&mut self, var: &'static str, prefixes: &[&str]) -> Option<SecretString> {
        let text = self.text(var)?;
        let secret = SecretString::new(text);
        if !prefixes.iter().any(|p| secret.expose().starts_with(p))
            || secret.expose().contains(char::is_whitespace)
        {
            self.problem(var, format!("must start with {}", prefixes.join(" or ")));
            return None;
        }
        Some(secret)
    }

    /// An optional absolute http(s) URL.
    fn optional_url(&mut self, var: &'static str) -> Option<Url> {
        let text = self.text(var)?;
        match Url::parse(text.trim()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            _ => {
                self.problem(var, "must be an absolute http(s) URL");
                None
            }
        }
    }

    /// A provider's client (`{P}_CLIENT_ID`/`_SECRET`, all or nothing),
    /// and where its discovery document and issuer are when not the
    /// provider's own (`{P}_DISCOVERY_URL` and `{P}_ISSUER`, together;
    /// for Microsoft the issuer may hold `{tenantid}`).
    fn oauth(&mut self, provider: Provider) -> Option<ProviderSettings> {
        let [id_var, secret_var, discovery_var, issuer_var] = match provider {
            Provider::Google => [
                "GOOGLE_CLIENT_ID",
                "GOOGLE_CLIENT_SECRET",
                "GOOGLE_DISCOVERY_URL",
                "GOOGLE_ISSUER",
            ],
            Provider::Microsoft => [
                "MICROSOFT_CLIENT_ID",
                "MICROSOFT_CLIENT_SECRET",
                "MICROSOFT_DISCOVERY_URL",
                "MICROSOFT_ISSUER",
            ],
        };
        let id = self.text(id_var);
        let secret = self.text(secret_var).map(SecretString::new);
        let discovery = self.optional_url(discovery_var);
        let issuer = self.text(issuer_var).map(|i| i.trim().to_owned());
        let tenant = match provider {
            Provider::Microsoft => self.text("MICROSOFT_TENANT"),
            Provider::Google => None,
        };
        let (client_id, client_secret) = match (id, secret) {
            (Some(id), Some(secret)) => (id.trim().to_owned(), secret),
            (None, None) => return None,
            (Some(_), None) => {
                self.problem(secret_var, format!("is required when {id_var} is set"));
                return None;
            }
            (None, Some(_)) => {
                self.problem(id_var, format!("is required when {secret_var} is set"));
                return None;
            }
        };
        let mut settings = match provider {
            Provider::Google => ProviderSettings::google(client_id, client_secret),
            Provider::Microsoft => {
                let tenant = tenant.as_deref().map_or("common", str::trim);
                match ProviderSettings::microsoft(client_id, client_secret, tenant) {
                    Ok(s) => s,
                    Err(e) => {
                        self.problem("MICROSOFT_TENANT", e.to_string());
                        return None;
                    }
                }
            }
        };
        match (discovery, issuer) {
            (Some(discovery), Some(issuer)) => {
                let rule = if issuer.contains("{tenantid}") {
                    IssuerRule::TenantTemplate(issuer)
                } else {
                    IssuerRule::Exact(issuer)
                };
                settings = settings.with_endpoints(discovery, rule);
            }
            (None, None) => {}
            (Some(_), None) => {
                self.problem(
                    issuer_var,
                    format!("is required when {discovery_var} is set"),
                );
            }
            (None, Some(_)) => {
                self.problem(
                    discovery_var,
                    format!("is required when {issuer_var} is set"),
                );
            }
        }
        Some(settings)
    }

    fn limits(&mut self) -> ConnectionLimits {
        let mut limits = ConnectionLimits::default();
        let secs = std::time::Duration::from_secs;
        if let Some(n) = self.number("ALVRYN_HEADER_TIMEOUT_SECONDS", 1, 600) {
            limits.header_timeout = secs(n);
        }
        if let Some(n) = self.number("ALVRYN_BODY_TIMEOUT_SECONDS", 1, 600) {
            limits.body_timeout = secs(n);
        }
        if let Some(n) = self.number("ALVRYN_REQUEST_TIMEOUT_SECONDS", 1, 3600) {
            limits.request_timeout = secs(n);
        }
        if let Some(n) = self.number("ALVRYN_MAX_CONNECTIONS", 1, 1_000_000) {
            limits.max_connections = usize::try_from(n).unwrap_or(usize::MAX);
        }
        limits
    }

    /// `ALVRYN_TRUSTED_PROXIES`, each group's `ALVRYN_RATE_LIMIT_*` and
    /// `ALVRYN_RATE_LIMIT_STORE_TIMEOUT`, which must be shorter than
    /// `request_timeout` (else the request would fail with `timeout`
    /// first, not go through as the limiter promises); unset, it is the
    /// default or half the request timeout, whichever is shorter.
    fn rate_limits(&mut self, request_timeout: std::time::Duration) -> RateLimitSettings {
        const PROXIES: &str = "ALVRYN_TRUSTED_PROXIES";
        const STORE_TIMEOUT: &str = "ALVRYN_RATE_LIMIT_STORE_TIMEOUT";
        let mut settings = RateLimitSettings::default();
        match self.text(STORE_TIMEOUT) {
            None => settings.set_store_timeout(settings.store_timeout().min(request_timeout / 2)),
            Some(text) => match seconds_or_duration(&text)
                .filter(|d| crate::ratelimit::STORE_TIMEOUT_RANGE.contains(d))
            {
                None => {
                    let range = &crate::ratelimit::STORE_TIMEOUT_RANGE;
                    let (from, to) = (range.start(), range.end());
                    self.problem(
                        STORE_TIMEOUT,
                        format!(
                            "must be from {} to {}, in seconds or like 250ms",
                            humantime::format_duration(*from),
                            humantime::format_duration(*to)
                        ),
                    );
                }
                Some(d) if d >= request_timeout => self.problem(
                    STORE_TIMEOUT,
                    "must be shorter than the request timeout (ALVRYN_REQUEST_TIMEOUT_SECONDS)",
                ),
                Some(d) => settings.set_store_timeout(d),
            },
        }
        if let Some(list) = self.text(PROXIES) {
            match TrustedProxies::parse(&list) {
                Ok(t) => settings.trusted_proxies = t,
                Err(problems) => {
                    for p in problems {
                        self.problem(PROXIES, p);
                    }
                }
            }
        }
        for group in Group::ALL {
            if let Some(text) = self.text(group.var()) {
                match Limit::parse(&text) {
                    Ok(limit) => settings.set(group, limit),
                    Err(message) => self.problem(group.var(), message),
                }
            }
        }
        settings
    }

    /// A socket address, `default` when unset, or (`None`) a problem
    /// showing the default as the example.
    fn address(&mut self, var: &'static str, default: SocketAddr) -> Option<SocketAddr> {
        let Some(t) = self.text(var) else {
            return Some(default);
        };
        t.trim()
            .parse()
            .map_err(|_| self.problem(var, format!("must be an address like {default}")))
            .ok()
    }

    /// A whole number in `min..=max`, or a problem naming the range.
    fn number(&mut self, var: &'static str, min: u64, max: u64) -> Option<u64> {
        let t = self.text(var)?;
        match t.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.problem(var, format!("must be a whole number from {min} to {max}"));
                None
            }
        }
    }

    fn worker(&mut self) -> WorkerSettings {
        let mut w = WorkerSettings::default();
        if let Some(addr) = self.address("ALVRYN_WORKER_METRICS_BIND", w.metrics_bind) {
            w.metrics_bind = addr;
        }
        if let Some(n) = self.number("ALVRYN_WORKER_LEASE_TTL_SECONDS", 1, 3600) {
            w.lease_ttl = std::time::Duration::from_secs(n);
        }
        if let Some(n) = self.number("ALVRYN_WORKER_ARCHIVE_BATCH", 1, 10_000) {
            w.archive_batch = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = self.number("ALVRYN_WORKER_UPLOAD_PAUSE_MS", 0, 60_000) {
            w.upload_pause = std::time::Duration::from_millis(n);
        }
        w
    }

    fn field_keys(&mut self) -> Option<FieldKeys> {
        const RAW: &str = "FIELD_ENCRYPTION_KEY";
        const ENC: &str = "FIELD_ENCRYPTION_KEY_ENC";
        const PREV: &str = "FIELD_ENCRYPTION_PREVIOUS_KEYS";
        const PREV_ENC: &str = "FIELD_ENCRYPTION_PREVIOUS_KEYS_ENC";
        const KMS_KEY: &str = "FIELD_ENCRYPTION_KMS_KEY_ID";
        let raw = self.raw(RAW);
        let enc = self.text(ENC);
        match (raw, enc) {
            (Some(_), Some(_)) => {
                self.problem(RAW, format!("set either {RAW} or {ENC}, not both"));
                None
            }
            (Some(raw), None) => {
                let active = parse_key(RAW, raw.as_bytes())
                    .map_err(|e| self.problem(RAW, strip_var(RAW, &e.to_string())));
                let mut previous = Vec::new();
                if let Some(list) = self.text(PREV) {
                    for (i, item) in list
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .enumerate()
                    {
                        match parse_key(&format!("entry {}", i + 1), item.as_bytes()) {
                            Ok(k) => previous.push(k),
                            Err(e) => self.problem(PREV, e.to_string()),
                        }
                    }
                }
                for var in [PREV_ENC, KMS_KEY] {
                    if self.raw(var).is_some() {
                        self.problem(var, format!("goes with {ENC}, not {RAW}"));
                    }
                }
                Some(FieldKeys::Static {
                    active: active.ok()?,
                    previous,
                })
            }
            (None, Some(enc)) => {
                let active = WrappedKey::from_base64(ENC, &enc)
                    .map_err(|e| self.problem(ENC, strip_var(ENC, &e.to_string())));
                let mut previous = Vec::new();
                if let Some(list) = self.text(PREV_ENC) {
                    for (i, item) in list
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .enumerate()
                    {
                        match WrappedKey::from_base64(&format!("{PREV_ENC} entry {}", i + 1), item)
                        {
                            Ok(k) => previous.push(k),
                            Err(e) => self.problem(PREV_ENC, strip_var(PREV_ENC, &e.to_string())),
                        }
                    }
                }
                if self.raw(PREV).is_some() {
                    self.problem(PREV, format!("goes with {RAW}; with {ENC} use {PREV_ENC}"));
                }
                let expected_key_id = self.text(KMS_KEY).map(|s| s.trim().to_owned());
                Some(FieldKeys::Kms {
                    active: active.ok()?,
                    previous,
                    expected_key_id,
                })
            }
            (None, None) => {
                if self.mode == Mode::Production {
                    self.problem(RAW, format!("{RAW} or {ENC} is required in production"));
                    None
                } else {
                    Some(FieldKeys::DevGenerated)
                }
            }
        }
    }

    fn stripe(&mut self) -> Option<StripeConfig> {
        let key = self.prefixed_secret("STRIPE_SECRET_KEY", &["sk_", "rk_"]);
        let whsec = self.text("STRIPE_WEBHOOK_SECRET").and_then(|list| {
            WebhookSecrets::parse(&list)
                .map_err(|e| self.problem("STRIPE_WEBHOOK_SECRET", e.to_string()))
                .ok()
        });
        let api_base = self.text("STRIPE_API_BASE");
        let api_base = api_base.map_or_else(
            || alvryn_core::billing::stripe::DEFAULT_API_BASE.to_owned(),
            |b| b.trim().trim_end_matches('/').to_owned(),
        );
        if let Err(e) = alvryn_core::billing::stripe::check_api_base(&api_base) {
            self.problem("STRIPE_API_BASE", e.to_string());
        }
        let webhook_tolerance = match self.text("STRIPE_WEBHOOK_TOLERANCE_SECONDS") {
            None => alvryn_core::billing::webhook::DEFAULT_TOLERANCE,
            Some(t) => match t.trim().parse::<u64>() {
                Ok(n) if (1..=3600).contains(&n) => std::time::Duration::from_secs(n),
                _ => {
                    self.problem(
                        "STRIPE_WEBHOOK_TOLERANCE_SECONDS",
                        "must be a whole number of seconds from 1 to 3600",
                    );
                    alvryn_core::billing::webhook::DEFAULT_TOLERANCE
                }
            },
        };
        let event_prefix = self
            .text("STRIPE_EVENT_S3_PREFIX")
            .map_or_else(|| "stripe/events/".to_owned(), |p| p.trim().to_owned());
        if event_prefix.len() > 512
            || event_prefix.starts_with('/')
            || event_prefix.contains("..")
            || !event_prefix.is_empty() && !event_prefix.ends_with('/')
        {
            self.problem(
                "STRIPE_EVENT_S3_PREFIX",
                "must be a relative folder ending in / (or empty), without ..",
            );
        }
        let pairs = self.text("STRIPE_PRICE_MAP");
        let json = self.text("STRIPE_PRICE_MAP_JSON");
        let any_set = key.is_some() || whsec.is_some() || pairs.is_some() || json.is_some();
        let price_map = match (pairs, json) {
            (Some(_), Some(_)) => {
                self.problem(
                    "STRIPE_PRICE_MAP",
                    "set either STRIPE_PRICE_MAP or STRIPE_PRICE_MAP_JSON, not both",
                );
                None
            }
            (Some(p), None) => PriceMap::parse_pairs(&p)
                .map_err(|e| self.problem("STRIPE_PRICE_MAP", e.to_string()))
                .ok(),
            (None, Some(j)) => PriceMap::parse_json(&j)
                .map_err(|e| self.problem("STRIPE_PRICE_MAP_JSON", e.to_string()))
                .ok(),
            (None, None) => None,
        };
        if !any_set && self.mode == Mode::Development {
            return None;
        }
        let why = if self.mode == Mode::Production {
            "is required in production"
        } else {
            "is required once any STRIPE_ setting is given"
        };
        if key.is_none() && !self.has_problem("STRIPE_SECRET_KEY") {
            self.problem("STRIPE_SECRET_KEY", why);
        }
        if whsec.is_none() && !self.has_problem("STRIPE_WEBHOOK_SECRET") {
            self.problem("STRIPE_WEBHOOK_SECRET", why);
        }
        if price_map.is_none()
            && !self.has_problem("STRIPE_PRICE_MAP")
            && !self.has_problem("STRIPE_PRICE_MAP_JSON")
        {
            self.problem(
                "STRIPE_PRICE_MAP",
                format!("(or STRIPE_PRICE_MAP_JSON) {why}"),
            );
        }
        Some(StripeConfig {
            secret_key: key?,
            webhook_secrets: whsec?,
            price_map: price_map?,
            api_base,
            webhook_tolerance,
            event_prefix,
        })
    }

    fn bucket(&mut self) -> Option<String> {
        let b = self.text("STRIPE_EVENT_S3_BUCKET")?;
        let b = b.trim().to_owned();
        let valid = (3..=63).contains(&b.len())
            && b.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
            && b.starts_with(|c: char| c.is_ascii_alphanumeric())
            && b.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid {
            self.problem(
                "STRIPE_EVENT_S3_BUCKET",
                "is not a valid S3 bucket name (3-63 characters of a-z 0-9 . -)",
            );
            return None;
        }
        Some(b)
    }
}

/// `parse_key` names its source in its message; the problem list names
/// the variable already.
fn strip_var(var: &str, message: &str) -> String {
    message
        .strip_prefix(var)
        .map(|m| m.trim_start_matches(": ").to_owned())
        .unwrap_or_else(|| message.to_owned())
}

impl Config {
    /// Reads the process environment.
    ///
    /// # Errors
    /// Every problem found, at once.
    pub fn from_env(overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::from_lookup(&|name| std::env::var_os(name), overrides)
    }

    /// Reads configuration through `get` (the environment, or a map in
    /// tests).
    ///
    /// # Errors
    /// Every problem found, at once; no message contains a secret value.
    pub fn from_lookup(
        get: &dyn Fn(&str) -> Option<OsString>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut r = Reader {
            get,
            problems: Vec::new(),
            mode: Mode::Development,
        };
        r.mode = r.mode();
        let bind = match overrides.bind {
            Some(b) => Some(b),
            None => r.address("ALVRYN_BIND", SocketAddr::from(([127, 0, 0, 1], 8080))),
        };
        let data_dir = overrides
            .data_dir
            .clone()
            .or_else(|| r.raw("ALVRYN_DATA_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("./alvryn-data"));

        let mongo_uri = r.text("MONGO_URI").map(SecretString::new);
        let mongo_uri = r.required_in_production("MONGO_URI", mongo_uri);
        if let Some(uri) = &mongo_uri
            && !(uri.expose().starts_with("mongodb://")
                || uri.expose().starts_with("mongodb+srv://"))
        {
            r.problem("MONGO_URI", "must start with mongodb:// or mongodb+srv://");
        }
        let jwt_secret = r.jwt_secret("JWT_SECRET");
        let jwt_refresh_secret = r.jwt_secret("JWT_REFRESH_SECRET");
        let jwt_secret_previous = r.optional_jwt_secret("JWT_SECRET_PREVIOUS");
        let jwt_refresh_secret_previous = r.optional_jwt_secret("JWT_REFRESH_SECRET_PREVIOUS");
        let jwt_audience = match r.text("JWT_AUDIENCE") {
            None => "alvryn".to_owned(),
            Some(a)
                if !a.trim().is_empty() && a.len() <= 256 && !a.chars().any(char::is_control) =>
            {
                a.trim().to_owned()
            }
            Some(_) => {
                r.problem("JWT_AUDIENCE", "must be 1-256 printable characters");
                String::new()
            }
        };
        if let (Some(a), Some(b)) = (&jwt_secret, &jwt_refresh_secret)
            && a == b
        {
            r.problem("JWT_REFRESH_SECRET", "must differ from JWT_SECRET");
        }
        let refresh_grace = match r.text("ALVRYN_REFRESH_GRACE_SECONDS") {
            None => std::time::Duration::from_secs(10),
            Some(t) => match t.trim().parse::<u64>() {
                Ok(n) if n <= 300 => std::time::Duration::from_secs(n),
                _ => {
                    r.problem(
                        "ALVRYN_REFRESH_GRACE_SECONDS",
                        "must be a whole number of seconds from 0 to 300",
                    );
                    std::time::Duration::from_secs(10)
                }
            },
        };
        let session_max_age = match r.text("ALVRYN_SESSION_MAX_AGE") {
            None => Some(alvryn_core::auth::DEFAULT_SESSION_MAX_AGE),
            Some(t) => match seconds_or_duration(&t) {
                Some(d) if d.is_zero() => None,
                Some(d) if d.as_secs() >= 60 && d.as_secs() <= 10 * 365 * 86_400 => Some(d),
                _ => {
                    r.problem(
                        "ALVRYN_SESSION_MAX_AGE",
                        "must be 0 (no limit) or a duration from 1 minute to 10 years, \
                         in seconds or like 90d or 12h",
                    );
                    None
                }
            },
        };
        let limits = r.limits();
        let rate_limits = r.rate_limits(limits.request_timeout);
        let backend_url = r.url("BACKEND_URL");
        let frontend_url = r.url("FRONTEND_URL");
        let cors_origins = r.cors_origins();
        let log_format = r.log_format();
        let metrics_token = r.text("ALVRYN_METRICS_TOKEN").and_then(|t| {
            let t = t.trim().to_owned();
            if t.len() < 16 || t.contains(char::is_whitespace) {
                r.problem(
                    "ALVRYN_METRICS_TOKEN",
                    "must be at least 16 characters, without spaces",
                );
                None
            } else {
                Some(SecretString::from(t))
            }
        });
        let stripe = r.stripe();
        let stripe_event_bucket = r.bucket();
        let google = r.oauth(Provider::Google);
        let microsoft = r.oauth(Provider::Microsoft);
        let field_keys = r.field_keys();
        let worker = r.worker();
        // Development mode generates missing secrets per data folder. Two
        // instances sharing a database, or one reachable from elsewhere
        // (behind a load balancer), must never each invent their own.
        let shared = if mongo_uri.is_some() {
            Some("MONGO_URI is set")
        } else if bind.is_some_and(|b| !b.ip().is_loopback()) {
            Some("the bind address is not loopback")
        } else {
            None
        };
        if r.mode == Mode::Development
            && let Some(why) = shared
        {
            let generated = [
                ("JWT_SECRET", jwt_secret.is_none()),
                ("JWT_REFRESH_SECRET", jwt_refresh_secret.is_none()),
                (
                    "FIELD_ENCRYPTION_KEY",
                    matches!(field_keys, None | Some(FieldKeys::DevGenerated)),
                ),
            ];
            for (var, missing) in generated {
                if missing {
                    r.problem(
                        var,
                        format!(
                            "must be set: {why}, and development mode would generate a secret of its own \
                             for each instance (set it, or ALVRYN_ENV=production)"
                        ),
                    );
                }
            }
        }

        if !r.problems.is_empty() {
            return Err(ConfigError {
                problems: r.problems,
            });
        }
        let bind = bind.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let default_url = |s: String| Url::parse(&s).ok();
        let backend_url = backend_url
            .or_else(|| default_url(format!("http://{bind}")))
            .ok_or_else(|| ConfigError {
                problems: vec![Problem {
                    var: "BACKEND_URL",
                    message: "could not be derived from the bind address".into(),
                }],
            })?;
        let frontend_url = frontend_url
            .or_else(|| default_url("http://localhost:3000".into()))
            .ok_or_else(|| ConfigError {
                problems: vec![Problem {
                    var: "FRONTEND_URL",
                    message: "missing".into(),
                }],
            })?;
        Ok(Config {
            mode: r.mode,
            bind,
            data_dir,
            mongo_uri,
            jwt_secret,
            jwt_refresh_secret,
            jwt_secret_previous,
            jwt_refresh_secret_previous,
            jwt_audience,
            refresh_grace,
            session_max_age,
            limits,
            rate_limits,
            backend_url,
            frontend_url,
            cors_origins,
            log_format,
            metrics_token,
            stripe,
            stripe_event_bucket,
            google,
            microsoft,
            field_keys: field_keys.unwrap_or(FieldKeys::DevGenerated),
            worker,
        })
    }

    /// The configuration of a server that has bound `local` (the real
    /// port when `bind` asked for port 0). A `BACKEND_URL` that was
    /// derived from the bind address follows it; one that was set stays.
    #[must_use]
    pub fn bound_to(mut self, local: SocketAddr) -> Self {
        if Url::parse(&format!("http://{}", self.bind)).ok().as_ref() == Some(&self.backend_url)
            && let Ok(url) = Url::parse(&format!("http://{local}"))
        {
            self.backend_url = url;
        }
        self.bind = local;
        self
    }

    /// The browser origins CORS allows: `FRONTEND_URL`'s, then
    /// `CORS_ORIGINS`, without repeats.
    #[must_use]
    pub fn allowed_origins(&self) -> Vec<String> {
        let mut all = vec![self.frontend_url.origin().ascii_serialization()];
        for o in &self.cors_origins {
            if !all.contains(o) {
                all.push(o.clone());
            }
        }
        all
    }

    /// The effective configuration, one line per setting, secrets
    /// replaced by a description. Safe to print and log.
    #[must_use]
    pub fn describe(&self) -> BTreeMap<&'static str, String> {
        let secret = |s: Option<usize>| match s {
            Some(len) => format!("set ({len} bytes, redacted)"),
            None => "not set; generated in the data folder (development)".to_owned(),
        };
        let unset = "not set".to_owned();
        let mut m = BTreeMap::new();
        m.insert(
            "ALVRYN_ENV",
            match self.mode {
                Mode::Production => "production".to_owned(),
                Mode::Development => "development".to_owned(),
            },
        );
        m.insert("ALVRYN_BIND", self.bind.to_string());
        m.insert("ALVRYN_DATA_DIR", self.data_dir.display().to_string());
        m.insert(
            "MONGO_URI",
            if self.mongo_uri.is_some() {
                "set (redacted)".to_owned()
            } else {
                "not set; embedded store in the data folder".to_owned()
            },
        );
        m.insert(
            "JWT_SECRET",
            secret(self.jwt_secret.as_ref().map(SecretBytes::len)),
        );
        m.insert(
            "JWT_REFRESH_SECRET",
            secret(self.jwt_refresh_secret.as_ref().map(SecretBytes::len)),
        );
        m.insert(
            "ALVRYN_SESSION_MAX_AGE",
            self.session_max_age.map_or_else(
                || "none (refreshes extend sessions without limit)".to_owned(),
                |d| humantime::format_duration(d).to_string(),
            ),
        );
        m.insert(
            "ALVRYN_TRUSTED_PROXIES",
            if self.rate_limits.trusted_proxies.is_empty() {
                "none; X-Forwarded-For is ignored".to_owned()
            } else {
                let ranges: Vec<String> = self
                    .rate_limits
                    .trusted_proxies
                    .ranges()
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                ranges.join(",")
            },
        );
        m.insert(
            "ALVRYN_RATE_LIMIT_STORE_TIMEOUT",
            humantime::format_duration(self.rate_limits.store_timeout()).to_string(),
        );
        for group in Group::ALL {
            m.insert(
                group.var(),
                self.rate_limits
                    .limit(group)
                    .map_or_else(|| "off".to_owned(), |l| l.to_string()),
            );
        }
        m.insert("BACKEND_URL", self.backend_url.to_string());
        m.insert("FRONTEND_URL", self.frontend_url.to_string());
        m.insert("CORS_ORIGINS", self.allowed_origins().join(","));
        m.insert(
            "ALVRYN_METRICS_TOKEN",
            match &self.metrics_token {
                Some(t) => format!("set ({} bytes, redacted)", t.len()),
                None => "not set: /metrics is open to whoever reaches it".to_owned(),
            },
        );
        m.insert(
            "ALVRYN_LOG_FORMAT",
            match self.log_format {
                LogFormat::Json => "json".to_owned(),
                LogFormat::Text => "text".to_owned(),
            },
        );
        match &self.stripe {
            Some(s) => {
                m.insert(
                    "STRIPE_SECRET_KEY",
                    format!("set ({} bytes, redacted)", s.secret_key.len()),
                );
                m.insert(
                    "STRIPE_WEBHOOK_SECRET",
                    format!("set ({} secrets, redacted)", s.webhook_secrets.len()),
                );
                m.insert("STRIPE_API_BASE", s.api_base.clone());
                let map: Vec<String> = s
                    .price_map
                    .iter()
                    .map(|(p, plan)| format!("{p}:{plan}"))
                    .collect();
                m.insert("STRIPE_PRICE_MAP", map.join(","));
            }
            None => {
                m.insert("STRIPE_SECRET_KEY", "not set; billing disabled".to_owned());
            }
        }
        m.insert(
            "STRIPE_EVENT_S3_BUCKET",
            self.stripe_event_bucket
                .clone()
                .unwrap_or_else(|| "not set; raw events kept in the database".to_owned()),
        );
        for (name, client) in [
            ("GOOGLE_CLIENT_ID", &self.google),
            ("MICROSOFT_CLIENT_ID", &self.microsoft),
        ] {
            m.insert(
                name,
                client.as_ref().map_or_else(
                    || format!("{unset}; login disabled"),
                    |c| {
                        format!(
                            "{} (secret redacted); discovery {}",
                            c.client_id, c.discovery_url
                        )
                    },
                ),
            );
        }
        m.insert(
            "ALVRYN_WORKER_METRICS_BIND",
            self.worker.metrics_bind.to_string(),
        );
        m.insert(
            "ALVRYN_WORKER_LEASE_TTL_SECONDS",
            self.worker.lease_ttl.as_secs().to_string(),
        );
        m.insert(
            "FIELD_ENCRYPTION_KEY",
            match &self.field_keys {
                FieldKeys::Static { previous, .. } => {
                    format!("set (redacted), {} previous key(s)", previous.len())
                }
                FieldKeys::Kms {
                    previous,
                    expected_key_id,
                    ..
                } => format!(
                    "KMS-wrapped (FIELD_ENCRYPTION_KEY_ENC), {} previous key(s), KMS key {}",
                    previous.len(),
                    expected_key_id
                        .as_deref()
                        .unwrap_or("not pinned (FIELD_ENCRYPTION_KMS_KEY_ID not set)")
                ),
                FieldKeys::DevGenerated => {
                    "not set; generated in the data folder (development)".to_owned()
                }
            },
        );
        m
    }
}

/// Whole seconds (`90`) or a duration (`5m`, `1h 30m`), trimmed.
pub(crate) fn seconds_or_duration(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    text.parse::<u64>()
        .map(std::time::Duration::from_secs)
        .or_else(|_| humantime::parse_duration(text))
        .ok()
}

#[cfg(test)]
mod tests;
