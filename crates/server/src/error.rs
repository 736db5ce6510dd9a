//! [`ApiError`]: what a request can fail with, mapped once to a gRPC status
//! and once to the HTTP envelope.

use chat_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or breaks a limit; retrying it unchanged
    /// fails again.
    #[error("{0}")]
    InvalidArgument(String),
    /// No valid bearer secret. One answer for every cause.
    #[error("missing or invalid credentials")]
    Unauthenticated,
    /// The object does not exist or the caller may not see it (one answer
    /// for both).
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller may see the object but not do this.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// A rate limit: retry after this long.
    #[error("too many {what}: retry in {} ms", retry_after.as_millis())]
    RateLimited {
        what: &'static str,
        retry_after: std::time::Duration,
    },
    /// An HTTP request body over the limit (`limit` bytes); nothing was
    /// read or changed.
    #[error("the request body is larger than {limit} bytes, the most accepted")]
    PayloadTooLarge { limit: usize },
    /// A backend is down; nothing was committed.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// This server is stopping (a drain, not a failure): reconnect, to it
    /// once it is back or to another server of the cluster.
    #[error("the server is shutting down: reconnect")]
    Stopping,
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// A stable machine-readable name, the gRPC code in snake case.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::InvalidArgument(_) => "invalid_argument",
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::NotFound(_) => "not_found",
            ApiError::AlreadyExists(_) => "already_exists",
            ApiError::PermissionDenied(_) => "permission_denied",
            ApiError::ResourceExhausted(_) | ApiError::RateLimited { .. } => "resource_exhausted",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::Unavailable(_) | ApiError::Stopping => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            ApiError::InvalidArgument(_) => 400,
            ApiError::Unauthenticated => 401,
            ApiError::NotFound(_) => 404,
            ApiError::AlreadyExists(_) => 409,
            ApiError::PermissionDenied(_) => 403,
            ApiError::ResourceExhausted(_) | ApiError::RateLimited { .. } => 429,
            ApiError::PayloadTooLarge { .. } => 413,
            ApiError::Unavailable(_) | ApiError::Stopping => 503,
            ApiError::Internal(_) => 500,
        }
    }

    /// Logs what the client is not told: internal details stay here.
    fn log(&self) {
        if let ApiError::Internal(detail) | ApiError::Unavailable(detail) = self {
            tracing::error!(kind = self.kind(), detail = %detail, "request failed");
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("conversation"),
            StoreError::AlreadyExists => ApiError::AlreadyExists("already exists".into()),
            StoreError::Invalid(m) => ApiError::InvalidArgument(m),
            StoreError::Forbidden(m) => ApiError::PermissionDenied(m),
            StoreError::Limit(m) => ApiError::ResourceExhausted(m),
            StoreError::Unavailable(m) => ApiError::Unavailable(m),
            StoreError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        use tonic::Code;
        e.log();
        let retry_after = match &e {
            ApiError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        let code = match e {
            ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::Unauthenticated => Code::Unauthenticated,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::AlreadyExists(_) => Code::AlreadyExists,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::ResourceExhausted(_)
            | ApiError::RateLimited { .. }
            | ApiError::PayloadTooLarge { .. } => Code::ResourceExhausted,
            ApiError::Unavailable(_) | ApiError::Stopping => Code::Unavailable,
            ApiError::Internal(_) => Code::Internal,
        };
        let mut status = tonic::Status::new(code, e.to_string());
        if let Some(wait) = retry_after {
            // Whole milliseconds, at least 1: when to try again.
            let ms = wait.as_millis().max(1).to_string();
            if let Ok(value) = ms.parse() {
                status.metadata_mut().insert("retry-after-ms", value);
            }
        }
        status
    }
}

impl ApiError {
    /// The body of an error answer: the seed's envelope with
    /// `"status": "error"`.
    pub fn envelope(&self, req_id: &str) -> crate::http::types::Envelope<()> {
        self.log();
        crate::http::types::Envelope::error(
            req_id.to_owned(),
            self.http_status(),
            crate::http::types::ErrorBody {
                kind: self.kind().to_owned(),
                message: self.to_string(),
            },
        )
    }
}
