//! Durable chat data: users, conversations, members with their read and
//! delivered cursors, and messages.
//!
//! # Layout
//!
//! - [`model`]: the domain types every backend speaks.
//! - [`UserStore`] and [`MessageStore`]: the storage traits, one per domain.
//!   A backend implements both; [`Store`] is their union.
//! - [`DeadLetterStore`]: delivery records the server could not process,
//!   kept for an operator to inspect, replay and purge.
//! - [`StoreHealth`]: a health probe and the count of failed operations,
//!   for readiness checks and metrics.
//! - `domain` (private): the chat rules written once above the backends,
//!   on primitives each backend provides.
//! - [`sqlite`]: the embedded backend (one file, WAL, a single writer thread
//!   that commits concurrent writes in one transaction).
//! - [`postgres`]: the shared backend (one PostgreSQL database behind several
//!   chat servers; the database's row locks and unique keys keep the
//!   invariants below across servers).
//!
//! # Invariants every backend keeps
//!
//! - A message is committed before `append_message` returns.
//! - Each conversation numbers its messages 1, 2, 3, … with no gaps.
//! - `(sender, client_msg_id)` is unique: a retry returns the original
//!   (for as long as the original is kept: see
//!   [`MessageStore::delete_messages_before`]).
//! - A seq is never reused, even after its message was deleted.
//! - Reads check membership: a conversation the caller is not a member of
//!   answers [`StoreError::NotFound`], exactly like one that does not exist.
//!
//! This crate holds all the SQL of the project and nothing about the wire
//! protocol or sessions.

mod domain;
pub mod model;
pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;

pub use model::*;

/// A fresh identifier: a one-letter kind, then 48 bits of milliseconds since
/// the Unix epoch and 80 random bits, hex encoded (33 characters).
///
/// Time first, so that ids made close together sort together: each new id
/// lands at the right edge of a unique index instead of on a random page,
/// which keeps the pages a commit writes few. The random part keeps ids
/// unguessable and unique across servers.
pub(crate) fn new_id(prefix: char) -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&rand::random::<[u8; 10]>());
    format!("{prefix}{}", hex::encode(bytes))
}

/// Errors of every storage backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist, or the caller may not see it.
    #[error("not found")]
    NotFound,
    /// A unique name is taken.
    #[error("already exists")]
    AlreadyExists,
    /// The request contradicts the data (e.g. a message to oneself).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The caller may see the object but not do this to it (e.g. a member
    /// who is not an admin removing someone).
    #[error("not allowed: {0}")]
    Forbidden(String),
    /// A configured bound would be exceeded (members per group, …).
    #[error("limit reached: {0}")]
    Limit(String),
    /// The backend cannot serve now (busy, down, shutting down); retrying
    /// later may succeed. Nothing was committed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A bug or corrupted data.
    #[error("store error: {0}")]
    Internal(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Users and their credentials.
#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Creates a user. The username must already be normalized (lowercase);
    /// a taken name answers [`StoreError::AlreadyExists`].
    async fn create_user(&self, user: NewUser) -> Result<UserProfile>;
    /// The public profile of `username` (normalized).
    async fn get_user(&self, username: &str) -> Result<Option<UserProfile>>;
    /// The username owning the token whose SHA-256 is `token_hash`.
    async fn user_by_token_hash(&self, token_hash: &[u8; 32]) -> Result<Option<String>>;
    /// Replaces the token of `username` whose SHA-256 is `old` with the one
    /// whose SHA-256 is `new`: from the commit on, the old token finds no
    /// one. `false` (and nothing changed) when `username` has no token
    /// `old`, so of two rotations of one token only one succeeds.
    async fn replace_token(&self, username: &str, old: &[u8; 32], new: &[u8; 32]) -> Result<bool>;
    /// Replaces whatever token `username` has with the one whose SHA-256
    /// is `new`, and returns the SHA-256 of the token it replaced (read and
    /// replaced atomically, so the answer names exactly the token that
    /// stopped working); `None`, and nothing changed, when there is no
    /// such user. For an operator revoking a user's secret, who does not
    /// know it.
    async fn reset_token(&self, username: &str, new: &[u8; 32]) -> Result<Option<[u8; 32]>>;
    /// A page of users in username order (byte order), those after
    /// `after` only when given (the last username of the previous page),
    /// at most `limit` (0 means 50; capped at [`MAX_PAGE`]).
    async fn list_users(&self, after: Option<&str>, limit: u32) -> Result<Vec<UserProfile>>;
}

/// Conversations, members, messages and cursors.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Commits a message: creates the direct conversation on first use,
    /// assigns the next seq, and returns the message with the members to
    /// deliver it to. A repeated `(sender, client_msg_id)` returns the
    /// original message with `duplicate = true` and stores nothing.
    async fn append_message(&self, message: NewMessage) -> Result<Appended>;
    /// Commits several messages in the given order, each as
    /// [`MessageStore::append_message`] would (one failing does not stop
    /// the others), with one answer per message in the same order. A
    /// backend may commit them together; the default commits one after
    /// another.
    async fn append_messages(&self, messages: Vec<NewMessage>) -> Vec<Result<Appended>> {
        let mut answers = Vec::with_capacity(messages.len());
        for message in messages {
            answers.push(self.append_message(message).await);
        }
        answers
    }
    /// A page of a conversation the caller is a member of.
    async fn history(
        &self,
        username: &str,
        conversation_id: &str,
        query: HistoryQuery,
    ) -> Result<HistoryPage>;
    /// Every conversation of `username`, most recently active first.
    async fn conversations(&self, username: &str) -> Result<Vec<ConversationSummary>>;
    /// Moves the read cursor forward to `seq` (clamped to the last seq).
    async fn mark_read(
        &self,
        username: &str,
        conversation_id: &str,
        seq: u64,
    ) -> Result<ReadCursor>;
    /// Moves the delivered cursor forward to `seq` (clamped to the last seq).
    async fn mark_delivered(&self, username: &str, conversation_id: &str, seq: u64) -> Result<u64>;
    /// The usernames of a conversation's members, if `username` is one.
    async fn members(&self, username: &str, conversation_id: &str) -> Result<Vec<String>>;
    /// Edits or deletes a text message its sender wrote, and commits the
    /// change as an event (the next seq; kind `MessageEdited` or
    /// `MessageDeleted`, `target_seq` = the message) in one transaction.
    /// Anything but the sender's own live text message answers
    /// [`StoreError::NotFound`]. A repeated `(editor, client_msg_id)`
    /// returns the original event with `duplicate = true`.
    async fn change_message(&self, change: MessageChange) -> Result<Appended>;
    /// Everyone who shares a direct conversation, or a group of at most
    /// `largest_group` members, with `username` (not the user), sorted:
    /// whose presence the user sees.
    async fn contacts(&self, username: &str, largest_group: usize) -> Result<Vec<String>>;
    /// Every member's read cursor, as (username, read_seq), if `username`
    /// is a member: what read receipts are computed from.
    async fn read_cursors(
        &self,
        username: &str,
        conversation_id: &str,
    ) -> Result<Vec<(String, u64)>>;
    /// Deletes at most `batch` messages (of any kind, in any conversation)
    /// sent before `cutoff_unix_ms`, oldest first, and returns how many:
    /// the retention policy calls it until it answers 0, so that no
    /// transaction holds the database for long. Conversations keep their
    /// `last_seq` and members their cursors, so seqs are never reused and
    /// unread counts stay exact (they count the messages that remain). A
    /// deleted message's `(sender, client_msg_id)` is forgotten with it.
    /// Several servers may run it at once. `batch` 0 answers
    /// [`StoreError::Invalid`].
    async fn delete_messages_before(&self, cutoff_unix_ms: i64, batch: usize) -> Result<u64>;
}

/// Groups and their membership.
#[async_trait]
pub trait GroupStore: Send + Sync + 'static {
    /// Applies a membership change and commits its event (a message of the
    /// group, with the next seq) in the same transaction. A group the actor
    /// is not a member of, or a username that does not exist, answers
    /// [`StoreError::NotFound`]; a member without the right answers
    /// [`StoreError::Forbidden`]; a bound answers [`StoreError::Limit`].
    async fn change_group(&self, change: GroupChange, limits: GroupLimits) -> Result<GroupChanged>;
    /// A group `username` is a member of.
    async fn group(&self, username: &str, group_id: &str) -> Result<GroupInfo>;
}

/// The dead-letter queue: delivery records that could not be processed
/// (undecodable, of an unknown version, or not deliverable after bounded
/// retries), each with the node that gave up on it, the reason, the time
/// and the original payload, so that nothing is dropped silently.
///
/// A replay is recorded, not a deletion: a replayed letter stays (with
/// `replayed_at_unix_ms` set) until an operator purges it, so what
/// happened can still be inspected, and "replay every pending letter"
/// never repeats one that was delivered. Ids increase in insertion order;
/// pages are oldest first and bounded like history pages.
#[async_trait]
pub trait DeadLetterStore: Send + Sync + 'static {
    /// Stores a dead letter and returns it with its id and time.
    async fn add_dead_letter(&self, letter: NewDeadLetter) -> Result<DeadLetter>;
    /// A page of dead letters, oldest first.
    async fn dead_letters(&self, query: DeadLetterQuery) -> Result<Vec<DeadLetter>>;
    /// One dead letter by id.
    async fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>>;
    /// Records a replay attempt of letter `id`: counts it and, when
    /// `delivered`, sets `replayed_at_unix_ms` to now. An unknown id answers
    /// [`StoreError::NotFound`].
    async fn record_replay(&self, id: u64, delivered: bool) -> Result<DeadLetter>;
    /// Deletes the dead letters `purge` selects; returns how many.
    async fn purge_dead_letters(&self, purge: DeadLetterPurge) -> Result<u64>;
    /// How many dead letters are stored.
    async fn count_dead_letters(&self) -> Result<u64>;
}

/// Whether a backend can serve now, and how often it could not.
#[async_trait]
pub trait StoreHealth: Send + Sync + 'static {
    /// Answers `Ok` when the backend serves reads and writes now (a
    /// read-only query and a round trip through whatever commits writes),
    /// else says why not. Never counted in [`StoreHealth::failures`]: a
    /// health probe that fails is not a failed request.
    async fn ping(&self) -> Result<()>;
    /// How many operations answered [`StoreError::Unavailable`] or
    /// [`StoreError::Internal`] since the store was opened: the backend
    /// failing, as opposed to refusing a request (`NotFound`, `Invalid`,
    /// …).
    fn failures(&self) -> u64;
}

/// A complete storage backend.
pub trait Store: UserStore + MessageStore + GroupStore + DeadLetterStore + StoreHealth {}

impl<T: UserStore + MessageStore + GroupStore + DeadLetterStore + StoreHealth> Store for T {}

/// The failure count of [`StoreHealth::failures`], kept by each backend
/// where its operations end.
#[derive(Debug, Default)]
pub(crate) struct Failures(std::sync::atomic::AtomicU64);

impl Failures {
    /// Counts `result` if it is a failure of the backend; passes it on.
    pub(crate) fn note<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            self.note_error(e);
        }
        result
    }

    pub(crate) fn note_error(&self, e: &StoreError) {
        if matches!(e, StoreError::Unavailable(_) | StoreError::Internal(_)) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}
