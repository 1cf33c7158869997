//! `/auth/*`: sign-up, login, refresh, logout, the caller, sessions.
//!
//! Tokens travel only in JSON bodies and the `Authorization` header, never
//! in URLs, and are never logged. Token responses carry
//! `Cache-Control: no-store`.

use alvryn_core::auth::{AuthError, Issued, Principal};
use alvryn_core::secret::SecretString;
use alvryn_core::store::RefreshFamily;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam};
use crate::ratelimit::Verdict;

/// The routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/signup", post(signup))
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
        .route("/auth/logout-all", post(logout_all))
        .route("/auth/me", get(me))
        .route("/auth/sessions", get(sessions))
        .route("/auth/sessions/{id}", delete(revoke_session))
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        use StatusCode as S;
        match e {
            AuthError::InvalidEmail(e) => {
                ApiError::new(S::BAD_REQUEST, "invalid_email", e.to_string())
            }
            AuthError::WeakPassword(e) => {
                ApiError::new(S::BAD_REQUEST, "weak_password", e.to_string())
            }
            AuthError::EmailTaken => ApiError::new(
                S::CONFLICT,
                "email_taken",
                "an account with this email already exists",
            ),
            AuthError::InvalidCredentials => ApiError::new(
                S::UNAUTHORIZED,
                "invalid_credentials",
                "the email or password is wrong",
            ),
            AuthError::InvalidToken => ApiError::new(
                S::UNAUTHORIZED,
                "invalid_token",
                "the token is invalid or expired",
            ),
            AuthError::TokenReused => ApiError::new(
                S::UNAUTHORIZED,
                "token_reused",
                "this refresh token was already used; the session has been signed out",
            ),
            // Expected under a burst, and anyone can cause it: answered at
            // once, never logged as an error.
            AuthError::Busy => ApiError::new(
                S::SERVICE_UNAVAILABLE,
                "busy",
                "too many requests at once; try again shortly",
            )
            .retry_after(1),
            AuthError::Store(e) => e.into(),
            other => ApiError::internal(&other),
        }
    }
}

#[derive(Deserialize)]
struct Credentials {
    email: String,
    password: SecretString,
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: SecretString,
}

pub(crate) fn user_agent(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
}

pub(crate) fn tokens(status: StatusCode, issued: &Issued) -> Response {
    let body = json!({
        "access_token": issued.access_token.expose(),
        "refresh_token": issued.refresh_token.expose(),
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "user": {
            "id": issued.user.id,
            "email": issued.user.email,
            "plan": issued.user.plan,
        },
    });
    let mut resp = no_store((status, Json(body)));
    resp.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

async fn signup(
    State(s): State<AppState>,
    headers: HeaderMap,
    JsonBody(c): JsonBody<Credentials>,
) -> Result<Response, ApiError> {
    let issued = s
        .auth
        .signup(&c.email, &c.password, user_agent(&headers))
        .await?;
    Ok(tokens(StatusCode::CREATED, &issued))
}

async fn login(
    State(s): State<AppState>,
    headers: HeaderMap,
    JsonBody(c): JsonBody<Credentials>,
) -> Result<Response, ApiError> {
    // The account's own limit (its client's is counted before the body
    // is read), before any password work: counted by the email whether
    // or not an account has it, so a 429 reveals nothing about accounts.
    if let Verdict::Limited(quota) = s.limiter.login_account(&c.email).await {
        return Ok(quota.refusal());
    }
    let issued = s
        .auth
        .login(&c.email, &c.password, user_agent(&headers))
        .await?;
    Ok(tokens(StatusCode::OK, &issued))
}

async fn refresh(
    State(s): State<AppState>,
    JsonBody(b): JsonBody<RefreshBody>,
) -> Result<Response, ApiError> {
    let issued = s.auth.refresh(b.refresh_token.expose()).await?;
    Ok(tokens(StatusCode::OK, &issued))
}

async fn logout(
    State(s): State<AppState>,
    JsonBody(b): JsonBody<RefreshBody>,
) -> Result<StatusCode, ApiError> {
    s.auth.logout(b.refresh_token.expose()).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn logout_all(State(s): State<AppState>, Bearer(p): Bearer) -> Result<StatusCode, ApiError> {
    s.auth.logout_all(&p).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `GET /auth/me`.
#[derive(Serialize)]
struct Me {
    id: String,
    email: String,
    plan: alvryn_core::billing::PlanName,
    /// Whether the account can sign in with a password.
    has_password: bool,
    providers: Vec<LinkedProvider>,
}

/// A provider linked to the caller: never a token.
#[derive(Serialize)]
struct LinkedProvider {
    provider: &'static str,
    email: Option<String>,
    linked_at: String,
}

/// Personal data or a secret: never kept by a browser or a shared cache.
pub(crate) fn no_store(body: impl IntoResponse) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn me(State(s): State<AppState>, Bearer(p): Bearer) -> Result<Response, ApiError> {
    let providers = s
        .oauth
        .links(&p.user.id)
        .await?
        .into_iter()
        .map(|l| LinkedProvider {
            provider: l.provider.as_str(),
            email: l.email,
            linked_at: rfc3339(l.linked_at_ms),
        })
        .collect();
    // The plan billing set, when billing runs; else the account's own.
    let plan = match super::billing::plan_view(&s, &p.user.id).await? {
        Some(view) => view.plan,
        None => p.user.plan,
    };
    Ok(no_store(Json(Me {
        id: p.user.id,
        email: p.user.email,
        plan,
        has_password: p.user.password_hash.is_some(),
        providers,
    })))
}

fn rfc3339(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn session_json(f: &RefreshFamily, current: &str) -> Value {
    json!({
        "id": f.id,
        "created_at": rfc3339(f.created_at_ms),
        "last_used_at": rfc3339(f.last_used_at_ms),
        "expires_at": rfc3339(f.expires_at_ms),
        "user_agent": f.user_agent,
        "current": f.id == current,
    })
}

async fn sessions(State(s): State<AppState>, Bearer(p): Bearer) -> Result<Response, ApiError> {
    let list = s.auth.sessions(&p).await?;
    let items: Vec<Value> = list
        .iter()
        .map(|f| session_json(f, &p.session_id))
        .collect();
    Ok(no_store(Json(json!({ "sessions": items }))))
}

async fn revoke_session(
    State(s): State<AppState>,
    Bearer(p): Bearer,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    if id.len() > 128 || !s.auth.revoke_session(&p, &id).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such active session",
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The caller, from `Authorization: Bearer <access token>`.
pub struct Bearer(pub Principal);

impl FromRequestParts<AppState> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "an access token is required",
            )
        })?;
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_token",
                    "the token is invalid or expired",
                )
            })?;
        Ok(Bearer(state.auth.authenticate(token).await?))
    }
}
