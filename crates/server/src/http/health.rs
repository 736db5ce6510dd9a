//! `GET /readyz`: whether this node can serve now ([`crate::health`]).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::req_id;
use super::types::{Envelope, ErrorBody, Readiness};
use crate::AppState;

/// 200 when every backend answers its probe, else 503 naming the backends
/// that did not with their error, in the same shape (plus the envelope's
/// `error`); 503 as well while the server shuts down, so that load
/// balancers stop sending it traffic.
pub async fn readyz(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let req_id = req_id(&headers);
    let readiness = state.readiness().await;
    let show = |answer: &Result<(), String>| match answer {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    let data = Readiness {
        ready: readiness.ready(),
        store: show(&readiness.store),
        registry: show(&readiness.registry),
        bus: show(&readiness.bus),
    };
    if readiness.ready() {
        return super::success(req_id, data);
    }
    let failing = readiness.failing();
    let message = if readiness.shutting_down {
        "the server is shutting down".to_owned()
    } else {
        format!("not ready: {} not answering", failing.join(", "))
    };
    tracing::warn!(failing = ?failing, shutting_down = readiness.shutting_down, "not ready");
    let body = Envelope {
        data: Some(data),
        ..Envelope::error(
            req_id,
            503,
            ErrorBody {
                kind: "unavailable".to_owned(),
                message,
            },
        )
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}
