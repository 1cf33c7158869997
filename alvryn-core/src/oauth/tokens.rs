//! The providers' tokens of each user, sealed with the field cipher, and a
//! fresh provider access token on demand.
//!
//! One record per (user, provider) in the `provider_token` namespace. Its
//! status is the generation: [`STATUS_PLAINTEXT`] marks a record written
//! before encryption existed (the `encrypt-refresh-tokens` migration moves
//! it on), and every write by this module moves the status up by one from
//! at least [`STATUS_FIRST_SEALED`], so a write based on a stale read is
//! refused by the store (`advance` is a compare-and-set on the status) and
//! retried on the fresh value.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::flow::{Providers, oauth_client};
use super::{OAuthError, Provider};
use crate::auth::Clock;
use crate::crypto::{FieldCipher, FieldContext, TEXT_PREFIX};
use crate::secret::SecretString;
use crate::store::{Advance, Record, StoreBackend, StoreError};

/// Namespace of provider-token records.
pub const TOKEN_NS: &str = "provider_token";
/// Status of a record whose refresh token is still plaintext.
pub const STATUS_PLAINTEXT: u32 = 1;
/// Status of the first sealed write of a record; each later write adds one.
pub const STATUS_FIRST_SEALED: u32 = 2;
/// The collection name bound into every provider token's ciphertext.
pub const TOKEN_COLLECTION: &str = "provider_tokens";
/// An access token this close to its expiry is refreshed instead of used.
const EXPIRY_MARGIN_MS: i64 = 60_000;
/// How long a refresh may hold its lease, milliseconds.
const REFRESH_LEASE_TTL_MS: i64 = 30_000;
/// Polls (25 ms apart) for the lease another instance holds.
const REFRESH_LEASE_WAITS: usize = 1_400;
/// Attempts at a write that keeps meeting concurrent writers.
const WRITE_ATTEMPTS: usize = 8;

/// What a `provider_token` record holds (JSON). The token fields hold
/// `av1:` ciphertexts, except a refresh token not yet migrated.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The provider's refresh token, sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The last access token, sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// When the access token expires, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_expires_at_ms: Option<i64>,
    /// The scopes granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl std::fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRecord")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "[redacted]"),
            )
            .field("access_expires_at_ms", &self.access_expires_at_ms)
            .field("scope", &self.scope)
            .finish()
    }
}

impl TokenRecord {
    /// Parses a record's payload.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when it is not a token record.
    pub fn from_record(r: &Record) -> Result<Self, StoreError> {
        serde_json::from_slice(&r.data)
            .map_err(|_| StoreError::Corrupt(format!("{TOKEN_NS} record")))
    }

    /// The payload to store.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings and integers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The record key of a user's tokens of one provider.
#[must_use]
pub fn token_key(user_id: &str, provider: Provider) -> String {
    format!("{user_id}:{provider}")
}

/// The field name bound into a token's ciphertext.
fn field(provider: Provider, which: &str) -> String {
    format!("{provider}.{which}")
}

/// Seals `token` for (user, provider, which).
pub(crate) async fn seal(
    cipher: &FieldCipher,
    user_id: &str,
    provider: Provider,
    which: &str,
    token: &str,
) -> Result<String, OAuthError> {
    let field = field(provider, which);
    let ctx = FieldContext::new(TOKEN_COLLECTION, user_id, &field);
    Ok(cipher.encrypt(&ctx, token.as_bytes()).await?)
}

/// Opens a stored token; a value without the `av1:` prefix is a plaintext
/// token not yet migrated and is returned as it is.
pub(crate) fn open(
    cipher: &FieldCipher,
    user_id: &str,
    provider: Provider,
    which: &str,
    stored: &str,
) -> Result<SecretString, OAuthError> {
    if !stored.starts_with(TEXT_PREFIX) {
        return Ok(SecretString::new(stored.to_owned()));
    }
    let field = field(provider, which);
    let ctx = FieldContext::new(TOKEN_COLLECTION, user_id, &field);
    let bytes = cipher.decrypt(&ctx, stored)?;
    let text = String::from_utf8(bytes.expose().to_vec())
        .map_err(|_| OAuthError::Cipher(crate::crypto::CipherError::Decrypt))?;
    Ok(SecretString::new(text))
}

/// Tokens a provider just granted.
pub(crate) struct Granted<'a> {
    pub refresh_token: Option<&'a str>,
    pub access_token: &'a str,
    pub expires_in: Option<std::time::Duration>,
    pub scope: Option<String>,
}

/// A user's provider tokens: kept sealed, refreshed on demand. Cheap to
/// clone.
#[derive(Clone)]
pub struct ProviderTokens {
    pub(crate) store: Arc<dyn StoreBackend>,
    pub(crate) cipher: FieldCipher,
    pub(crate) providers: Providers,
    pub(crate) http: reqwest::Client,
    pub(crate) clock: Arc<dyn Clock>,
    /// One refresh at a time per (user, provider) in this process.
    inflight: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl std::fmt::Debug for ProviderTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderTokens").finish_non_exhaustive()
    }
}

impl ProviderTokens {
    pub(crate) fn new(
        store: Arc<dyn StoreBackend>,
        cipher: FieldCipher,
        providers: Providers,
        http: reqwest::Client,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            cipher,
            providers,
            http,
            clock,
            inflight: Arc::default(),
        }
    }

    /// Stores what a provider granted, sealed: a new refresh token
    /// replaces the old one, none keeps it.
    pub(crate) async fn save(
        &self,
        user_id: &str,
        provider: Provider,
        granted: &Granted<'_>,
    ) -> Result<(), OAuthError> {
        let key = token_key(user_id, provider);
        let sealed_refresh = match granted.refresh_token {
            Some(t) => Some(seal(&self.cipher, user_id, provider, "refresh_token", t).await?),
            None => None,
        };
        let sealed_access = seal(
            &self.cipher,
            user_id,
            provider,
            "access_token",
            granted.access_token,
        )
        .await?;
        for _ in 0..WRITE_ATTEMPTS {
            let now_ms = self.clock.now_ms();
            let current = self.store.record(TOKEN_NS, &key, now_ms).await?;
            let previous = current
                .as_ref()
                .map(TokenRecord::from_record)
                .transpose()?
                .unwrap_or_default();
            let mut next = TokenRecord {
                refresh_token: sealed_refresh.clone().or(previous.refresh_token),
                access_token: Some(sealed_access.clone()),
                access_expires_at_ms: granted.expires_in.map(|d| {
                    now_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                }),
                scope: granted.scope.clone().or(previous.scope),
            };
            // A plaintext refresh token left from before is sealed now.
            if let Some(r) = &next.refresh_token
                && !r.starts_with(TEXT_PREFIX)
            {
                next.refresh_token =
                    Some(seal(&self.cipher, user_id, provider, "refresh_token", r).await?);
            }
            let done = match current {
                None => {
                    let record = Record {
                        ns: TOKEN_NS.to_owned(),
                        key: key.clone(),
                        owner: Some(user_id.to_owned()),
                        status: STATUS_FIRST_SEALED,
                        data: next.to_bytes(),
                        created_at_ms: now_ms,
                        updated_at_ms: now_ms,
                        expires_at_ms: None,
                    };
                    match self.store.insert_if_absent(&record).await {
                        Ok(()) => true,
                        Err(StoreError::Conflict) => false,
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(r) => {
                    self.store
                        .advance(&Advance {
                            ns: TOKEN_NS.to_owned(),
                            key: key.clone(),
                            to: r.status.max(STATUS_PLAINTEXT) + 1,
                            data: Some(next.to_bytes()),
                            now_ms,
                        })
                        .await?
                }
            };
            if done {
                return Ok(());
            }
        }
        Err(OAuthError::Store(StoreError::Conflict))
    }

    /// The stored record of (user, provider), parsed.
    async fn load(
        &self,
        user_id: &str,
        provider: Provider,
    ) -> Result<Option<TokenRecord>, OAuthError> {
        let now_ms = self.clock.now_ms();
        Ok(self
            .store
            .record(TOKEN_NS, &token_key(user_id, provider), now_ms)
            .await?
            .as_ref()
            .map(TokenRecord::from_record)
            .transpose()?)
    }

    /// The stored access token if it is good for another minute.
    fn usable_access(
        &self,
        user_id: &str,
        provider: Provider,
        rec: &TokenRecord,
    ) -> Result<Option<SecretString>, OAuthError> {
        let fresh = rec
            .access_expires_at_ms
            .is_some_and(|e| e > self.clock.now_ms() + EXPIRY_MARGIN_MS);
        match (&rec.access_token, fresh) {
            (Some(t), true) => Ok(Some(open(
                &self.cipher,
                user_id,
                provider,
                "access_token",
                t,
            )?)),
            _ => Ok(None),
        }
    }

    /// A provider access token for the user, good for at least another
    /// minute: the stored one, or a new one from the provider's token
    /// endpoint with the stored refresh token (a rotated refresh token is
    /// stored sealed). Concurrent callers in this process share one
    /// refresh.
    ///
    /// # Errors
    /// [`OAuthError::NotConfigured`], [`OAuthError::NotLinked`] (no
    /// tokens stored), [`OAuthError::GrantRefused`] (the provider revoked
    /// the refresh token: the user must sign in again),
    /// [`OAuthError::ProviderUnavailable`], the store's and the cipher's.
    pub async fn access_token(
        &self,
        user_id: &str,
        provider: Provider,
    ) -> Result<SecretString, OAuthError> {
        if !self.providers.contains_key(&provider) {
            return Err(OAuthError::NotConfigured(provider));
        }
        let rec = self
            .load(user_id, provider)
            .await?
            .ok_or(OAuthError::NotLinked(provider))?;
        if let Some(t) = self.usable_access(user_id, provider, &rec)? {
            return Ok(t);
        }
        // The refresh runs in a task of its own: a caller that gives up
        // (a timeout, a client gone) cannot cancel it between the
        // provider's answer and the store write, which would lose a
        // rotated refresh token the provider has already replaced.
        let this = self.clone();
        let user = user_id.to_owned();
        let task = tokio::spawn(async move {
            let key = token_key(&user, provider);
            let gate = {
                let mut map = this
                    .inflight
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                Arc::clone(map.entry(key.clone()).or_default())
            };
            let result = {
                let _turn = gate.lock().await;
                this.refresh_locked(&user, provider).await
            };
            // Forget the gate when no one else holds or waits on it,
            // whatever the outcome: the map never grows past the
            // refreshes in flight.
            let mut map = this
                .inflight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if Arc::strong_count(&gate) <= 2 {
                map.remove(&key);
            }
            result
        });
        task.await.unwrap_or_else(|e| {
            Err(OAuthError::ProviderUnavailable(
                format!("the refresh task failed: {e}").into(),
            ))
        })
    }

    /// The refresh itself, under the (user, provider) gate.
    /// Under the in-process gate: takes the store lease of (user,
    /// provider), so instances sharing the store refresh one at a time
    /// too (a rotating provider honours only the first use of a refresh
    /// token), then refreshes unless the last holder already did.
    async fn refresh_locked(
        &self,
        user_id: &str,
        provider: Provider,
    ) -> Result<SecretString, OAuthError> {
        let name = format!("provider_refresh:{}", token_key(user_id, provider));
        let holder = crate::random_hex(16);
        // A refresh takes one provider round trip; a holder that died
        // frees the lease after its time to live.
        let mut lease = None;
        for _ in 0..REFRESH_LEASE_WAITS {
            let request = crate::store::NewLease {
                name: name.clone(),
                holder: holder.clone(),
                ttl_ms: REFRESH_LEASE_TTL_MS,
                now_ms: self.clock.now_ms(),
            };
            if let Some(l) = self.store.acquire(&request).await? {
                lease = Some(l);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        let Some(lease) = lease else {
            return Err(OAuthError::ProviderUnavailable(
                "another instance is refreshing this token and has not finished".into(),
            ));
        };
        let result = self.refresh_leased(user_id, provider).await;
        let _ = self.store.release(&lease).await;
        result
    }

    async fn refresh_leased(
        &self,
        user_id: &str,
        provider: Provider,
    ) -> Result<SecretString, OAuthError> {
        let configured = self
            .providers
            .get(&provider)
            .ok_or(OAuthError::NotConfigured(provider))?;
        // Whoever held the gate before may have refreshed already.
        let rec = self
            .load(user_id, provider)
            .await?
            .ok_or(OAuthError::NotLinked(provider))?;
        if let Some(t) = self.usable_access(user_id, provider, &rec)? {
            return Ok(t);
        }
        let stored = rec
            .refresh_token
            .as_deref()
            .ok_or(OAuthError::NotLinked(provider))?;
        let refresh = open(&self.cipher, user_id, provider, "refresh_token", stored)?;
        let metadata = configured.oidc.metadata().await?;
        let client = oauth_client(&configured.settings, &metadata, None)?;
        let token = oauth2::RefreshToken::new(refresh.expose().to_owned());
        let response = client
            .exchange_refresh_token(&token)
            .request_async(&self.http)
            .await
            .map_err(super::flow::grant_error)?;
        use oauth2::TokenResponse as _;
        let access = response.access_token().secret().clone();
        let rotated = response.refresh_token().map(|t| t.secret().clone());
        self.save(
            user_id,
            provider,
            &Granted {
                refresh_token: rotated.as_deref(),
                access_token: &access,
                expires_in: response.expires_in(),
                scope: response
                    .scopes()
                    .map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")),
            },
        )
        .await?;
        Ok(SecretString::new(access))
    }
}
