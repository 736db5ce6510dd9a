//! This node's metrics, rendered by `GET /metrics` in the Prometheus text
//! format.
//!
//! The numbers live in a [`PrometheusRecorder`] of this server's own: the
//! `metrics` crate's global recorder is never installed, so that several
//! servers in one process (tests, the embedded benchmark) each count only
//! their own traffic. Every handle is registered once, when the server
//! starts, so every series is shown from the first scrape on (at zero) and
//! counting is an atomic add on a handle, with no lookup.
//!
//! Two numbers are read when scraped rather than counted: the live sessions
//! (from [`crate::sessions::LocalSessions`]) and the failed store
//! operations (from [`chat_store::StoreHealth::failures`]), so that each has
//! one source of truth.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

use crate::ApiError;

/// Upper bounds of the latency buckets, in seconds: from half a
/// millisecond (a local delivery) to five seconds (a publish that timed
/// out and was retried).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// How often histogram samples are folded into their buckets between
/// scrapes, so that a server nobody scrapes keeps a bounded memory.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Why a send was refused: the `reason` label of
/// `chat_messages_failed_total`, a fixed set.
pub const FAILURE_REASONS: [&str; 8] = [
    "invalid_argument",
    "rate_limited",
    "not_found",
    "permission_denied",
    "resource_exhausted",
    "unavailable",
    "internal",
    "other",
];

/// The `reason` of a refused send.
pub fn failure_reason(e: &ApiError) -> &'static str {
    match e {
        ApiError::InvalidArgument(_) => "invalid_argument",
        ApiError::RateLimited { .. } => "rate_limited",
        ApiError::NotFound(_) => "not_found",
        ApiError::PermissionDenied(_) => "permission_denied",
        ApiError::ResourceExhausted(_) => "resource_exhausted",
        ApiError::Unavailable(_) | ApiError::Stopping => "unavailable",
        ApiError::Internal(_) => "internal",
        // Not answers a send gives; counted all the same.
        ApiError::Unauthenticated
        | ApiError::AlreadyExists(_)
        | ApiError::PayloadTooLarge { .. } => "other",
    }
}

/// The histograms, each with [`LATENCY_BUCKETS`].
const HISTOGRAMS: [&str; 3] = [
    "chat_delivery_latency_seconds",
    "chat_send_to_commit_seconds",
    "chat_bus_record_age_seconds",
];

/// Every metric of a node, registered with its recorder.
pub struct Metrics {
    recorder: PrometheusRecorder,
    /// Live sessions on this node; set from the session map when scraped.
    pub sessions: Gauge,
    /// Sends committed as new messages and acknowledged.
    pub messages_accepted: Counter,
    /// Messages (and message events) handed to a live session's stream.
    pub messages_delivered: Counter,
    /// Refused sends, one counter per [`FAILURE_REASONS`] entry.
    messages_failed: Vec<Counter>,
    /// From a message's commit (its `sent_at`) to its hand-over to a
    /// recipient's stream, on the node delivering it.
    pub delivery_latency: Histogram,
    /// From the server receiving a send to the store committing it.
    pub send_to_commit: Histogram,
    pub bus_published: Counter,
    pub bus_received: Counter,
    pub bus_undecodable: Counter,
    pub bus_publish_failures: Counter,
    /// Age of a delivery record when this node reads it from its inbox.
    pub bus_record_age: Histogram,
    pub registry_failures: Counter,
    /// Failed store operations; set from the store when scraped.
    pub store_failures: Counter,
    pub dead_letters: Counter,
    pub dead_letter_failures: Counter,
    /// Messages this node's retention passes deleted.
    pub retention_deleted: Counter,
    /// Retention deletes the store refused (logged; the next pass retries).
    pub retention_failures: Counter,
}

/// What every handle is registered with: nothing filters on it here.
static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

impl Metrics {
    pub fn new() -> Self {
        let mut builder = PrometheusBuilder::new();
        for name in HISTOGRAMS {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_owned()), LATENCY_BUCKETS)
                .expect("the buckets are not empty");
        }
        let recorder = builder.build_recorder();
        let counter = |name: &'static str, help: &'static str| {
            recorder.describe_counter(
                KeyName::from_const_str(name),
                None,
                SharedString::const_str(help),
            );
            recorder.register_counter(&Key::from_static_name(name), &METADATA)
        };
        let gauge = |name: &'static str, help: &'static str| {
            recorder.describe_gauge(
                KeyName::from_const_str(name),
                None,
                SharedString::const_str(help),
            );
            recorder.register_gauge(&Key::from_static_name(name), &METADATA)
        };
        let histogram = |name: &'static str, help: &'static str| {
            debug_assert!(HISTOGRAMS.contains(&name), "{name} has buckets");
            recorder.describe_histogram(
                KeyName::from_const_str(name),
                None,
                SharedString::const_str(help),
            );
            recorder.register_histogram(&Key::from_static_name(name), &METADATA)
        };
        let failed = "chat_messages_failed_total";
        recorder.describe_counter(
            KeyName::from_const_str(failed),
            None,
            SharedString::const_str(
                "Sends refused, by reason (invalid_argument, rate_limited, not_found, \
                 permission_denied, resource_exhausted, unavailable, internal, other).",
            ),
        );
        let messages_failed = FAILURE_REASONS
            .iter()
            .map(|reason| {
                let key = Key::from_parts(failed, vec![Label::new("reason", *reason)]);
                recorder.register_counter(&key, &METADATA)
            })
            .collect();
        Self {
            sessions: gauge("chat_sessions", "Live sessions on this node."),
            messages_accepted: counter(
                "chat_messages_accepted_total",
                "Sends committed as new messages and acknowledged (retries of a committed send excluded).",
            ),
            messages_delivered: counter(
                "chat_messages_delivered_total",
                "Messages and message events handed to a live session on this node, one per session.",
            ),
            messages_failed,
            delivery_latency: histogram(
                "chat_delivery_latency_seconds",
                "From a message's commit to its hand-over to a recipient's session on this node (across nodes: through the bus).",
            ),
            send_to_commit: histogram(
                "chat_send_to_commit_seconds",
                "From this node receiving a send to the store committing it.",
            ),
            bus_published: counter(
                "chat_bus_records_published_total",
                "Delivery records handed to the bus for other nodes.",
            ),
            bus_received: counter(
                "chat_bus_records_received_total",
                "Delivery records read from this node's inbox and delivered.",
            ),
            bus_undecodable: counter(
                "chat_bus_undecodable_records_total",
                "Records read from this node's inbox that could not be decoded (dead-lettered).",
            ),
            bus_publish_failures: counter(
                "chat_bus_publish_failures_total",
                "Records the bus refused after every attempt (dead-lettered, typing excepted).",
            ),
            bus_record_age: histogram(
                "chat_bus_record_age_seconds",
                "Age of a delivery record when this node read it from its inbox: the bus lag.",
            ),
            registry_failures: counter(
                "chat_registry_failures_total",
                "Session registry operations that failed.",
            ),
            store_failures: counter(
                "chat_store_failures_total",
                "Store operations that failed (store unavailable or internal error), refusals excepted.",
            ),
            dead_letters: counter("chat_dead_letters_total", "Dead letters this node stored."),
            retention_deleted: counter(
                "chat_retention_deleted_total",
                "Messages this node's retention passes deleted (older than the configured age).",
            ),
            retention_failures: counter(
                "chat_retention_failures_total",
                "Retention deletes the store refused (logged; the next pass retries).",
            ),
            dead_letter_failures: counter(
                "chat_dead_letter_failures_total",
                "Dead letters this node could not store (logged, lost).",
            ),
            recorder,
        }
    }

    /// Counts a refused send under its reason.
    pub fn send_failed(&self, e: &ApiError) {
        let reason = failure_reason(e);
        if let Some(i) = FAILURE_REASONS.iter().position(|r| *r == reason) {
            self.messages_failed[i].increment(1);
        }
    }

    /// Counts a message handed to a live session, committed at
    /// `sent_at_unix_ms`.
    pub fn delivered(&self, sent_at_unix_ms: i64) {
        self.messages_delivered.increment(1);
        self.delivery_latency.record(age_seconds(sent_at_unix_ms));
    }

    /// The Prometheus text of every metric.
    pub fn render(&self) -> String {
        self.recorder.handle().render()
    }

    /// Folds the histogram samples recorded since the last call into their
    /// buckets (a scrape does it too).
    pub fn upkeep(&self) {
        self.recorder.handle().run_upkeep();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Seconds from `unix_ms` to now; never negative (clocks of two nodes may
/// disagree by a little).
pub fn age_seconds(unix_ms: i64) -> f64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    (now - unix_ms as f64 / 1000.0).max(0.0)
}

/// Folds histogram samples into buckets every [`UPKEEP_INTERVAL`] until
/// shutdown.
pub async fn upkeep(state: std::sync::Arc<crate::AppState>) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => state.metrics.upkeep(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_shows_from_the_start_with_help_and_buckets() {
        let metrics = Metrics::new();
        metrics.delivered(now_unix_ms());
        metrics.send_failed(&ApiError::InvalidArgument("x".into()));
        let text = metrics.render();
        for name in [
            "chat_sessions",
            "chat_messages_accepted_total",
            "chat_messages_delivered_total",
            "chat_messages_failed_total",
            "chat_send_to_commit_seconds",
            "chat_bus_record_age_seconds",
            "chat_store_failures_total",
            "chat_dead_letters_total",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}: {text}");
        }
        assert!(text.contains("chat_messages_delivered_total 1\n"), "{text}");
        assert!(
            text.contains("chat_messages_failed_total{reason=\"invalid_argument\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("chat_messages_failed_total{reason=\"unavailable\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE chat_delivery_latency_seconds histogram"));
        assert!(text.contains("chat_delivery_latency_seconds_bucket{le=\"5\"} 1\n"));
        assert!(text.contains("chat_delivery_latency_seconds_count 1\n"));
    }

    #[test]
    fn ages_are_never_negative() {
        assert_eq!(age_seconds(now_unix_ms() + 60_000), 0.0);
        assert!(age_seconds(now_unix_ms() - 2_000) >= 2.0);
    }
}
