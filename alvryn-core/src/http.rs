//! The one way this crate builds an outbound HTTP client: reqwest is
//! compiled with `rustls-tls-no-provider`, so every client must be given
//! its TLS configuration (rustls on aws-lc-rs, the webpki roots) here.
//! Embedders and the server's own outbound checks (`alvryn smoke`) use
//! [`client`] too.

use std::sync::Arc;
use std::time::Duration;

/// A client that follows no redirects, with a 5 s connect timeout, the
/// given total timeout per request and user agent `alvryn/<version>`.
///
/// # Errors
/// A description when the TLS configuration or the client cannot be
/// built (only if aws-lc-rs offers no safe protocol version).
pub fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .user_agent(concat!("alvryn/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}
