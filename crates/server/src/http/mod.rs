//! The JSON API over HTTP: registration and profiles in the seed's
//! envelope, conversations, history and sending (`chat.rs`, bearer
//! secret), health, metrics, the admin API (`admin.rs`: users, sessions,
//! servers and the dead-letter queue, behind the admin token), and the
//! OpenAPI document describing all of it (`openapi.rs`,
//! `crates/server/openapi.json`). The bodies are the typed structs of
//! `types.rs`, shared with the clients of the API.
//!
//! Every answer is `{"req_id", "status", "data" | "error", "code"}` and the
//! HTTP status equals `code`.

mod admin;
mod chat;
mod health;
mod metrics;
mod openapi;
mod trace;
pub mod types;
mod users;

pub use admin::MAX_SESSIONS;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;

use crate::{ApiError, AppState, ServerError};

/// The routing table: one line per endpoint.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.limits.max_http_body_bytes;
    Router::new()
        .route(
            "/v1/chat-apps/users",
            get(users::get_user).post(users::register),
        )
        .route("/v1/chat-apps/conversations", get(chat::conversations))
        .route(
            "/v1/chat-apps/conversations/:id/messages",
            get(chat::messages),
        )
        .route("/v1/chat-apps/messages", post(chat::send))
        .route("/healthz", get(healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(openapi::document))
        .route(
            "/admin/users",
            get(admin::users).fallback(admin::other_method),
        )
        .route(
            "/admin/users/:username/revoke",
            post(admin::revoke).fallback(admin::other_method),
        )
        .route(
            "/admin/sessions",
            get(admin::sessions).fallback(admin::other_method),
        )
        .route(
            "/admin/nodes",
            get(admin::nodes).fallback(admin::other_method),
        )
        .route(
            "/admin/dead-letters",
            get(admin::list)
                .delete(admin::purge)
                .fallback(admin::other_method),
        )
        .route(
            "/admin/dead-letters/replay",
            post(admin::replay_pending).fallback(admin::other_method),
        )
        .route(
            "/admin/dead-letters/:id",
            get(admin::show).fallback(admin::other_method),
        )
        .route(
            "/admin/dead-letters/:id/replay",
            post(admin::replay).fallback(admin::other_method),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            body_limit,
            body_too_large,
        ))
        .layer(axum::middleware::from_fn(trace::trace))
        .with_state(state)
}

/// A body over the limit is refused by axum's extractor before the
/// handler runs, in plain text; here it becomes the envelope every other
/// error is (`payload_too_large`, 413), naming the limit.
async fn body_too_large(
    axum::extract::State(limit): axum::extract::State<usize>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let id = req_id(request.headers());
    let response = next.run(request).await;
    if response.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return failure(&id, ApiError::PayloadTooLarge { limit });
    }
    response
}

/// Serves the API on `listener`, over TLS with `tls`, until `shutdown`;
/// then waits for the requests in progress.
pub async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let Some(tls) = tls else {
        // The client's address, for the per-address rate limits.
        let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await?;
        return Ok(());
    };
    // Browsers that reached the API over TLS once never fall back to
    // plaintext for it.
    let app = router(state).layer(axum::middleware::map_response(hsts));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = crate::tls::accept(listener, tls, shutdown.clone());
    loop {
        let connection = tokio::select! {
            _ = shutdown.cancelled() => break,
            connection = connections.next() => match connection {
                Some(Ok(connection)) => connection,
                Some(Err(_)) | None => break,
            },
        };
        let remote = connection.remote;
        let app = app.clone();
        // What `into_make_service_with_connect_info` does: the client's
        // address in every request, for the per-address rate limits.
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(remote));
            tower::ServiceExt::oneshot(app.clone(), request)
        });
        let builder =
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        let connection = builder
            .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(connection), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%remote, error = %e, "HTTP connection failed");
            }
        });
    }
    drop(connections);
    graceful.shutdown().await;
    Ok(())
}

/// `Strict-Transport-Security` on every answer served over TLS: a year.
async fn hsts(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    response
}

/// The request id: the client's `x-request-id` if it sent a sane one, a
/// fresh random one otherwise.
pub fn req_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| hex::encode(rand::random::<[u8; 8]>()))
}

/// A success envelope around `data`.
pub fn success<T: serde::Serialize>(req_id: String, data: T) -> Response {
    (StatusCode::OK, Json(types::Envelope::success(req_id, data))).into_response()
}

/// An error envelope; the HTTP status equals its `code`. A 401 names the
/// scheme to use (`WWW-Authenticate: Bearer`).
pub fn failure(req_id: &str, error: ApiError) -> Response {
    let status =
        StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(error.envelope(req_id))).into_response();
    if let ApiError::Unauthenticated = error {
        // As HTTP requires of a 401.
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let ApiError::RateLimited { retry_after, .. } = error {
        // Whole seconds, rounded up: RFC 9110 has no finer unit.
        let secs = retry_after.as_millis().div_ceil(1000).max(1);
        if let Ok(value) = secs.to_string().parse() {
            response.headers_mut().insert("retry-after", value);
        }
    }
    response
}

/// `GET /healthz`: the process is up and serving HTTP (liveness only;
/// `/readyz` asks the backends).
async fn healthz(headers: HeaderMap) -> Response {
    success(req_id(&headers), types::Health { healthy: true })
}

async fn not_found(headers: HeaderMap) -> Response {
    failure(&req_id(&headers), ApiError::NotFound("route"))
}
