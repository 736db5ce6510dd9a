//! The `chat.v1` gRPC services. The only module that sees protobuf types:
//! it converts them to domain types at the door and back on the way out.

mod chat;
mod convert;
mod session;
mod users;

use std::future::Future;
use std::sync::Arc;

use chat_proto::chat_service_server::ChatServiceServer;
use chat_proto::user_service_server::UserServiceServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::{AppState, ServerError};

/// Serves both services on `listener` until `shutdown` completes.
pub async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    // Incoming messages are bounded; answers are not, beyond what the API
    // itself bounds (a history page is at most 200 messages of at most
    // `max_body_bytes`), so a full page is never refused on its way out.
    let limit = state.config.limits.max_frame_bytes;
    // Nagle's algorithm would hold small frames back for up to 40 ms.
    let incoming = TcpIncoming::from_listener(listener, true, None)
        .map_err(|e| ServerError::Listen(e.to_string()))?;
    let chat = ChatServiceServer::new(chat::ChatApi {
        state: state.clone(),
    })
    .max_decoding_message_size(limit);
    let users = UserServiceServer::new(users::UserApi { state }).max_decoding_message_size(limit);
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        // Each call runs in a span naming its method (`Connect` streams
        // add a `session` span of their own).
        .trace_fn(|request| {
            let method = request.uri().path().rsplit('/').next().unwrap_or_default();
            tracing::info_span!("grpc", method = %method)
        })
        .add_service(chat)
        .add_service(users)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
