//! The alert dispatcher hook: every run the daemon completes passes through
//! [`run_completed`]. Delivery (email, webhooks, the durable outbox) is built
//! on this hook; until then a drift decision is logged.

pub mod record;

use tracing::warn;

use crate::report::Run;

/// Called once per completed checkpoint evaluation.
pub fn run_completed(run: &Run) {
    if let Some(drift) = run.drift.as_ref().filter(|d| d.detected) {
        let fired: Vec<String> = drift
            .findings
            .iter()
            .filter(|f| f.fired)
            .map(|f| match &f.category {
                Some(c) => format!("{}[{c}] {:+.3}", f.metric, f.delta.unwrap_or_default()),
                None => format!("{} {:+.3}", f.metric, f.delta.unwrap_or_default()),
            })
            .collect();
        warn!(run = %run.id, model = %run.model.spec, revision = ?run.model.revision, findings = ?fired, "safety drift detected");
    }
}
