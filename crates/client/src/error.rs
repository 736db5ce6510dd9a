//! Failures and the process exit codes they map to.
//!
//! Every fallible step of the client ends in a [`Failure`]: a message for
//! the user (printed as `error: <message>` on stderr) and an [`Exit`] code
//! that scripts can branch on. gRPC statuses are mapped here, once, and
//! so is what a NOT_FOUND about a group means (both modes say it alike).

use std::fmt;

use tonic::{Code, Status};

use crate::api;

/// The exit codes of `chat-client`. Scripts rely on them: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// The server is unreachable or unavailable, or any other failure.
    Failure = 1,
    /// Bad usage or an invalid argument (also what clap exits with).
    Usage = 2,
    /// No saved credentials, or the server rejected them (UNAUTHENTICATED).
    Auth = 3,
    /// Not found, e.g. an unknown user.
    NotFound = 4,
    /// Already exists, e.g. a taken username.
    Exists = 5,
    /// Not allowed (PERMISSION_DENIED), e.g. a member who is not an admin
    /// adding to a group.
    NotAllowed = 6,
    /// A limit of the server was reached (RESOURCE_EXHAUSTED), e.g. a full
    /// group or too many groups.
    Limit = 7,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// A failure to report to the user, with the exit code it deserves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
        }
    }

    pub fn other(message: impl Into<String>) -> Self {
        Self::new(Exit::Failure, message)
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    pub fn auth(message: impl Into<String>) -> Self {
        Self::new(Exit::Auth, message)
    }

    /// A gRPC status, with a better message for UNAUTHENTICATED: which
    /// user's saved secret was refused and what to do about it.
    pub fn from_status_as(status: &Status, user: &str) -> Self {
        if status.code() == Code::Unauthenticated {
            return Self::auth(format!(
                "the server does not accept the saved secret of {user}; \
                 run `chat-client login {user}` with its secret"
            ));
        }
        Self::from(status)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// NOT_FOUND for a group, shown as `label`: it does not exist, or the
/// caller is not in it (the server does not say which).
pub fn no_such_group(label: &str) -> Failure {
    Failure::new(
        Exit::NotFound,
        format!("no such group: {label} (or you are not in it)"),
    )
}

/// NOT_FOUND when removing `user` from the group shown as `label`.
pub fn not_a_member(user: &str, label: &str) -> Failure {
    Failure::new(Exit::NotFound, format!("{user} is not a member of {label}"))
}

/// NOT_FOUND when creating: one of the members does not exist.
pub async fn unknown_member(channel: tonic::transport::Channel, members: &[String]) -> Failure {
    match api::first_unknown_user(channel, members).await {
        Some(name) => Failure::new(Exit::NotFound, format!("no such user: {name}")),
        None => Failure::new(Exit::NotFound, "one of the members does not exist"),
    }
}

/// NOT_FOUND when adding: the group (or our membership), or a user.
pub async fn group_or_user_not_found(
    chat: &mut chat_proto::AuthedChatClient,
    channel: tonic::transport::Channel,
    group: &str,
    users: &[String],
) -> Failure {
    if api::get_group(chat, group).await.is_err() {
        return no_such_group(&format!("#{group}"));
    }
    unknown_member(channel, users).await
}

/// The exit code for a gRPC status code.
pub fn exit_for(code: Code) -> Exit {
    match code {
        Code::Ok => Exit::Ok,
        Code::InvalidArgument | Code::OutOfRange => Exit::Usage,
        Code::Unauthenticated => Exit::Auth,
        Code::NotFound => Exit::NotFound,
        Code::AlreadyExists => Exit::Exists,
        Code::PermissionDenied => Exit::NotAllowed,
        Code::ResourceExhausted => Exit::Limit,
        _ => Exit::Failure,
    }
}

/// A one-line description of a status: its message, or its code when the
/// server sent no message.
pub fn describe_status(status: &Status) -> String {
    if status.message().is_empty() {
        format!("{:?}", status.code()).to_lowercase()
    } else {
        status.message().to_owned()
    }
}

/// An error and its causes on one line: `a: b: c`. Transport errors say
/// little at the top ("transport error"); the cause says what happened.
pub fn describe_error(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl From<&Status> for Failure {
    fn from(status: &Status) -> Self {
        let message = match status.code() {
            Code::PermissionDenied => format!("not allowed: {}", describe_status(status)),
            Code::ResourceExhausted => format!("limit reached: {}", describe_status(status)),
            _ => describe_status(status),
        };
        Self::new(exit_for(status.code()), message)
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Self::from(&status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_documented_exit_codes() {
        let cases = [
            (Code::Unavailable, 1),
            (Code::Internal, 1),
            (Code::InvalidArgument, 2),
            (Code::Unauthenticated, 3),
            (Code::NotFound, 4),
            (Code::AlreadyExists, 5),
            (Code::PermissionDenied, 6),
            (Code::ResourceExhausted, 7),
        ];
        for (code, exit) in cases {
            assert_eq!(
                Failure::from(Status::new(code, "x")).exit.code(),
                exit,
                "{code:?}"
            );
        }
    }

    #[test]
    fn refusals_and_limits_say_so() {
        let denied = Failure::from(Status::permission_denied(
            "only the owner and admins add members",
        ));
        assert_eq!(denied.exit, Exit::NotAllowed);
        assert_eq!(
            denied.message,
            "not allowed: only the owner and admins add members"
        );
        let full = Failure::from(Status::resource_exhausted("a group has at most 3 members"));
        assert_eq!(
            (full.exit, full.message.as_str()),
            (Exit::Limit, "limit reached: a group has at most 3 members")
        );
    }

    #[test]
    fn unauthenticated_names_the_user_and_the_fix() {
        let f = Failure::from_status_as(&Status::unauthenticated("nope"), "bob");
        assert_eq!(f.exit, Exit::Auth);
        assert!(f.message.contains("chat-client login bob"), "{}", f.message);
    }
}
