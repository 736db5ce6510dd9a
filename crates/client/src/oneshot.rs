//! The one-shot subcommands for scripts: `register`, `login`, `send`,
//! `edit`, `delete`,
//! `history`, `unread`, `group ...`. Each prints its results on stdout,
//! one per line, in the formats documented in `--help`, and returns a
//! [`Failure`] (with its exit code) for `main` to report.

use std::io::{IsTerminal, Read};
use std::time::Duration;

use chat_proto::AuthedChatClient;
use tonic::Code;

use crate::cli::{GroupCommand, Target};
use crate::error::{self, describe_error, not_a_member, Exit, Failure};
use crate::{account, api, connection, view, Context};

/// How many times `send` tries when the server is unavailable. Retrying is
/// safe: the same client_msg_id never stores a message twice.
const SEND_ATTEMPTS: u32 = 3;

/// `register <username> [--name N] [--phone P]`.
pub async fn register(
    ctx: &Context,
    username: &str,
    name: &str,
    phone: &str,
) -> Result<(), Failure> {
    let store = ctx.credentials();
    // A secret is shown once: make sure it can be kept before asking.
    store.check_writable()?;
    let (_, channel) = connection::first_reachable(&ctx.servers).await?;
    let response = api::register(channel, username, name, phone)
        .await
        .map_err(|status| {
            if status.code() == Code::AlreadyExists {
                Failure::new(Exit::Exists, format!("username {username} is taken"))
            } else {
                Failure::from(status)
            }
        })?;
    let registered = response
        .user
        .map_or_else(|| username.to_owned(), |u| u.username);
    account::save_new_secret(ctx, &registered, &response.secret)?;
    view::out(registered);
    Ok(())
}

/// `login <username>`, the secret on stdin.
pub async fn login(ctx: &Context, username: &str) -> Result<(), Failure> {
    if std::io::stdin().is_terminal() {
        view::prompt_err(&format!("secret of {username}: "));
    }
    let secret = read_stdin_secret()?;
    let store = ctx.credentials();
    store.check_writable()?;
    let (_, channel) = connection::first_reachable(&ctx.servers).await?;
    account::verify_secret(channel, username, &secret).await?;
    store.remember(username, &secret)?;
    view::out(username);
    Ok(())
}

fn read_stdin_secret() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| {
        Failure::usage(format!(
            "cannot read the secret from stdin: {}",
            describe_error(&e)
        ))
    })?;
    let secret = line.trim();
    if secret.is_empty() {
        return Err(Failure::usage(
            "no secret on stdin: pipe the secret of the user in",
        ));
    }
    connection::bearer(secret).map_err(|f| Failure::usage(f.message))?;
    Ok(secret.to_owned())
}

/// `send <to> <body...>` (the body from stdin when not given).
pub async fn send(ctx: &Context, to: &Target, words: &[String]) -> Result<(), Failure> {
    let body = if words.is_empty() {
        if std::io::stdin().is_terminal() {
            view::err("type the message, then ctrl-d on a line of its own");
        }
        let mut body = String::new();
        std::io::stdin().read_to_string(&mut body).map_err(|e| {
            Failure::usage(format!(
                "cannot read the body from stdin: {}",
                describe_error(&e)
            ))
        })?;
        let trimmed = body.strip_suffix('\n').unwrap_or(&body);
        trimmed.strip_suffix('\r').unwrap_or(trimmed).to_owned()
    } else {
        words.join(" ")
    };
    if body.trim().is_empty() {
        return Err(Failure::usage(
            "nothing to send: give a body, or pipe one on stdin",
        ));
    }
    let (user, mut chat, _) = authed(ctx).await?;
    if *to == Target::User(user.clone()) {
        return Err(Failure::usage("you cannot send a message to yourself"));
    }
    let client_msg_id = connection::new_client_msg_id();
    let mut attempt = 1;
    let message = loop {
        match api::send(&mut chat, to, &body, &client_msg_id).await {
            Ok(message) => break message,
            Err(status) if status.code() == Code::Unavailable && attempt < SEND_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(250) * attempt).await;
                attempt += 1;
            }
            Err(status) if status.code() == Code::NotFound => {
                return Err(match to {
                    Target::User(name) => {
                        Failure::new(Exit::NotFound, format!("no such user: {name}"))
                    }
                    Target::Group(id) => no_such_group(id),
                });
            }
            Err(status) => return Err(Failure::from_status_as(&status, &user)),
        }
    };
    view::out(format!("{} {}", message.conversation_id, message.seq));
    Ok(())
}

/// `history <peer> [--limit N] [--before SEQ]`.
pub async fn history(
    ctx: &Context,
    peer: &Target,
    limit: u32,
    before: Option<u64>,
) -> Result<(), Failure> {
    let (user, mut chat, channel) = authed(ctx).await?;
    let fail = |status: tonic::Status| Failure::from_status_as(&status, &user);
    let conversation_id = match peer {
        Target::User(peer) if *peer == user => {
            return Err(Failure::usage("you have no conversation with yourself"));
        }
        Target::User(peer) => {
            let Some(conversation) = api::find_direct(&mut chat, peer).await.map_err(fail)? else {
                // No conversation yet: an empty history, unless there is
                // no one by that name.
                return match api::get_user(channel, peer).await {
                    Ok(_) => Ok(()),
                    Err(status) if status.code() == Code::NotFound => Err(Failure::new(
                        Exit::NotFound,
                        format!("no such user: {peer}"),
                    )),
                    Err(status) => Err(fail(status)),
                };
            };
            conversation.conversation_id
        }
        // A group's conversation id is its group id.
        Target::Group(id) => id.clone(),
    };
    let messages = api::latest(&mut chat, &conversation_id, before.unwrap_or(0), limit)
        .await
        .map_err(|status| match peer {
            Target::Group(id) if status.code() == Code::NotFound => no_such_group(id),
            _ => fail(status),
        })?;
    for message in &messages {
        view::out(view::history_record(message));
    }
    Ok(())
}

/// `edit <peer> <seq> <text...>` (with `body`) and `delete <peer> <seq>`
/// (without): print nothing.
pub async fn edit(
    ctx: &Context,
    peer: &Target,
    seq: u64,
    body: Option<&str>,
) -> Result<(), Failure> {
    if body.is_some_and(|b| b.trim().is_empty()) {
        return Err(Failure::usage("nothing to edit to: give the new text"));
    }
    let (user, mut chat, _) = authed(ctx).await?;
    let fail = |status: tonic::Status| Failure::from_status_as(&status, &user);
    let no_message = || {
        Failure::new(
            Exit::NotFound,
            format!("no message {seq} of yours with {peer}"),
        )
    };
    let conversation_id = match peer {
        Target::User(name) => match api::find_direct(&mut chat, name).await.map_err(fail)? {
            Some(conversation) => conversation.conversation_id,
            None => return Err(no_message()),
        },
        Target::Group(id) => id.clone(),
    };
    let result = match body {
        Some(body) => api::edit_message(&mut chat, &conversation_id, seq, body).await,
        None => api::delete_message(&mut chat, &conversation_id, seq).await,
    };
    match result {
        Ok(_) => Ok(()),
        Err(status) if status.code() == Code::NotFound => Err(no_message()),
        Err(status) => Err(fail(status)),
    }
}

/// `unread [--all]`.
pub async fn unread(ctx: &Context, all: bool) -> Result<(), Failure> {
    let (user, mut chat, _) = authed(ctx).await?;
    let mut conversations = api::conversations(&mut chat)
        .await
        .map_err(|status| Failure::from_status_as(&status, &user))?;
    conversations.retain(|c| all || c.unread_count > 0);
    conversations.sort_by_key(view::conversation_label);
    for conversation in &conversations {
        view::out(view::unread_record(conversation));
    }
    Ok(())
}

/// `group <create|add|remove|leave|info|list>`.
pub async fn group(ctx: &Context, command: &GroupCommand) -> Result<(), Failure> {
    let (user, mut chat, channel) = authed(ctx).await?;
    let fail = |status: tonic::Status| Failure::from_status_as(&status, &user);
    match command {
        GroupCommand::Create { name, members } => {
            let (group, _) = match api::create_group(&mut chat, name, members).await {
                Ok(created) => created,
                Err(status) if status.code() == Code::NotFound => {
                    return Err(error::unknown_member(channel, members).await);
                }
                Err(status) => return Err(fail(status)),
            };
            view::out(group.group_id);
        }
        GroupCommand::Add { group, users } => {
            if let Err(status) = api::add_members(&mut chat, group, users).await {
                return Err(if status.code() == Code::NotFound {
                    error::group_or_user_not_found(&mut chat, channel, group, users).await
                } else {
                    fail(status)
                });
            }
        }
        GroupCommand::Remove { group, member } => {
            match api::remove_member(&mut chat, group, member).await {
                Ok(_) => {}
                Err(status) if status.code() == Code::NotFound => {
                    return Err(match api::get_group(&mut chat, group).await {
                        Ok(_) => not_a_member(member, &format!("#{group}")),
                        Err(_) => no_such_group(group),
                    });
                }
                Err(status) => return Err(fail(status)),
            }
        }
        GroupCommand::Leave { group } => {
            api::leave_group(&mut chat, group)
                .await
                .map_err(|status| group_failure(status, group, &user))?;
        }
        GroupCommand::Info { group } => {
            let info = api::get_group(&mut chat, group)
                .await
                .map_err(|status| group_failure(status, group, &user))?;
            for line in view::group_info_records(&info) {
                view::out(line);
            }
        }
        GroupCommand::List => {
            let groups = api::groups(&mut chat).await.map_err(fail)?;
            for group in &groups {
                view::out(view::group_record(group));
            }
        }
    }
    Ok(())
}

/// NOT_FOUND for the group `id`, named as scripts name it (`#<id>`).
fn no_such_group(id: &str) -> Failure {
    error::no_such_group(&format!("#{id}"))
}

/// A status about one group, NOT_FOUND said as such.
fn group_failure(status: tonic::Status, group: &str, user: &str) -> Failure {
    if status.code() == Code::NotFound {
        no_such_group(group)
    } else {
        Failure::from_status_as(&status, user)
    }
}

/// The saved user (`--user`, else the default one, left as it is) and a
/// client of the first reachable server that authenticates as that user,
/// with its channel (for the user service).
async fn authed(
    ctx: &Context,
) -> Result<(String, AuthedChatClient, tonic::transport::Channel), Failure> {
    let store = ctx.credentials();
    let (user, secret) = store.select(ctx.user.as_deref())?;
    let bearer = connection::bearer(&secret)?;
    let (_, channel) = connection::first_reachable(&ctx.servers).await?;
    let chat = chat_proto::chat_service_client::ChatServiceClient::with_interceptor(
        channel.clone(),
        bearer,
    );
    Ok((user, chat, channel))
}
