//! The Alvryn reference server: configuration, composition of
//! `alvryn-core`, and the HTTP API.
//!
//! [`app`] builds the router from an [`AppState`], so tests can drive it
//! with `tower::ServiceExt::oneshot` and no socket; [`serve`] binds and
//! runs it until shutdown. The `alvryn` binary is a thin wrapper over
//! [`cli`].
#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod dev;
pub mod error;
pub mod keys;
pub mod routes;

use std::future::Future;
use std::sync::Arc;

use alvryn_core::crypto::FieldCipher;
use axum::Router;
use tokio::net::TcpListener;

pub use config::Config;
pub use error::ApiError;

/// What every request handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Field encryption with the configured keys.
    pub cipher: FieldCipher,
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

impl AppState {
    /// Composes the state from a validated configuration: loads keys
    /// (KMS once, if configured), creates the data folder and, in
    /// development, the generated secrets.
    ///
    /// # Errors
    /// [`StartupError::Keys`] when keys cannot be loaded or fail the
    /// start-up self-test.
    pub async fn new(config: Config) -> Result<Self, StartupError> {
        let cipher = keys::field_cipher(&config)
            .await
            .map_err(StartupError::Keys)?;
        Ok(Self {
            config: Arc::new(config),
            cipher,
        })
    }
}

/// The HTTP application.
pub fn app(state: AppState) -> Router {
    routes::router().with_state(state)
}

/// Binds `state.config.bind` and serves until `shutdown` completes,
/// then drains in-flight requests.
///
/// # Errors
/// [`StartupError::Bind`] or [`StartupError::Serve`].
pub async fn serve(
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let addr = state.config.bind;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(StartupError::Serve)?;
    tracing::info!(%local, "listening");
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(StartupError::Serve)
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
