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
    /// When the message was written, if not now: a message brought over
    /// from elsewhere keeps its original time, so the retention policy
    /// sees it as old as it is. `None` (what the server always passes):
    /// the commit time. The time never orders anything; the seq does.
    pub sent_at_unix_ms: Option<i64>,
}

/// A committed message, as the store keeps it. It has no wire format of
/// its own: each boundary (protobuf, the HTTP JSON, the record between
/// nodes) converts it to its own type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: String,
    pub conversation_id: String,
    pub seq: u64,
    /// Who wrote it, or who made the membership change.
    pub sender: String,
    /// The text (the latest, if edited; empty if deleted); for an edit
    /// event, the new text; empty for a membership event.
    pub body: String,
    pub client_msg_id: String,
    pub sent_at_unix_ms: i64,
    pub kind: MessageKind,
    /// For an edit or delete event: the seq of the changed message.
    pub target_seq: u64,
    /// The text was edited after it was sent.
    pub edited: bool,
    /// The message was deleted (its body is empty).
    pub deleted: bool,
    /// For a membership event: the usernames it concerns (whom the group
    /// was created with, who was added, removed or left); empty otherwise.
    pub members: Vec<String>,
}

/// What a message is: text, or a membership event of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MessageKind {
    #[default]
    Text,
    GroupCreated,
    MembersAdded,
    MemberRemoved,
    MemberLeft,
    MessageEdited,
    MessageDeleted,
}

impl MessageKind {
    /// A change of a group's membership.
    pub fn is_membership(self) -> bool {
        matches!(
            self,
            MessageKind::GroupCreated
                | MessageKind::MembersAdded
                | MessageKind::MemberRemoved
                | MessageKind::MemberLeft
        )
    }
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Text => "text",
            MessageKind::GroupCreated => "group_created",
            MessageKind::MembersAdded => "members_added",
            MessageKind::MemberRemoved => "member_removed",
            MessageKind::MemberLeft => "member_left",
            MessageKind::MessageEdited => "message_edited",
            MessageKind::MessageDeleted => "message_deleted",
        }
    }

    /// Reads a stored name; unknown names (from a newer version) are text.
    pub fn parse(name: &str) -> Self {
        match name {
            "group_created" => MessageKind::GroupCreated,
            "members_added" => MessageKind::MembersAdded,
            "member_removed" => MessageKind::MemberRemoved,
            "member_left" => MessageKind::MemberLeft,
            "message_edited" => MessageKind::MessageEdited,
            "message_deleted" => MessageKind::MessageDeleted,
            _ => MessageKind::Text,
        }
    }
}

/// An edit or deletion of a text message, by its sender.
#[derive(Debug, Clone)]
pub struct MessageChange {
    /// Who asks; must be the message's sender.
    pub editor: String,
    pub conversation_id: String,
    /// The message to change.
    pub seq: u64,
    /// The new text, or `None` to delete.
    pub body: Option<String>,
    /// Makes the change idempotent, as for sends.
    pub client_msg_id: String,
}

/// A member's standing in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupRole {
    Member,
    Admin,
    Owner,
}

impl GroupRole {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupRole::Member => "member",
            GroupRole::Admin => "admin",
            GroupRole::Owner => "owner",
        }
    }

    pub fn parse(name: &str) -> Self {
        match name {
            "owner" => GroupRole::Owner,
            "admin" => GroupRole::Admin,
            _ => GroupRole::Member,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub username: String,
    pub role: GroupRole,
    /// The seq of the event that added the member: they read from there on.
    pub joined_seq: u64,
}

/// A group as its members see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub id: String,
    pub name: String,
    /// Sorted by username.
    pub members: Vec<GroupMember>,
    pub last_seq: u64,
}

/// A change of a group's membership.
#[derive(Debug, Clone)]
pub enum GroupChange {
    /// `owner` creates a group with `members` (the owner need not be listed).
    Create {
        owner: String,
        name: String,
        members: Vec<String>,
    },
    /// `actor` (owner or admin) adds `usernames`; those already members
    /// are skipped.
    Add {
        actor: String,
        group_id: String,
        usernames: Vec<String>,
    },
    /// `actor` (owner or admin) removes `username`; when `actor` is
    /// `username`, the member leaves (anyone may leave).
    Remove {
        actor: String,
        group_id: String,
        username: String,
    },
}

/// Bounds on groups.
#[derive(Debug, Clone, Copy)]
pub struct GroupLimits {
    /// Most members of one group, the owner included.
    pub max_members: usize,
    /// Most groups one user belongs to.
    pub max_groups_per_user: usize,
}

/// The result of a [`GroupChange`].
#[derive(Debug, Clone)]
pub struct GroupChanged {
    /// The group after the change (members only; empty after the last
    /// member left).
    pub group: GroupInfo,
    /// The membership event, if anything changed.
    pub event: Option<StoredMessage>,
    /// Who must hear of the event: every member after the change, and
    /// whoever was removed or left.
    pub notify: Vec<String>,
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
    /// The name of a group.
    pub name: Option<String>,
    /// The other member of a direct conversation.
    pub peer: Option<String>,
    pub last_seq: u64,
    pub read_seq: u64,
    pub delivered_seq: u64,
    /// Text messages after `read_seq` that this member did not send
    /// (membership events never count).
    pub unread_count: u64,
    pub last_message: Option<StoredMessage>,
}

/// A member's read cursor after [`crate::MessageStore::mark_read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadCursor {
    pub read_seq: u64,
    pub unread_count: u64,
}

/// A delivery record that could not be processed, for the dead-letter
/// store ([`crate::DeadLetterStore`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeadLetter {
    /// The node that gave up on the record: the one whose inbox it reached
    /// undecodable, or the one whose publish to another node failed.
    pub node: String,
    /// Why, for an operator: what failed and, for a failed publish, the
    /// node it was for.
    pub reason: String,
    /// The record exactly as read from (or meant for) the bus.
    pub payload: Vec<u8>,
}

/// A stored dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Assigned by the store, increasing in insertion order (oldest first).
    pub id: u64,
    pub node: String,
    pub reason: String,
    pub payload: Vec<u8>,
    pub created_at_unix_ms: i64,
    /// When a replay last delivered it; `None` while it waits for one.
    pub replayed_at_unix_ms: Option<i64>,
    /// How many replays were tried, successful or not.
    pub replay_attempts: u32,
}

/// A page of dead letters, oldest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeadLetterQuery {
    /// At most this many (0 means 50; capped at [`MAX_PAGE`]).
    pub limit: u32,
    /// Only ids above this one: the last id of the previous page.
    pub after_id: Option<u64>,
    /// Only those no replay has delivered yet.
    pub pending_only: bool,
}

/// Which dead letters a purge deletes: all of them, or those matching
/// every given condition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeadLetterPurge {
    /// Only those created before this time (Unix milliseconds).
    pub before_unix_ms: Option<i64>,
    /// Only those a replay has delivered.
    pub replayed_only: bool,
}
