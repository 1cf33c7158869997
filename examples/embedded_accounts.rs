//! Accounts and sessions inside your own service: the embedded SQLite
//! store, JWTs, argon2id passwords and race-safe refresh rotation, with no
//! server of ours in between.
//!
//! Run: `cargo run --example embedded_accounts`

use std::sync::Arc;

use alvryn_core::auth::{Auth, AuthError, HashParams, PasswordHasher};
use alvryn_core::secret::{SecretBytes, SecretString};
use alvryn_core::store::TokenStore;
use alvryn_core::store::sqlite::SqliteStore;
use alvryn_core::token::{HmacSecrets, JwtKeys, JwtSettings};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;

    // 1. A store: one SQLite file (use MongoStore::connect for MongoDB).
    let store: Arc<dyn TokenStore> =
        Arc::new(SqliteStore::open(dir.path().join("accounts.db")).await?);

    // 2. Token keys: in production, read both secrets from your secret
    //    manager; the previous-secret slots let you rotate them.
    let keys = JwtKeys::new(
        JwtSettings::new("https://api.example.com", "example-app"),
        HmacSecrets::new(&SecretBytes::random(32)?, None)?,
        HmacSecrets::new(&SecretBytes::random(32)?, None)?,
    );

    // 3. Passwords: argon2id with OWASP's parameters on a bounded pool.
    let hasher = PasswordHasher::new(HashParams::OWASP)?;
    let auth = Auth::new(store, Arc::new(keys), hasher);

    let password = SecretString::from("correct horse battery staple");
    let signed_up = auth
        .signup("Ada@Example.com", &password, Some("example/1.0"))
        .await?;
    println!(
        "signed up {} on plan {}",
        signed_up.user.email, signed_up.user.plan
    );

    // Authenticate a request with its access token.
    let me = auth.authenticate(signed_up.access_token.expose()).await?;
    println!(
        "request from user {} (session {})",
        me.user.id, me.session_id
    );

    // Two tabs refresh at once: both get the same successor.
    let token = signed_up.refresh_token.expose().to_owned();
    let (a, b) = tokio::join!(auth.refresh(&token), auth.refresh(&token));
    let (a, b) = (a?, b?);
    assert_eq!(a.refresh_token.expose(), b.refresh_token.expose());
    println!("two concurrent refreshes, one successor");

    // A wrong password and an unknown email look the same to the caller.
    let wrong = auth
        .login("ada@example.com", &SecretString::from("guess"), None)
        .await;
    let unknown = auth
        .login("nobody@example.com", &SecretString::from("guess"), None)
        .await;
    assert!(matches!(wrong, Err(AuthError::InvalidCredentials)));
    assert!(matches!(unknown, Err(AuthError::InvalidCredentials)));

    // Logging out ends the session at once, access token included.
    auth.logout(a.refresh_token.expose()).await?;
    assert!(matches!(
        auth.authenticate(a.access_token.expose()).await,
        Err(AuthError::InvalidToken)
    ));
    println!("logged out; the access token no longer works");
    Ok(())
}
