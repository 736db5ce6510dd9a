//! Users over HTTP.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::types::Profile;
use super::{failure, req_id, success};
use crate::{ApiError, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    username: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    phone: String,
}

/// A request body: one JSON object. (serde alone would also read a struct
/// from an array of its fields in order, which no client means to send.)
pub(super) fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let invalid =
        |detail: String| ApiError::InvalidArgument(format!("invalid JSON body: {detail}"));
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(invalid("expected an object".into()));
    }
    serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))
}

/// `POST /v1/chat-apps/users` `{"username","name","phone"}`: registers a
/// user and returns its profile with the secret, which no other answer
/// ever shows. The body is read as JSON whatever its content type, as
/// `curl -d` sends it as a form.
pub async fn register(
    State(state): State<Arc<AppState>>,
    client: Option<ConnectInfo<std::net::SocketAddr>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req_id = req_id(&headers);
    let parsed: RegisterBody = match json_body(&body) {
        Ok(b) => b,
        Err(e) => return failure(&req_id, e),
    };
    match state
        .accounts
        .register(
            &parsed.username,
            &parsed.name,
            &parsed.phone,
            client.map(|ConnectInfo(addr)| addr.ip()),
        )
        .await
    {
        Ok((profile, secret)) => success(
            req_id,
            Profile {
                username: profile.username,
                name: profile.name,
                phone: profile.phone,
                secret: Some(secret),
            },
        ),
        Err(e) => failure(&req_id, e),
    }
}

/// `GET /v1/chat-apps/users?username=…`: the public profile.
pub async fn get_user(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let req_id = req_id(&headers);
    let Some(username) = query.get("username") else {
        return failure(
            &req_id,
            ApiError::InvalidArgument("the username parameter is required".into()),
        );
    };
    match state.accounts.profile(username).await {
        Ok(profile) => success(
            req_id,
            Profile {
                username: profile.username,
                name: profile.name,
                phone: profile.phone,
                secret: None,
            },
        ),
        Err(e) => failure(&req_id, e),
    }
}
