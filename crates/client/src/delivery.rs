//! The delivery rules of the interactive client, kept free of I/O so they
//! can be tested on their own: which messages were shown, which are
//! duplicates, where a gap must be fetched, and which `delivered` cursors
//! the server has not been told yet.
//!
//! Per conversation the tracker keeps `shown`, the highest seq such that
//! every message up to it has been shown (or is one of ours), plus the
//! seqs above it already handled out of order (an ack can overtake the
//! message before it). A message at or below `shown`, or already handled,
//! is a duplicate; one at `shown + 1` is next; anything higher means the
//! messages in between must be fetched first. The server is told
//! `delivered = shown`, never more, so a reconnect replays whatever this
//! client has not shown.

use std::collections::{BTreeSet, HashMap};

/// What to do with an incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Already shown: drop it.
    Seen,
    /// The next one: show it.
    Next,
    /// Messages after `after` and before this one are missing: fetch and
    /// show them first.
    Gap { after: u64 },
}

#[derive(Debug, Default, Clone)]
struct Cursor {
    shown: u64,
    ahead: BTreeSet<u64>,
    reported: u64,
}

#[derive(Debug, Default, Clone)]
pub struct Tracker {
    conversations: HashMap<String, Cursor>,
}

impl Tracker {
    pub fn knows(&self, conversation: &str) -> bool {
        self.conversations.contains_key(conversation)
    }

    /// A conversation first seen in `ready`: everything up to the server's
    /// delivered cursor counts as shown (the server will replay the rest).
    /// A known conversation keeps its own cursor.
    pub fn seed(&mut self, conversation: &str, delivered: u64) {
        self.conversations
            .entry(conversation.to_owned())
            .or_insert(Cursor {
                shown: delivered,
                ahead: BTreeSet::new(),
                reported: delivered,
            });
    }

    /// The server's delivered cursor after a reconnect: what it knows, so
    /// a `delivered` frame lost with the old connection is sent again.
    pub fn server_delivered(&mut self, conversation: &str, delivered: u64) {
        if let Some(cursor) = self.conversations.get_mut(conversation) {
            cursor.reported = delivered;
        }
    }

    /// Every seq up to this one has been shown.
    pub fn shown(&self, conversation: &str) -> u64 {
        self.conversations.get(conversation).map_or(0, |c| c.shown)
    }

    pub fn is_seen(&self, conversation: &str, seq: u64) -> bool {
        self.conversations
            .get(conversation)
            .is_some_and(|c| seq <= c.shown || c.ahead.contains(&seq))
    }

    pub fn classify(&self, conversation: &str, seq: u64) -> Verdict {
        if self.is_seen(conversation, seq) {
            return Verdict::Seen;
        }
        let shown = self.shown(conversation);
        if seq == shown + 1 {
            Verdict::Next
        } else {
            Verdict::Gap { after: shown }
        }
    }

    /// `seq` has been shown (or is ours, acked).
    pub fn record(&mut self, conversation: &str, seq: u64) {
        let cursor = self
            .conversations
            .entry(conversation.to_owned())
            .or_default();
        if seq <= cursor.shown {
            return;
        }
        cursor.ahead.insert(seq);
        while cursor.ahead.remove(&(cursor.shown + 1)) {
            cursor.shown += 1;
        }
    }

    /// The `delivered` frames to send: conversations whose `shown` moved
    /// past what the server was told. Counts them as told.
    pub fn unreported(&mut self) -> Vec<(String, u64)> {
        let mut frames: Vec<(String, u64)> = self
            .conversations
            .iter_mut()
            .filter(|(_, c)| c.shown > c.reported)
            .map(|(id, c)| {
                c.reported = c.shown;
                (id.clone(), c.shown)
            })
            .collect();
        frames.sort();
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_messages_are_shown_once() {
        let mut t = Tracker::default();
        t.seed("c", 2);
        assert_eq!(t.classify("c", 2), Verdict::Seen);
        assert_eq!(t.classify("c", 3), Verdict::Next);
        t.record("c", 3);
        assert_eq!(t.classify("c", 3), Verdict::Seen);
        assert_eq!(t.unreported(), [("c".to_owned(), 3)]);
        assert!(t.unreported().is_empty());
    }

    #[test]
    fn a_jump_is_a_gap_from_the_last_shown() {
        let mut t = Tracker::default();
        t.seed("c", 1);
        assert_eq!(t.classify("c", 5), Verdict::Gap { after: 1 });
        // An unknown conversation starts at zero.
        assert_eq!(t.classify("new", 1), Verdict::Next);
        assert_eq!(t.classify("new", 3), Verdict::Gap { after: 0 });
    }

    #[test]
    fn an_ack_that_overtakes_a_message_waits_for_it() {
        let mut t = Tracker::default();
        t.seed("c", 3);
        t.record("c", 5); // our own message, acked before 4 arrived
        assert_eq!(t.shown("c"), 3);
        assert!(
            t.unreported().is_empty(),
            "5 is not delivered while 4 is missing"
        );
        assert_eq!(t.classify("c", 4), Verdict::Next);
        t.record("c", 4);
        assert_eq!(t.shown("c"), 5);
        assert_eq!(t.classify("c", 5), Verdict::Seen);
        assert_eq!(t.unreported(), [("c".to_owned(), 5)]);
    }

    #[test]
    fn a_gap_that_could_not_be_fetched_is_fetched_again_later() {
        let mut t = Tracker::default();
        t.seed("c", 1);
        // 4 arrives, fetching 2..3 fails: 4 is shown anyway.
        t.record("c", 4);
        assert_eq!(t.classify("c", 5), Verdict::Gap { after: 1 });
        t.record("c", 2);
        t.record("c", 3);
        assert_eq!(t.shown("c"), 4);
        assert_eq!(t.classify("c", 5), Verdict::Next);
    }

    #[test]
    fn a_lost_delivered_frame_is_sent_again_after_a_reconnect() {
        let mut t = Tracker::default();
        t.seed("c", 0);
        t.record("c", 1);
        assert_eq!(t.unreported().len(), 1);
        t.server_delivered("c", 0); // the server never got it
        assert_eq!(t.unreported(), [("c".to_owned(), 1)]);
        t.seed("c", 0); // a reconnect's ready does not move a known cursor back
        assert_eq!(t.shown("c"), 1);
    }
}
