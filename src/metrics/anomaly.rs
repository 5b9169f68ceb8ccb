//! Anomaly signals: per caller identity, a moving baseline of issue and
//! exchange rates and of refusals, and an alert when the current rate is far
//! above it.
//!
//! Time is cut into buckets (`bucket_secs`, a minute by default) of the
//! injected clock. Each caller has, per [`Signal`], the count of the current
//! bucket and an exponentially weighted moving average (EWMA) of the counts
//! of the buckets before it, bias-corrected for how many buckets it has seen
//! (so the first few minutes are a plain average, not an average with zeros).
//! An event alerts when the current bucket's count is above `multiple` times
//! the baseline and at least the signal's minimum absolute count (so a
//! caller that is nearly idle never alerts on a handful of calls). Issue and
//! exchange rates alert only after `warmup` buckets of history; refusal
//! bursts alert at once (refusals are suspicious even from a new caller).
//! A caller alerts at most once per `window_secs`, whatever the signal.
//!
//! Memory is bounded: at most `max_identities` callers are tracked. When the
//! table is full, callers idle for [`IDLE_BUCKETS`] are forgotten (their
//! baseline has decayed to nothing anyway); if none is, a new caller is not
//! tracked (and counted, see [`Observed::Untracked`]).
//!
//! Pure: no I/O and no clock of its own; the caller passes the time.

use std::collections::HashMap;

use serde::Serialize;

/// Buckets a caller must be idle before a full table may forget it.
pub const IDLE_BUCKETS: u64 = 60;

/// What is counted per caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// A token issued (`IssueToken` allowed).
    Issue,
    /// A token exchanged (`ExchangeToken` allowed).
    Exchange,
    /// A refused call: a policy or token refusal, or a rate-limit refusal.
    Refusal,
}

impl Signal {
    /// Every signal, in the order of [`Signal::index`].
    pub const ALL: [Signal; 3] = [Signal::Issue, Signal::Exchange, Signal::Refusal];

    /// The name in metrics labels and audit records.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Issue => "issue",
            Signal::Exchange => "exchange",
            Signal::Refusal => "refusal",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Settings of the anomaly detector.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalySettings {
    /// Length of one bucket of the baseline, seconds.
    pub bucket_secs: u64,
    /// How many times its baseline a bucket's count must exceed to alert.
    pub multiple: f64,
    /// Least issues or exchanges in one bucket that can alert.
    pub min_rate: u64,
    /// Least refusals in one bucket that can alert.
    pub min_refusals: u64,
    /// Weight of the newest bucket in the moving average (0 < alpha <= 1).
    pub alpha: f64,
    /// Buckets of history a caller needs before its issue and exchange
    /// rates can alert.
    pub warmup: u64,
    /// Least time between two alerts about one caller, seconds.
    pub window_secs: u64,
    /// Most caller identities tracked at once.
    pub max_identities: usize,
}

impl Default for AnomalySettings {
    fn default() -> Self {
        Self {
            bucket_secs: 60,
            multiple: 10.0,
            min_rate: 60,
            min_refusals: 30,
            alpha: 0.2,
            warmup: 5,
            window_secs: 300,
            max_identities: 10_000,
        }
    }
}

impl AnomalySettings {
    /// Checks the values no type can.
    pub fn validate(&self) -> Result<(), String> {
        if self.bucket_secs == 0 {
            return Err("anomaly bucket must be at least one second".into());
        }
        if !(self.multiple.is_finite() && self.multiple >= 1.0) {
            return Err("anomaly multiple must be a number of at least 1".into());
        }
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err("anomaly alpha must be in (0, 1]".into());
        }
        if self.min_rate == 0 || self.min_refusals == 0 {
            return Err("anomaly minimum counts must be positive".into());
        }
        if self.window_secs < self.bucket_secs {
            return Err("anomaly window must be at least one bucket".into());
        }
        if self.max_identities == 0 {
            return Err("anomaly table must hold at least one caller".into());
        }
        Ok(())
    }
}

/// One alert: which signal, and the numbers that made it one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Anomaly {
    /// `issue`, `exchange` or `refusal`.
    pub signal: &'static str,
    /// Events of the current bucket so far.
    pub count: u64,
    /// The moving baseline, events per bucket.
    pub baseline: f64,
    /// The count that had to be exceeded.
    pub threshold: f64,
    /// Bucket length, seconds.
    pub bucket_secs: u64,
}

/// What one observation led to.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// Nothing unusual (or already alerted in this window).
    Quiet,
    /// The caller's rate crossed its threshold.
    Alert(Anomaly),
    /// The table is full of active callers: this one is not tracked.
    Untracked,
}

#[derive(Debug, Clone, Copy, Default)]
struct Track {
    /// Events in the current bucket.
    count: u64,
    /// Unnormalised EWMA of the completed buckets' counts.
    ewma: f64,
}

#[derive(Debug)]
struct Caller {
    /// The current bucket (index since the epoch).
    bucket: u64,
    /// Completed buckets folded into the averages (capped).
    seen: u64,
    tracks: [Track; 3],
    last_alert: Option<u64>,
}

impl Caller {
    fn new(bucket: u64) -> Self {
        Self {
            bucket,
            seen: 0,
            tracks: [Track::default(); 3],
            last_alert: None,
        }
    }

    /// Folds the buckets before `bucket` into the averages.
    fn advance(&mut self, bucket: u64, alpha: f64) {
        if bucket <= self.bucket {
            return;
        }
        // Buckets without events after the current one; past a few hundred
        // the average is zero to float precision, so the loop is bounded.
        let empty = (bucket - self.bucket - 1).min(1_000);
        let decay = (1.0 - alpha).powi(i32::try_from(empty).unwrap_or(1_000));
        for t in &mut self.tracks {
            t.ewma = (alpha * t.count as f64 + (1.0 - alpha) * t.ewma) * decay;
            t.count = 0;
        }
        self.seen = (self.seen + 1 + empty).min(1_000_000);
        self.bucket = bucket;
    }

    /// The bias-corrected baseline of a track (events per bucket), if any
    /// bucket has completed.
    fn baseline(&self, t: &Track, alpha: f64) -> Option<f64> {
        if self.seen == 0 {
            return None;
        }
        let weight = 1.0 - (1.0 - alpha).powi(i32::try_from(self.seen).unwrap_or(i32::MAX));
        Some(if weight > 0.0 { t.ewma / weight } else { 0.0 })
    }
}

/// The per-caller baselines of one node. See the [module docs](self).
#[derive(Debug)]
pub struct Detector {
    settings: AnomalySettings,
    callers: HashMap<String, Caller>,
    last_sweep: Option<u64>,
}

impl Detector {
    /// A detector with `settings` (assumed validated).
    pub fn new(settings: AnomalySettings) -> Self {
        Self {
            settings,
            callers: HashMap::new(),
            last_sweep: None,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &AnomalySettings {
        &self.settings
    }

    /// Callers tracked now.
    pub fn tracked(&self) -> usize {
        self.callers.len()
    }

    /// Counts one event of `signal` by `caller` at unix time `now`.
    pub fn observe(&mut self, caller: &str, signal: Signal, now: u64) -> Observed {
        let s = &self.settings;
        let bucket = now / s.bucket_secs.max(1);
        if !self.callers.contains_key(caller) {
            if self.callers.len() >= s.max_identities && self.last_sweep != Some(bucket) {
                self.last_sweep = Some(bucket);
                self.callers
                    .retain(|_, c| bucket.saturating_sub(c.bucket) < IDLE_BUCKETS);
            }
            if self.callers.len() >= s.max_identities {
                return Observed::Untracked;
            }
            self.callers.insert(caller.to_owned(), Caller::new(bucket));
        }
        let Some(c) = self.callers.get_mut(caller) else {
            return Observed::Untracked;
        };
        let s = &self.settings;
        c.advance(bucket, s.alpha);
        let track = &mut c.tracks[signal.index()];
        track.count += 1;
        let track = *track;
        let (min, needs_history) = match signal {
            Signal::Refusal => (s.min_refusals, false),
            Signal::Issue | Signal::Exchange => (s.min_rate, true),
        };
        if needs_history && c.seen < s.warmup {
            return Observed::Quiet;
        }
        let baseline = c.baseline(&track, s.alpha).unwrap_or(0.0);
        let threshold = s.multiple * baseline;
        let count = track.count;
        // A baseline that is a whole number in exact arithmetic may come
        // out a hair below it in floating point: "above" means clearly
        // above.
        if count < min || (count as f64) <= threshold + 1e-6 {
            return Observed::Quiet;
        }
        if c.last_alert
            .is_some_and(|t| now.saturating_sub(t) < s.window_secs)
        {
            return Observed::Quiet;
        }
        c.last_alert = Some(now);
        Observed::Alert(Anomaly {
            signal: signal.name(),
            count,
            baseline,
            threshold: threshold.max(min as f64),
            bucket_secs: s.bucket_secs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AnomalySettings {
        AnomalySettings {
            bucket_secs: 60,
            multiple: 10.0,
            min_rate: 10,
            min_refusals: 5,
            alpha: 0.2,
            warmup: 3,
            window_secs: 300,
            max_identities: 3,
        }
    }

    const T0: u64 = 60 * 1_000_000;

    /// `n` events of `signal` at `now`; the alerts among their outcomes.
    fn burst(d: &mut Detector, who: &str, signal: Signal, n: u64, now: u64) -> Vec<Anomaly> {
        (0..n)
            .filter_map(|_| match d.observe(who, signal, now) {
                Observed::Alert(a) => Some(a),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_jump_to_twenty_times_the_baseline_alerts_once_per_window() {
        let mut d = Detector::new(settings());
        for m in 0..5 {
            assert!(burst(&mut d, "a", Signal::Exchange, 2, T0 + m * 60).is_empty());
        }
        let alerts = burst(&mut d, "a", Signal::Exchange, 40, T0 + 5 * 60);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        let a = &alerts[0];
        assert_eq!((a.signal, a.count), ("exchange", 21));
        assert!((a.baseline - 2.0).abs() < 1e-9, "{a:?}");
        assert!((a.threshold - 20.0).abs() < 1e-9, "{a:?}");
        // Still high in the next bucket, inside the window: no second alert.
        assert!(burst(&mut d, "a", Signal::Exchange, 100, T0 + 6 * 60).is_empty());
        // Another caller is judged on its own baseline.
        assert!(burst(&mut d, "b", Signal::Exchange, 2, T0 + 6 * 60).is_empty());
    }

    #[test]
    fn idle_callers_and_steady_callers_do_not_alert() {
        let mut d = Detector::new(settings());
        // Below the minimum absolute count: 9 against a baseline of 0.
        for m in 0..10 {
            assert!(burst(&mut d, "idle", Signal::Issue, 1, T0 + m * 600).is_empty());
        }
        assert!(burst(&mut d, "idle", Signal::Issue, 9, T0 + 10 * 600).is_empty());
        // A steady heavy caller: 1,000 a minute, every minute.
        for m in 0..20 {
            assert!(burst(&mut d, "busy", Signal::Issue, 1000, T0 + m * 60).is_empty());
        }
    }

    #[test]
    fn no_rate_alert_during_warmup_but_refusal_bursts_alert_at_once() {
        let mut d = Detector::new(settings());
        assert!(burst(&mut d, "new", Signal::Exchange, 500, T0).is_empty());
        let alerts = burst(&mut d, "new", Signal::Refusal, 10, T0);
        assert_eq!(alerts.len(), 1);
        assert_eq!((alerts[0].signal, alerts[0].count), ("refusal", 5));
    }

    #[test]
    fn the_window_ends_and_the_next_alert_comes() {
        let mut d = Detector::new(settings());
        assert_eq!(burst(&mut d, "a", Signal::Refusal, 5, T0).len(), 1);
        assert!(burst(&mut d, "a", Signal::Refusal, 50, T0 + 240).is_empty());
        // Five minutes on: a burst far above the (now raised) baseline.
        assert_eq!(burst(&mut d, "a", Signal::Refusal, 1000, T0 + 300).len(), 1);
    }

    #[test]
    fn the_table_is_bounded_and_forgets_idle_callers() {
        let mut d = Detector::new(settings());
        for who in ["a", "b", "c"] {
            d.observe(who, Signal::Issue, T0);
        }
        assert_eq!(d.observe("d", Signal::Issue, T0), Observed::Untracked);
        assert_eq!(d.tracked(), 3);
        // An hour later the others are idle: room for a newcomer.
        let later = T0 + IDLE_BUCKETS * 60;
        assert_eq!(d.observe("d", Signal::Issue, later), Observed::Quiet);
        assert_eq!(d.tracked(), 1);
    }

    #[test]
    fn long_idle_gaps_are_bounded_work_and_decay_the_baseline() {
        let mut d = Detector::new(settings());
        for m in 0..5 {
            burst(&mut d, "a", Signal::Issue, 100, T0 + m * 60);
        }
        // Years later: the baseline is gone, so 10 calls (the minimum) alert.
        let far = T0 + 100_000_000;
        let alerts = burst(&mut d, "a", Signal::Issue, 10, far);
        assert_eq!(alerts.len(), 1);
        assert!(alerts[0].baseline < 1e-6, "{:?}", alerts[0]);
    }

    #[test]
    fn settings_are_checked() {
        assert!(AnomalySettings::default().validate().is_ok());
        for bad in [
            AnomalySettings {
                multiple: 0.5,
                ..Default::default()
            },
            AnomalySettings {
                alpha: 0.0,
                ..Default::default()
            },
            AnomalySettings {
                window_secs: 10,
                ..Default::default()
            },
            AnomalySettings {
                bucket_secs: 0,
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
