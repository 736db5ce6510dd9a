//! Chat over HTTP, for scripts and clients without gRPC: the same
//! operations as `ChatService`, authenticated by the same
//! `Authorization: Bearer <secret>` header, answered in the envelope.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chat_store::HistoryQuery;
use serde::Deserialize;

use super::types::{Conversation, ConversationList, Message, MessagePage};
use super::users::json_body;
use super::{failure, req_id, success};
use crate::chat::{SendInput, SendTarget};
use crate::{ApiError, AppState};

async fn caller(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::Unauthenticated)?;
    state.accounts.authenticate_header(header).await
}

/// The envelope around `result`.
fn respond<T: serde::Serialize>(req_id: String, result: Result<T, ApiError>) -> Response {
    match result {
        Ok(data) => success(req_id, data),
        Err(e) => failure(&req_id, e),
    }
}

fn seq_param(query: &HashMap<String, String>, name: &str) -> Result<u64, ApiError> {
    match query.get(name) {
        None => Ok(0),
        Some(v) => v.parse().map_err(|_| {
            ApiError::InvalidArgument(format!("{name} must be a non-negative integer"))
        }),
    }
}

/// `GET /v1/chat-apps/conversations`: the caller's conversations with
/// unread counts, most recently active first.
pub async fn conversations(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let req_id = req_id(&headers);
    let answer = async {
        let user = caller(&state, &headers).await?;
        let list = state.chat.conversations(&user).await?;
        let conversations = list
            .into_iter()
            .map(|c| Conversation {
                conversation_id: c.id,
                kind: match c.kind {
                    chat_store::ConversationKind::Group => "group",
                    chat_store::ConversationKind::Direct => "direct",
                }
                .to_owned(),
                peer: c.peer,
                name: c.name,
                last_seq: c.last_seq,
                read_seq: c.read_seq,
                unread_count: c.unread_count,
                last_message: c.last_message.map(Message::from),
            })
            .collect();
        Ok::<_, ApiError>(ConversationList { conversations })
    };
    respond(req_id, answer.await)
}

/// `GET /v1/chat-apps/conversations/{id}/messages?before_seq=&after_seq=&limit=`:
/// a page of history, ascending seq (as `GetHistory`). The caller is
/// authenticated first; an id that is not even UTF-8 names no conversation.
pub async fn messages(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let req_id = req_id(&headers);
    let answer = async {
        let user = caller(&state, &headers).await?;
        let Ok(Path(conversation_id)) = path else {
            return Err(ApiError::NotFound("conversation"));
        };
        let before = seq_param(&query, "before_seq")?;
        let after = seq_param(&query, "after_seq")?;
        let limit = u32::try_from(seq_param(&query, "limit")?).unwrap_or(u32::MAX);
        let page = state
            .chat
            .history(
                &user,
                &conversation_id,
                HistoryQuery {
                    before_seq: (before > 0).then_some(before),
                    after_seq: (after > 0).then_some(after),
                    limit,
                },
            )
            .await?;
        Ok::<_, ApiError>(MessagePage {
            messages: page.messages.into_iter().map(Message::from).collect(),
            has_more: page.has_more,
        })
    };
    respond(req_id, answer.await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    to_user: Option<String>,
    group_id: Option<String>,
    body: String,
    client_msg_id: String,
}

/// `POST /v1/chat-apps/messages` `{"to_user" | "group_id", "body",
/// "client_msg_id"}`: commits a message (idempotent by client_msg_id) and
/// answers it.
pub async fn send(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let req_id = req_id(&headers);
    let answer = async {
        let user = caller(&state, &headers).await?;
        let parsed: SendBody = json_body(&body)?;
        let target = match (parsed.to_user, parsed.group_id) {
            (Some(user), None) => Some(SendTarget::User(user)),
            (None, Some(group)) => Some(SendTarget::Group(group)),
            _ => None,
        };
        let input = SendInput {
            target,
            body: parsed.body,
            client_msg_id: parsed.client_msg_id,
            received: std::time::Instant::now(),
        };
        let appended = state.chat.send_message(&user, input, None).await?;
        Ok::<_, ApiError>(Message::from(appended.message))
    };
    respond(req_id, answer.await)
}
