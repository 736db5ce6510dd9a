//! What the server says, turned into changes of state: `ready` on each
//! new stream, then every frame it pushes (messages and membership events,
//! acks, errors, presence, read receipts, typing). Each change that a
//! person should see is handed to the [`Render`](super::render::Render);
//! the delivery rules themselves are in [`crate::delivery`].
//!
//! A new frame type is handled here, in [`App::on_frame`], and shown by a
//! new [`Output`] of the renderer.

use std::collections::HashSet;
use std::time::Duration;

use chat_proto as pb;
use pb::server_frame::Frame as Down;
use tokio::time::Instant;
use tonic::Code;

use super::render::{Output, SendRefusal};
use super::session::{Live, Pending};
use super::App;
use crate::api;
use crate::cli::Target;
use crate::delivery::Verdict;
use crate::error::describe_status;
use crate::view;

impl App {
    /// A new stream is open with `ready`: a group the server no longer
    /// lists is gone, what other sessions were told is fetched, and the
    /// unacked sends go again.
    pub(super) async fn on_connected(&mut self, live: Live, ready: pb::Ready) {
        let url = live.url.clone();
        let first = self.session.opened(live);
        let mut gaps = Vec::new();
        self.groups.clear();
        let listed: HashSet<&str> = ready
            .conversations
            .iter()
            .map(|c| c.conversation_id.as_str())
            .collect();
        // A group we were in but that the server no longer lists: we were
        // removed (or left from another device) while disconnected.
        let dropped: Vec<String> = self
            .tracker
            .known()
            .filter(|id| !listed.contains(id) && !self.tracker.is_gone(id))
            .filter(|id| self.labels.get(*id).is_some_and(|l| l.starts_with('#')))
            .map(str::to_owned)
            .collect();
        for id in dropped {
            self.render.show(Output::NoLongerIn {
                label: &self.labels[&id],
            });
            self.gone_from(&id);
        }
        for c in &ready.conversations {
            self.learn(c);
            let id = &c.conversation_id;
            if self.tracker.knows(id) {
                // Another session may have been told more than this one
                // printed: the server will not replay that part.
                let shown = self.tracker.shown(id);
                if c.delivered_seq > shown {
                    gaps.push((id.clone(), shown, c.delivered_seq + 1));
                }
                self.tracker.server_delivered(id, c.delivered_seq);
            } else {
                self.tracker.seed(id, c.delivered_seq);
            }
        }
        let via = self.session.names_servers().then_some(url.as_str());
        self.render.show(Output::Connected {
            ready: &ready,
            via,
            first,
        });
        for (id, after, before) in gaps {
            self.fill_gap(&id, after, before).await;
        }
        self.session.resend();
        self.flush_cursors();
    }

    /// One frame of the stream.
    pub(super) async fn on_frame(&mut self, frame: pb::ServerFrame) {
        match frame.frame {
            Some(Down::Message(m)) => self.on_message(m).await,
            Some(Down::Ack(ack)) => self.on_ack(ack),
            // Besides sends (answered by acks), this client sends only
            // `delivered` and `mark_read` frames; NOT_FOUND for those means
            // a group we just left or were removed from: nothing to say.
            Some(Down::Error(e)) if e.kind == "not_found" => {}
            Some(Down::Error(e)) => self.render.show(Output::ServerError(&e.message)),
            Some(Down::Presence(p)) => self.render.show(Output::Presence {
                user: &p.username,
                online: p.online,
            }),
            Some(Down::ReadUpdate(r)) => self.on_read_update(r),
            Some(Down::Typing(t)) => self.on_typing(t),
            Some(Down::Ready(_) | Down::Pong(_)) | None => {}
        }
        self.flush_cursors();
    }

    /// A read receipt of another member in the chosen conversation, shown
    /// once per (reader, message of ours): reading their own messages, or
    /// ours again, tells us nothing.
    fn on_read_update(&mut self, r: pb::ReadUpdate) {
        if r.username == self.me
            || self.chosen_conversation().as_deref() != Some(r.conversation_id.as_str())
        {
            return;
        }
        let ours = self
            .own_newest
            .get(&r.conversation_id)
            .copied()
            .unwrap_or(0);
        let shown = self
            .receipts
            .entry((r.conversation_id, r.username.clone()))
            .or_default();
        if r.read_seq >= ours && ours > *shown {
            *shown = r.read_seq;
            self.render.show(Output::ReadUpTo {
                user: &r.username,
                seq: r.read_seq,
            });
        }
    }

    /// Someone typing in the chosen conversation, shown at most once per
    /// `expires_in_ms` per user.
    fn on_typing(&mut self, t: pb::Typing) {
        if t.username == self.me
            || self.chosen_conversation().as_deref() != Some(t.conversation_id.as_str())
        {
            return;
        }
        let now = Instant::now();
        let until = self
            .typing
            .entry((t.conversation_id, t.username.clone()))
            .or_insert(now);
        if now >= *until {
            *until = now + Duration::from_millis(u64::from(t.expires_in_ms));
            self.render.show(Output::Typing { user: &t.username });
        }
    }

    /// A message or a membership event, from the stream or from the answer
    /// to a change made here (the stream brings that one too: it is
    /// deduplicated).
    pub(super) async fn on_message(&mut self, m: pb::Message) {
        if self.take_own(&m) {
            return;
        }
        let conversation = m.conversation_id.clone();
        if self.adds_me(&m) {
            self.tracker.join(&conversation, m.seq);
        }
        match self.tracker.classify(&conversation, m.seq) {
            Verdict::Seen => return,
            Verdict::Next => {}
            Verdict::Gap { after } => self.fill_gap(&conversation, after, m.seq).await,
        }
        self.show(&m).await;
        if self.removes_me(&m) {
            self.gone_from(&conversation);
        }
    }

    /// A membership event that makes us a member of its group.
    fn adds_me(&self, m: &pb::Message) -> bool {
        use pb::MessageKind as K;
        let concerns_me = m.members.contains(&self.me);
        match K::try_from(m.kind) {
            Ok(K::GroupCreated) => concerns_me || m.sender == self.me,
            Ok(K::MembersAdded) => concerns_me,
            _ => false,
        }
    }

    /// A membership event that ends our membership of its group.
    fn removes_me(&self, m: &pb::Message) -> bool {
        use pb::MessageKind as K;
        let concerns_me = m.members.contains(&self.me);
        match K::try_from(m.kind) {
            Ok(K::MemberRemoved) => concerns_me,
            Ok(K::MemberLeft) => concerns_me || m.sender == self.me,
            _ => false,
        }
    }

    fn on_ack(&mut self, ack: pb::SendAck) {
        let Some(sent) = self.session.settle(&ack.client_msg_id) else {
            return;
        };
        match (ack.message, ack.error) {
            (Some(m), _) => {
                self.note_own(&m);
                self.learn_sent(&m.conversation_id, &sent);
                self.tracker.record(&m.conversation_id, m.seq);
                self.render.show(Output::Sent {
                    message: &m,
                    label: &sent.label,
                });
            }
            (None, error) => {
                let why = match &error {
                    Some(e) if e.kind == "not_found" => match &sent.to {
                        Target::User(_) => SendRefusal::NoSuchUser,
                        Target::Group(_) => SendRefusal::NoSuchGroup,
                    },
                    Some(e) => SendRefusal::Said(&e.message),
                    None => SendRefusal::Unexplained,
                };
                self.render.show(Output::SendRefused {
                    label: &sent.label,
                    body: &sent.body,
                    why,
                });
            }
        }
    }

    /// A message of ours still pending here (its ack was lost with the
    /// connection and the replay brought it back) counts as its ack.
    fn take_own(&mut self, m: &pb::Message) -> bool {
        if m.sender != self.me {
            return false;
        }
        let Some(sent) = self.session.settle(&m.client_msg_id) else {
            return false;
        };
        self.note_own(m);
        self.learn_sent(&m.conversation_id, &sent);
        self.tracker.record(&m.conversation_id, m.seq);
        self.render.show(Output::Sent {
            message: m,
            label: &sent.label,
        });
        true
    }

    /// A text of ours: the newest one is what a read receipt is about.
    fn note_own(&mut self, m: &pb::Message) {
        if m.sender == self.me && m.kind == pb::MessageKind::Text as i32 {
            let newest = self
                .own_newest
                .entry(m.conversation_id.clone())
                .or_default();
            *newest = (*newest).max(m.seq);
        }
    }

    fn learn_sent(&mut self, conversation: &str, sent: &Pending) {
        if let Target::User(peer) = &sent.to {
            self.learn_direct(conversation, peer);
        }
    }

    /// Fetches and shows the messages with `after < seq < before`.
    async fn fill_gap(&mut self, conversation: &str, after: u64, before: u64) {
        let Some(mut chat) = self.session.chat() else {
            return;
        };
        match api::between(&mut chat, conversation, after, before).await {
            Ok(messages) => {
                for m in messages {
                    if !self.take_own(&m) && !self.tracker.is_seen(conversation, m.seq) {
                        self.show(&m).await;
                    }
                }
                // What the server did not return is not ours to see
                // (messages of a group from before we joined it).
                self.tracker.cover(conversation, before - 1);
            }
            // A group we are no longer in (the event that says so is
            // being shown): nothing to fetch.
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => {
                // Shown anyway; the next message (or reconnect) retries.
                self.render.show(Output::GapNotFetched {
                    why: &describe_status(&status),
                });
            }
        }
    }

    async fn show(&mut self, m: &pb::Message) {
        self.note_own(m);
        let label = self.label(m).await;
        self.render.show(Output::Message {
            message: m,
            me: &self.me,
            label: &label,
        });
        self.tracker.record(&m.conversation_id, m.seq);
    }

    /// How the conversation of `m` is shown; asks the server about one not
    /// seen yet.
    async fn label(&mut self, m: &pb::Message) -> String {
        let conversation = m.conversation_id.as_str();
        if let Some(label) = self.labels.get(conversation) {
            return label.clone();
        }
        if let Some(mut chat) = self.session.chat() {
            if let Ok(list) = api::conversations(&mut chat).await {
                for c in &list {
                    self.learn(c);
                }
            }
        }
        let fallback = if view::is_event(m) {
            format!("#{conversation}")
        } else if m.sender == self.me {
            "?".to_owned()
        } else {
            m.sender.clone()
        };
        self.labels
            .entry(conversation.to_owned())
            .or_insert(fallback)
            .clone()
    }
}
