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
//!
//! Groups add two things. A member reads a group only from the event that
//! added them: joining moves `shown` to just before that event, and a gap
//! fetched successfully counts as shown whole (what the server did not
//! return is not ours to see). A member who leaves or is removed is
//! `gone`: the server would refuse its cursors, so none are reported, and
//! nothing more of the group is shown until an event adds them again.

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
    /// No longer a member of this group.
    gone: bool,
}

impl Cursor {
    /// Everything up to `seq` is handled.
    fn advance_to(&mut self, seq: u64) {
        self.shown = self.shown.max(seq);
        let shown = self.shown;
        self.ahead.retain(|&s| s > shown);
        while self.ahead.remove(&(self.shown + 1)) {
            self.shown += 1;
        }
    }
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
                gone: false,
            });
    }

    /// The server's delivered cursor after a reconnect: what it knows, so
    /// a `delivered` frame lost with the old connection is sent again. The
    /// server lists the conversation: we are in it.
    pub fn server_delivered(&mut self, conversation: &str, delivered: u64) {
        if let Some(cursor) = self.conversations.get_mut(conversation) {
            cursor.reported = delivered;
            cursor.gone = false;
        }
    }

    /// The conversations known here, gone ones included.
    pub fn known(&self) -> impl Iterator<Item = &str> {
        self.conversations.keys().map(String::as_str)
    }

    pub fn is_gone(&self, conversation: &str) -> bool {
        self.conversations.get(conversation).is_some_and(|c| c.gone)
    }

    /// The event at `seq` made us a member: nothing before it is ours to
    /// see, and the server's delivered cursor starts just before it. A
    /// duplicate of an event already handled changes nothing.
    pub fn join(&mut self, conversation: &str, seq: u64) {
        let cursor = self
            .conversations
            .entry(conversation.to_owned())
            .or_default();
        if seq <= cursor.shown || cursor.ahead.contains(&seq) {
            return;
        }
        let before = seq.saturating_sub(1);
        cursor.gone = false;
        cursor.advance_to(before);
        cursor.reported = cursor.reported.max(before);
    }

    /// We left the group, or were removed from it.
    pub fn leave(&mut self, conversation: &str) {
        if let Some(cursor) = self.conversations.get_mut(conversation) {
            cursor.gone = true;
        }
    }

    /// Every message up to `seq` the server would give us has been shown:
    /// after a gap was fetched, the seqs it did not return are not ours to
    /// see (before we joined).
    pub fn cover(&mut self, conversation: &str, seq: u64) {
        self.conversations
            .entry(conversation.to_owned())
            .or_default()
            .advance_to(seq);
    }

    /// Every seq up to this one has been shown.
    pub fn shown(&self, conversation: &str) -> u64 {
        self.conversations.get(conversation).map_or(0, |c| c.shown)
    }

    /// Already shown, or of a group we are gone from (only an event that
    /// adds us again, see [`Tracker::join`], brings it back).
    pub fn is_seen(&self, conversation: &str, seq: u64) -> bool {
        self.conversations
            .get(conversation)
            .is_some_and(|c| c.gone || seq <= c.shown || c.ahead.contains(&seq))
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
        cursor.advance_to(cursor.shown);
    }

    /// The `delivered` frames to send: conversations whose `shown` moved
    /// past what the server was told. Counts them as told.
    pub fn unreported(&mut self) -> Vec<(String, u64)> {
        let mut frames: Vec<(String, u64)> = self
            .conversations
            .iter_mut()
            .filter(|(_, c)| !c.gone && c.shown > c.reported)
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

    #[test]
    fn joining_a_group_starts_at_the_event_that_adds_us() {
        let mut t = Tracker::default();
        // Added live at seq 7 of a group never seen: no gap before it.
        t.join("g", 7);
        assert_eq!(t.classify("g", 7), Verdict::Next);
        t.record("g", 7);
        // The server's cursor started at 6: only 7 is news to it.
        assert_eq!(t.unreported(), [("g".to_owned(), 7)]);
        // A replayed copy of the event changes nothing.
        t.join("g", 7);
        assert_eq!(t.shown("g"), 7);
    }

    #[test]
    fn a_group_we_left_reports_nothing_until_we_are_added_again() {
        let mut t = Tracker::default();
        t.seed("g", 3);
        t.record("g", 4); // the event that removes us
        t.leave("g");
        assert!(t.unreported().is_empty(), "the server would refuse it");
        assert_eq!(t.classify("g", 5), Verdict::Seen, "not ours any more");
        // Added again at 9: 5 to 8 are not ours to see.
        t.join("g", 9);
        assert!(!t.is_gone("g"));
        assert_eq!(t.classify("g", 9), Verdict::Next);
        t.record("g", 9);
        assert_eq!(t.unreported(), [("g".to_owned(), 9)]);
    }

    #[test]
    fn a_fetched_gap_counts_as_shown_whole() {
        let mut t = Tracker::default();
        t.seed("g", 2);
        // Reconnected after being added again while offline: the server's
        // cursor is 8, history before 9 has nothing for us.
        assert_eq!(t.classify("g", 9), Verdict::Gap { after: 2 });
        t.cover("g", 8);
        assert_eq!(t.classify("g", 9), Verdict::Next);
        t.record("g", 10); // ahead of 9
        t.cover("g", 9);
        assert_eq!(t.shown("g"), 10);
    }
}
