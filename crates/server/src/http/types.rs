//! The JSON bodies of the HTTP API, once: the handlers serialize them and
//! every client of the API (the `chat-server admin` command, the test
//! support code, the bench) deserializes them, so a field renamed here is
//! renamed for all of them at once.
//!
//! These types are the wire format that `crates/server/openapi.json`
//! describes: field names and field order are part of it. They hold data
//! only; what a request does is the handlers' business (`admin.rs`,
//! `chat.rs`, `users.rs`, `health.rs`).

use serde::{Deserialize, Serialize};

use chat_store::StoredMessage;

/// Every answer: `{"req_id", "status", "error"?, "data"?, "code"}`, the
/// HTTP status equal to `code`. A success has `data`, an error has `error`
/// (and `/readyz` answering 503 has both).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub req_id: String,
    pub status: Status,
    // A missing `Option` field reads as `None` without `default`, which
    // would ask `T: Default` of the whole envelope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
    pub code: u16,
}

impl<T> Envelope<T> {
    /// A 200 answer around `data`.
    pub fn success(req_id: String, data: T) -> Self {
        Self {
            req_id,
            status: Status::Success,
            error: None,
            data: Some(data),
            code: 200,
        }
    }

    /// An error answer with HTTP status `code`.
    pub fn error(req_id: String, code: u16, error: ErrorBody) -> Self {
        Self {
            req_id,
            status: Status::Error,
            error: Some(error),
            data: None,
            code,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Success,
    Error,
}

/// What went wrong: `kind` is the gRPC code's name in snake case
/// (`not_found`, `unauthenticated`, …), `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub kind: String,
    pub message: String,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub healthy: bool,
}

/// `GET /readyz`: each backend's probe, `"ok"` or its error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    pub store: String,
    pub registry: String,
    pub bus: String,
}

/// `POST /v1/chat-apps/users` (with the `secret`, shown only there) and
/// `GET /v1/chat-apps/users?username=` (without).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub username: String,
    pub name: String,
    pub phone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// `GET /v1/chat-apps/conversations`, most recently active first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationList {
    pub conversations: Vec<Conversation>,
}

/// A conversation as the caller sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    pub conversation_id: String,
    /// `"direct"` or `"group"`.
    pub kind: String,
    /// The other member of a direct conversation.
    pub peer: Option<String>,
    /// The name of a group.
    pub name: Option<String>,
    pub last_seq: u64,
    pub read_seq: u64,
    pub unread_count: u64,
    pub last_message: Option<Message>,
}

/// A message or event of a conversation as the HTTP API shows it
/// (`Message` in `openapi.json`); `POST /v1/chat-apps/messages` answers
/// one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    pub conversation_id: String,
    pub seq: u64,
    pub sender: String,
    pub body: String,
    pub client_msg_id: String,
    pub sent_at_unix_ms: i64,
    /// `text`, `group_created`, `members_added`, `member_removed`,
    /// `member_left`, `message_edited` or `message_deleted`.
    pub kind: String,
    pub target_seq: u64,
    pub edited: bool,
    pub deleted: bool,
    pub members: Vec<String>,
}

impl From<StoredMessage> for Message {
    fn from(m: StoredMessage) -> Self {
        Self {
            id: m.id,
            conversation_id: m.conversation_id,
            seq: m.seq,
            sender: m.sender,
            body: m.body,
            client_msg_id: m.client_msg_id,
            sent_at_unix_ms: m.sent_at_unix_ms,
            kind: m.kind.as_str().to_owned(),
            target_seq: m.target_seq,
            edited: m.edited,
            deleted: m.deleted,
            members: m.members,
        }
    }
}

/// `GET /v1/chat-apps/conversations/{id}/messages`: a page of history,
/// ascending seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePage {
    pub messages: Vec<Message>,
    pub has_more: bool,
}

/// `GET /admin/users`: a page of users by username.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPage {
    pub users: Vec<UserEntry>,
    pub has_more: bool,
    /// The cursor for the next page (the last username listed).
    pub next_after: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEntry {
    pub username: String,
    pub name: String,
    pub created_at_unix_ms: i64,
    /// The same time in RFC 3339 ([`rfc3339`]).
    pub created_at: String,
}

/// `POST /admin/users/{username}/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    pub username: String,
    /// The new secret, shown once.
    pub secret: String,
    /// Sessions of the user on the answering server that were told.
    pub local_sessions: usize,
    /// Other servers holding sessions of the user that were told.
    pub nodes: Vec<String>,
    /// Where the revocation could not be delivered.
    pub undelivered: Vec<String>,
}

/// `GET /admin/sessions`: who is connected where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionList {
    pub sessions: Vec<SessionEntry>,
    /// More sessions matched than `limit`.
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEntry {
    pub username: String,
    pub node: String,
    pub session: u64,
}

/// `GET /admin/nodes`: the servers alive in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeList {
    pub nodes: Vec<NodeEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub node: String,
    pub grpc_addr: String,
    pub http_addr: String,
    pub started_at_unix_ms: i64,
    pub started_at: String,
    pub heartbeat_at_unix_ms: i64,
    pub heartbeat_at: String,
}

/// `GET /admin/dead-letters`: a page, oldest first, without payloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterPage {
    pub dead_letters: Vec<DeadLetterSummary>,
    pub has_more: bool,
    /// The cursor for the next page (the last id listed).
    pub next_after: Option<u64>,
}

/// A dead letter without its payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterSummary {
    pub id: u64,
    pub node: String,
    pub reason: String,
    pub created_at_unix_ms: i64,
    pub created_at: String,
    pub replayed_at_unix_ms: Option<i64>,
    pub replay_attempts: u32,
    pub payload_bytes: usize,
}

/// `GET /admin/dead-letters/{id}`: the letter with its payload, as text
/// (`null` unless UTF-8) and always as hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterDetail {
    #[serde(flatten)]
    pub letter: DeadLetterSummary,
    pub payload_text: Option<String>,
    pub payload_hex: String,
}

/// One letter's replay: `{"outcome", …, "id"}`; `POST
/// /admin/dead-letters/{id}/replay` adds the letter as it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayResult {
    #[serde(flatten)]
    pub outcome: ReplayOutcome,
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReplayOutcome {
    /// Delivered to `local_sessions` on the answering server and to the
    /// inboxes of `nodes`.
    Replayed {
        local_sessions: usize,
        nodes: Vec<String>,
    },
    /// The payload still does not decode.
    NotReplayable { reason: String },
    /// Not delivered now; may succeed later.
    Failed { reason: String },
}

/// `POST /admin/dead-letters/replay`: pending letters tried, oldest first,
/// up to the first that could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayBatch {
    pub results: Vec<ReplayResult>,
    pub replayed: usize,
    pub not_replayable: usize,
    pub failed: usize,
    pub has_more: bool,
    pub next_after: Option<u64>,
}

/// `DELETE /admin/dead-letters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purged {
    pub purged: u64,
}

/// RFC 3339 in UTC with milliseconds, e.g. `2025-01-02T03:04:05.678Z`
/// (empty for a time out of chrono's range).
pub fn rfc3339(unix_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter() -> DeadLetterSummary {
        DeadLetterSummary {
            id: 7,
            node: "n1".into(),
            reason: "bad".into(),
            created_at_unix_ms: 1_700_000_000_000,
            created_at: rfc3339(1_700_000_000_000),
            replayed_at_unix_ms: None,
            replay_attempts: 0,
            payload_bytes: 3,
        }
    }

    /// Field names and order are the wire format: each shape written out
    /// and read back.
    #[test]
    fn bodies_keep_their_wire_shape() {
        let replayed = ReplayResult {
            outcome: ReplayOutcome::Replayed {
                local_sessions: 1,
                nodes: vec!["b".into()],
            },
            id: 7,
            dead_letter: Some(letter()),
        };
        let text = serde_json::to_string(&replayed).unwrap();
        assert!(
            text.starts_with(r#"{"outcome":"replayed","local_sessions":1,"nodes":["b"],"id":7,"dead_letter":{"id":7,"node":"n1""#),
            "{text}"
        );
        assert_eq!(
            serde_json::from_str::<ReplayResult>(&text).unwrap(),
            replayed
        );
        let failed = ReplayResult {
            outcome: ReplayOutcome::NotReplayable {
                reason: "eh".into(),
            },
            id: 8,
            dead_letter: None,
        };
        let text = serde_json::to_string(&failed).unwrap();
        assert_eq!(text, r#"{"outcome":"not_replayable","reason":"eh","id":8}"#);
        assert_eq!(serde_json::from_str::<ReplayResult>(&text).unwrap(), failed);

        let detail = DeadLetterDetail {
            letter: letter(),
            payload_text: None,
            payload_hex: "ff00".into(),
        };
        let text = serde_json::to_string(&detail).unwrap();
        assert!(
            text.ends_with(r#""payload_bytes":3,"payload_text":null,"payload_hex":"ff00"}"#),
            "{text}"
        );
        assert_eq!(
            serde_json::from_str::<DeadLetterDetail>(&text).unwrap(),
            detail
        );

        let ok = Envelope::success("r1".into(), Health { healthy: true });
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"req_id":"r1","status":"success","data":{"healthy":true},"code":200}"#
        );
        let error = Envelope::<Health>::error(
            "r2".into(),
            404,
            ErrorBody {
                kind: "not_found".into(),
                message: "route not found".into(),
            },
        );
        let text = serde_json::to_string(&error).unwrap();
        assert_eq!(
            text,
            r#"{"req_id":"r2","status":"error","error":{"kind":"not_found","message":"route not found"},"code":404}"#
        );
        assert_eq!(
            serde_json::from_str::<Envelope<Health>>(&text).unwrap(),
            error
        );
    }
}
