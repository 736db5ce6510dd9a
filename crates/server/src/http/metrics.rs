//! `GET /metrics`: this node's metrics in the Prometheus text format
//! ([`crate::telemetry`]).

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::AppState;

pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let metrics = &state.metrics;
    // Read now from their one source of truth, not counted twice.
    metrics.sessions.set(state.delivery.sessions.total() as f64);
    metrics
        .store_failures
        .absolute(state.backends.store.failures());
    let mut out = metrics.render();
    // Counted on demand: the table is shared by every node of a cluster,
    // so no node's counter could say it. A store that cannot answer leaves
    // the gauge out rather than failing the whole scrape or showing a
    // stale number, which is why it is not a gauge of the recorder.
    match state.dead_letters.count().await {
        Ok(stored) => {
            let name = "chat_dead_letters_stored";
            let _ = write!(
                out,
                "# HELP {name} Dead letters in the store (all nodes), replayed or not, until purged.\n\
                 # TYPE {name} gauge\n{name} {stored}\n"
            );
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count the dead letters"),
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
