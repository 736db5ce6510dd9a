//! `GET /metrics`: this node's counters in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::AppState;

pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let stats = &state.stats;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    };
    metric(
        "chat_sessions",
        "gauge",
        "Live sessions on this node.",
        state.sessions.total() as u64,
    );
    let counter = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    metric(
        "chat_bus_records_published_total",
        "counter",
        "Delivery records handed to the bus for other nodes.",
        counter(&stats.records_published),
    );
    metric(
        "chat_bus_records_received_total",
        "counter",
        "Delivery records read from this node's inbox and delivered.",
        counter(&stats.records_received),
    );
    metric(
        "chat_bus_undecodable_records_total",
        "counter",
        "Records read from this node's inbox that could not be decoded (dead-lettered).",
        counter(&stats.undecodable_records),
    );
    metric(
        "chat_bus_publish_failures_total",
        "counter",
        "Records the bus refused after every attempt (dead-lettered, typing excepted).",
        counter(&stats.publish_failures),
    );
    metric(
        "chat_registry_failures_total",
        "counter",
        "Session registry operations that failed.",
        counter(&stats.registry_failures),
    );
    metric(
        "chat_dead_letters_total",
        "counter",
        "Dead letters this node stored.",
        counter(&stats.dead_letters),
    );
    metric(
        "chat_dead_letter_failures_total",
        "counter",
        "Dead letters this node could not store (logged, lost).",
        counter(&stats.dead_letter_failures),
    );
    metric(
        "chat_retention_deleted_total",
        "counter",
        "Messages this node's retention passes deleted (older than the configured age).",
        counter(&stats.retention_deleted),
    );
    metric(
        "chat_retention_failures_total",
        "counter",
        "Retention deletes the store refused (logged; the next pass retries).",
        counter(&stats.retention_failures),
    );
    // Counted on demand: the table is shared by every node of a cluster,
    // so no node's counter could say it. A store that cannot answer leaves
    // the gauge out rather than failing the whole scrape.
    match state.store.count_dead_letters().await {
        Ok(stored) => metric(
            "chat_dead_letters_stored",
            "gauge",
            "Dead letters in the store (all nodes), replayed or not, until purged.",
            stored,
        ),
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count the dead letters"),
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
