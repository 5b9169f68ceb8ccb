//! Decision metrics and the anomaly signal, fed by the audit records the
//! handlers write: every audited decision is counted by action and outcome
//! (issues and exchanges per caller too), and issues, exchanges and
//! refusals go to the per-caller anomaly detector ([`crate::metrics::anomaly`]).
//! An alert becomes one `anomaly` audit record.

use super::{AuditEvent, Shared};
use crate::metrics::{Anomaly, Signal};

impl Shared {
    /// Counts `ev` in the metrics, feeds the anomaly detector, and writes
    /// `ev` (and an `anomaly` record, if it raised one) to the audit log.
    pub(super) async fn record(&self, ev: AuditEvent) {
        self.metrics.decision(ev.op, ev.decision, &ev.caller);
        let signal = match (ev.op, ev.decision) {
            ("issue", "allow") => Some(Signal::Issue),
            ("exchange", "allow") => Some(Signal::Exchange),
            (_, "deny") => Some(Signal::Refusal),
            _ => None,
        };
        let alert = signal.and_then(|s| self.metrics.observe_caller(&ev.caller, s, ev.ts));
        let caller = alert.is_some().then(|| ev.caller.clone());
        self.audit.record(ev).await;
        if let (Some(a), Some(caller)) = (alert, caller) {
            self.record_anomaly(&caller, a).await;
        }
    }

    /// A refusal that no handler audits (the rate limits): counted for the
    /// anomaly signal only.
    pub(super) fn refused_early(&self, caller: &str) -> Option<Anomaly> {
        self.metrics
            .observe_caller(caller, Signal::Refusal, self.clock.now())
    }

    /// Writes the audit record of an anomaly alert.
    pub(super) async fn record_anomaly(&self, caller: &str, a: Anomaly) {
        tracing::warn!(
            caller,
            signal = a.signal,
            count = a.count,
            baseline = a.baseline,
            "anomaly: unusual volume from a caller"
        );
        let mut ev = AuditEvent::new(self.clock.now(), "anomaly", "alert", caller);
        ev.reason = Some(format!(
            "{} {}s in {}s against a baseline of {:.1} (threshold {:.1})",
            a.count, a.signal, a.bucket_secs, a.baseline, a.threshold
        ));
        ev.anomaly = Some(a);
        self.audit.record(ev).await;
    }
}
