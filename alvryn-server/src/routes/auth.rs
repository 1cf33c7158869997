//! `/auth/*`: sign-up, login, refresh, logout, the caller, sessions.
//!
//! Tokens travel only in JSON bodies and the `Authorization` header, never
//! in URLs, and are never logged. Token responses carry
//! `Cache-Control: no-store`.

use alvryn_core::auth::{AuthError, Issued, Principal};
use alvryn_core::secret::SecretString;
use alvryn_core::store::RefreshFamily;
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam};
use crate::openapi::ErrorBody;
use crate::ratelimit::Verdict;

/// The routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(logout_all))
        .routes(routes!(me))
        .routes(routes!(sessions))
        .routes(routes!(revoke_session))
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

/// An email and a password.
#[derive(Deserialize, ToSchema)]
pub(crate) struct Credentials {
    #[schema(example = "you@example.com")]
    email: String,
    #[schema(value_type = String, format = Password)]
    password: SecretString,
}

/// A refresh token.
#[derive(Deserialize, ToSchema)]
pub(crate) struct RefreshBody {
    #[schema(value_type = String, format = Password)]
    refresh_token: SecretString,
}

/// A session's tokens and its user.
#[derive(Serialize, ToSchema)]
pub(crate) struct TokensBody {
    /// Short-lived JWT for `Authorization: Bearer`.
    access_token: String,
    /// Single-use token for `POST /auth/refresh`.
    refresh_token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    /// Seconds until the access token expires.
    expires_in: i64,
    /// Who.
    user: UserSummary,
}

/// The account a token belongs to.
#[derive(Serialize, ToSchema)]
pub(crate) struct UserSummary {
    id: String,
    email: String,
    #[schema(value_type = String, example = "free")]
    plan: alvryn_core::billing::PlanName,
}

pub(crate) fn user_agent(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
}

pub(crate) fn tokens(status: StatusCode, issued: &Issued) -> Response {
    let body = TokensBody {
        access_token: issued.access_token.expose().to_owned(),
        refresh_token: issued.refresh_token.expose().to_owned(),
        token_type: "Bearer",
        expires_in: issued.expires_in,
        user: UserSummary {
            id: issued.user.id.clone(),
            email: issued.user.email.clone(),
            plan: issued.user.plan.clone(),
        },
    };
    let mut resp = no_store((status, Json(body)));
    resp.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

/// Creates an account and signs it in.
#[utoipa::path(post, path = "/auth/signup", tag = "auth", request_body = Credentials, responses(
    (status = 201, description = "Signed up and in.", body = TokensBody),
    (status = 400, description = "`invalid_email`, `weak_password`, or a malformed body.", body = ErrorBody),
    (status = 409, description = "`email_taken`.", body = ErrorBody),
))]
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

/// Signs in with an email and a password.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = Credentials, responses(
    (status = 200, description = "Signed in.", body = TokensBody),
    (status = 401, description = "`invalid_credentials`.", body = ErrorBody),
))]
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

/// Trades a refresh token for new tokens (rotation; a reused token signs
/// the session out).
#[utoipa::path(post, path = "/auth/refresh", tag = "auth", request_body = RefreshBody, responses(
    (status = 200, description = "New tokens.", body = TokensBody),
    (status = 401, description = "`invalid_token` or `token_reused`.", body = ErrorBody),
))]
async fn refresh(
    State(s): State<AppState>,
    JsonBody(b): JsonBody<RefreshBody>,
) -> Result<Response, ApiError> {
    let issued = s.auth.refresh(b.refresh_token.expose()).await?;
    Ok(tokens(StatusCode::OK, &issued))
}

/// Ends the session of a refresh token.
#[utoipa::path(post, path = "/auth/logout", tag = "auth", request_body = RefreshBody, responses(
    (status = 204, description = "Signed out (also for a token already signed out)."),
    (status = 401, description = "`invalid_token`.", body = ErrorBody),
))]
async fn logout(
    State(s): State<AppState>,
    JsonBody(b): JsonBody<RefreshBody>,
) -> Result<StatusCode, ApiError> {
    s.auth.logout(b.refresh_token.expose()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ends every session of the caller.
#[utoipa::path(post, path = "/auth/logout-all", tag = "auth", security(("bearer" = [])), responses(
    (status = 204, description = "Every session ended."),
    (status = 401, description = "`unauthorized` or `invalid_token`.", body = ErrorBody),
))]
async fn logout_all(State(s): State<AppState>, Bearer(p): Bearer) -> Result<StatusCode, ApiError> {
    s.auth.logout_all(&p).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `GET /auth/me`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Me {
    id: String,
    email: String,
    #[schema(value_type = String, example = "pro")]
    plan: alvryn_core::billing::PlanName,
    /// Whether the account can sign in with a password.
    has_password: bool,
    providers: Vec<LinkedProvider>,
}

/// A provider linked to the caller: never a token.
#[derive(Serialize, ToSchema)]
pub(crate) struct LinkedProvider {
    #[schema(example = "google")]
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

/// The caller: account, plan, sign-in methods.
#[utoipa::path(get, path = "/auth/me", tag = "auth", security(("bearer" = [])), responses(
    (status = 200, description = "The caller.", body = Me),
    (status = 401, description = "`unauthorized` or `invalid_token`.", body = ErrorBody),
))]
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

/// The caller's active sessions.
#[derive(Serialize, ToSchema)]
pub(crate) struct SessionsBody {
    sessions: Vec<SessionBody>,
}

/// One session (a login and its refresh tokens).
#[derive(Serialize, ToSchema)]
pub(crate) struct SessionBody {
    id: String,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339.
    last_used_at: String,
    /// RFC 3339.
    expires_at: String,
    user_agent: Option<String>,
    /// Whether it is the caller's own.
    current: bool,
}

fn session_body(f: &RefreshFamily, current: &str) -> SessionBody {
    SessionBody {
        id: f.id.clone(),
        created_at: rfc3339(f.created_at_ms),
        last_used_at: rfc3339(f.last_used_at_ms),
        expires_at: rfc3339(f.expires_at_ms),
        user_agent: f.user_agent.clone(),
        current: f.id == current,
    }
}

/// The caller's active sessions, newest first.
#[utoipa::path(get, path = "/auth/sessions", tag = "auth", security(("bearer" = [])), responses(
    (status = 200, description = "The sessions.", body = SessionsBody),
    (status = 401, description = "`unauthorized` or `invalid_token`.", body = ErrorBody),
))]
async fn sessions(State(s): State<AppState>, Bearer(p): Bearer) -> Result<Response, ApiError> {
    let list = s.auth.sessions(&p).await?;
    let sessions = list
        .iter()
        .map(|f| session_body(f, &p.session_id))
        .collect();
    Ok(no_store(Json(SessionsBody { sessions })))
}

/// Ends one of the caller's sessions.
#[utoipa::path(delete, path = "/auth/sessions/{id}", tag = "auth", security(("bearer" = [])),
    params(("id" = String, Path, description = "A session id from `GET /auth/sessions`.")),
    responses(
        (status = 204, description = "Ended."),
        (status = 401, description = "`unauthorized` or `invalid_token`.", body = ErrorBody),
        (status = 404, description = "No such active session of the caller.", body = ErrorBody),
    ))]
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

/// The token of an `Authorization: Bearer <token>` value (the scheme is
/// case-insensitive, RFC 9110 §11.1); `None` for another scheme or an
/// empty token.
pub(crate) fn bearer_token(value: &HeaderValue) -> Option<&str> {
    value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
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
        let token = bearer_token(value).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the token is invalid or expired",
            )
        })?;
        Ok(Bearer(state.auth.authenticate(token).await?))
    }
}
