//! What the `tower::Service` views of the core traits share.

/// A boxed error, as tower layers produce.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error of a layered service, back in the trait's own error type:
/// the inner implementation's error passes through unchanged; an error a
/// layer raised (a timeout, an overloaded limit) is wrapped by `wrap`.
pub(crate) fn from_layer<E>(error: impl Into<BoxError>, wrap: impl FnOnce(BoxError) -> E) -> E
where
    E: std::error::Error + Send + Sync + 'static,
{
    match error.into().downcast::<E>() {
        Ok(own) => *own,
        Err(layer) => wrap(layer),
    }
}
