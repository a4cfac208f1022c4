//! `/metrics`: Prometheus text from the global `metrics` recorder.
//!
//! The daemon installs the recorder ([`install`]) at start; every module
//! counts through the `metrics` facade:
//! - `safedrift_runs_total{status}`: runs that ended, by how they ended;
//!   `safedrift_runs_started_total`;
//! - `safedrift_prompts_evaluated_total`;
//! - `safedrift_backend_latency_seconds`, `safedrift_judge_latency_seconds`
//!   (histograms);
//! - `safedrift_queue_depth` (gauge, set at each scrape from the store);
//! - `safedrift_alert_deliveries_total{target,result}`;
//! - `safedrift_watcher_errors_total{watcher}`;
//! - `safedrift_store_quarantined_total{tree}` (records moved aside because
//!   they could not be decoded) and `safedrift_store_quarantined_records`
//!   (gauge: how many are in the quarantine now).

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::{ApiError, Shared};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets, in seconds: 5 ms to 5 minutes.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Installs the Prometheus recorder as the process's global recorder (once;
/// later calls return the same handle). `None` when another recorder was
/// installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the metrics recorder; /metrics stays empty");
                    None
                }
            }
        })
        .clone()
}

pub async fn render(State(api): State<Shared>) -> Result<Response, ApiError> {
    let Some(handle) = install() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "metrics are not recorded in this process",
        ));
    };
    let queue = api.queue.clone();
    let depth = super::blocking(move || Ok(queue.depth()?)).await?;
    ::metrics::gauge!("safedrift_queue_depth").set(depth as f64);
    ::metrics::gauge!("safedrift_store_quarantined_records")
        .set(api.store.quarantined_len() as f64);
    handle.run_upkeep();
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response())
}
