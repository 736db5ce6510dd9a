//! What the full screen shows, without a terminal: the conversations of
//! the sidebar with their unread counts, the scrollback of each, the line
//! being typed with its history, the selected message and the status.
//!
//! Every change comes from an [`Output`] of the interactive mode or from a
//! key; a key may ask the mode for something ([`Intent`]). This module
//! draws nothing (that is [`super::draw`]) and reads no terminal.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chat_proto as pb;
use tokio::time::Instant;

use super::super::render::{describe, display_label, Intent, Output, Said};
use super::super::Chosen;
use crate::view::is_event;

/// How many messages one page of history asks for.
pub const PAGE: u32 = 50;

/// How long "is typing" stands without news.
const TYPING_SHOWN: Duration = Duration::from_secs(5);

/// How often typing is told to the others while typing goes on.
const TYPING_EVERY: Duration = Duration::from_secs(3);

/// How many lines typed are kept for recall.
const HISTORY_KEPT: usize = 100;

/// One conversation of the sidebar.
#[derive(Debug, Clone, Default)]
pub struct Conversation {
    pub id: String,
    /// The peer, or `#name`.
    pub label: String,
    pub group: bool,
    pub unread: u64,
    /// The newest seq that `unread` accounts for (the server's count at
    /// connect covers everything up to its `last_seq`, replay included).
    counted_to: u64,
    /// When something last happened in it (ms since the epoch).
    pub last_activity_ms: i64,
    /// Its messages and membership events by seq, edits and deletions
    /// applied.
    pub messages: BTreeMap<u64, pb::Message>,
    /// Nothing older than the oldest message held is left to load.
    pub complete: bool,
    /// A page of older messages was asked for and has not come yet.
    pub loading: bool,
    /// The read cursor of each other member, as last told.
    pub readers: HashMap<String, u64>,
}

impl Conversation {
    /// How many others read message `m` (of ours).
    pub fn read_by(&self, m: &pb::Message) -> u32 {
        let live = self.readers.values().filter(|&&seq| seq >= m.seq).count();
        u32::try_from(live).unwrap_or(u32::MAX).max(m.read_count)
    }
}

/// The connection, as the status line says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    Connecting,
    Connected {
        server: Option<String>,
    },
    /// Retrying `server` at `at`.
    Offline {
        server: String,
        why: String,
        at: Instant,
    },
    Reconnecting {
        why: String,
    },
}

/// What the keys act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Focus {
    /// Typing a line.
    Input,
    /// A message of the open conversation is selected (by seq).
    Selecting(u64),
    /// The "go to" prompt: part of a conversation's name.
    GoTo(String),
}

/// The line being typed (several lines with Alt+Enter), and the lines
/// typed before.
#[derive(Debug, Clone, Default)]
pub struct Editor {
    pub text: String,
    /// The cursor, in chars.
    pub cursor: usize,
    history: Vec<String>,
    /// The entry recalled, counted from the newest.
    recalled: Option<usize>,
    /// The message being edited, when Enter means `/edit`.
    pub editing: Option<u64>,
}

impl Editor {
    pub fn insert(&mut self, c: char) {
        let at = self.byte_at(self.cursor);
        self.text.insert(at, c);
        self.cursor += 1;
    }

    pub fn backspace(&mut self) {
        if self.cursor == 0 {
            return;
        }
        self.cursor -= 1;
        let at = self.byte_at(self.cursor);
        self.text.remove(at);
    }

    pub fn delete(&mut self) {
        if self.cursor < self.text.chars().count() {
            let at = self.byte_at(self.cursor);
            self.text.remove(at);
        }
    }

    pub fn left(&mut self) {
        self.cursor = self.cursor.saturating_sub(1);
    }

    pub fn right(&mut self) {
        self.cursor = (self.cursor + 1).min(self.text.chars().count());
    }

    pub fn home(&mut self) {
        self.cursor = 0;
    }

    pub fn end(&mut self) {
        self.cursor = self.text.chars().count();
    }

    pub fn set(&mut self, text: &str) {
        self.text = text.to_owned();
        self.end();
    }

    /// Empties the text (an edit in progress stays one).
    pub fn clear_text(&mut self) {
        self.text.clear();
        self.cursor = 0;
        self.recalled = None;
    }

    /// Empties the text and ends an edit in progress.
    pub fn clear(&mut self) {
        self.text.clear();
        self.cursor = 0;
        self.recalled = None;
        self.editing = None;
    }

    /// Takes the text typed, keeping it for recall.
    pub fn take(&mut self) -> String {
        let text = std::mem::take(&mut self.text);
        if !text.trim().is_empty() && self.history.last() != Some(&text) {
            self.history.push(text.clone());
            if self.history.len() > HISTORY_KEPT {
                self.history.remove(0);
            }
        }
        self.clear();
        text
    }

    /// The line typed before the one shown (Ctrl+P).
    pub fn older(&mut self) {
        let next = self.recalled.map_or(0, |n| n + 1);
        if let Some(text) = self.history.iter().rev().nth(next) {
            let text = text.clone();
            self.set(&text);
            self.recalled = Some(next);
        }
    }

    /// The line typed after the one shown (Ctrl+N); past the newest, empty.
    pub fn newer(&mut self) {
        match self.recalled {
            Some(0) | None => {
                self.text.clear();
                self.cursor = 0;
                self.recalled = None;
            }
            Some(n) => {
                if let Some(text) = self.history.iter().rev().nth(n - 1) {
                    let text = text.clone();
                    self.set(&text);
                }
                self.recalled = Some(n - 1);
            }
        }
    }

    fn byte_at(&self, chars: usize) -> usize {
        self.text
            .char_indices()
            .nth(chars)
            .map_or(self.text.len(), |(i, _)| i)
    }
}

/// Everything the screen shows.
#[derive(Debug)]
pub struct Model {
    pub me: String,
    pub conversations: Vec<Conversation>,
    /// The open conversation (where plain lines go), by id.
    pub open: Option<String>,
    /// Where plain lines go, when that conversation has no id yet (a user
    /// never written to).
    pub chosen: Option<Chosen>,
    pub editor: Editor,
    pub focus: Focus,
    /// Rows scrolled up from the bottom of the open conversation.
    pub scroll: usize,
    pub link: Link,
    /// Who types in the open conversation, until when.
    pub typing: HashMap<String, Instant>,
    pub presence: HashMap<String, bool>,
    /// What the mode said that the screen does not draw itself (command
    /// answers, errors), newest last, until the next key.
    pub notices: Vec<Said>,
    /// When typing was last told.
    typing_told: Option<Instant>,
}

impl Model {
    pub fn new() -> Self {
        Self {
            me: String::new(),
            conversations: Vec::new(),
            open: None,
            chosen: None,
            editor: Editor::default(),
            focus: Focus::Input,
            scroll: 0,
            link: Link::Connecting,
            typing: HashMap::new(),
            presence: HashMap::new(),
            notices: Vec::new(),
            typing_told: None,
        }
    }

    /// The conversations, newest activity first.
    pub fn sorted(&self) -> Vec<&Conversation> {
        let mut sorted: Vec<&Conversation> = self.conversations.iter().collect();
        sorted.sort_by(|a, b| {
            b.last_activity_ms
                .cmp(&a.last_activity_ms)
                .then_with(|| a.label.cmp(&b.label))
        });
        sorted
    }

    pub fn get(&self, id: &str) -> Option<&Conversation> {
        self.conversations.iter().find(|c| c.id == id)
    }

    pub fn open_conversation(&self) -> Option<&Conversation> {
        self.get(self.open.as_deref()?)
    }

    fn entry(&mut self, id: &str, label: &str) -> &mut Conversation {
        let index = match self.conversations.iter().position(|c| c.id == id) {
            Some(index) => index,
            None => {
                self.conversations.push(Conversation {
                    id: id.to_owned(),
                    label: label.to_owned(),
                    group: label.starts_with('#'),
                    ..Conversation::default()
                });
                self.conversations.len() - 1
            }
        };
        &mut self.conversations[index]
    }

    /// The label shown for where plain lines go.
    pub fn title(&self) -> Option<String> {
        if let Some(c) = self.open_conversation() {
            return Some(c.label.clone());
        }
        self.chosen.as_ref().map(|c| c.label().to_owned())
    }

    /// Who types in the open conversation now.
    pub fn typists(&self, now: Instant) -> Vec<&str> {
        let mut typists: Vec<&str> = self
            .typing
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(user, _)| user.as_str())
            .collect();
        typists.sort_unstable();
        typists
    }

    /// The peer of the open direct conversation.
    pub fn peer(&self) -> Option<&str> {
        match &self.chosen {
            Some(Chosen::User(peer)) => Some(peer),
            _ => None,
        }
    }

    /// Takes what the mode says.
    pub fn apply(&mut self, output: &Output<'_>) {
        use Output as O;
        match output {
            O::Connected { ready, via, .. } => {
                self.me.clone_from(&ready.username);
                self.link = Link::Connected {
                    server: via.map(str::to_owned),
                };
                for p in &ready.presence {
                    self.presence.insert(p.username.clone(), p.online);
                }
                for c in &ready.conversations {
                    let label = display_label(c);
                    let open = self.open.as_deref() == Some(c.conversation_id.as_str());
                    let entry = self.entry(&c.conversation_id, &label);
                    entry.label = label;
                    entry.group = view_is_group(c);
                    // The server's count is the exact one.
                    entry.unread = if open { 0 } else { c.unread_count };
                    entry.counted_to = c.last_seq;
                    if let Some(last) = &c.last_message {
                        entry.last_activity_ms = entry.last_activity_ms.max(last.sent_at_unix_ms);
                    }
                }
            }
            O::CannotConnect {
                server,
                why,
                retry_in,
            } => {
                self.link = Link::Offline {
                    server: (*server).to_owned(),
                    why: (*why).to_owned(),
                    at: Instant::now() + *retry_in,
                };
            }
            O::Disconnected { reason } => {
                self.link = Link::Reconnecting {
                    why: (*reason).to_owned(),
                };
            }
            O::Message { message, label, .. } => self.message(message, label, true),
            O::Sent { message, label } => self.message(message, label, false),
            O::Page {
                conversation,
                label,
                messages,
                before,
            } => {
                let entry = self.entry(conversation, label);
                entry.loading = false;
                if *before == 0 {
                    entry.messages.clear();
                }
                if messages.len() < PAGE as usize {
                    entry.complete = true;
                }
                for m in *messages {
                    if !is_change(m) {
                        entry.messages.insert(m.seq, m.clone());
                    }
                    entry.last_activity_ms = entry.last_activity_ms.max(m.sent_at_unix_ms);
                }
            }
            O::Talking(chosen) => {
                self.chosen = Some((*chosen).clone());
                self.typing.clear();
                self.scroll = 0;
                self.focus = Focus::Input;
            }
            O::Opened { conversation } => {
                self.open = Some((*conversation).to_owned());
                if let Some(c) = self
                    .conversations
                    .iter_mut()
                    .find(|c| c.id == *conversation)
                {
                    c.unread = 0;
                }
            }
            O::Presence { user, online } => {
                self.presence.insert((*user).to_owned(), *online);
            }
            O::ReadUpTo { user, seq } => {
                if let Some(id) = self.open.clone() {
                    if let Some(c) = self.conversations.iter_mut().find(|c| c.id == id) {
                        c.readers.insert((*user).to_owned(), *seq);
                    }
                }
            }
            O::Typing { user } => {
                self.typing
                    .insert((*user).to_owned(), Instant::now() + TYPING_SHOWN);
            }
            O::NoLongerIn { .. } | O::NotInAnyMore { .. } => {
                self.notices.extend(describe(output));
            }
            O::History { messages, .. } => {
                // `/history`: into the scrollback it belongs to.
                for m in *messages {
                    let label = self.title().unwrap_or_default();
                    self.message(m, &label, false);
                }
            }
            _ => self.notices.extend(describe(output)),
        }
    }

    /// A message or an event shown; `counts` when it may be unread.
    fn message(&mut self, m: &pb::Message, label: &str, counts: bool) {
        let open = self.open.as_deref() == Some(m.conversation_id.as_str());
        let me = self.me.clone();
        if let Some(Chosen::User(peer)) = &self.chosen {
            if self.open.is_none() && label == peer {
                // The first message with the chosen user opens it.
                self.open = Some(m.conversation_id.clone());
            }
        }
        let open = open || self.open.as_deref() == Some(m.conversation_id.as_str());
        let entry = self.entry(&m.conversation_id, label);
        entry.last_activity_ms = entry.last_activity_ms.max(m.sent_at_unix_ms);
        if is_change(m) {
            if let Some(target) = entry.messages.get_mut(&m.target_seq) {
                if m.kind == pb::MessageKind::MessageDeleted as i32 {
                    target.deleted = true;
                    target.body.clear();
                } else {
                    target.edited = true;
                    target.body.clone_from(&m.body);
                }
            }
            return;
        }
        entry.messages.insert(m.seq, m.clone());
        if counts && m.seq > entry.counted_to {
            entry.counted_to = m.seq;
            if !open && !is_event(m) && m.sender != me {
                entry.unread += 1;
            }
        }
        if m.sender != me {
            self.typing.remove(&m.sender);
        }
    }

    /// Whether to tell the others that we type (at most every few seconds).
    pub fn tell_typing(&mut self, now: Instant) -> bool {
        if self.editor.text.starts_with('/') || self.chosen.is_none() {
            return false;
        }
        match self.typing_told {
            Some(told) if now < told + TYPING_EVERY => false,
            _ => {
                self.typing_told = Some(now);
                true
            }
        }
    }

    /// The messages of the open conversation that can be selected, by seq.
    fn selectable(&self) -> Vec<u64> {
        self.open_conversation()
            .map(|c| {
                c.messages
                    .values()
                    .filter(|m| !is_event(m))
                    .map(|m| m.seq)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Moves the selection one message up (`up`) or down; from the input,
    /// up selects the newest message. Down past the newest goes back to
    /// the input.
    pub fn select(&mut self, up: bool) {
        let seqs = self.selectable();
        let next = match (&self.focus, up) {
            (Focus::Selecting(seq), true) => seqs.iter().rev().find(|s| *s < seq).or(Some(seq)),
            (Focus::Selecting(seq), false) => seqs.iter().find(|s| *s > seq),
            (_, true) => seqs.last(),
            (_, false) => None,
        };
        self.focus = match next {
            Some(seq) => Focus::Selecting(*seq),
            None => Focus::Input,
        };
    }

    /// The selected message, if any.
    pub fn selected(&self) -> Option<&pb::Message> {
        let Focus::Selecting(seq) = self.focus else {
            return None;
        };
        self.open_conversation()?.messages.get(&seq)
    }

    /// Starts editing the selected message (one of ours).
    pub fn edit_selected(&mut self) -> bool {
        let Some(m) = self.selected() else {
            return false;
        };
        if m.sender != self.me || m.deleted {
            self.notices = vec![Said::Err("only your own messages can be edited".into())];
            return false;
        }
        let (seq, body) = (m.seq, m.body.clone());
        self.editor.set(&body);
        self.editor.editing = Some(seq);
        self.focus = Focus::Input;
        true
    }

    /// Starts a reply to the selected message: its first line quoted.
    pub fn reply_to_selected(&mut self) {
        let Some(m) = self.selected() else { return };
        let first = m.body.lines().next().unwrap_or_default();
        let quoted: String = first.chars().take(60).collect();
        let text = format!("> {}: {quoted}\n", m.sender);
        self.editor.set(&text);
        self.focus = Focus::Input;
    }

    /// The `/delete` of the selected message, if it is ours.
    pub fn delete_selected(&mut self) -> Option<Intent> {
        let m = self.selected()?;
        if m.sender != self.me || m.deleted {
            self.notices = vec![Said::Err("only your own messages can be deleted".into())];
            return None;
        }
        let seq = m.seq;
        self.focus = Focus::Input;
        Some(Intent::Line(format!("/delete {seq}")))
    }

    /// Scrolls up by `rows`; at the top of what is held, asks for the
    /// page before it.
    pub fn scroll_up(&mut self, rows: usize, total_rows: usize, height: usize) -> Option<Intent> {
        let top = total_rows.saturating_sub(height);
        self.scroll = (self.scroll + rows).min(top);
        if self.scroll < top {
            return None;
        }
        let c = self.open_conversation()?;
        if c.complete || c.loading {
            return None;
        }
        let before = *c.messages.keys().next()?;
        if before <= 1 {
            return None;
        }
        let id = c.id.clone();
        if let Some(c) = self.conversations.iter_mut().find(|c| c.id == id) {
            c.loading = true;
        }
        Some(Intent::Older {
            conversation: id,
            before,
        })
    }

    pub fn scroll_down(&mut self, rows: usize) {
        self.scroll = self.scroll.saturating_sub(rows);
    }

    /// The conversation `step` places from the open one in the sidebar.
    pub fn neighbour(&self, step: isize) -> Option<String> {
        let sorted = self.sorted();
        if sorted.is_empty() {
            return None;
        }
        let len = isize::try_from(sorted.len()).ok()?;
        let at = self
            .open
            .as_deref()
            .and_then(|id| sorted.iter().position(|c| c.id == id))
            .and_then(|i| isize::try_from(i).ok());
        let next = match at {
            Some(i) => (i + step).rem_euclid(len),
            None => 0,
        };
        sorted
            .get(usize::try_from(next).ok()?)
            .map(|c| c.id.clone())
    }

    /// The best match of `query` among the conversations: a label that
    /// starts with it, else one that contains it, else one that has its
    /// letters in order; newest activity first among equals.
    pub fn go_to(&self, query: &str) -> Option<String> {
        let query = query.trim().trim_start_matches('#').to_lowercase();
        let sorted = self.sorted();
        let label = |c: &Conversation| c.label.trim_start_matches('#').to_lowercase();
        let by = |matches: &dyn Fn(&str) -> bool| {
            sorted
                .iter()
                .find(|c| matches(&label(c)))
                .map(|c| c.id.clone())
        };
        by(&|l| l.starts_with(&query))
            .or_else(|| by(&|l| l.contains(&query)))
            .or_else(|| by(&|l| in_order(&query, l)))
    }
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

/// An edit or a deletion (applied to its target, not shown by itself).
pub fn is_change(m: &pb::Message) -> bool {
    use pb::MessageKind as K;
    matches!(
        K::try_from(m.kind),
        Ok(K::MessageEdited | K::MessageDeleted)
    )
}

fn view_is_group(c: &pb::Conversation) -> bool {
    crate::view::is_group(c)
}

/// Whether the chars of `needle` appear in `haystack` in order.
fn in_order(needle: &str, haystack: &str) -> bool {
    let mut rest = haystack.chars();
    needle.chars().all(|n| rest.any(|h| h == n))
}

/// Models to draw and to change, for tests.
#[cfg(test)]
pub(super) mod samples {
    use super::*;

    pub fn text(conversation: &str, seq: u64, sender: &str, body: &str, at: i64) -> pb::Message {
        pb::Message {
            conversation_id: conversation.into(),
            seq,
            sender: sender.into(),
            body: body.into(),
            sent_at_unix_ms: at,
            ..Default::default()
        }
    }

    /// "me", with alice (2 unread) and the group #Team (4 unread, newer).
    pub fn model_with_two() -> Model {
        let mut model = Model::new();
        let ready = pb::Ready {
            username: "me".into(),
            conversations: vec![
                pb::Conversation {
                    conversation_id: "c1".into(),
                    kind: pb::ConversationKind::Direct as i32,
                    peer: "alice".into(),
                    unread_count: 2,
                    last_seq: 2,
                    last_message: Some(text("c1", 2, "alice", "x", 100)),
                    ..Default::default()
                },
                pb::Conversation {
                    conversation_id: "g1".into(),
                    kind: pb::ConversationKind::Group as i32,
                    group_id: "g1".into(),
                    name: "Team".into(),
                    unread_count: 4,
                    last_seq: 4,
                    last_message: Some(text("g1", 4, "bob", "y", 200)),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        model.apply(&Output::Connected {
            ready: &ready,
            via: None,
            first: true,
        });
        model
    }
}

#[cfg(test)]
mod tests {
    use super::samples::{model_with_two, text};
    use super::*;

    #[test]
    fn newest_activity_first_and_exact_unread_counts() {
        let mut model = model_with_two();
        let labels: Vec<&str> = model.sorted().iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["#Team", "alice"]);
        let m = text("c1", 3, "alice", "again", 300);
        model.apply(&Output::Message {
            message: &m,
            me: "me",
            label: "alice",
        });
        let sorted = model.sorted();
        assert_eq!(sorted[0].label, "alice");
        assert_eq!(sorted[0].unread, 3, "2 from ready and 1 live");
        // The replay of what ready counted already does not count again.
        let replayed = text("c1", 2, "alice", "x", 100);
        model.apply(&Output::Message {
            message: &replayed,
            me: "me",
            label: "alice",
        });
        assert_eq!(model.get("c1").unwrap().unread, 3);
        // Our own, an edit and an event never count.
        let mine = text("c1", 4, "me", "mine", 301);
        model.apply(&Output::Message {
            message: &mine,
            me: "me",
            label: "alice",
        });
        let edit = pb::Message {
            kind: pb::MessageKind::MessageEdited as i32,
            target_seq: 3,
            ..text("c1", 5, "alice", "fixed", 302)
        };
        model.apply(&Output::Message {
            message: &edit,
            me: "me",
            label: "alice",
        });
        let c = model.get("c1").unwrap();
        assert_eq!(c.unread, 3);
        assert_eq!(c.messages[&3].body, "fixed");
        assert!(c.messages[&3].edited);
        // Opening it reads it.
        model.apply(&Output::Opened { conversation: "c1" });
        assert_eq!(model.get("c1").unwrap().unread, 0);
    }

    #[test]
    fn selection_edits_and_deletes_own_messages_only() {
        let mut model = model_with_two();
        model.apply(&Output::Opened { conversation: "c1" });
        for m in [
            text("c1", 1, "me", "one", 1),
            text("c1", 2, "alice", "two", 2),
        ] {
            model.apply(&Output::Message {
                message: &m,
                me: "me",
                label: "alice",
            });
        }
        model.select(true);
        assert_eq!(model.focus, Focus::Selecting(2));
        assert!(!model.edit_selected(), "not ours");
        model.select(true);
        assert_eq!(model.focus, Focus::Selecting(1));
        assert!(model.edit_selected());
        assert_eq!(model.editor.text, "one");
        assert_eq!(model.editor.editing, Some(1));
        model.editor.clear();
        model.select(true);
        model.select(true);
        assert_eq!(
            model.delete_selected(),
            Some(Intent::Line("/delete 1".into()))
        );
        model.select(true);
        model.select(false);
        model.select(false);
        assert_eq!(model.focus, Focus::Input, "down past the newest");
    }

    #[test]
    fn scrolling_to_the_top_asks_for_the_page_before() {
        let mut model = model_with_two();
        model.apply(&Output::Opened { conversation: "c1" });
        let page: Vec<pb::Message> = (51..=100)
            .map(|seq| text("c1", seq, "alice", "m", 1))
            .collect();
        model.apply(&Output::Page {
            conversation: "c1",
            label: "alice",
            messages: &page,
            before: 0,
        });
        assert_eq!(model.scroll_up(10, 50, 20), None, "not at the top yet");
        assert_eq!(
            model.scroll_up(100, 50, 20),
            Some(Intent::Older {
                conversation: "c1".into(),
                before: 51
            })
        );
        assert_eq!(model.scroll_up(10, 50, 20), None, "asked once");
        model.apply(&Output::Page {
            conversation: "c1",
            label: "alice",
            messages: &page[..10],
            before: 51,
        });
        assert!(model.get("c1").unwrap().complete);
    }

    #[test]
    fn editor_history_and_go_to() {
        let mut editor = Editor::default();
        for c in "héllo".chars() {
            editor.insert(c);
        }
        editor.left();
        editor.backspace();
        assert_eq!(editor.text, "hélo");
        assert_eq!(editor.take(), "hélo");
        editor.set("second");
        editor.take();
        editor.older();
        assert_eq!(editor.text, "second");
        editor.older();
        assert_eq!(editor.text, "hélo");
        editor.newer();
        assert_eq!(editor.text, "second");
        editor.newer();
        assert_eq!(editor.text, "");

        let model = model_with_two();
        assert_eq!(model.go_to("te").as_deref(), Some("g1"));
        assert_eq!(model.go_to("lic").as_deref(), Some("c1"));
        assert_eq!(model.go_to("ace").as_deref(), Some("c1"));
        assert_eq!(model.go_to("zzz"), None);
        assert_eq!(model.neighbour(1).as_deref(), Some("g1"), "nothing open");
    }
}
