//! An account on the server: what registering and logging in share
//! between the `register` / `login` subcommands and the interactive
//! sign-up: keeping a new secret, and checking a secret typed in.

use tonic::Code;

use crate::error::Failure;
use crate::{api, connection, Context};

/// Saves the secret of a user just registered; if that fails, the secret
/// is printed on stderr so that it is not lost.
pub fn save_new_secret(ctx: &Context, username: &str, secret: &str) -> Result<(), Failure> {
    ctx.credentials().remember(username, secret).map_err(|f| {
        Failure::other(format!(
            "{username} is registered but {}; its secret is {secret} — keep it and run \
             `chat-client login {username}` with it on stdin",
            f.message
        ))
    })
}

/// Checks that the server accepts `secret` (ListConversations) and that it
/// is the secret of `username`.
pub async fn verify_secret(
    channel: tonic::transport::Channel,
    username: &str,
    secret: &str,
) -> Result<(), Failure> {
    let mut chat = connection::chat_client(channel, secret)?;
    let refused = |status: tonic::Status| {
        if status.code() == Code::Unauthenticated {
            // The server answers alike for an unknown user and a wrong
            // secret (a secret is the credential; the name is not checked
            // on its own), and so does this: telling them apart to
            // someone who does not hold the secret would let anyone find
            // out who has an account.
            Failure::auth(format!(
                "the server does not accept this secret for {username} \
                 (an unknown user, or not their secret)"
            ))
        } else {
            Failure::from(status)
        }
    };
    api::conversations(&mut chat).await.map_err(refused)?;
    let owner = api::whoami(&mut chat).await.map_err(refused)?;
    if owner != username {
        return Err(Failure::auth(format!(
            "this secret belongs to {owner}, not to {username}"
        )));
    }
    Ok(())
}
