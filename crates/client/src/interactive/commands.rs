//! What the user types: a line is parsed into a [`Command`] (a plain line
//! is text to send; `/…` is a command; `//…` is text that starts with a
//! slash), then executed against the state and the server.
//!
//! Parsing is pure and refuses a malformed command with the reason
//! ([`Refusal`]) before anything is asked of the server. Execution says
//! what happened through the [`Render`](super::render::Render) and never
//! formats text itself.

use chat_proto as pb;
use tonic::Code;

use super::render::{group_label, Intent, Output, Usage};
use super::screen::model::PAGE;
use super::session::Pending;
use super::{App, Chosen, Flow};
use crate::api;
use crate::cli::parse_username;
use crate::connection;
use crate::error::{self, describe_status, Failure};
use pb::client_frame::Frame as Up;

/// `/history` without a count.
const DEFAULT_HISTORY: u32 = 20;

/// One line the user typed, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Command {
    /// Text for the chosen conversation.
    Say(String),
    /// `/to` alone: where plain lines go now.
    Where,
    /// `/to <user>`.
    ToUser(String),
    /// `/to #<group>`: a group id or a group name.
    ToGroup(String),
    /// `/history [n]`.
    History(u32),
    /// `/unread`.
    Unread,
    /// `/edit <seq> <text>`.
    Edit {
        seq: u64,
        body: String,
    },
    /// `/delete <seq>`.
    Delete {
        seq: u64,
    },
    /// `/group create <name> [members...]`.
    CreateGroup {
        name: String,
        members: Vec<String>,
    },
    /// `/group add <users...>`.
    AddMembers(Vec<String>),
    /// `/group remove <user>`.
    RemoveMember(String),
    /// `/group leave`.
    LeaveGroup,
    /// `/group info`.
    GroupInfo,
    /// `/group list`.
    ListGroups,
    Help,
    Quit,
}

/// Why a line is not a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// A known command, typed wrong.
    Usage(Usage),
    /// `/<name>` is no command (the name in lower case).
    Unknown(String),
    /// A username that cannot be one, and why.
    BadUsername(String),
}

/// The command of a line typed; `None` for a blank line.
pub(super) fn parse(line: &str) -> Option<Result<Command, Refusal>> {
    let text = line.trim_end();
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return None;
    }
    if let Some(literal) = trimmed.strip_prefix("//") {
        return Some(Ok(Command::Say(format!("/{literal}"))));
    }
    match trimmed.strip_prefix('/') {
        Some(command) => Some(parse_command(command)),
        None => Some(Ok(Command::Say(text.to_owned()))),
    }
}

/// A `/` command, without its slash.
fn parse_command(command: &str) -> Result<Command, Refusal> {
    let (name, rest) = first_word(command);
    let name = name.to_ascii_lowercase();
    let arg = rest.split_whitespace().next();
    match name.as_str() {
        "to" => match arg {
            // A group name may have spaces: all of the rest.
            Some(_) if rest.starts_with('#') => match rest[1..].trim() {
                "" => Err(Refusal::Usage(Usage::ToGroup)),
                query => Ok(Command::ToGroup(query.to_owned())),
            },
            Some(user) => Ok(Command::ToUser(username(user)?)),
            None => Ok(Command::Where),
        },
        "group" => parse_group(rest),
        "history" => match arg.map(str::parse::<u32>) {
            None => Ok(Command::History(DEFAULT_HISTORY)),
            Some(Ok(n)) if n > 0 => Ok(Command::History(n)),
            Some(_) => Err(Refusal::Usage(Usage::History)),
        },
        "unread" => Ok(Command::Unread),
        "edit" => {
            let (seq, text) = first_word(rest);
            match seq.parse::<u64>() {
                Ok(seq) if seq > 0 && !text.is_empty() => Ok(Command::Edit {
                    seq,
                    body: text.to_owned(),
                }),
                _ => Err(Refusal::Usage(Usage::Edit)),
            }
        }
        "delete" => match (arg.map(str::parse::<u64>), rest.split_whitespace().count()) {
            (Some(Ok(seq)), 1) if seq > 0 => Ok(Command::Delete { seq }),
            _ => Err(Refusal::Usage(Usage::Delete)),
        },
        "help" | "?" => Ok(Command::Help),
        "quit" | "exit" | "q" => Ok(Command::Quit),
        _ => Err(Refusal::Unknown(name)),
    }
}

/// `/group …`, without `/group`.
fn parse_group(args: &str) -> Result<Command, Refusal> {
    let (sub, rest) = first_word(args);
    match sub.to_ascii_lowercase().as_str() {
        "create" | "new" => {
            let (name, rest) = group_name(rest).ok_or(Refusal::Usage(Usage::GroupCreate))?;
            let members = usernames(rest)?;
            Ok(Command::CreateGroup { name, members })
        }
        "add" => match usernames(rest)? {
            users if users.is_empty() => Err(Refusal::Usage(Usage::GroupAdd)),
            users => Ok(Command::AddMembers(users)),
        },
        "remove" | "kick" => match <[String; 1]>::try_from(usernames(rest)?) {
            Ok([user]) => Ok(Command::RemoveMember(user)),
            Err(_) => Err(Refusal::Usage(Usage::GroupRemove)),
        },
        "leave" => Ok(Command::LeaveGroup),
        "info" => Ok(Command::GroupInfo),
        "list" => Ok(Command::ListGroups),
        _ => Err(Refusal::Usage(Usage::Group)),
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

fn username(raw: &str) -> Result<String, Refusal> {
    parse_username(raw).map_err(|f| Refusal::BadUsername(f.message))
}

/// The usernames in `text`; the first bad one refuses them all.
fn usernames(text: &str) -> Result<Vec<String>, Refusal> {
    text.split_whitespace().map(username).collect()
}

impl App {
    /// Handles one line typed.
    pub(super) async fn on_line(&mut self, line: &str) -> Flow {
        match parse(line) {
            None => {}
            Some(Ok(command)) => return self.execute(command).await,
            Some(Err(Refusal::Usage(usage))) => self.render.show(Output::Usage(usage)),
            Some(Err(Refusal::Unknown(name))) => self.render.show(Output::UnknownCommand(&name)),
            Some(Err(Refusal::BadUsername(why))) => self.render.show(Output::Refused(&why)),
        }
        Flow::Continue
    }

    async fn execute(&mut self, command: Command) -> Flow {
        match command {
            Command::Say(text) => self.say(text),
            Command::Where => match &self.target {
                Some(chosen) => self.render.show(Output::Talking(chosen)),
                None => self.render.show(Output::Usage(Usage::To)),
            },
            Command::ToUser(user) => self.choose_peer(user).await,
            Command::ToGroup(query) => self.choose_group(&query).await,
            Command::History(count) => self.show_history(count).await,
            Command::Unread => self.show_unread().await,
            Command::Edit { seq, body } => self.edit(seq, Some(&body)).await,
            Command::Delete { seq } => self.edit(seq, None).await,
            Command::CreateGroup { name, members } => self.create_group(&name, &members).await,
            Command::AddMembers(users) => self.add_members(&users).await,
            Command::RemoveMember(user) => self.remove_member(&user).await,
            Command::LeaveGroup => self.leave_group().await,
            Command::GroupInfo => self.group_info().await,
            Command::ListGroups => self.list_groups().await,
            Command::Help => self.render.show(Output::Help),
            Command::Quit => return Flow::Quit,
        }
        Flow::Continue
    }

    /// Queues `body` for the chosen conversation.
    fn say(&mut self, body: String) {
        let Some(chosen) = &self.target else {
            return self.render.show(Output::ChooseFirst);
        };
        let send = Pending {
            id: connection::new_client_msg_id(),
            to: chosen.target(),
            label: chosen.label().to_owned(),
            body,
        };
        if self.session.live.is_none() {
            self.render.show(Output::QueuedOffline);
        }
        self.session.queue(send);
    }

    /// A chat client of the current connection; says so if there is none.
    fn chat(&mut self) -> Option<pb::AuthedChatClient> {
        let chat = self.session.chat();
        if chat.is_none() {
            self.render.show(Output::NotConnected);
        }
        chat
    }

    async fn choose_peer(&mut self, user: String) {
        if user == self.me {
            return self.render.show(Output::ItIsYou);
        }
        if let Some(channel) = self.session.channel() {
            match api::get_user(channel, &user).await {
                Ok(_) => {}
                Err(status) if status.code() == Code::NotFound => {
                    return self.render.show(Output::NoSuchUser(&user));
                }
                Err(status) => self.render.show(Output::UserNotChecked {
                    user: &user,
                    why: &describe_status(&status),
                }),
            }
        }
        self.choose(Chosen::User(user)).await;
    }

    /// Makes `chosen` where plain lines go, and marks it read; a screen
    /// with a scrollback gets its newest page.
    async fn choose(&mut self, chosen: Chosen) {
        self.render.show(Output::Talking(&chosen));
        self.target = Some(chosen);
        if let Some(conversation) = self.chosen_conversation() {
            self.render.show(Output::Opened {
                conversation: &conversation,
            });
            if self.render.scrollback() {
                self.page(&conversation, 0).await;
            }
        }
        self.mark_read_now().await;
    }

    /// What a screen asks for.
    pub(super) async fn on_intent(&mut self, intent: Intent) -> Flow {
        match intent {
            Intent::Line(line) => return self.on_line(&line).await,
            Intent::Open(conversation) => self.open(&conversation).await,
            Intent::Older {
                conversation,
                before,
            } => self.page(&conversation, before).await,
            Intent::Typing => {
                if let Some(conversation_id) = self.chosen_conversation() {
                    self.session.send_frame(Up::Typing(pb::Typing {
                        conversation_id,
                        ..Default::default()
                    }));
                }
            }
        }
        Flow::Continue
    }

    /// Chooses a conversation known by its id.
    async fn open(&mut self, conversation: &str) {
        let chosen = if let Some(name) = self.groups.get(conversation) {
            Chosen::Group {
                id: conversation.to_owned(),
                label: group_label(conversation, name),
            }
        } else if let Some((peer, _)) = self.direct.iter().find(|(_, id)| *id == conversation) {
            Chosen::User(peer.clone())
        } else {
            return;
        };
        self.choose(chosen).await;
    }

    /// Shows the page of `conversation` before `before` (0: the newest).
    async fn page(&mut self, conversation: &str, before: u64) {
        let Some(mut chat) = self.chat() else { return };
        let label = self
            .labels
            .get(conversation)
            .cloned()
            .unwrap_or_else(|| conversation.to_owned());
        match api::latest(&mut chat, conversation, before, PAGE).await {
            Ok(messages) => self.render.show(Output::Page {
                conversation,
                label: &label,
                messages: &messages,
                before,
            }),
            Err(status) => self.render.show(Output::Error(&describe_status(&status))),
        }
    }

    /// `/to #<group>`: `query` is a group id or a group name (exact, else
    /// ignoring case); several groups of that name are listed to choose
    /// from by id.
    async fn choose_group(&mut self, query: &str) {
        if let Some(mut chat) = self.session.chat() {
            match api::groups(&mut chat).await {
                Ok(list) => self.learn_groups(&list),
                Err(status) => self.render.show(Output::GroupsNotListed {
                    why: &describe_status(&status),
                }),
            }
        }
        let mut found = self.find_groups(query);
        match found.len() {
            0 => self.render.show(Output::NoGroupNamed(query)),
            1 => {
                let (id, name) = found.remove(0);
                let label = group_label(&id, &name);
                self.choose(Chosen::Group { id, label }).await;
            }
            _ => self.render.show(Output::SeveralGroups {
                query,
                groups: &found,
            }),
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

    /// Marks the chosen conversation read up to what was shown, with the
    /// unary call, so that a `/unread` right after agrees.
    async fn mark_read_now(&mut self) {
        let Some(conversation) = self.chosen_conversation() else {
            return;
        };
        let shown = self.tracker.shown(&conversation);
        if shown <= self.read_sent.get(&conversation).copied().unwrap_or(0) {
            return;
        }
        let Some(mut chat) = self.session.chat() else {
            return;
        };
        let request = pb::MarkReadRequest {
            conversation_id: conversation.clone(),
            seq: shown,
        };
        match api::timed(chat.mark_read(request)).await {
            Ok(_) => {
                self.read_sent.insert(conversation, shown);
            }
            Err(status) => self.render.show(Output::NotMarkedRead {
                why: &describe_status(&status),
            }),
        }
    }

    async fn show_history(&mut self, count: u32) {
        let Some(chosen) = self.target.clone() else {
            return self.render.show(Output::ChooseFirst);
        };
        let Some(mut chat) = self.chat() else { return };
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
                        return self.render.show(Output::Error(&describe_status(&status)))
                    }
                },
            },
        };
        let Some(conversation) = conversation else {
            return self.render.show(Output::NoMessagesYet(&chosen));
        };
        match api::latest(&mut chat, &conversation, 0, count).await {
            Ok(messages) if messages.is_empty() => {
                self.render.show(Output::NoMessagesYet(&chosen));
            }
            Ok(messages) => self.render.show(Output::History {
                chosen: &chosen,
                messages: &messages,
                me: &self.me,
            }),
            Err(status) if status.code() == Code::NotFound => self
                .render
                .show(Output::Failed(&error::no_such_group(chosen.label()))),
            Err(status) => self.render.show(Output::Error(&describe_status(&status))),
        }
    }

    /// The conversation plain lines go to, asking the server for a direct
    /// one not known yet; says why there is none.
    async fn current_conversation(&mut self, chat: &mut pb::AuthedChatClient) -> Option<String> {
        let Some(chosen) = self.target.clone() else {
            self.render.show(Output::ChooseFirst);
            return None;
        };
        if let Some(id) = self.chosen_conversation() {
            return Some(id);
        }
        let Chosen::User(peer) = &chosen else {
            return None;
        };
        match api::find_direct(chat, peer).await {
            Ok(Some(c)) => {
                self.learn(&c);
                Some(c.conversation_id)
            }
            Ok(None) => {
                self.render.show(Output::NoMessagesYet(&chosen));
                None
            }
            Err(status) => {
                self.render.show(Output::Error(&describe_status(&status)));
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
            Err(status) if status.code() == Code::NotFound => {
                self.render.show(Output::NotYourMessage { seq });
            }
            Err(status) => self.render.show(Output::Failed(&Failure::from(status))),
        }
    }

    async fn show_unread(&mut self) {
        let Some(mut chat) = self.chat() else { return };
        let mut list = match api::conversations(&mut chat).await {
            Ok(list) => list,
            Err(status) => return self.render.show(Output::Error(&describe_status(&status))),
        };
        for c in &list {
            self.learn(c);
        }
        list.retain(|c| c.unread_count > 0);
        self.render.show(Output::Unread(&list));
    }

    /// The current group, as (id, label); says how to choose one if none.
    fn current_group(&mut self) -> Option<(String, String)> {
        match &self.target {
            Some(Chosen::Group { id, label }) => Some((id.clone(), label.clone())),
            _ => {
                self.render.show(Output::ChooseGroupFirst);
                None
            }
        }
    }

    /// The server answers NOT_FOUND for the group we were in: we are not
    /// any more (removed, or left from another device).
    fn not_in_any_more(&mut self, id: &str, label: &str) {
        self.render.show(Output::NotInAnyMore { label });
        self.gone_from(id);
    }

    /// Shows the event of a change made here (the stream brings it too,
    /// and is deduplicated).
    async fn show_event(&mut self, event: Option<pb::Message>) {
        if let Some(event) = event {
            self.on_message(event).await;
        }
    }

    async fn create_group(&mut self, name: &str, members: &[String]) {
        let Some(mut chat) = self.chat() else { return };
        match api::create_group(&mut chat, name, members).await {
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
                let failure = match self.session.channel() {
                    Some(channel) => error::unknown_member(channel, members).await,
                    None => Failure::from(status),
                };
                self.render.show(Output::Failed(&failure));
            }
            Err(status) => self.render.show(Output::Failed(&Failure::from(status))),
        }
    }

    async fn add_members(&mut self, users: &[String]) {
        let Some((id, label)) = self.current_group() else {
            return;
        };
        let Some(mut chat) = self.chat() else { return };
        match api::add_members(&mut chat, &id, users).await {
            Ok(Some(event)) => self.show_event(Some(event)).await,
            Ok(None) => self.render.show(Output::AlreadyIn {
                label: &label,
                users,
            }),
            Err(status) if status.code() == Code::NotFound => {
                let failure = match self.session.channel() {
                    Some(channel) => {
                        error::group_or_user_not_found(&mut chat, channel, &id, users).await
                    }
                    None => Failure::from(status),
                };
                self.render.show(Output::Failed(&failure));
            }
            Err(status) => self.render.show(Output::Failed(&Failure::from(status))),
        }
    }

    async fn remove_member(&mut self, user: &str) {
        let Some((id, label)) = self.current_group() else {
            return;
        };
        let Some(mut chat) = self.chat() else { return };
        match api::remove_member(&mut chat, &id, user).await {
            Ok(event) => self.show_event(event).await,
            Err(status) if status.code() == Code::NotFound => self
                .render
                .show(Output::Failed(&error::not_a_member(user, &label))),
            Err(status) => self.render.show(Output::Failed(&Failure::from(status))),
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
            Err(status) if status.code() == Code::NotFound => self.not_in_any_more(&id, &label),
            Err(status) => self.render.show(Output::Failed(&Failure::from(status))),
        }
    }

    async fn group_info(&mut self) {
        let Some((id, label)) = self.current_group() else {
            return;
        };
        let Some(mut chat) = self.chat() else { return };
        match api::get_group(&mut chat, &id).await {
            Ok(group) => self.render.show(Output::GroupInfo(&group)),
            Err(status) if status.code() == Code::NotFound => self.not_in_any_more(&id, &label),
            Err(status) => self.render.show(Output::Error(&describe_status(&status))),
        }
    }

    async fn list_groups(&mut self) {
        let Some(mut chat) = self.chat() else { return };
        let list = match api::groups(&mut chat).await {
            Ok(list) => list,
            Err(status) => return self.render.show(Output::Error(&describe_status(&status))),
        };
        self.learn_groups(&list);
        self.render.show(Output::Groups(&list));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(line: &str) -> Result<Command, Refusal> {
        parse(line).expect("not a blank line")
    }

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

    #[test]
    fn plain_lines_are_text_and_double_slashes_escape() {
        assert_eq!(parse("   "), None);
        assert_eq!(
            command("  hi there  "),
            Ok(Command::Say("  hi there".into()))
        );
        assert_eq!(command(" //to bob"), Ok(Command::Say("/to bob".into())));
    }

    #[test]
    fn commands_and_their_refusals() {
        assert_eq!(command("/TO bob"), Ok(Command::ToUser("bob".into())));
        assert_eq!(command("/to"), Ok(Command::Where));
        assert_eq!(
            command("/to #My Team "),
            Ok(Command::ToGroup("My Team".into()))
        );
        assert_eq!(command("/to #"), Err(Refusal::Usage(Usage::ToGroup)));
        assert!(matches!(command("/to x"), Err(Refusal::BadUsername(_))));
        assert_eq!(command("/history"), Ok(Command::History(DEFAULT_HISTORY)));
        assert_eq!(command("/history 5"), Ok(Command::History(5)));
        assert_eq!(command("/history 0"), Err(Refusal::Usage(Usage::History)));
        assert_eq!(
            command("/edit 3 new  text"),
            Ok(Command::Edit {
                seq: 3,
                body: "new  text".into()
            })
        );
        assert_eq!(command("/edit 3"), Err(Refusal::Usage(Usage::Edit)));
        assert_eq!(command("/delete 3"), Ok(Command::Delete { seq: 3 }));
        assert_eq!(command("/delete 3 4"), Err(Refusal::Usage(Usage::Delete)));
        assert_eq!(
            command(r#"/group new "My Team" bob"#),
            Ok(Command::CreateGroup {
                name: "My Team".into(),
                members: vec!["bob".into()]
            })
        );
        assert_eq!(command("/group add"), Err(Refusal::Usage(Usage::GroupAdd)));
        assert_eq!(
            command("/group kick bob"),
            Ok(Command::RemoveMember("bob".into()))
        );
        assert_eq!(
            command("/group remove bob carol"),
            Err(Refusal::Usage(Usage::GroupRemove))
        );
        assert!(matches!(
            command("/group remove x carol"),
            Err(Refusal::BadUsername(_))
        ));
        assert_eq!(command("/group"), Err(Refusal::Usage(Usage::Group)));
        assert_eq!(command("/q"), Ok(Command::Quit));
        assert_eq!(command("/Bogus x"), Err(Refusal::Unknown("bogus".into())));
    }
}
