//! PLACEHOLDER until the oidc branch lands: the agreed API, unimplemented.
#![allow(missing_docs, clippy::unused_async, dead_code)]

use std::sync::Arc;

pub fn http_client() -> reqwest::Client {
    reqwest::Client::new()
}

#[derive(Clone, Debug)]
pub enum IssuerRule {
    Exact(String),
    TenantTemplate(String),
}

#[derive(Clone, Debug)]
pub struct OidcSettings {
    pub discovery_url: url::Url,
    pub issuer: IssuerRule,
    pub client_id: String,
    pub leeway: std::time::Duration,
    pub jwks_refetch_interval: std::time::Duration,
}

impl OidcSettings {
    pub fn new(discovery_url: url::Url, issuer: IssuerRule, client_id: String) -> Self {
        Self {
            discovery_url,
            issuer,
            client_id,
            leeway: std::time::Duration::from_secs(60),
            jwks_refetch_interval: std::time::Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug)]
pub struct OidcProvider {
    settings: Arc<OidcSettings>,
}

#[derive(Clone, Debug)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub authorization_endpoint: url::Url,
    pub token_endpoint: url::Url,
    pub jwks_uri: url::Url,
    pub id_token_signing_alg_values_supported: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct IdTokenClaims {
    pub iss: String,
    pub sub: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub tid: Option<String>,
    pub xms_edov: bool,
    pub name: Option<String>,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OidcError {
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
    #[error("the ID token is invalid: {0}")]
    InvalidToken(&'static str),
}

impl OidcProvider {
    pub fn new(settings: OidcSettings, _http: reqwest::Client) -> Self {
        Self {
            settings: Arc::new(settings),
        }
    }
    pub async fn metadata(&self) -> Result<Arc<ProviderMetadata>, OidcError> {
        Err(OidcError::Unavailable("placeholder".into()))
    }
    pub async fn verify_id_token(
        &self,
        _id_token: &str,
        _expected_nonce: &str,
        _now_s: i64,
    ) -> Result<IdTokenClaims, OidcError> {
        Err(OidcError::InvalidToken("placeholder"))
    }
}
