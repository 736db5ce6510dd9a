//! The live sessions of this node and delivery to them.
//!
//! Each session has a bounded queue of [`Event`]s. Delivery never waits: it
//! `try_send`s into every target queue, and a session whose queue is full
//! is a reader that stopped reading: it is disconnected (its `closed` token
//! fires) and removed, never buffered without limit. The session catches up
//! from the store when it reconnects.
//!
//! This module knows nothing of protobuf or of the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chat_store::StoredMessage;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Something a live session is told. Other nodes send events to this
/// node's sessions as records of their own (`record.rs`).
#[derive(Debug, Clone)]
pub enum Event {
    /// A committed message of one of the user's conversations.
    Message(Arc<StoredMessage>),
    /// The user's read cursor moved (on another device, or this one).
    ReadUpdate {
        conversation_id: String,
        username: String,
        read_seq: u64,
        unread_count: u64,
    },
    /// A contact came online or went offline.
    Presence { username: String, online: bool },
    /// Someone is typing in one of the user's conversations.
    Typing {
        conversation_id: String,
        username: String,
    },
    /// The user's secret with this fingerprint ([`crate::auth::fingerprint`])
    /// was replaced: the sessions opened with it end.
    Revoked { token: u64 },
}

pub type SessionId = u64;

struct SessionEntry {
    id: SessionId,
    events: mpsc::Sender<Event>,
    closed: CancellationToken,
}

/// The sessions connected to this node, by username.
#[derive(Default)]
pub struct LocalSessions {
    /// A std mutex: it is held only to look up or edit the map, never across
    /// an await, and delivery itself never blocks.
    by_user: Mutex<HashMap<String, Vec<SessionEntry>>>,
    next_id: AtomicU64,
}

/// A registered session. Dropping it unregisters the session.
pub struct Session<'a> {
    pub id: SessionId,
    pub username: String,
    pub events: mpsc::Receiver<Event>,
    sessions: &'a LocalSessions,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.sessions.unregister(&self.username, self.id);
    }
}

impl LocalSessions {
    /// Registers a session of `username` with a queue of `capacity` events.
    /// `closed` is cancelled if the session is disconnected for not reading.
    pub fn register(
        &self,
        username: &str,
        capacity: usize,
        closed: CancellationToken,
    ) -> Session<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let entry = SessionEntry {
            id,
            events: tx,
            closed,
        };
        self.lock()
            .entry(username.to_owned())
            .or_default()
            .push(entry);
        Session {
            id,
            username: username.to_owned(),
            events: rx,
            sessions: self,
        }
    }

    fn unregister(&self, username: &str, id: SessionId) {
        let mut map = self.lock();
        if let Some(list) = map.get_mut(username) {
            list.retain(|s| s.id != id);
            if list.is_empty() {
                map.remove(username);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<SessionEntry>>> {
        // A panic while holding this lock cannot leave the map half-edited
        // in a way that matters (each edit is one call), so keep serving.
        self.by_user
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Offers `event` to every session of every user in `usernames`, except
    /// the session `except` (the one that caused the event). Returns how
    /// many sessions took it.
    pub fn deliver<'u>(
        &self,
        usernames: impl IntoIterator<Item = &'u str>,
        event: &Event,
        except: Option<SessionId>,
    ) -> usize {
        let mut delivered = 0;
        let mut map = self.lock();
        for username in usernames {
            let Some(list) = map.get_mut(username) else {
                continue;
            };
            list.retain(|session| {
                if Some(session.id) == except {
                    return true;
                }
                match session.events.try_send(event.clone()) {
                    Ok(()) => {
                        delivered += 1;
                        true
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::warn!(
                            user = %username,
                            session = session.id,
                            "session queue full: disconnecting a reader that stopped reading"
                        );
                        session.closed.cancel();
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
            if list.is_empty() {
                map.remove(username);
            }
        }
        delivered
    }

    /// Every session on this node, as (username, session id).
    pub fn entries(&self) -> Vec<(String, SessionId)> {
        self.lock()
            .iter()
            .flat_map(|(user, list)| list.iter().map(move |s| (user.clone(), s.id)))
            .collect()
    }

    /// How many sessions `username` has on this node.
    pub fn count(&self, username: &str) -> usize {
        self.lock().get(username).map_or(0, Vec::len)
    }

    /// Every session on this node.
    pub fn total(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typing() -> Event {
        Event::Typing {
            conversation_id: "c".into(),
            username: "a".into(),
        }
    }

    #[test]
    fn a_full_queue_disconnects_only_that_session() {
        let sessions = LocalSessions::default();
        let (slow_closed, fast_closed) = (CancellationToken::new(), CancellationToken::new());
        let slow = sessions.register("bob", 2, slow_closed.clone());
        let mut fast = sessions.register("bob", 8, fast_closed.clone());
        for _ in 0..2 {
            assert_eq!(sessions.deliver(["bob"], &typing(), None), 2);
            assert!(fast.events.try_recv().is_ok());
        }
        assert_eq!(sessions.deliver(["bob"], &typing(), None), 1);
        assert!(slow_closed.is_cancelled());
        assert!(!fast_closed.is_cancelled());
        assert_eq!(sessions.count("bob"), 1);
        drop(fast);
        drop(slow);
        assert_eq!(sessions.total(), 0);
    }

    #[test]
    fn the_originating_session_is_skipped() {
        let sessions = LocalSessions::default();
        let mut a = sessions.register("alice", 4, CancellationToken::new());
        let mut b = sessions.register("alice", 4, CancellationToken::new());
        assert_eq!(sessions.deliver(["alice"], &typing(), Some(a.id)), 1);
        assert!(a.events.try_recv().is_err());
        assert!(b.events.try_recv().is_ok());
    }
}
