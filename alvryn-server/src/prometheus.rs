//! The process's Prometheus recorder (`metrics-exporter-prometheus`) and
//! what the HTTP layer counts.
//!
//! [`install`] installs the recorder once per process; `alvryn-core`
//! emits through the `metrics` facade into it, and `GET /metrics` (the
//! server's, and the worker's) renders it in Prometheus's text format.
//! Every metric is described (a `# HELP` line), and every label comes
//! from a bounded set: the route is axum's route *template*
//! (`/auth/sessions/{id}`, never the id), `unmatched` for paths no route
//! has; the method is one of the standard ones, else `other`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use metrics::{Label, SharedString, Unit, describe_counter, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Counter: HTTP requests answered, by `method`, `route` and `status`.
pub const HTTP_REQUESTS: &str = "http_requests_total";
/// Histogram: how long requests take to answer, by `method`, `route` and
/// `status`.
pub const HTTP_DURATION: &str = "http_request_duration_seconds";

/// Bucket bounds of request latencies, seconds.
const HTTP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Bucket bounds of job run times, seconds.
const JOB_BUCKETS: &[f64] = &[0.01, 0.05, 0.25, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder as the process's `metrics` recorder
/// (the first call does; later calls return the same handle), describes
/// every metric, and, inside a Tokio runtime, starts its upkeep (every 5
/// s, so histogram samples do not pile up between scrapes). `None` when
/// another recorder was installed first (an embedding service's own):
/// then this process has no `/metrics` of its own.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.to_owned()), HTTP_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(alvryn_core::metrics::JOB_DURATION.to_owned()),
                        JOB_BUCKETS,
                    )
                });
            let handle = match builder.map(PrometheusBuilder::install_recorder) {
                Ok(Ok(handle)) => handle,
                Ok(Err(e)) | Err(e) => {
                    tracing::warn!(error = %e, "no Prometheus recorder: /metrics is not served");
                    return None;
                }
            };
            alvryn_core::metrics::describe();
            describe_counter!(
                HTTP_REQUESTS,
                Unit::Count,
                "HTTP requests answered, by method, route template and status."
            );
            describe_histogram!(
                HTTP_DURATION,
                Unit::Seconds,
                "How long HTTP requests take to answer, by method, route template and status."
            );
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let upkeep = handle.clone();
                rt.spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(5));
                    loop {
                        tick.tick().await;
                        upkeep.run_upkeep();
                    }
                });
            }
            Some(handle)
        })
        .as_ref()
}

/// The metrics in Prometheus's text format, or `None` without a recorder
/// of ours.
#[must_use]
pub fn render() -> Option<String> {
    install().map(PrometheusHandle::render)
}

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The answer of a `/metrics` route: [`render`]'s text, or 404 without a
/// recorder of ours.
#[must_use]
pub fn response() -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match render() {
        Some(text) => ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        None => crate::ApiError::not_found().into_response(),
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts a request answered with `status` and records how long it
/// took, by method and `route` template (`unmatched` for none). The
/// access log ([`crate::web`]), outermost around every route, calls it,
/// so requests answered by the timeout and panic layers, and CORS
/// preflights, are counted with their status. The route and status
/// strings are made once and shared by the counter's and the
/// histogram's labels; the method's is static.
pub fn record(method: &Method, route: &str, status: StatusCode, took: Duration) {
    let labels = [
        Label::new("method", SharedString::const_str(method_label(method))),
        Label::new("route", SharedString::from_shared(Arc::<str>::from(route))),
        Label::new(
            "status",
            SharedString::from_shared(Arc::<str>::from(status.as_str())),
        ),
    ];
    metrics::counter!(HTTP_REQUESTS, labels.iter()).increment(1);
    metrics::histogram!(HTTP_DURATION, labels.iter()).record(took.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusual_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        let odd = Method::from_bytes(b"BREW").unwrap_or(Method::GET);
        assert_eq!(method_label(&odd), "other");
    }
}
