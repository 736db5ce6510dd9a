//! Interactive mode: log in (or sign up on the spot), hold the `Connect`
//! stream open, show messages as they come, send what the user types, and
//! reconnect on its own.
//!
//! One task runs everything in a `select!` loop ([`App::event_loop`]) over
//! the user's lines, the server's frames, a connection attempt in progress
//! and the retry timer, so the user can type (and quit) while
//! disconnected. The delivery rules live in [`crate::delivery`]: nothing
//! is shown twice, a gap is fetched with `GetHistory` before what follows
//! it is shown, and the server is told `delivered` only for what has been
//! shown. A conversation is marked read up to what was shown while it is
//! the one chosen with `/to`, and when it is chosen.
//!
//! Groups: `/to #<group>` (its id or its name) makes plain lines go to a
//! group, and `/group ...` creates one or manages the current one. A
//! membership change is a message of the group: it goes through the same
//! delivery rules and shows as `* alice added dave to #Team`. An event
//! that adds us is where the group starts for us; one that removes us ends
//! it (see [`crate::delivery`]).
//!
//! # Layout
//!
//! - this module: [`App`], the state of the conversations, the loop that
//!   ties the others together, and the cursors reported to the server.
//! - [`session`]: login, the stream, reconnecting with backoff, and the
//!   sends waiting for their acks (resent after a reconnect).
//! - [`events`]: `ready` and the frames of the stream, turned into changes
//!   of state.
//! - [`commands`]: a typed line parsed into a [`Command`](commands::Command)
//!   and executed.
//! - [`render`]: [`Render`], the one interface to the terminal, and the
//!   line renderer: with [`screen`], the only parts that format or print
//!   anything.
//! - [`screen`]: the full-screen interface, a [`Render`] that also reads
//!   the keys and turns them into [`Intent`](render::Intent)s: lines as if
//!   typed, opening a conversation, an older page, typing.

mod commands;
mod events;
pub mod render;
pub mod screen;
mod session;

use std::collections::HashMap;
use std::future::Future;
use std::io::IsTerminal;
use std::time::Duration;

use chat_proto as pb;
use pb::client_frame::Frame as Up;
use tokio::time::Instant;
use tonic::Code;

use crate::cli::Target;
use crate::cli::Ui;
use crate::connection;
use crate::delivery::Tracker;
use crate::error::{describe_status, Failure};
use crate::input::{Input, Typed};
use crate::Context;
use render::{group_label, LineRenderer, Output, Render};
use screen::Screen;
use session::{Connecting, Session};

/// How long `/quit` waits for the acks of messages still being sent.
const QUIT_GRACE: Duration = Duration::from_secs(5);

/// Runs the interactive mode until `/quit` or the end of input: on the
/// full screen when `--ui` says so, or (`auto`) when stdin and stdout are
/// a terminal that can show one; else line by line.
pub async fn run(ctx: &Context) -> Result<(), Failure> {
    let full_screen = match ctx.ui {
        Ui::Line => false,
        Ui::Screen => true,
        Ui::Auto => {
            std::io::stdin().is_terminal()
                && std::io::stdout().is_terminal()
                && std::env::var("TERM").is_ok_and(|term| !term.is_empty() && term != "dumb")
        }
    };
    if full_screen {
        run_with(ctx, Box::new(Screen::new()), Input::on_request()).await
    } else {
        run_with(ctx, Box::new(LineRenderer::default()), Input::spawn()).await
    }
}

/// Runs the interactive mode, shown by `render`, reading `input`.
pub async fn run_with(
    ctx: &Context,
    mut render: Box<dyn Render>,
    mut input: Input,
) -> Result<(), Failure> {
    let (me, secret) = session::log_in(ctx, &mut input, render.as_mut()).await?;
    connection::bearer(&secret)?;
    if render.begin() {
        input.keys();
    }
    let mut app = App::new(Session::new(ctx.servers.clone(), secret), me, render);
    let result = app.event_loop(&mut input).await;
    app.session.close().await;
    result
}

/// Where plain lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chosen {
    User(String),
    /// A group by id, and how it is shown (`#name`).
    Group {
        id: String,
        label: String,
    },
}

impl Chosen {
    fn target(&self) -> Target {
        match self {
            Chosen::User(user) => Target::User(user.clone()),
            Chosen::Group { id, .. } => Target::Group(id.clone()),
        }
    }

    /// How it is shown: the user, or `#name`.
    pub fn label(&self) -> &str {
        match self {
            Chosen::User(user) => user,
            Chosen::Group { label, .. } => label,
        }
    }
}

/// Whether the loop goes on after a line.
enum Flow {
    Continue,
    Quit,
}

struct App {
    me: String,
    session: Session,
    render: Box<dyn Render>,
    tracker: Tracker,
    /// How each conversation is shown: the peer, or `#name` for a group.
    labels: HashMap<String, String>,
    /// Direct conversations by peer.
    direct: HashMap<String, String>,
    /// The groups we are in, as last heard: name by group id (which is
    /// also the group's conversation id).
    groups: HashMap<String, String>,
    /// The read cursor the server was last told, by conversation.
    read_sent: HashMap<String, u64>,
    /// Who plain lines are sent to.
    target: Option<Chosen>,
    /// The message of ours that a receipt was last shown for, by
    /// (conversation, reader).
    receipts: HashMap<(String, String), u64>,
    /// Our newest text, by conversation.
    own_newest: HashMap<String, u64>,
    /// Until when a typing notice shown stands, by (conversation, user).
    typing: HashMap<(String, String), Instant>,
}

impl App {
    fn new(session: Session, me: String, render: Box<dyn Render>) -> Self {
        Self {
            me,
            session,
            render,
            tracker: Tracker::default(),
            labels: HashMap::new(),
            direct: HashMap::new(),
            groups: HashMap::new(),
            read_sent: HashMap::new(),
            target: None,
            receipts: HashMap::new(),
            own_newest: HashMap::new(),
            typing: HashMap::new(),
        }
    }

    async fn event_loop(&mut self, input: &mut Input) -> Result<(), Failure> {
        let mut connecting: Option<Connecting> = None;
        let mut retry_at = Some(Instant::now());
        let mut quit_by: Option<Instant> = None;
        // Lines typed (or piped) before the first connection attempt wait
        // for it: `/to` checks the user with the server.
        let mut attempted = false;
        loop {
            if quit_by.is_some() && self.session.pending.is_empty() {
                return Ok(());
            }
            tokio::select! {
                typed = input.next(), if quit_by.is_none() && attempted => {
                    let flow = match typed {
                        Some(Typed::Line(line)) => self.on_line(&line).await,
                        Some(Typed::Event(event)) => {
                            let mut flow = Flow::Continue;
                            for intent in self.render.key(event) {
                                if let Flow::Quit = self.on_intent(intent).await {
                                    flow = Flow::Quit;
                                }
                            }
                            flow
                        }
                        None => Flow::Quit,
                    };
                    // A group command may have shown events.
                    self.flush_cursors();
                    if let Flow::Quit = flow {
                        if !self.session.pending.is_empty() {
                            self.render.show(Output::Quitting {
                                unsent: self.session.pending.len(),
                            });
                        }
                        quit_by = Some(Instant::now() + QUIT_GRACE);
                    }
                }
                frame = self.session.next_frame(), if self.session.live.is_some() => {
                    match frame {
                        Ok(Some(frame)) => self.on_frame(frame).await,
                        Ok(None) => self.lost("the server closed the stream"),
                        Err(status) if status.code() == Code::Unauthenticated => {
                            return Err(Failure::from_status_as(&status, &self.me));
                        }
                        Err(status) => self.lost(&describe_status(&status)),
                    }
                    if self.session.live.is_none() {
                        retry_at = Some(Instant::now() + self.session.retry_delay());
                    }
                }
                result = poll_some(&mut connecting), if connecting.is_some() => {
                    connecting = None;
                    attempted = true;
                    match result {
                        Ok((live, ready)) => self.on_connected(live, ready).await,
                        Err(status) if status.code() == Code::Unauthenticated => {
                            return Err(Failure::from_status_as(&status, &self.me));
                        }
                        Err(status) => {
                            let server = self.session.server_url().to_owned();
                            let delay = self.session.attempt_failed();
                            self.render.show(Output::CannotConnect {
                                server: &server,
                                why: &describe_status(&status),
                                retry_in: delay,
                            });
                            retry_at = Some(Instant::now() + delay);
                        }
                    }
                }
                () = sleep_opt(retry_at),
                    if retry_at.is_some() && connecting.is_none() && self.session.live.is_none() =>
                {
                    retry_at = None;
                    connecting = Some(self.session.connect());
                }
                Ok(()) = tokio::signal::ctrl_c() => {
                    // A second ctrl-c while quitting does not wait any more.
                    if quit_by.is_some() {
                        return Err(Failure::other("interrupted"));
                    }
                    quit_by = Some(Instant::now() + QUIT_GRACE);
                }
                () = sleep_opt(quit_by), if quit_by.is_some() => {
                    for p in &self.session.pending {
                        self.render.show(Output::NotSent { label: &p.label, body: &p.body });
                    }
                    return Err(Failure::other(format!(
                        "{} message(s) could not be sent",
                        self.session.pending.len()
                    )));
                }
            }
        }
    }

    /// The stream ended for `reason`.
    fn lost(&mut self, reason: &str) {
        self.session.lost();
        self.render.show(Output::Disconnected { reason });
    }

    /// We are no longer in the group `id`: its cursors are not reported
    /// any more, and plain lines no longer go there.
    fn gone_from(&mut self, id: &str) {
        self.tracker.leave(id);
        self.groups.remove(id);
        self.read_sent.remove(id);
        if matches!(&self.target, Some(Chosen::Group { id: current, .. }) if current == id) {
            self.target = None;
        }
    }

    fn learn(&mut self, c: &pb::Conversation) {
        let id = c.conversation_id.clone();
        self.labels.insert(id.clone(), render::display_label(c));
        if c.kind == pb::ConversationKind::Direct as i32 && !c.peer.is_empty() {
            self.direct.insert(c.peer.clone(), id.clone());
        }
        if c.kind == pb::ConversationKind::Group as i32 {
            self.groups.insert(id.clone(), c.name.clone());
        }
        let read = self.read_sent.entry(id).or_default();
        *read = (*read).max(c.read_seq);
    }

    /// The server's list of our groups: exactly those are the groups we
    /// are in.
    fn learn_groups(&mut self, list: &[pb::Conversation]) {
        self.groups.clear();
        for c in list {
            self.learn(c);
        }
    }

    fn learn_direct(&mut self, conversation: &str, peer: &str) {
        self.labels
            .entry(conversation.to_owned())
            .or_insert_with(|| peer.to_owned());
        self.direct.insert(peer.to_owned(), conversation.to_owned());
    }

    /// A group the server just told us about (its creation).
    fn learn_group(&mut self, group: &pb::Group) {
        let label = group_label(&group.group_id, &group.name);
        self.labels.insert(group.group_id.clone(), label);
        self.groups
            .insert(group.group_id.clone(), group.name.clone());
    }

    /// The conversation plain lines go to, if it exists yet.
    fn chosen_conversation(&self) -> Option<String> {
        match self.target.as_ref()? {
            Chosen::User(peer) => self.direct.get(peer).cloned(),
            Chosen::Group { id, .. } => Some(id.clone()),
        }
    }

    /// Tells the server what was shown: `delivered` for every
    /// conversation, `mark_read` for the chosen one.
    fn flush_cursors(&mut self) {
        // Nothing is counted as reported without a stream to report it on.
        if self.session.live.is_none() {
            return;
        }
        for (conversation_id, seq) in self.tracker.unreported() {
            self.session.send_frame(Up::Delivered(pb::Delivered {
                conversation_id,
                seq,
            }));
        }
        let Some(conversation) = self.chosen_conversation() else {
            return;
        };
        let shown = self.tracker.shown(&conversation);
        let read = self.read_sent.entry(conversation.clone()).or_default();
        if shown > *read {
            *read = shown;
            self.session.send_frame(Up::MarkRead(pb::MarkReadRequest {
                conversation_id: conversation,
                seq: shown,
            }));
        }
    }
}

async fn poll_some<F: Future + Unpin>(future: &mut Option<F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
