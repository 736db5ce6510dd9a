//! The `chat.v1` gRPC services. The only module that sees protobuf types:
//! it converts them to domain types at the door and back on the way out.

mod chat;
mod convert;
mod session;
mod users;

use std::sync::Arc;

use chat_proto::chat_service_server::ChatServiceServer;
use chat_proto::user_service_server::UserServiceServer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::{AppState, ServerError};

/// Serves both services on `listener`, over TLS with `tls`, until
/// `shutdown`.
pub async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    // Incoming messages are bounded; answers are not, beyond what the API
    // itself bounds (a history page is at most 200 messages of at most
    // `max_body_bytes`), so a full page is never refused on its way out.
    let limit = state.config.limits.max_frame_bytes;
    let chat = ChatServiceServer::new(chat::ChatApi {
        state: state.clone(),
    })
    .max_decoding_message_size(limit);
    let users = UserServiceServer::new(users::UserApi { state }).max_decoding_message_size(limit);
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .layer(tower::util::MapResponseLayer::new(
            too_large_as_resource_exhausted,
        ))
        // Each call runs in a span naming its method (`Connect` streams
        // add a `session` span of their own).
        .trace_fn(|request| {
            let method = request.uri().path().rsplit('/').next().unwrap_or_default();
            tracing::info_span!("grpc", method = %method)
        })
        .add_service(chat)
        .add_service(users);
    match tls {
        Some(tls) => {
            let incoming = crate::tls::accept(listener, tls, shutdown.clone());
            server
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await?
        }
        None => {
            // Nagle's algorithm would hold small frames back for up to 40 ms.
            let incoming = TcpIncoming::from_listener(listener, true, None)
                .map_err(|e| ServerError::Listen(e.to_string()))?;
            server
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await?
        }
    }
    Ok(())
}

/// gRPC's answer to a message larger than the configured limit is
/// `RESOURCE_EXHAUSTED`: what the C, Go and Java implementations send and
/// what their clients expect. tonic refuses such a request before any
/// handler runs, as `OUT_OF_RANGE`, which nothing else of this API
/// answers: a unary call's refusal is rewritten here, and a `Connect`
/// stream's by [`too_large`], so that both say the same.
fn too_large_as_resource_exhausted<B>(
    mut response: axum::http::Response<B>,
) -> axum::http::Response<B> {
    let headers = response.headers_mut();
    let out_of_range = (tonic::Code::OutOfRange as i32).to_string();
    if headers
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes() == out_of_range.as_bytes())
    {
        let exhausted = (tonic::Code::ResourceExhausted as i32).to_string();
        if let Ok(value) = axum::http::HeaderValue::from_str(&exhausted) {
            headers.insert("grpc-status", value);
        }
    }
    response
}

/// The status of a client frame that could not be read: one too large
/// (tonic's `OUT_OF_RANGE`) is `RESOURCE_EXHAUSTED`, as for unary calls;
/// anything else is `INVALID_ARGUMENT`.
pub(crate) fn unreadable_frame(status: &tonic::Status) -> tonic::Status {
    let message = format!("cannot read client frame: {}", status.message());
    if status.code() == tonic::Code::OutOfRange {
        tonic::Status::resource_exhausted(message)
    } else {
        tonic::Status::invalid_argument(message)
    }
}
