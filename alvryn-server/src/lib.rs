//! The Alvryn reference server: configuration, composition of
//! `alvryn-core`, and the HTTP API.
//!
//! [`app`] builds the router from an [`AppState`], so tests can drive it
//! with `tower::ServiceExt::oneshot` and no socket; [`serve`] binds and
//! runs it until shutdown. The `alvryn` binary is a thin wrapper over
//! [`cli`].
#![warn(missing_docs)]

pub mod backup;
pub mod billing;
pub mod cli;
pub mod config;
pub mod dev;
pub mod error;
pub mod events;
pub mod extract;
pub mod keys;
pub mod migrate;
pub mod openapi;
pub mod prometheus;
pub mod ratelimit;
pub mod ready;
pub mod routes;
pub mod smoke;
pub mod web;
pub mod wire;
pub mod worker;

use std::future::Future;
use std::sync::Arc;

use alvryn_core::auth::{Auth, HashParams, PasswordHasher};
use alvryn_core::billing::{Billing, EventArchive, WebhookPipeline};
use alvryn_core::crypto::FieldCipher;
use alvryn_core::oauth::OAuthLogin;
use alvryn_core::store::mongo::MongoStore;
use alvryn_core::store::sqlite::SqliteStore;
use alvryn_core::store::{StoreBackend, StoreError};
use alvryn_core::token::{HmacSecrets, JwtKeys, JwtSettings};
use axum::Router;
use tokio::net::TcpListener;

use crate::config::Mode;
use crate::dev::{DevSecrets, DevSecretsError, ensure_data_dir};

pub use config::Config;
pub use error::ApiError;

/// The largest request head (request line and headers) read, in bytes;
/// beyond it the answer is 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most header fields a request may carry; beyond it the answer is 431.
pub const MAX_HEADERS: usize = 100;

/// The embedded database file inside the data folder.
pub const EMBEDDED_DB_FILE: &str = "alvryn.db";

/// What every request handler can reach: one shared [`Shared`], so the
/// clone axum makes for every request is one reference count (the
/// fields are read through `Deref`: `state.auth`).
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of an [`AppState`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Shared {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Field encryption with the configured keys.
    pub cipher: FieldCipher,
    /// Accounts and sessions.
    pub auth: Auth,
    /// Sign-in with Google and Microsoft, provider links and tokens.
    pub oauth: OAuthLogin,
    /// Stripe billing and its webhook pipeline, when configured.
    pub billing: Option<Arc<WebhookPipeline>>,
    /// What `/readyz` checks.
    pub readiness: Arc<ready::Readiness>,
    /// Rate limits, counted in the store.
    pub limiter: Arc<ratelimit::RateLimiter>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    /// The configuration is invalid (every problem listed).
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The field-encryption keys could not be loaded.
    #[error("field-encryption keys: {0}")]
    Keys(#[source] keys::KeysError),
    /// The data folder could not be created.
    #[error("could not create the data folder {path}: {source}")]
    DataDir {
        /// The folder.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Development secrets could not be read or written.
    #[error(transparent)]
    DevSecrets(#[from] DevSecretsError),
    /// The store could not be opened.
    #[error("the {which} store could not be opened: {source}")]
    Store {
        /// `embedded` or `MongoDB`.
        which: &'static str,
        /// The cause.
        source: StoreError,
    },
    /// The password hasher could not be set up.
    #[error("the password hasher could not be set up")]
    Passwords,
    /// The Stripe client could not be set up.
    #[error("Stripe: {0}")]
    Stripe(#[source] alvryn_core::billing::StripeSetupError),
    /// A token secret is neither configured nor generated (a bug: the
    /// configuration check should have caught it).
    #[error("{0} is not set")]
    MissingSecret(&'static str),
    /// A token secret is too short to sign with (a bug too: the
    /// configuration check refuses short secrets first).
    #[error("{var}: {source}")]
    WeakSecret {
        /// Which secret.
        var: &'static str,
        /// How short it is.
        source: alvryn_core::token::ShortSecret,
    },
    /// The listen address could not be bound.
    #[error("could not listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("the server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Creates the data folder (0700) if it is missing.
fn data_dir(config: &Config) -> Result<(), StartupError> {
    ensure_data_dir(&config.data_dir).map_err(|source| StartupError::DataDir {
        path: config.data_dir.clone(),
        source,
    })
}

/// Opens the configured store: MongoDB when `MONGO_URI` is set, else the
/// embedded SQLite file in the data folder (created if missing).
///
/// # Errors
/// [`StartupError::Store`], [`StartupError::DataDir`].
pub async fn open_store(config: &Config) -> Result<Arc<dyn StoreBackend>, StartupError> {
    Ok(match &config.mongo_uri {
        Some(uri) => Arc::new(MongoStore::connect(uri.expose()).await.map_err(|source| {
            StartupError::Store {
                which: "MongoDB",
                source,
            }
        })?),
        None => {
            data_dir(config)?;
            Arc::new(
                SqliteStore::open(config.data_dir.join(EMBEDDED_DB_FILE))
                    .await
                    .map_err(|source| StartupError::Store {
                        which: "embedded",
                        source,
                    })?,
            )
        }
    })
}

impl AppState {
    /// Composes the state from a validated configuration: opens the store
    /// (MongoDB when `MONGO_URI` is set, else the embedded SQLite file in
    /// the data folder), loads the field keys (KMS once, if configured),
    /// and in development generates the secrets that are missing.
    ///
    /// # Errors
    /// See [`StartupError`]; each names what failed.
    pub async fn new(config: Config) -> Result<Self, StartupError> {
        let needs_dev = config.mode == Mode::Development
            && (config.jwt_secret.is_none()
                || config.jwt_refresh_secret.is_none()
                || matches!(config.field_keys, config::FieldKeys::DevGenerated));
        let dev = if needs_dev {
            data_dir(&config)?;
            Some(DevSecrets::load_or_create(&config.data_dir)?)
        } else {
            None
        };
        let store = open_store(&config).await?;
        let keys = keys::load_key_set(&config, dev.as_ref().map(|d| &d.field_key))
            .await
            .map_err(StartupError::Keys)?;
        let cipher = keys::field_cipher(keys, store.clone())
            .await
            .map_err(StartupError::Keys)?;

        let pick = |var: &'static str,
                    configured: &Option<alvryn_core::SecretBytes>,
                    generated: Option<&alvryn_core::SecretBytes>| {
            configured
                .clone()
                .or_else(|| generated.cloned())
                .ok_or(StartupError::MissingSecret(var))
        };
        let access = pick(
            "JWT_SECRET",
            &config.jwt_secret,
            dev.as_ref().map(|d| &d.jwt_secret),
        )?;
        let refresh = pick(
            "JWT_REFRESH_SECRET",
            &config.jwt_refresh_secret,
            dev.as_ref().map(|d| &d.jwt_refresh_secret),
        )?;
        let issuer = config.backend_url.as_str().trim_end_matches('/').to_owned();
        let jwt = JwtKeys::new(
            JwtSettings::new(issuer, config.jwt_audience.clone()),
            HmacSecrets::new(&access, config.jwt_secret_previous.as_ref()).map_err(|source| {
                StartupError::WeakSecret {
                    var: "JWT_SECRET",
                    source,
                }
            })?,
            HmacSecrets::new(&refresh, config.jwt_refresh_secret_previous.as_ref()).map_err(
                |source| StartupError::WeakSecret {
                    var: "JWT_REFRESH_SECRET",
                    source,
                },
            )?,
        );
        let hasher = tokio::task::spawn_blocking(|| PasswordHasher::new(HashParams::OWASP))
            .await
            .map_err(|_| StartupError::Passwords)?
            .map_err(|_| StartupError::Passwords)?;
        let mut parts = Parts::new(config, store, cipher, jwt, hasher);
        if let Some(stripe) = &parts.config.stripe {
            let client = billing::stripe_client(stripe).map_err(StartupError::Stripe)?;
            let s3 = billing::s3_client_for(&parts.config).await;
            let archive = billing::archive_over(
                &parts.store,
                billing::s3_archive(&parts.config, stripe, s3.as_ref()),
            );
            parts = parts.with_billing(client, archive);
            if let Some(s3) = s3 {
                parts = parts.with_s3(s3);
            }
        }
        Ok(Self::from_parts(parts))
    }

    /// Composes the state from parts built elsewhere: an embedding
    /// service's own store, or a memory store and fault-injecting layers
    /// in tests. Nothing is read from the environment and nothing is
    /// checked: the parts are taken as they are.
    #[must_use]
    pub fn from_parts(parts: Parts) -> Self {
        let Parts {
            config,
            store,
            cipher,
            jwt,
            hasher,
            billing,
            s3,
        } = parts;
        // S3 is checked where the webhook archive uses it.
        let s3 = match (&config.stripe, &config.stripe_event_bucket, s3) {
            (Some(_), Some(bucket), Some(client)) if billing.is_some() => Some(ready::S3Target {
                client,
                bucket: bucket.clone(),
            }),
            _ => None,
        };
        let readiness = Arc::new(ready::Readiness::new(
            Arc::clone(&store),
            cipher.clone(),
            s3,
        ));
        let billing = match (&config.stripe, billing) {
            (Some(stripe), Some((client, archive))) => Some(Arc::new(billing::pipeline(
                stripe,
                Arc::clone(&store),
                client,
                archive,
            ))),
            _ => None,
        };
        let limiter = Arc::new(ratelimit::RateLimiter::new(
            Arc::clone(&store) as _,
            config.rate_limits.clone(),
        ));
        let auth = Auth::new(Arc::clone(&store) as _, Arc::new(jwt), hasher)
            .with_grace(config.refresh_grace)
            .with_session_max_age(config.session_max_age);
        let mut oauth = OAuthLogin::builder(
            store,
            auth.clone(),
            cipher.clone(),
            config.backend_url.clone(),
            config.frontend_url.clone(),
        );
        for settings in [&config.google, &config.microsoft].into_iter().flatten() {
            oauth = oauth.provider(settings.clone());
        }
        Self(Arc::new(Shared {
            config: Arc::new(config),
            cipher,
            auth,
            oauth: oauth.build(),
            billing,
            readiness,
            limiter,
        }))
    }
}

/// What an [`AppState`] is made of; see [`AppState::from_parts`].
#[non_exhaustive]
pub struct Parts {
    /// The configuration (its secrets are not used: `jwt` and `cipher`
    /// are).
    pub config: Config,
    /// Accounts and sessions.
    pub store: Arc<dyn StoreBackend>,
    /// Field encryption.
    pub cipher: FieldCipher,
    /// Token signing and verification.
    pub jwt: JwtKeys,
    /// Password hashing.
    pub hasher: PasswordHasher,
    /// The payment provider and the event archive; used when the
    /// configuration has Stripe settings.
    pub billing: Option<(Arc<dyn Billing>, Arc<dyn EventArchive>)>,
    /// The S3 client of the event archive, which `/readyz` checks the
    /// bucket (`STRIPE_EVENT_S3_BUCKET`) with.
    pub s3: Option<aws_sdk_s3::Client>,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts")
            .field("config", &self.config)
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

impl Parts {
    /// Every part.
    #[must_use]
    pub fn new(
        config: Config,
        store: Arc<dyn StoreBackend>,
        cipher: FieldCipher,
        jwt: JwtKeys,
        hasher: PasswordHasher,
    ) -> Self {
        Self {
            config,
            store,
            cipher,
            jwt,
            hasher,
            billing: None,
            s3: None,
        }
    }

    /// Adds the payment provider and the event archive (billing runs
    /// only when the configuration has Stripe settings too).
    #[must_use]
    pub fn with_billing(
        mut self,
        billing: Arc<dyn Billing>,
        archive: Arc<dyn EventArchive>,
    ) -> Self {
        self.billing = Some((billing, archive));
        self
    }

    /// Adds the S3 client the event archive uses, for `/readyz` to check
    /// the bucket with.
    #[must_use]
    pub fn with_s3(mut self, client: aws_sdk_s3::Client) -> Self {
        self.s3 = Some(client);
        self
    }
}

/// The HTTP application, with the per-request limits of the
/// configuration: a body must arrive within the body timeout, and a
/// request is answered within the request timeout or with 503 `timeout`;
/// around it all, security headers, CORS, request ids and the access log
/// ([`web`]). Every request is counted and timed ([`prometheus::record`];
/// the recorder is installed here if it is not yet). [`serve_on`] adds
/// the connection limits and the peer address
/// ([`axum::extract::ConnectInfo`], which the per-IP rate limits need).
pub fn app(state: AppState) -> Router {
    let limits = state.config.limits;
    let config = Arc::clone(&state.config);
    prometheus::install();
    let router = routes::router(Arc::clone(&state.limiter))
        .with_state(state)
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(
                    |_: tower::BoxError| async {
                        ApiError::new(
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "timeout",
                            "the request took too long; try again",
                        )
                    },
                ))
                .timeout(limits.request_timeout)
                .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
                    limits.body_timeout,
                )),
        );
    web::layers(router, &config)
}

/// Binds `addr` (port 0 picks a free one; read it back with
/// [`TcpListener::local_addr`]).
///
/// # Errors
/// [`StartupError::Bind`].
pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { addr, source })
}

/// Binds `state.config.bind` and serves until `shutdown` completes; see
/// [`serve_on`].
///
/// # Errors
/// [`StartupError::Bind`] or [`StartupError::Serve`].
pub async fn serve(
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let listener = bind(state.config.bind).await?;
    serve_on(listener, state, shutdown).await
}

/// Serves on `listener` until `shutdown` completes, then drains
/// in-flight requests (for at most the request timeout). Logs
/// `listening` with the address (`local=`) once it accepts.
///
/// Connections are held to [`config::ConnectionLimits`]: headers (and the
/// idle wait between kept-alive requests) within the header timeout,
/// bodies within the body timeout, whole requests within the request
/// timeout (503 `timeout`), and at most `max_connections` open at once;
/// beyond it a connection is closed as soon as it is accepted, and the
/// refusals are logged at most once a minute. A request head is at most
/// [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`] fields (431); the answers the
/// HTTP layer gives to requests it cannot parse (400, 414, 431) carry
/// the API's JSON error body (see [`wire`]). Each request carries its
/// connection's peer address as [`axum::extract::ConnectInfo`].
///
/// # Errors
/// [`StartupError::Serve`].
pub async fn serve_on(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let limits = state.config.limits;
    let local = listener.local_addr().map_err(StartupError::Serve)?;
    let app = app(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut refusals = RefusalLog::default();
    tracing::info!(%local, "listening");
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: back off, keep serving.
                    refusals.note(&format!("accept failed: {e}"));
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            drop(stream);
            refusals.note("the connection cap is reached; refusing connections");
            continue;
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(MAX_HEAD_BYTES)
            .max_headers(MAX_HEADERS)
            .keep_alive(true)
            .serve_connection(
                TokioIo::new(wire::JsonErrors::new(stream)),
                TowerToHyperService::new(
                    tower::ServiceBuilder::new()
                        .map_request(move |mut req: axum::http::Request<_>| {
                            // What the per-IP rate limits count by, as
                            // axum's `into_make_service_with_connect_info`
                            // provides it.
                            req.extensions_mut()
                                .insert(axum::extract::ConnectInfo(peer));
                            req
                        })
                        .service(app.clone()),
                ),
            );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // Closed by the client, a timeout or a protocol error: nothing
            // to report per connection.
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.request_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish before the request timeout");
    }
    Ok(())
}

/// Logs refused connections at most once a minute, with how many.
#[derive(Default)]
struct RefusalLog {
    last: Option<std::time::Instant>,
    count: u64,
}

impl RefusalLog {
    fn note(&mut self, what: &str) {
        self.count += 1;
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60));
        if due {
            tracing::warn!(refused = self.count, "{what}");
            self.last = Some(std::time::Instant::now());
            self.count = 0;
        }
    }
}

/// Resolves when the process receives SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
