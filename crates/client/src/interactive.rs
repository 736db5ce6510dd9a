//! Interactive mode: log in (or sign up on the spot), hold the `Connect`
//! stream open, print messages as they come, send what the user types, and
//! reconnect on its own.
//!
//! One task runs everything in a `select!` loop over the user's lines, the
//! server's frames, a connection attempt in progress and the retry timer,
//! so the user can type (and quit) while disconnected. The delivery rules
//! live in [`crate::delivery`]: nothing is printed twice, a gap is fetched
//! with `GetHistory` before what follows it is printed, and the server is
//! told `delivered` only for what has been printed. Sends go one at a time,
//! each after the ack of the one before (the server commits the sends of a
//! stream concurrently, so sending ahead could reorder them); unacked sends
//! are resent, with the same client_msg_id, after a reconnect (the server
//! stores them once).
//!
//! A conversation is marked read up to what was printed while it is the
//! one chosen with `/to`, and when it is chosen.
//!
//! Groups: `/to #<group>` (its id or its name) makes plain lines go to a
//! group, and `/group ...` creates one or manages the current one. A
//! membership change is a message of the group: it goes through the same
//! delivery rules and prints as `* alice added dave to #Team`. An event
//! that adds us is where the group starts for us; one that removes us ends
//! it (see [`crate::delivery`]).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chat_proto as pb;
use chat_proto::chat_service_client::ChatServiceClient;
use chat_proto::AuthedChatClient;
use chrono::Local;
use pb::client_frame::Frame as Up;
use pb::server_frame::Frame as Down;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::cli::{parse_username, Target, DEFAULT_SERVER};
use crate::connection::{self, Backoff, CALL_TIMEOUT};
use crate::delivery::{Tracker, Verdict};
use crate::error::{describe_error, describe_status, Exit, Failure};
use crate::input::Input;
use crate::{api, commands, view, Context};

/// `/history` without a count.
const DEFAULT_HISTORY: u32 = 20;
/// How long `/quit` waits for the acks of messages still being sent.
const QUIT_GRACE: Duration = Duration::from_secs(5);
/// How long closing waits for the server to finish the stream (so that the
/// last `delivered` frames are stored before the process exits).
const CLOSE_GRACE: Duration = Duration::from_secs(2);

const HELP: &str = "\
commands:
  /to <user>       choose who to talk to: the lines you type are sent to them
  /to #<group>     talk in a group, named by its id or its name
  /history [n]     the last n messages there (default 20)
  /unread          the conversations with unread messages
  /edit <seq> <text>   edit one of your messages there
  /delete <seq>    delete one of your messages there
  /group create <name> [members...]
                   create a group (quote a name with spaces) and talk in it
  /group add <users...>   add to the current group (owner and admins)
  /group remove <user>    remove from the current group (owner and admins)
  /group leave     leave the current group
  /group info      the current group's id and members
  /group list      your groups
  /help            this help
  /quit            leave (ctrl-d and ctrl-c too)
a line starting with // is sent with one slash less";

const GROUP_USAGE: &str = "\
usage: /group create <name> [members...] | /group add <users...> | \
/group remove <user> | /group leave | /group info | /group list";

/// Runs the interactive mode until `/quit` or the end of input.
pub async fn run(ctx: &Context) -> Result<(), Failure> {
    let mut input = Input::spawn();
    let (me, secret) = log_in(ctx, &mut input).await?;
    connection::bearer(&secret)?;
    let mut app = App::new(ctx.servers.clone(), me, secret);
    let result = app.event_loop(&mut input).await;
    app.close().await;
    result
}

/// The saved user, or a new one registered now.
async fn log_in(ctx: &Context, input: &mut Input) -> Result<(String, String), Failure> {
    let store = ctx.credentials();
    match store.select(ctx.user.as_deref()) {
        Ok((user, secret)) => {
            if let Err(f) = store.make_default(&user) {
                view::err(format!("warning: {f}"));
            }
            return Ok((user, secret));
        }
        Err(f) if f.exit == Exit::Auth => {}
        Err(f) => return Err(f),
    }
    sign_up(ctx, input).await
}

/// Asks for a username and registers it; a taken one can be logged into
/// with its secret.
async fn sign_up(ctx: &Context, input: &mut Input) -> Result<(String, String), Failure> {
    let store = ctx.credentials();
    store.check_writable()?;
    view::out("no saved credentials: choose a username to register (3 to 32 of a-z 0-9 _ . -)");
    let mut preset = ctx.user.clone();
    loop {
        let raw = match preset.take() {
            Some(name) => name,
            None => ask(input, "username: ").await?,
        };
        if raw.trim().is_empty() {
            continue;
        }
        let username = match parse_username(&raw) {
            Ok(name) => name,
            Err(f) => {
                view::out(f.message);
                continue;
            }
        };
        let (_, channel) = connection::first_reachable(&ctx.servers).await?;
        match api::register(channel.clone(), &username, "", "").await {
            Ok(response) => {
                let name = response.user.map_or(username, |u| u.username);
                commands::save_new_secret(ctx, &name, &response.secret)?;
                view::out(format!(
                    "registered {name}; its secret is saved in {}",
                    store.path().display()
                ));
                return Ok((name, response.secret));
            }
            Err(status) if status.code() == Code::AlreadyExists => {
                view::out(format!(
                    "{username} is taken. If it is yours, paste its secret; \
                     press Enter to choose another name."
                ));
                let secret = ask(input, "secret: ").await?;
                let secret = secret.trim();
                if secret.is_empty() {
                    continue;
                }
                match commands::verify_secret(channel, &username, secret).await {
                    Ok(()) => {
                        store.remember(&username, secret)?;
                        view::out(format!(
                            "logged in as {username}; the secret is saved in {}",
                            store.path().display()
                        ));
                        return Ok((username, secret.to_owned()));
                    }
                    Err(f) if matches!(f.exit, Exit::Auth | Exit::Usage) => view::out(f.message),
                    Err(f) => return Err(f),
                }
            }
            Err(status) if status.code() == Code::InvalidArgument => {
                view::out(describe_status(&status));
            }
            Err(status) => return Err(Failure::from(status)),
        }
    }
}

async fn ask(input: &mut Input, prompt: &str) -> Result<String, Failure> {
    view::prompt(prompt);
    match input.next().await {
        Some(line) => Ok(line),
        None => {
            view::out("");
            Err(Failure::auth(
                "no saved credentials, and the input ended before a username",
            ))
        }
    }
}

/// An open `Connect` stream and the clients of its server.
struct Live {
    url: String,
    channel: Channel,
    chat: AuthedChatClient,
    frames_out: mpsc::UnboundedSender<pb::ClientFrame>,
    frames_in: tonic::Streaming<pb::ServerFrame>,
}

/// A send waiting for its ack.
struct Pending {
    id: String,
    to: Target,
    /// How the recipient is shown: the user, or `#name`.
    label: String,
    body: String,
}

/// Where plain lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Chosen {
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

    fn label(&self) -> &str {
        match self {
            Chosen::User(user) => user,
            Chosen::Group { label, .. } => label,
        }
    }

    fn talking(&self) -> String {
        match self {
            Chosen::User(user) => format!("talking to {user}"),
            Chosen::Group { id, label } => format!("talking in {label} (group {id})"),
        }
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<(Live, pb::Ready), Status>> + Send>>;

enum Flow {
    Continue,
    Quit,
}

struct App {
    me: String,
    secret: String,
    servers: Vec<String>,
    /// The server to connect to next.
    server: usize,
    live: Option<Live>,
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
    /// Sends without an ack yet, oldest first.
    pending: Vec<Pending>,
    /// The id of the pending send out on the current stream, if any.
    in_flight: Option<String>,
    backoff: Backoff,
    /// Connections made so far.
    sessions: u32,
    /// The read receipt last shown, by (conversation, reader).
    receipts: HashMap<(String, String), u64>,
    /// Until when a typing notice shown stands, by (conversation, user).
    typing: HashMap<(String, String), Instant>,
}

impl App {
    fn new(servers: Vec<String>, me: String, secret: String) -> Self {
        Self {
            me,
            secret,
            servers,
            server: 0,
            live: None,
            tracker: Tracker::default(),
            labels: HashMap::new(),
            direct: HashMap::new(),
            groups: HashMap::new(),
            read_sent: HashMap::new(),
            target: None,
            pending: Vec::new(),
            in_flight: None,
            backoff: Backoff::new(),
            sessions: 0,
            receipts: HashMap::new(),
            typing: HashMap::new(),
        }
    }

    fn server_url(&self) -> &str {
        self.servers
            .get(self.server)
            .map_or(DEFAULT_SERVER, String::as_str)
    }

    fn rotate(&mut self) {
        self.server = (self.server + 1) % self.servers.len().max(1);
    }

    async fn event_loop(&mut self, input: &mut Input) -> Result<(), Failure> {
        let mut connecting: Option<Connecting> = None;
        let mut retry_at = Some(Instant::now());
        let mut quit_by: Option<Instant> = None;
        // Lines typed (or piped) before the first connection attempt wait
        // for it: `/to` checks the user with the server.
        let mut attempted = false;
        loop {
            if quit_by.is_some() && self.pending.is_empty() {
                return Ok(());
            }
            tokio::select! {
                line = input.next(), if quit_by.is_none() && attempted => {
                    let flow = match line {
                        Some(line) => self.on_line(&line).await,
                        None => Flow::Quit,
                    };
                    // A group command may have shown events.
                    self.flush_cursors();
                    if let Flow::Quit = flow {
                        if !self.pending.is_empty() {
                            view::out(format!(
                                "sending {} message(s) before quitting…",
                                self.pending.len()
                            ));
                        }
                        quit_by = Some(Instant::now() + QUIT_GRACE);
                    }
                }
                frame = next_frame(&mut self.live), if self.live.is_some() => {
                    match frame {
                        Ok(Some(frame)) => self.on_frame(frame).await,
                        Ok(None) => self.lost("the server closed the stream"),
                        Err(status) if status.code() == Code::Unauthenticated => {
                            return Err(Failure::from_status_as(&status, &self.me));
                        }
                        Err(status) => self.lost(&describe_status(&status)),
                    }
                    if self.live.is_none() {
                        retry_at = Some(Instant::now() + self.backoff.next_delay());
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
                            let delay = self.backoff.next_delay();
                            view::out(format!(
                                "cannot connect to {}: {}; retrying in {:.1} s…",
                                self.server_url(),
                                describe_status(&status),
                                delay.as_secs_f64()
                            ));
                            self.rotate();
                            retry_at = Some(Instant::now() + delay);
                        }
                    }
                }
                () = sleep_opt(retry_at),
                    if retry_at.is_some() && connecting.is_none() && self.live.is_none() =>
                {
                    retry_at = None;
                    connecting = Some(Box::pin(open_live(
                        self.server_url().to_owned(),
                        self.secret.clone(),
                    )));
                }
                Ok(()) = tokio::signal::ctrl_c() => {
                    // A second ctrl-c while quitting does not wait any more.
                    if quit_by.is_some() {
                        return Err(Failure::other("interrupted"));
                    }
                    quit_by = Some(Instant::now() + QUIT_GRACE);
                }
                () = sleep_opt(quit_by), if quit_by.is_some() => {
                    for p in &self.pending {
                        view::err(format!("error: not sent to {}: {}", p.label, preview(&p.body)));
                    }
                    return Err(Failure::other(format!(
                        "{} message(s) could not be sent",
                        self.pending.len()
                    )));
                }
            }
        }
    }

    /// Closes the stream and waits (briefly) for the server to end it, so
    /// that the `delivered` frames already sent are stored.
    async fn close(&mut self) {
        let Some(live) = self.live.take() else { return };
        let Live {
            frames_out,
            mut frames_in,
            ..
        } = live;
        drop(frames_out);
        let drain = async { while let Ok(Some(_)) = frames_in.message().await {} };
        let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
    }

    fn lost(&mut self, reason: &str) {
        self.live = None;
        self.in_flight = None;
        view::out(format!("disconnected: {reason}; reconnecting…"));
        self.rotate();
    }

    async fn on_connected(&mut self, live: Live, ready: pb::Ready) {
        let url = live.url.clone();
        self.live = Some(live);
        self.backoff.reset();
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
            view::out(format!("you are no longer in {}", self.labels[&id]));
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
        let via = (self.servers.len() > 1).then_some(url.as_str());
        view::out(view::ready_summary(&ready, via));
        if self.sessions == 0 {
            view::out(
                "type /to <user> (or /to #<group>) to choose who to talk to, /help for the commands",
            );
        }
        self.sessions += 1;
        for (id, after, before) in gaps {
            self.fill_gap(&id, after, before).await;
        }
        // Sends that were not acked go again, with the same ids.
        self.in_flight = None;
        self.pump_sends();
        self.flush_cursors();
    }

    /// Puts the oldest pending send on the stream unless one is out.
    fn pump_sends(&mut self) {
        let (Some(live), None, Some(next)) = (&self.live, &self.in_flight, self.pending.first())
        else {
            return;
        };
        if live.frames_out.send(send_frame(next)).is_ok() {
            self.in_flight = Some(next.id.clone());
        }
    }

    /// Removes a pending send that got its answer, and sends the next one.
    fn settle(&mut self, client_msg_id: &str) -> Option<Pending> {
        let index = self.pending.iter().position(|p| p.id == client_msg_id)?;
        if self.in_flight.as_deref() == Some(client_msg_id) {
            self.in_flight = None;
        }
        let settled = self.pending.remove(index);
        self.pump_sends();
        Some(settled)
    }

    async fn on_frame(&mut self, frame: pb::ServerFrame) {
        match frame.frame {
            Some(Down::Message(m)) => self.on_message(m).await,
            Some(Down::Ack(ack)) => self.on_ack(ack),
            // Besides sends (answered by acks), this client sends only
            // `delivered` and `mark_read` frames; NOT_FOUND for those means
            // a group we just left or were removed from: nothing to say.
            Some(Down::Error(e)) if e.kind == "not_found" => {}
            Some(Down::Error(e)) => view::err(format!("error: {}", e.message)),
            Some(Down::Presence(p)) => {
                let state = if p.online { "online" } else { "offline" };
                view::out(format!("* {} is {state}", view::terminal_text(&p.username)));
            }
            Some(Down::ReadUpdate(r)) => self.on_read_update(r),
            Some(Down::Typing(t)) => self.on_typing(t),
            Some(Down::Ready(_) | Down::Pong(_)) | None => {}
        }
        self.flush_cursors();
    }

    /// A read receipt of another member in the chosen conversation:
    /// `* bob read up to 7`, once per (reader, seq).
    fn on_read_update(&mut self, r: pb::ReadUpdate) {
        if r.username == self.me
            || self.chosen_conversation().as_deref() != Some(r.conversation_id.as_str())
        {
            return;
        }
        let shown = self
            .receipts
            .entry((r.conversation_id, r.username.clone()))
            .or_default();
        if r.read_seq > *shown {
            *shown = r.read_seq;
            view::out(format!(
                "* {} read up to {}",
                view::terminal_text(&r.username),
                r.read_seq
            ));
        }
    }

    /// `* bob is typing…` in the chosen conversation, at most once per
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
            view::out(format!("* {} is typing…", view::terminal_text(&t.username)));
        }
    }

    async fn on_message(&mut self, m: pb::Message) {
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

    fn on_ack(&mut self, ack: pb::SendAck) {
        let Some(sent) = self.settle(&ack.client_msg_id) else {
            return;
        };
        match (ack.message, ack.error) {
            (Some(m), _) => {
                self.learn_sent(&m.conversation_id, &sent);
                self.tracker.record(&m.conversation_id, m.seq);
            }
            (None, error) => {
                let why = match error {
                    Some(e) if e.kind == "not_found" => match &sent.to {
                        Target::User(_) => "no such user".to_owned(),
                        Target::Group(_) => "no such group (or you are not in it)".to_owned(),
                    },
                    Some(e) => e.message,
                    None => "no reason given".to_owned(),
                };
                view::err(format!(
                    "error: not sent to {} ({}): {why}",
                    sent.label,
                    preview(&sent.body)
                ));
            }
        }
    }

    /// A message of ours still pending here (its ack was lost with the
    /// connection and the replay brought it back) counts as its ack.
    fn take_own(&mut self, m: &pb::Message) -> bool {
        if m.sender != self.me {
            return false;
        }
        let Some(sent) = self.settle(&m.client_msg_id) else {
            return false;
        };
        self.learn_sent(&m.conversation_id, &sent);
        self.tracker.record(&m.conversation_id, m.seq);
        true
    }

    fn learn_sent(&mut self, conversation: &str, sent: &Pending) {
        if let Target::User(peer) = &sent.to {
            self.learn_direct(conversation, peer);
        }
    }

    /// Fetches and prints the messages with `after < seq < before`.
    async fn fill_gap(&mut self, conversation: &str, after: u64, before: u64) {
        let Some(live) = &self.live else { return };
        let mut chat = live.chat.clone();
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
                // Printed anyway; the next message (or reconnect) retries.
                view::err(format!(
                    "warning: cannot fetch missed messages: {}",
                    describe_status(&status)
                ));
            }
        }
    }

    async fn show(&mut self, m: &pb::Message) {
        let label = self.label(m).await;
        view::out(view::message_line(m, &self.me, &label, Local::now()));
        self.tracker.record(&m.conversation_id, m.seq);
    }

    /// How the conversation of `m` is shown; asks the server about one not
    /// seen yet.
    async fn label(&mut self, m: &pb::Message) -> String {
        let conversation = m.conversation_id.as_str();
        if let Some(label) = self.labels.get(conversation) {
            return label.clone();
        }
        if let Some(live) = &self.live {
            let mut chat = live.chat.clone();
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

    fn learn(&mut self, c: &pb::Conversation) {
        let id = c.conversation_id.clone();
        self.labels.insert(id.clone(), view::display_label(c));
        if c.kind == pb::ConversationKind::Direct as i32 && !c.peer.is_empty() {
            self.direct.insert(c.peer.clone(), id.clone());
        }
        if c.kind == pb::ConversationKind::Group as i32 {
            self.groups.insert(id.clone(), c.name.clone());
        }
        let read = self.read_sent.entry(id).or_default();
        *read = (*read).max(c.read_seq);
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

    /// Tells the server what was printed: `delivered` for every
    /// conversation, `mark_read` for the chosen one.
    fn flush_cursors(&mut self) {
        let Some(live) = &self.live else { return };
        for (conversation_id, seq) in self.tracker.unreported() {
            let _ = live.frames_out.send(frame(Up::Delivered(pb::Delivered {
                conversation_id,
                seq,
            })));
        }
        let Some(conversation) = self.chosen_conversation() else {
            return;
        };
        let shown = self.tracker.shown(&conversation);
        let read = self.read_sent.entry(conversation.clone()).or_default();
        if shown > *read {
            *read = shown;
            let mark = pb::MarkReadRequest {
                conversation_id: conversation,
                seq: shown,
            };
            let _ = live.frames_out.send(frame(Up::MarkRead(mark)));
        }
    }

    async fn on_line(&mut self, line: &str) -> Flow {
        let text = line.trim_end();
        let trimmed = text.trim_start();
        if trimmed.is_empty() {
            return Flow::Continue;
        }
        if let Some(literal) = trimmed.strip_prefix("//") {
            self.send_text(format!("/{literal}"));
            return Flow::Continue;
        }
        if let Some(command) = trimmed.strip_prefix('/') {
            return self.command(command).await;
        }
        self.send_text(text.to_owned());
        Flow::Continue
    }

    async fn command(&mut self, command: &str) -> Flow {
        let (name, rest) = first_word(command);
        let name = name.to_ascii_lowercase();
        let arg = rest.split_whitespace().next();
        match name.as_str() {
            "to" => match arg {
                // A group name may have spaces: all of the rest.
                Some(_) if rest.starts_with('#') => self.choose_group(&rest[1..]).await,
                Some(user) => self.choose_peer(user).await,
                None => match &self.target {
                    Some(chosen) => view::out(chosen.talking()),
                    None => view::out("usage: /to <user> or /to #<group>"),
                },
            },
            "group" => self.group_command(rest).await,
            "history" => {
                let count = match arg.map(str::parse::<u32>) {
                    None => DEFAULT_HISTORY,
                    Some(Ok(n)) if n > 0 => n,
                    Some(_) => {
                        view::out("usage: /history [n], with n a positive number");
                        return Flow::Continue;
                    }
                };
                self.show_history(count).await;
            }
            "unread" => self.show_unread().await,
            "edit" => {
                let (seq, text) = first_word(rest);
                match seq.parse::<u64>() {
                    Ok(seq) if seq > 0 && !text.is_empty() => self.edit(seq, Some(text)).await,
                    _ => view::out("usage: /edit <seq> <new text>"),
                }
            }
            "delete" => match (arg.map(str::parse::<u64>), rest.split_whitespace().count()) {
                (Some(Ok(seq)), 1) if seq > 0 => self.edit(seq, None).await,
                _ => view::out("usage: /delete <seq>"),
            },
            "help" | "?" => view::out(HELP),
            "quit" | "exit" | "q" => return Flow::Quit,
            _ => view::out(format!("unknown command /{name}; /help lists the commands")),
        }
        Flow::Continue
    }

    async fn choose_peer(&mut self, raw: &str) {
        let user = match parse_username(raw) {
            Ok(user) => user,
            Err(f) => return view::out(f.message),
        };
        if user == self.me {
            return view::out("that is you: choose someone else");
        }
        if let Some(live) = &self.live {
            match api::get_user(live.channel.clone(), &user).await {
                Ok(_) => {}
                Err(status) if status.code() == Code::NotFound => {
                    return view::out(format!("no such user: {user}"));
                }
                Err(status) => view::err(format!(
                    "warning: cannot check that {user} exists: {}",
                    describe_status(&status)
                )),
            }
        }
        self.choose(Chosen::User(user)).await;
    }

    /// Makes `chosen` where plain lines go, and marks it read.
    async fn choose(&mut self, chosen: Chosen) {
        view::out(chosen.talking());
        self.target = Some(chosen);
        self.mark_read_now().await;
    }

    /// `/to #<group>`: `query` is a group id or a group name (exact, else
    /// ignoring case); several groups of that name are listed to choose
    /// from by id.
    async fn choose_group(&mut self, query: &str) {
        let query = query.trim();
        if query.is_empty() {
            return view::out("usage: /to #<group>, with the group's id or name");
        }
        if let Some(live) = &self.live {
            let mut chat = live.chat.clone();
            match api::groups(&mut chat).await {
                Ok(list) => {
                    self.groups.clear();
                    for c in &list {
                        self.learn(c);
                    }
                }
                Err(status) => view::err(format!(
                    "warning: cannot list your groups: {}",
                    describe_status(&status)
                )),
            }
        }
        let mut found = self.find_groups(query);
        match found.len() {
            0 => view::out(format!("no such group: #{query}")),
            1 => {
                let (id, name) = found.remove(0);
                let label = group_label(&id, &name);
                self.choose(Chosen::Group { id, label }).await;
            }
            _ => {
                view::out(format!(
                    "{} groups are called {query}; choose one by id:",
                    found.len()
                ));
                for (id, name) in found {
                    view::out(format!("  /to #{id}   ({})", view::terminal_text(&name)));
                }
            }
        }
    }

    /// The groups `query` names, as (id, name), sorted by id.
    fn find_groups(&self, query: &str) -> Vec<(String, String)> {
        if let Some(name) = self.groups.get(query) {
            return vec![(query.to_owned(), name.clone())];
        }
        let matching = |same: &dyn Fn(&str) -> bool| {
            let mut found: Vec<(String, String)> = self
                .groups
                .iter()
                .filter(|(_, name)| same(name))
                .map(|(id, name)| (id.clone(), name.clone()))
                .collect();
            found.sort();
            found
        };
        let exact = matching(&|name| name == query);
        if !exact.is_empty() {
            return exact;
        }
        matching(&|name| name.to_lowercase() == query.to_lowercase())
    }

    /// Marks the chosen conversation read up to what was printed, with the
    /// unary call, so that a `/unread` right after agrees.
    async fn mark_read_now(&mut self) {
        let Some(conversation) = self.chosen_conversation() else {
            return;
        };
        let shown = self.tracker.shown(&conversation);
        if shown <= self.read_sent.get(&conversation).copied().unwrap_or(0) {
            return;
        }
        let Some(live) = &self.live else { return };
        let mut chat = live.chat.clone();
        let request = pb::MarkReadRequest {
            conversation_id: conversation.clone(),
            seq: shown,
        };
        match api::timed(chat.mark_read(request)).await {
            Ok(_) => {
                self.read_sent.insert(conversation, shown);
            }
            Err(status) => view::err(format!(
                "warning: cannot mark as read: {}",
                describe_status(&status)
            )),
        }
    }

    fn send_text(&mut self, body: String) {
        let Some(chosen) = self.target.clone() else {
            return view::out("choose who to talk to first: /to <user> or /to #<group>");
        };
        if self.live.is_none() {
            view::out("not connected: the message will be sent once reconnected");
        }
        self.pending.push(Pending {
            id: connection::new_client_msg_id(),
            to: chosen.target(),
            label: chosen.label().to_owned(),
            body,
        });
        self.pump_sends();
    }

    /// A chat client of the current connection.
    fn chat(&self) -> Option<AuthedChatClient> {
        let chat = self.live.as_ref().map(|live| live.chat.clone());
        if chat.is_none() {
            view::out("not connected: try again once reconnected");
        }
        chat
    }

    async fn show_history(&mut self, count: u32) {
        let Some(chosen) = self.target.clone() else {
            return view::out("choose who to talk to first: /to <user> or /to #<group>");
        };
        let Some(mut chat) = self.chat() else { return };
        let label = chosen.label().to_owned();
        let place = match &chosen {
            Chosen::User(peer) => format!("with {peer}"),
            Chosen::Group { label, .. } => format!("in {label}"),
        };
        let conversation = match &chosen {
            Chosen::Group { id, .. } => Some(id.clone()),
            Chosen::User(peer) => match self.direct.get(peer) {
                Some(id) => Some(id.clone()),
                None => match api::find_direct(&mut chat, peer).await {
                    Ok(found) => found.map(|c| {
                        self.learn(&c);
                        c.conversation_id
                    }),
                    Err(status) => {
                        return view::err(format!("error: {}", describe_status(&status)))
                    }
                },
            },
        };
        let Some(conversation) = conversation else {
            return view::out(format!("no messages {place} yet"));
        };
        match api::latest(&mut chat, &conversation, 0, count).await {
            Ok(messages) if messages.is_empty() => view::out(format!("no messages {place} yet")),
            Ok(messages) => {
                let now = Local::now();
                view::out(format!(
                    "--- the last {} message(s) {place} ---",
                    messages.len()
                ));
                for m in &messages {
                    let group = matches!(chosen, Chosen::Group { .. });
                    view::out(view::history_line(m, &self.me, &label, group, now));
                }
            }
            Err(status) if status.code() == Code::NotFound => view::err(format!(
                "error: no such group: {label} (or you are not in it)"
            )),
            Err(status) => view::err(format!("error: {}", describe_status(&status))),
        }
    }

    /// The conversation plain lines go to, asking the server for a direct
    /// one not known yet; says why there is none.
    async fn current_conversation(&mut self, chat: &mut AuthedChatClient) -> Option<String> {
        let Some(chosen) = self.target.clone() else {
            view::out("choose who to talk to first: /to <user> or /to #<group>");
            return None;
        };
        if let Some(id) = self.chosen_conversation() {
            return Some(id);
        }
        let Chosen::User(peer) = chosen else {
            return None;
        };
        match api::find_direct(chat, &peer).await {
            Ok(Some(c)) => {
                self.learn(&c);
                Some(c.conversation_id)
            }
            Ok(None) => {
                view::out(format!("no messages with {peer} yet"));
                None
            }
            Err(status) => {
                view::err(format!("error: {}", describe_status(&status)));
                None
            }
        }
    }

    /// `/edit <seq> <text>` (with `body`) or `/delete <seq>` (without).
    async fn edit(&mut self, seq: u64, body: Option<&str>) {
        let Some(mut chat) = self.chat() else { return };
        let Some(conversation) = self.current_conversation(&mut chat).await else {
            return;
        };
        let result = match body {
            Some(body) => api::edit_message(&mut chat, &conversation, seq, body).await,
            None => api::delete_message(&mut chat, &conversation, seq).await,
        };
        match result {
            Ok(event) => self.show_event(event).await,
            Err(status) if status.code() == Code::NotFound => view::err(format!(
                "error: no message {seq} of yours here (only your own text messages can be changed)"
            )),
            Err(status) => view::err(format!("error: {}", Failure::from(status))),
        }
    }

    async fn show_unread(&mut self) {
        let Some(mut chat) = self.chat() else { return };
        let list = match api::conversations(&mut chat).await {
            Ok(list) => list,
            Err(status) => return view::err(format!("error: {}", describe_status(&status))),
        };
        for c in &list {
            self.learn(c);
        }
        let mut unread: Vec<_> = list.iter().filter(|c| c.unread_count > 0).collect();
        if unread.is_empty() {
            return view::out("no unread messages");
        }
        unread.sort_by_key(|c| view::display_label(c));
        for c in unread {
            view::out(format!(
                "{}: {} unread",
                view::display_label(c),
                c.unread_count
            ));
        }
    }

    /// `/group ...`.
    async fn group_command(&mut self, args: &str) {
        let (sub, rest) = first_word(args);
        match sub.to_ascii_lowercase().as_str() {
            "create" | "new" => self.create_group(rest).await,
            "add" => self.add_members(rest).await,
            "remove" | "kick" => self.remove_member(rest).await,
            "leave" => self.leave_group().await,
            "info" => self.group_info().await,
            "list" => self.list_groups().await,
            _ => view::out(GROUP_USAGE),
        }
    }

    /// The current group, as (id, label); says how to choose one if none.
    fn current_group(&self) -> Option<(String, String)> {
        match &self.target {
            Some(Chosen::Group { id, label }) => Some((id.clone(), label.clone())),
            _ => {
                view::out("choose a group first: /to #<group>");
                None
            }
        }
    }

    /// Shows the event of a membership change made here (the stream brings
    /// it too, and is deduplicated).
    async fn show_event(&mut self, event: Option<pb::Message>) {
        if let Some(event) = event {
            self.on_message(event).await;
        }
    }

    async fn create_group(&mut self, args: &str) {
        let Some((name, rest)) = group_name(args) else {
            return view::out(
                "usage: /group create <name> [members...] (quote a name with spaces)",
            );
        };
        let Some(members) = usernames(rest) else {
            return;
        };
        let Some(mut chat) = self.chat() else { return };
        match api::create_group(&mut chat, &name, &members).await {
            Ok((group, event)) => {
                self.learn_group(&group);
                self.show_event(event).await;
                let label = group_label(&group.group_id, &group.name);
                self.choose(Chosen::Group {
                    id: group.group_id,
                    label,
                })
                .await;
            }
            Err(status) if status.code() == Code::NotFound => {
                let channel = self.live.as_ref().map(|live| live.channel.clone());
                let failure = match channel {
                    Some(channel) => commands::unknown_member(channel, &members).await,
                    None => Failure::from(status),
                };
                view::err(format!("error: {failure}"));
            }
            Err(status) => view::err(format!("error: {}", Failure::from(status))),
        }
    }

    async fn add_members(&mut self, args: &str) {
        let Some(users) = usernames(args) else { return };
        if users.is_empty() {
            return view::out("usage: /group add <users...>");
        }
        let Some((id, label)) = self.current_group() else {
            return;
        };
        let Some(mut chat) = self.chat() else { return };
        match api::add_members(&mut chat, &id, &users).await {
            Ok(Some(event)) => self.show_event(Some(event)).await,
            Ok(None) => view::out(format!("already in {label}: {}", users.join(", "))),
            Err(status) if status.code() == Code::NotFound => {
                let channel = self.live.as_ref().map(|live| live.channel.clone());
                let failure = match channel {
                    Some(channel) => {
                        commands::group_or_user_not_found(&mut chat, channel, &id, &users).await
                    }
                    None => Failure::from(status),
                };
                view::err(format!("error: {failure}"));
            }
            Err(status) => view::err(format!("error: {}", Failure::from(status))),
        }
    }

    async fn remove_member(&mut self, args: &str) {
        let user = match usernames(args) {
            Some(users) if users.len() == 1 => users[0].clone(),
            Some(_) => return view::out("usage: /group remove <user>"),
            None => return,
        };
        let Some((id, label)) = self.current_group() else {
            return;
        };
        let Some(mut chat) = self.chat() else { return };
        match api::remove_member(&mut chat, &id, &user).await {
            Ok(event) => self.show_event(event).await,
            Err(status) if status.code() == Code::NotFound => {
                view::err(format!("error: {user} is not a member of {label}"));
            }
            Err(status) => view::err(format!("error: {}", Failure::from(status))),
        }
    }

    async fn leave_group(&mut self) {
        let Some((id, label)) = self.current_group() else {
            return;
        };
        let Some(mut chat) = self.chat() else { return };
        match api::leave_group(&mut chat, &id).await {
            Ok(event) => {
                self.show_event(event).await;
                self.gone_from(&id);
            }
            Err(status) if status.code() == Code::NotFound => {
                view::err(format!("error: you are not in {label} any more"));
                self.gone_from(&id);
            }
            Err(status) => view::err(format!("error: {}", Failure::from(status))),
        }
    }

    async fn group_info(&mut self) {
        let Some((id, label)) = self.current_group() else {
            return;
        };
        let Some(mut chat) = self.chat() else { return };
        match api::get_group(&mut chat, &id).await {
            Ok(group) => {
                let n = group.members.len();
                let s = if n == 1 { "" } else { "s" };
                view::out(format!(
                    "{} (group {}), {n} member{s}:",
                    group_label(&group.group_id, &group.name),
                    group.group_id
                ));
                for member in &group.members {
                    view::out(format!(
                        "  {} ({})",
                        member.username,
                        view::role_name(member.role)
                    ));
                }
            }
            Err(status) if status.code() == Code::NotFound => {
                view::err(format!("error: you are not in {label} any more"));
                self.gone_from(&id);
            }
            Err(status) => view::err(format!("error: {}", describe_status(&status))),
        }
    }

    async fn list_groups(&mut self) {
        let Some(mut chat) = self.chat() else { return };
        let mut list = match api::groups(&mut chat).await {
            Ok(list) => list,
            Err(status) => return view::err(format!("error: {}", describe_status(&status))),
        };
        self.groups.clear();
        for c in &list {
            self.learn(c);
        }
        if list.is_empty() {
            return view::out("you are in no group: /group create <name> [members...]");
        }
        list.sort_by(|a, b| (&a.name, &a.group_id).cmp(&(&b.name, &b.group_id)));
        for c in &list {
            view::out(format!(
                "{} (group {}): {} unread",
                view::display_label(c),
                c.group_id,
                c.unread_count
            ));
        }
    }
}

/// How a group is shown: `#name`, or `#<group_id>` without a name.
fn group_label(id: &str, name: &str) -> String {
    if name.is_empty() {
        format!("#{id}")
    } else {
        format!("#{}", view::terminal_text(name))
    }
}

/// The first word of `text` and the rest, trimmed.
fn first_word(text: &str) -> (&str, &str) {
    let text = text.trim();
    match text.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (text, ""),
    }
}

/// The name of `/group create`: a word, or "a quoted name"; and the rest.
fn group_name(args: &str) -> Option<(String, &str)> {
    let args = args.trim();
    if let Some(quoted) = args.strip_prefix('"') {
        let (name, rest) = quoted.split_once('"')?;
        let name = name.trim();
        return (!name.is_empty()).then(|| (name.to_owned(), rest.trim()));
    }
    let (name, rest) = first_word(args);
    (!name.is_empty()).then(|| (name.to_owned(), rest))
}

/// The usernames in `text`; says what is wrong with a bad one.
fn usernames(text: &str) -> Option<Vec<String>> {
    let mut users = Vec::new();
    for raw in text.split_whitespace() {
        match parse_username(raw) {
            Ok(user) => users.push(user),
            Err(f) => {
                view::out(f.message);
                return None;
            }
        }
    }
    Some(users)
}

/// Connects to `url`, opens the stream and waits for `ready`.
async fn open_live(url: String, secret: String) -> Result<(Live, pb::Ready), Status> {
    let channel = connection::open_channel(&url)
        .await
        .map_err(|e| Status::unavailable(describe_error(&e)))?;
    let bearer = pb::Bearer::new(&secret)
        .ok_or_else(|| Status::unauthenticated("the saved secret is malformed"))?;
    let mut chat = ChatServiceClient::with_interceptor(channel.clone(), bearer);
    let (frames_out, rx) = mpsc::unbounded_channel();
    let mut frames_in = api::timed(chat.connect(UnboundedReceiverStream::new(rx))).await?;
    let first = tokio::time::timeout(CALL_TIMEOUT, frames_in.message())
        .await
        .map_err(|_| Status::deadline_exceeded("the server sent no ready frame"))??;
    match first.and_then(|f| f.frame) {
        Some(Down::Ready(ready)) => Ok((
            Live {
                url,
                channel,
                chat,
                frames_out,
                frames_in,
            },
            ready,
        )),
        Some(_) => Err(Status::internal(
            "the stream did not start with a ready frame",
        )),
        None => Err(Status::unavailable(
            "the server closed the stream before ready",
        )),
    }
}

fn frame(frame: Up) -> pb::ClientFrame {
    pb::ClientFrame { frame: Some(frame) }
}

fn send_frame(p: &Pending) -> pb::ClientFrame {
    frame(Up::Send(pb::SendMessageRequest {
        target: Some(api::send_target(&p.to)),
        body: p.body.clone(),
        client_msg_id: p.id.clone(),
    }))
}

/// The start of a body, to name a message in an error.
fn preview(body: &str) -> String {
    const MAX: usize = 30;
    let mut short: String = body.chars().take(MAX).collect();
    if body.chars().count() > MAX {
        short.push('…');
    }
    format!("{:?}", short)
}

async fn next_frame(live: &mut Option<Live>) -> Result<Option<pb::ServerFrame>, Status> {
    match live {
        Some(live) => live.frames_in.message().await,
        None => std::future::pending().await,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_may_be_quoted() {
        assert_eq!(
            group_name("Team bob carol"),
            Some(("Team".to_owned(), "bob carol"))
        );
        assert_eq!(
            group_name(r#" "My Team"  bob "#),
            Some(("My Team".to_owned(), "bob"))
        );
        assert_eq!(group_name(r#""unclosed bob"#), None);
        assert_eq!(group_name("   "), None);
        assert_eq!(first_word("  add  dave erin "), ("add", "dave erin"));
        assert_eq!(first_word("leave"), ("leave", ""));
    }
}
