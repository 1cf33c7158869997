//! Links of provider accounts to users: one record per (provider,
//! subject), inserted once, owned by the user.

use serde::{Deserialize, Serialize};

use super::{OAuthError, Provider};
use crate::store::{Record, RecordFilter, StoreBackend, StoreError};

/// Namespace of link records.
pub(crate) const LINK_NS: &str = "oauth_link";

/// A provider account linked to a user. Holds no token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderLink {
    /// The provider.
    pub provider: Provider,
    /// The provider's stable id of the account (`sub`).
    pub subject: String,
    /// The email the provider gave when the link was made.
    pub email: Option<String>,
    /// Whether the provider proved that email belongs to the signer.
    pub email_verified: bool,
    /// The user it belongs to.
    pub user_id: String,
    /// When it was made, Unix milliseconds.
    pub linked_at_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    provider: String,
    subject: String,
    email: Option<String>,
    #[serde(default)]
    email_verified: bool,
}

fn key(provider: Provider, subject: &str) -> String {
    format!("{provider}:{subject}")
}

fn from_record(r: Record) -> Result<ProviderLink, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("{LINK_NS} record"));
    let s: Stored = serde_json::from_slice(&r.data).map_err(|_| corrupt())?;
    Ok(ProviderLink {
        provider: Provider::parse(&s.provider).ok_or_else(corrupt)?,
        subject: s.subject,
        email: s.email,
        email_verified: s.email_verified,
        user_id: r.owner.ok_or_else(corrupt)?,
        linked_at_ms: r.created_at_ms,
    })
}

/// The link of (provider, subject), if any.
pub(crate) async fn find(
    store: &dyn StoreBackend,
    provider: Provider,
    subject: &str,
    now_ms: i64,
) -> Result<Option<ProviderLink>, StoreError> {
    store
        .record(LINK_NS, &key(provider, subject), now_ms)
        .await?
        .map(from_record)
        .transpose()
}

/// Every link of a user, oldest first.
pub(crate) async fn of_user(
    store: &dyn StoreBackend,
    user_id: &str,
    now_ms: i64,
) -> Result<Vec<ProviderLink>, StoreError> {
    let filter = RecordFilter {
        owner: Some(user_id.to_owned()),
        ..RecordFilter::default()
    };
    store
        .records(LINK_NS, &filter, now_ms)
        .await?
        .into_iter()
        .map(from_record)
        .collect()
}

/// Links (provider, subject) to `user_id`. Of concurrent links of one
/// provider account exactly one is made; the others get the winner.
///
/// # Errors
/// [`OAuthError::AlreadyLinked`] when the user has another account of this
/// provider; the store's errors.
pub(crate) async fn link(
    store: &dyn StoreBackend,
    provider: Provider,
    subject: &str,
    email: Option<&str>,
    email_verified: bool,
    user_id: &str,
    now_ms: i64,
) -> Result<ProviderLink, OAuthError> {
    // One account per provider per user: the provider tokens are kept per
    // (user, provider).
    if of_user(store, user_id, now_ms)
        .await?
        .iter()
        .any(|l| l.provider == provider && l.subject != subject)
    {
        return Err(OAuthError::AlreadyLinked);
    }
    let data = serde_json::to_vec(&Stored {
        provider: provider.as_str().to_owned(),
        subject: subject.to_owned(),
        email: email.map(str::to_owned),
        email_verified,
    })
    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let record = Record {
        ns: LINK_NS.to_owned(),
        key: key(provider, subject),
        owner: Some(user_id.to_owned()),
        status: 1,
        data,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        expires_at_ms: None,
    };
    match store.insert_if_absent(&record).await {
        Ok(()) => Ok(from_record(record)?),
        Err(StoreError::Conflict) => find(store, provider, subject, now_ms)
            .await?
            .ok_or(OAuthError::Store(StoreError::Conflict)),
        Err(e) => Err(e.into()),
    }
}

/// Removes the link of `provider` from `user_id`.
pub(crate) async fn unlink(
    store: &dyn StoreBackend,
    link: &ProviderLink,
) -> Result<bool, StoreError> {
    store
        .remove_record(LINK_NS, &key(link.provider, &link.subject))
        .await
}
