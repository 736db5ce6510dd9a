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
        "Records read from this node's inbox that could not be decoded (dropped).",
        counter(&stats.undecodable_records),
    );
    metric(
        "chat_bus_publish_failures_total",
        "counter",
        "Publishes the bus refused; the recipients catch up on reconnect.",
        counter(&stats.publish_failures),
    );
    metric(
        "chat_registry_failures_total",
        "counter",
        "Session registry operations that failed.",
        counter(&stats.registry_failures),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
