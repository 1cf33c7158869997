//! Links of provider accounts to users: one record per (provider,
//! subject), inserted once, owned by the user.

use serde::{Deserialize, Serialize};

use super::{OAuthError, Provider};
use crate::store::{Record, RecordFilter, StoreBackend, StoreError};

/// Namespace of link records.
pub(crate) const LINK_NS: &str = "oauth_link";
/// Namespace of a user's one slot per provider (key `user:provider`,
/// data: the subject holding it): what makes "one account per provider
/// per user" atomic.
pub(crate) const SLOT_NS: &str = "oauth_link_slot";

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

/// The most links [`of_user`] lists.
const MAX_LINKS_LISTED: usize = 16;

/// A user's links, oldest first (every one: a user has at most one per
/// provider; a damaged store's extras beyond [`MAX_LINKS_LISTED`] are
/// not listed).
pub(crate) async fn of_user(
    store: &dyn StoreBackend,
    user_id: &str,
    now_ms: i64,
) -> Result<Vec<ProviderLink>, StoreError> {
    let filter = RecordFilter {
        owner: Some(user_id.to_owned()),
        limit: MAX_LINKS_LISTED,
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
    // One account per provider per user (the provider tokens are kept per
    // (user, provider)): the user's slot for the provider is taken first,
    // by insert-if-absent, so two concurrent links of different accounts
    // cannot both win.
    let slot_key = super::tokens::token_key(user_id, provider);
    let slot = Record {
        ns: SLOT_NS.to_owned(),
        key: slot_key.clone(),
        owner: Some(user_id.to_owned()),
        status: 1,
        data: subject.as_bytes().to_vec(),
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        expires_at_ms: None,
    };
    let mut took_slot = true;
    match store.insert_if_absent(&slot).await {
        Ok(()) => {}
        Err(StoreError::Conflict) => {
            let held = store.record(SLOT_NS, &slot_key, now_ms).await?;
            if held.is_some_and(|h| h.data != subject.as_bytes()) {
                return Err(OAuthError::AlreadyLinked);
            }
            took_slot = false;
        }
        Err(e) => return Err(e.into()),
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
        Err(StoreError::Conflict) => {
            let existing = find(store, provider, subject, now_ms)
                .await?
                .ok_or(OAuthError::Store(StoreError::Conflict))?;
            // The provider account is another user's: the slot taken for
            // it here is not needed.
            if took_slot && existing.user_id != user_id {
                store.remove_record(SLOT_NS, &slot_key).await?;
            }
            Ok(existing)
        }
        Err(e) => {
            if took_slot {
                let _ = store.remove_record(SLOT_NS, &slot_key).await;
            }
            Err(e.into())
        }
    }
}

/// Removes the link, and its user's slot for the provider.
pub(crate) async fn unlink(
    store: &dyn StoreBackend,
    link: &ProviderLink,
) -> Result<bool, StoreError> {
    let removed = store
        .remove_record(LINK_NS, &key(link.provider, &link.subject))
        .await?;
    store
        .remove_record(
            SLOT_NS,
            &super::tokens::token_key(&link.user_id, link.provider),
        )
        .await?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;
    use crate::store::MemoryStore;

    fn store() -> Arc<dyn StoreBackend> {
        Arc::new(MemoryStore::new())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn of_20_concurrent_links_of_different_accounts_one_wins() {
        let s = store();
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let s = Arc::clone(&s);
                tokio::spawn(async move {
                    link(
                        s.as_ref(),
                        Provider::Google,
                        &format!("sub-{i}"),
                        None,
                        true,
                        "u1",
                        1,
                    )
                    .await
                })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(l) => {
                    assert_eq!(l.user_id, "u1");
                    won += 1;
                }
                Err(OAuthError::AlreadyLinked) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(won, 1);
        assert_eq!(of_user(s.as_ref(), "u1", 2).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn relinking_the_same_account_is_idempotent_and_unlink_frees_the_slot() {
        let s = store();
        let a = link(s.as_ref(), Provider::Google, "sub-a", None, true, "u1", 1)
            .await
            .unwrap();
        let again = link(s.as_ref(), Provider::Google, "sub-a", None, true, "u1", 2)
            .await
            .unwrap();
        assert_eq!(again, a);
        assert!(matches!(
            link(s.as_ref(), Provider::Google, "sub-b", None, true, "u1", 3).await,
            Err(OAuthError::AlreadyLinked)
        ));
        // Another provider is another slot.
        link(
            s.as_ref(),
            Provider::Microsoft,
            "sub-m",
            None,
            true,
            "u1",
            3,
        )
        .await
        .unwrap();
        assert!(unlink(s.as_ref(), &a).await.unwrap());
        let b = link(s.as_ref(), Provider::Google, "sub-b", None, true, "u1", 4)
            .await
            .unwrap();
        assert_eq!(b.subject, "sub-b");
    }

    #[tokio::test]
    async fn an_account_linked_to_another_user_leaves_our_slot_free() {
        let s = store();
        link(s.as_ref(), Provider::Google, "sub-x", None, true, "u1", 1)
            .await
            .unwrap();
        // u2 tries to link u1's Google account: it gets u1's link back
        // (the caller signs into u1) and keeps its own slot free.
        let got = link(s.as_ref(), Provider::Google, "sub-x", None, true, "u2", 2)
            .await
            .unwrap();
        assert_eq!(got.user_id, "u1");
        let own = link(s.as_ref(), Provider::Google, "sub-y", None, true, "u2", 3)
            .await
            .unwrap();
        assert_eq!(own.user_id, "u2");
    }
}
