//! Domain types of the store. They carry no wire-format concerns: the
//! server converts them to and from protobuf at its edge.

/// A user to create. `username` is already validated and lowercase.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub name: String,
    pub phone: String,
    /// SHA-256 of the user's secret; the secret itself is never stored.
    pub token_hash: [u8; 32],
}

/// What anyone may see of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserProfile {
    pub username: String,
    pub name: String,
    pub phone: String,
    pub created_at_unix_ms: i64,
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The direct conversation with this user (normalized username).
    Direct(String),
    /// A group conversation by id.
    Group(String),
}

/// A message to commit. The body is already validated.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub sender: String,
    pub target: Target,
    pub body: String,
    pub client_msg_id: String,
}

/// A committed message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredMessage {
    pub id: String,
    pub conversation_id: String,
    pub seq: u64,
    pub sender: String,
    pub body: String,
    pub client_msg_id: String,
    pub sent_at_unix_ms: i64,
}

/// The result of [`crate::MessageStore::append_message`].
#[derive(Debug, Clone)]
pub struct Appended {
    pub message: StoredMessage,
    /// Every member of the conversation, the sender included.
    pub members: Vec<String>,
    /// The message existed already (a retry); nothing was stored.
    pub duplicate: bool,
}

/// The direction and size of a history page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only messages with a seq below this.
    pub before_seq: Option<u64>,
    /// Only messages with a seq above this; the page starts right after it.
    pub after_seq: Option<u64>,
    /// At most this many messages (the store caps it at [`MAX_PAGE`]).
    pub limit: u32,
}

/// The largest page any backend returns.
pub const MAX_PAGE: u32 = 200;

/// A page of history in ascending seq order.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    pub messages: Vec<StoredMessage>,
    /// More messages exist in the paging direction.
    pub has_more: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationKind {
    Direct,
    Group,
}

/// A conversation as one member sees it.
#[derive(Debug, Clone)]
pub struct ConversationSummary {
    pub id: String,
    pub kind: ConversationKind,
    /// The other member of a direct conversation.
    pub peer: Option<String>,
    pub last_seq: u64,
    pub read_seq: u64,
    pub delivered_seq: u64,
    /// Messages after `read_seq` that this member did not send.
    pub unread_count: u64,
    pub last_message: Option<StoredMessage>,
}

/// A member's read cursor after [`crate::MessageStore::mark_read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadCursor {
    pub read_seq: u64,
    pub unread_count: u64,
}
