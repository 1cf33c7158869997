//! The Stripe objects the billing pipeline reads: subscriptions, Checkout
//! Sessions and invoices, taken from an event's `data.object` or from the
//! API.
//!
//! Both shapes Stripe has used are read: before API version
//! `2025-03-31.basil` a subscription carried `current_period_end` itself
//! and an invoice its `subscription`; since, the period is on each
//! subscription item and the invoice names its subscription under
//! `parent.subscription_details`. Everything else in the objects is
//! ignored.

use serde_json::Value;

/// Metadata key under which our user id travels on Stripe objects.
pub const USER_METADATA_KEY: &str = "alvryn_user_id";

/// A Stripe object that lacks what the pipeline needs. The message names
/// the field, never a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the Stripe {object} has no usable `{field}`")]
pub struct ObjectError {
    /// The kind of object.
    pub object: &'static str,
    /// The missing or malformed field.
    pub field: &'static str,
}

fn text<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get(field)?.as_str().filter(|s| !s.is_empty())
}

/// An id field that may be expanded into an object (`"cus_1"` or
/// `{"id": "cus_1", ...}`).
fn id_of<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    match v.get(field)? {
        Value::String(s) if !s.is_empty() => Some(s),
        Value::Object(o) => o.get("id")?.as_str().filter(|s| !s.is_empty()),
        _ => None,
    }
}

fn user_metadata(v: &Value) -> Option<String> {
    v.get("metadata")?
        .get(USER_METADATA_KEY)?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A subscription, as far as plans are concerned.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Subscription {
    /// `sub_...`.
    pub id: String,
    /// The customer, `cus_...`.
    pub customer: String,
    /// Stripe's status: `active`, `trialing`, `past_due`, `canceled`,
    /// `unpaid`, `incomplete`, `incomplete_expired`, `paused`.
    pub status: String,
    /// The price ids of its items, in order.
    pub prices: Vec<String>,
    /// End of the current period, Unix seconds.
    pub current_period_end: Option<i64>,
    /// Whether it ends at the period's end.
    pub cancel_at_period_end: bool,
    /// Our user id from its metadata, when it was created through our
    /// Checkout.
    pub user_id: Option<String>,
    /// Creation time, Unix seconds.
    pub created: i64,
}

impl Subscription {
    /// Reads a `subscription` object.
    ///
    /// # Errors
    /// [`ObjectError`] when `id`, `customer` or `status` is missing, or
    /// the object is not a subscription.
    pub fn from_json(v: &Value) -> Result<Self, ObjectError> {
        let err = |field| ObjectError {
            object: "subscription",
            field,
        };
        if v.get("object").and_then(Value::as_str) != Some("subscription") {
            return Err(err("object"));
        }
        let id = text(v, "id")
            .filter(|s| s.starts_with("sub_"))
            .ok_or_else(|| err("id"))?;
        let customer = id_of(v, "customer").ok_or_else(|| err("customer"))?;
        let status = text(v, "status").ok_or_else(|| err("status"))?;
        let items: &[Value] = v
            .get("items")
            .and_then(|i| i.get("data"))
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice);
        let prices = items
            .iter()
            .filter_map(|item| {
                // `price` since 2020; `plan` (a plan id is a price id) before.
                id_of(item, "price")
                    .or_else(|| id_of(item, "plan"))
                    .map(str::to_owned)
            })
            .collect();
        let current_period_end =
            v.get("current_period_end")
                .and_then(Value::as_i64)
                .or_else(|| {
                    items
                        .iter()
                        .filter_map(|i| i.get("current_period_end").and_then(Value::as_i64))
                        .max()
                });
        Ok(Self {
            id: id.to_owned(),
            customer: customer.to_owned(),
            status: status.to_owned(),
            prices,
            current_period_end,
            cancel_at_period_end: v
                .get("cancel_at_period_end")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            user_id: user_metadata(v),
            created: v.get("created").and_then(Value::as_i64).unwrap_or(0),
        })
    }

    /// Whether this status grants the plan: `active`, `trialing`, and
    /// `past_due` (Stripe is still retrying the payment).
    #[must_use]
    pub fn grants_access(&self) -> bool {
        matches!(self.status.as_str(), "active" | "trialing" | "past_due")
    }
}

/// A completed Checkout Session that this backend started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckoutCompleted {
    /// `cs_...`.
    pub id: String,
    /// Our user id (the session's `alvryn_user_id` metadata).
    pub user_id: String,
    /// The customer.
    pub customer: Option<String>,
    /// The subscription it started (subscription mode).
    pub subscription: Option<String>,
}

impl CheckoutCompleted {
    /// Reads a `checkout.session` object.
    ///
    /// Only sessions this backend created count: they carry the user in
    /// their metadata (which only the API sets) and, if they have one, the
    /// same `client_reference_id`. A Payment Link, say, lets whoever opens
    /// it choose `client_reference_id`; such a session names no user here.
    ///
    /// # Errors
    /// [`ObjectError`] when it is not a session, or not one of ours.
    pub fn from_json(v: &Value) -> Result<Self, ObjectError> {
        let err = |field| ObjectError {
            object: "checkout session",
            field,
        };
        if v.get("object").and_then(Value::as_str) != Some("checkout.session") {
            return Err(err("object"));
        }
        let user_id = user_metadata(v).ok_or_else(|| err("metadata.alvryn_user_id"))?;
        if text(v, "client_reference_id").is_some_and(|r| r != user_id) {
            return Err(err("client_reference_id"));
        }
        Ok(Self {
            id: text(v, "id").ok_or_else(|| err("id"))?.to_owned(),
            user_id,
            customer: id_of(v, "customer").map(str::to_owned),
            subscription: id_of(v, "subscription").map(str::to_owned),
        })
    }
}

/// The subscription and customer an invoice is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoiceRef {
    /// `in_...`.
    pub id: String,
    /// The customer.
    pub customer: Option<String>,
    /// The subscription, if the invoice belongs to one.
    pub subscription: Option<String>,
}

impl InvoiceRef {
    /// Reads an `invoice` object (either API shape).
    ///
    /// # Errors
    /// [`ObjectError`] when it is not an invoice.
    pub fn from_json(v: &Value) -> Result<Self, ObjectError> {
        let err = |field| ObjectError {
            object: "invoice",
            field,
        };
        if v.get("object").and_then(Value::as_str) != Some("invoice") {
            return Err(err("object"));
        }
        let subscription = id_of(v, "subscription")
            .or_else(|| {
                let details = v.get("parent")?.get("subscription_details")?;
                id_of(details, "subscription")
            })
            .map(str::to_owned);
        Ok(Self {
            id: text(v, "id").ok_or_else(|| err("id"))?.to_owned(),
            customer: id_of(v, "customer").map(str::to_owned),
            subscription,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_period_shapes_are_read() {
        let old = json!({"object":"subscription","id":"sub_1","customer":"cus_1","status":"active",
            "current_period_end": 100, "items":{"data":[{"plan":{"id":"price_a"}}]}});
        let new = json!({"object":"subscription","id":"sub_1","customer":{"id":"cus_1"},"status":"active",
            "items":{"data":[{"price":{"id":"price_a"},"current_period_end": 100}]}});
        let a = Subscription::from_json(&old).unwrap();
        let b = Subscription::from_json(&new).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.prices, ["price_a"]);
        assert_eq!(a.current_period_end, Some(100));
    }

    #[test]
    fn missing_fields_are_named_without_values() {
        let e = Subscription::from_json(&json!({"object":"subscription","id":"sub_secretish"}))
            .unwrap_err();
        assert_eq!(e.field, "customer");
        assert!(!e.to_string().contains("secretish"));
        assert_eq!(
            Subscription::from_json(&json!({"object":"invoice"}))
                .unwrap_err()
                .field,
            "object"
        );
    }

    #[test]
    fn only_sessions_we_started_name_a_user() {
        let ours = json!({"object":"checkout.session","id":"cs_1","client_reference_id":"u1",
            "metadata":{"alvryn_user_id":"u1"},"customer":"cus_1","subscription":"sub_1"});
        assert_eq!(CheckoutCompleted::from_json(&ours).unwrap().user_id, "u1");
        // A Payment Link session: the reference chosen by whoever opened it.
        let link = json!({"object":"checkout.session","id":"cs_2","client_reference_id":"u1",
            "metadata":{}});
        assert_eq!(
            CheckoutCompleted::from_json(&link).unwrap_err().field,
            "metadata.alvryn_user_id"
        );
        let mixed = json!({"object":"checkout.session","id":"cs_3","client_reference_id":"u2",
            "metadata":{"alvryn_user_id":"u1"}});
        assert_eq!(
            CheckoutCompleted::from_json(&mixed).unwrap_err().field,
            "client_reference_id"
        );
    }

    #[test]
    fn invoices_name_their_subscription_in_either_shape() {
        let old = json!({"object":"invoice","id":"in_1","subscription":"sub_1"});
        let new = json!({"object":"invoice","id":"in_1","subscription":null,
            "parent":{"subscription_details":{"subscription":"sub_1"}}});
        assert_eq!(
            InvoiceRef::from_json(&old).unwrap(),
            InvoiceRef::from_json(&new).unwrap()
        );
    }
}
