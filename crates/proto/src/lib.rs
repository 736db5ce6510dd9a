//! The `chat.v1` protocol shared by the server, the client and the tools.
//!
//! This crate owns the wire types only: it holds no behaviour. Only the gRPC
//! layers of the server and the client use these types; the store and the
//! session logic work on their own domain types.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("chat.v1");
}

pub use v1::*;

pub mod codec;

/// Client-side authentication: adds `authorization: Bearer <secret>` to
/// every call of a generated client.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::AsciiMetadataValue);

impl Bearer {
    /// `None` when the secret cannot be a header value.
    pub fn new(secret: &str) -> Option<Self> {
        format!("Bearer {secret}").parse().ok().map(Self)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A `ChatService` client that authenticates every call.
pub type AuthedChatClient = chat_service_client::ChatServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;
