//! Google and Microsoft login: the OAuth code flow with PKCE and the OpenID Connect ID-token check.
pub mod oidc;
