//! Plan names, Stripe price ids, and the map from one to the other.

use std::collections::BTreeMap;
use std::fmt;

/// A plan a user can be on, e.g. `free`, `pro`, `team`: 1 to 32 characters
/// from `a-z 0-9 _ -`, starting with a letter.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct PlanName(Box<str>);

impl PlanName {
    /// The plan every user starts on.
    #[must_use]
    pub fn free() -> Self {
        Self("free".into())
    }

    /// Validates a plan name.
    ///
    /// # Errors
    /// [`PriceMapError::InvalidPlan`] when the name breaks the rules above.
    pub fn new(name: &str) -> Result<Self, PriceMapError> {
        let ok = (1..=32).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(name.into()))
        } else {
            Err(PriceMapError::InvalidPlan)
        }
    }

    /// The name as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PlanName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PlanName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlanName({})", self.0)
    }
}

/// A Stripe price id: `price_` followed by 1 to 250 characters from
/// `A-Z a-z 0-9 _`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct PriceId(Box<str>);

impl PriceId {
    /// Validates a price id.
    ///
    /// # Errors
    /// [`PriceMapError::InvalidPrice`] when the id breaks the rules above.
    pub fn new(id: &str) -> Result<Self, PriceMapError> {
        let ok = id.len() > "price_".len()
            && id.len() <= 256
            && id.starts_with("price_")
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if ok {
            Ok(Self(id.into()))
        } else {
            Err(PriceMapError::InvalidPrice)
        }
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PriceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PriceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PriceId({})", self.0)
    }
}

/// Why a price map could not be parsed. Entries are named by position so
/// that the message is useful without echoing configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PriceMapError {
    /// A plan name is not 1-32 characters of `a-z 0-9 _ -` starting with a letter.
    #[error("plan names must be 1-32 characters of a-z 0-9 _ - starting with a letter")]
    InvalidPlan,
    /// A price id does not look like `price_...`.
    #[error("price ids must look like price_ABC123")]
    InvalidPrice,
    /// An entry is not `price_id:plan` (or not a JSON string value).
    #[error("entry {0} is not of the form price_id:plan")]
    BadEntry(usize),
    /// An entry's price or plan is invalid.
    #[error("entry {index}: {problem}")]
    Entry {
        /// 1-based position of the entry.
        index: usize,
        /// What is wrong with it.
        problem: Box<PriceMapError>,
    },
    /// The same price id appears twice.
    #[error("entry {0} repeats a price id")]
    Duplicate(usize),
    /// The JSON form is not an object of strings.
    #[error("is not a JSON object mapping price ids to plan names")]
    NotJsonObject,
    /// No entries.
    #[error("has no entries")]
    Empty,
}

/// Which plan each Stripe price grants; several prices may grant one plan
/// (monthly and yearly, say), and the first listed for a plan is the one
/// Checkout sells.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct PriceMap {
    by_price: BTreeMap<PriceId, PlanName>,
    #[serde(skip)]
    checkout: BTreeMap<PlanName, PriceId>,
}

impl PriceMap {
    fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, PriceMapError> {
        let mut map = BTreeMap::new();
        let mut checkout = BTreeMap::new();
        for (i, (price, plan)) in pairs.into_iter().enumerate() {
            let index = i + 1;
            let wrap = |e: PriceMapError| PriceMapError::Entry {
                index,
                problem: Box::new(e),
            };
            let price = PriceId::new(price.trim()).map_err(wrap)?;
            let plan = PlanName::new(plan.trim()).map_err(wrap)?;
            checkout
                .entry(plan.clone())
                .or_insert_with(|| price.clone());
            if map.insert(price, plan).is_some() {
                return Err(PriceMapError::Duplicate(index));
            }
        }
        if map.is_empty() {
            return Err(PriceMapError::Empty);
        }
        Ok(Self {
            by_price: map,
            checkout,
        })
    }

    /// Parses `price_a:pro,price_b:team` (whitespace around items ignored).
    ///
    /// # Errors
    /// A [`PriceMapError`] naming the first bad entry by position.
    pub fn parse_pairs(text: &str) -> Result<Self, PriceMapError> {
        let mut pairs = Vec::new();
        for (i, item) in text.split(',').enumerate() {
            if item.trim().is_empty() && text.trim().is_empty() {
                return Err(PriceMapError::Empty);
            }
            let (price, plan) = item.split_once(':').ok_or(PriceMapError::BadEntry(i + 1))?;
            pairs.push((price, plan));
        }
        Self::from_pairs(pairs)
    }

    /// Parses `{"price_a": "pro", "price_b": "team"}`.
    ///
    /// # Errors
    /// A [`PriceMapError`]; duplicate keys in the JSON text are rejected.
    pub fn parse_json(text: &str) -> Result<Self, PriceMapError> {
        // Parse as a list of pairs so duplicate keys are seen, not merged.
        struct Pairs(Vec<(String, serde_json::Value)>);
        impl<'de> serde::Deserialize<'de> for Pairs {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = Pairs;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("an object")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut m: A,
                    ) -> Result<Pairs, A::Error> {
                        let mut v = Vec::new();
                        while let Some(kv) = m.next_entry()? {
                            v.push(kv);
                        }
                        Ok(Pairs(v))
                    }
                }
                d.deserialize_map(V)
            }
        }
        let Pairs(raw) = serde_json::from_str(text).map_err(|_| PriceMapError::NotJsonObject)?;
        let mut pairs = Vec::with_capacity(raw.len());
        for (i, (k, v)) in raw.iter().enumerate() {
            let plan = v.as_str().ok_or(PriceMapError::BadEntry(i + 1))?;
            pairs.push((k.as_str(), plan));
        }
        Self::from_pairs(pairs)
    }

    /// The plan `price` grants, if it is mapped.
    #[must_use]
    pub fn plan_for(&self, price: &PriceId) -> Option<&PlanName> {
        self.by_price.get(price)
    }

    /// The price Checkout sells for `plan`: the first listed for it.
    #[must_use]
    pub fn price_for(&self, plan: &PlanName) -> Option<&PriceId> {
        self.checkout.get(plan)
    }

    /// Every (price, plan) pair.
    pub fn iter(&self) -> impl Iterator<Item = (&PriceId, &PlanName)> {
        self.by_price.iter()
    }

    /// Number of prices mapped.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_price.len()
    }

    /// Whether no price is mapped.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_price.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A price id from Stripe's published fixtures.
    const PRICE: &str = "price_1PgafmB7WZ01zgkW6dKueIc5";

    #[test]
    fn both_forms_parse_to_the_same_map() {
        let a = PriceMap::parse_pairs(&format!("{PRICE}:pro, price_team123:team")).unwrap();
        let b = PriceMap::parse_json(&format!(r#"{{"{PRICE}":"pro","price_team123":"team"}}"#))
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a.plan_for(&PriceId::new(PRICE).unwrap())
                .map(PlanName::as_str),
            Some("pro")
        );
    }

    #[test]
    fn checkout_sells_the_first_price_listed_for_a_plan() {
        let m = PriceMap::parse_pairs("price_yearly:pro,price_monthly:pro,price_t:team").unwrap();
        let pro = PlanName::new("pro").unwrap();
        assert_eq!(m.price_for(&pro).map(PriceId::as_str), Some("price_yearly"));
        assert_eq!(m.price_for(&PlanName::new("gold").unwrap()), None);
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn bad_maps_name_the_problem() {
        assert_eq!(PriceMap::parse_pairs(""), Err(PriceMapError::Empty));
        assert_eq!(
            PriceMap::parse_pairs(&format!("{PRICE}=pro")),
            Err(PriceMapError::BadEntry(1))
        );
        assert_eq!(
            PriceMap::parse_pairs(&format!("{PRICE}:pro,prod_X:team"))
                .unwrap_err()
                .to_string(),
            "entry 2: price ids must look like price_ABC123"
        );
        assert!(matches!(
            PriceMap::parse_pairs(&format!("{PRICE}:Pro!")),
            Err(PriceMapError::Entry { index: 1, .. })
        ));
        assert_eq!(
            PriceMap::parse_pairs(&format!("{PRICE}:pro,{PRICE}:team")),
            Err(PriceMapError::Duplicate(2))
        );
        assert_eq!(
            PriceMap::parse_json("[1,2]"),
            Err(PriceMapError::NotJsonObject)
        );
        assert_eq!(
            PriceMap::parse_json(&format!(r#"{{"{PRICE}":3}}"#)),
            Err(PriceMapError::BadEntry(1))
        );
        assert_eq!(
            PriceMap::parse_json(&format!(r#"{{"{PRICE}":"pro","{PRICE}":"team"}}"#)),
            Err(PriceMapError::Duplicate(2))
        );
        assert_eq!(PriceMap::parse_json("{}"), Err(PriceMapError::Empty));
    }
}
