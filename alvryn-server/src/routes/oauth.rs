//! `/auth/oauth/*`: sign-in with Google and Microsoft.
//!
//! `start` sends the browser to the provider; the provider sends it back
//! to `callback`, which sends it on to the frontend with a one-time `code`
//! (or an `error` code), never with our tokens; the frontend trades the
//! code for tokens at `exchange`, once.

use alvryn_core::oauth::{CallbackParams, OAuthError, Provider, binding_cookie_name};
use alvryn_core::secret::SecretString;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Bearer, TokensBody, no_store, tokens, user_agent};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam};
use crate::openapi::ErrorBody;

/// The routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start))
        .routes(routes!(callback))
        .routes(routes!(exchange))
        .routes(routes!(unlink))
}

impl From<OAuthError> for ApiError {
    fn from(e: OAuthError) -> Self {
        use StatusCode as S;
        let status = match &e {
            OAuthError::NotConfigured(_) | OAuthError::NotLinked(_) => S::NOT_FOUND,
            OAuthError::InvalidRedirect | OAuthError::InvalidCode => S::BAD_REQUEST,
            OAuthError::LastSignInMethod | OAuthError::AlreadyLinked => S::CONFLICT,
            OAuthError::ProviderUnavailable(_) => {
                tracing::warn!(error = %e, "identity provider unavailable");
                S::SERVICE_UNAVAILABLE
            }
            OAuthError::Store(inner) => {
                tracing::error!(error = %inner, "store failure");
                S::SERVICE_UNAVAILABLE
            }
            OAuthError::Auth(_) | OAuthError::Cipher(_) => return ApiError::internal(&e),
            _ => S::BAD_REQUEST,
        };
        let message = match &e {
            OAuthError::Store(_) => "the service is temporarily unavailable".to_owned(),
            other => other.to_string(),
        };
        ApiError::new(status, e.code(), message)
    }
}

fn provider(name: &str) -> Result<Provider, ApiError> {
    Provider::parse(name).ok_or_else(ApiError::not_found)
}

/// A 302 to `location` that no cache keeps.
fn found(location: &url::Url) -> Result<Response, ApiError> {
    let value = HeaderValue::from_str(location.as_str()).map_err(|e| ApiError::internal(&e))?;
    let mut resp = no_store(StatusCode::FOUND);
    resp.headers_mut().insert(header::LOCATION, value);
    Ok(resp)
}

/// The first value of each parameter of a query string (a repeated
/// parameter keeps its first value; nothing in a query is an error).
fn param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Sends the browser to the provider's sign-in page (and sets a
/// browser-binding cookie).
#[utoipa::path(get, path = "/auth/oauth/{provider}/start", tag = "oauth",
    params(
        ("provider" = String, Path, description = "`google` or `microsoft`."),
        ("redirect_to" = Option<String>, Query, description = "Where the frontend goes afterwards: a path, or a URL on FRONTEND_URL's origin."),
    ),
    responses(
        (status = 302, description = "To the provider.", headers(("Location" = String), ("Set-Cookie" = String))),
        (status = 400, description = "`invalid_redirect`.", body = ErrorBody),
        (status = 404, description = "Unknown or unconfigured provider.", body = ErrorBody),
    ))]
async fn start(
    State(s): State<AppState>,
    PathParam(name): PathParam<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let redirect_to = param(query.as_deref(), "redirect_to");
    let started = s
        .oauth
        .start(provider(&name)?, redirect_to.as_deref())
        .await?;
    let mut resp = found(&started.authorization_url)?;
    // The browser that starts the login must be the one that finishes it
    // (login CSRF): `SameSite=Lax` still sends it on the provider's
    // top-level redirect back to the callback.
    let secure = if s.config.backend_url.scheme() == "https" {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{}={}; Path=/auth/oauth/; Max-Age=600; HttpOnly; SameSite=Lax{secure}",
        started.cookie_name,
        started.browser_binding.expose()
    );
    let cookie = HeaderValue::from_str(&cookie).map_err(|e| ApiError::internal(&e))?;
    resp.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(resp)
}

/// The value of the cookie `name`, from every `Cookie` header.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Where the provider sends the browser back; sends it on to the
/// frontend with a one-time `code`, or an `error`.
#[utoipa::path(get, path = "/auth/oauth/{provider}/callback", tag = "oauth",
    params(
        ("provider" = String, Path, description = "`google` or `microsoft`."),
        ("code" = Option<String>, Query), ("state" = Option<String>, Query), ("error" = Option<String>, Query),
    ),
    responses(
        (status = 302, description = "To the frontend, with `code` or `error`.", headers(("Location" = String))),
        (status = 404, description = "Unknown or unconfigured provider.", body = ErrorBody),
    ))]
async fn callback(
    State(s): State<AppState>,
    PathParam(name): PathParam<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let p = provider(&name)?;
    if !s.oauth.is_configured(p) {
        return Err(OAuthError::NotConfigured(p).into());
    }
    let q = query.as_deref();
    let params = CallbackParams {
        code: param(q, "code"),
        state: param(q, "state"),
        error: param(q, "error"),
    };
    let cookie_name = params.state.as_deref().map(binding_cookie_name);
    let binding = cookie_name.as_deref().and_then(|n| cookie(&headers, n));
    let mut resp = found(&s.oauth.callback(p, &params, binding).await)?;
    if let Some(n) = cookie_name
        && let Ok(v) = HeaderValue::from_str(&format!("{n}=; Path=/auth/oauth/; Max-Age=0"))
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// A one-time code from the callback.
#[derive(Deserialize, ToSchema)]
pub(crate) struct ExchangeBody {
    #[schema(value_type = String, format = Password)]
    code: SecretString,
}

/// Trades the callback's one-time code for tokens, once.
#[utoipa::path(post, path = "/auth/oauth/exchange", tag = "oauth", request_body = ExchangeBody, responses(
    (status = 200, description = "Signed in.", body = TokensBody),
    (status = 400, description = "`invalid_code` (unknown, used or expired).", body = ErrorBody),
))]
async fn exchange(
    State(s): State<AppState>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<ExchangeBody>,
) -> Result<Response, ApiError> {
    let issued = s.oauth.exchange(&b.code, user_agent(&headers)).await?;
    Ok(tokens(StatusCode::OK, &issued))
}

/// Unlinks a provider from the caller (not the last way to sign in).
#[utoipa::path(delete, path = "/auth/oauth/{provider}", tag = "oauth", security(("bearer" = [])),
    params(("provider" = String, Path, description = "`google` or `microsoft`.")),
    responses(
        (status = 204, description = "Unlinked."),
        (status = 401, description = "`unauthorized` or `invalid_token`.", body = ErrorBody),
        (status = 404, description = "Unknown provider, or not linked.", body = ErrorBody),
        (status = 409, description = "`last_sign_in_method`.", body = ErrorBody),
    ))]
async fn unlink(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    PathParam(name): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    s.oauth.unlink(&p.user.id, provider(&name)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
