//! Who we are and how we stay connected: logging in (or signing up on the
//! spot), opening the `Connect` stream, moving to the next server with a
//! growing delay when one fails, and the sends waiting for their acks.
//!
//! Sends go one at a time, each after the ack of the one before (the
//! server commits the sends of a stream concurrently, so sending ahead
//! could reorder them); unacked sends are resent, with the same
//! client_msg_id, after a reconnect (the server stores them once).
//!
//! This module owns the connection and the queue of sends; it knows
//! nothing of conversations, and what it has to say goes through a
//! [`Render`].

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chat_proto as pb;
use chat_proto::chat_service_client::ChatServiceClient;
use chat_proto::AuthedChatClient;
use pb::client_frame::Frame as Up;
use pb::server_frame::Frame as Down;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::render::{Output, Render};
use crate::cli::{parse_username, Target, DEFAULT_SERVER};
use crate::connection::{self, Backoff, CALL_TIMEOUT};
use crate::error::{describe_error, describe_status, Exit, Failure};
use crate::input::{EchoOff, Input};
use crate::{account, api, Context};

/// How long closing waits for the server to finish the stream (so that the
/// last `delivered` frames are stored before the process exits).
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The saved user, or a new one registered now: (username, secret).
pub(super) async fn log_in(
    ctx: &Context,
    input: &mut Input,
    render: &mut dyn Render,
) -> Result<(String, String), Failure> {
    let store = ctx.credentials();
    match store.select(ctx.user.as_deref()) {
        Ok(found) => return Ok(found),
        Err(f) if f.exit == Exit::Auth => {}
        Err(f) => return Err(f),
    }
    sign_up(ctx, input, render).await
}

/// Asks for a username and registers it; a taken one can be logged into
/// with its secret.
async fn sign_up(
    ctx: &Context,
    input: &mut Input,
    render: &mut dyn Render,
) -> Result<(String, String), Failure> {
    let store = ctx.credentials();
    store.check_writable()?;
    // A server that cannot be reached is said before any question.
    let (_, channel) = connection::first_reachable(&ctx.servers).await?;
    render.show(Output::SignUp);
    let mut preset = ctx.user.clone();
    loop {
        let raw = match preset.take() {
            Some(name) => name,
            None => ask(input, render, Output::AskUsername).await?,
        };
        if raw.trim().is_empty() {
            continue;
        }
        let username = match parse_username(&raw) {
            Ok(name) => name,
            Err(f) => {
                render.show(Output::Refused(&f.message));
                continue;
            }
        };
        match api::register(channel.clone(), &username, "", "").await {
            Ok(response) => {
                let name = response.user.map_or(username, |u| u.username);
                account::save_new_secret(ctx, &name, &response.secret)?;
                render.show(Output::Registered {
                    user: &name,
                    saved_in: store.path(),
                });
                return Ok((name, response.secret));
            }
            Err(status) if status.code() == Code::AlreadyExists => {
                render.show(Output::Taken { user: &username });
                let secret = {
                    let _hidden = EchoOff::new();
                    ask(input, render, Output::AskSecret).await?
                };
                let secret = secret.trim();
                if secret.is_empty() {
                    continue;
                }
                match account::verify_secret(channel.clone(), &username, secret).await {
                    Ok(()) => {
                        store.remember(&username, secret)?;
                        render.show(Output::LoggedIn {
                            user: &username,
                            saved_in: store.path(),
                        });
                        return Ok((username, secret.to_owned()));
                    }
                    Err(f) if matches!(f.exit, Exit::Auth | Exit::Usage) => {
                        render.show(Output::Refused(&f.message));
                    }
                    Err(f) => return Err(f),
                }
            }
            Err(status) if status.code() == Code::InvalidArgument => {
                render.show(Output::Refused(&describe_status(&status)));
            }
            Err(status) => return Err(Failure::from(status)),
        }
    }
}

/// Shows `question` and waits for the answer.
async fn ask(
    input: &mut Input,
    render: &mut dyn Render,
    question: Output<'_>,
) -> Result<String, Failure> {
    render.show(question);
    match input.next_line().await {
        Some(line) => Ok(line),
        None => {
            render.show(Output::InputEnded);
            Err(Failure::auth(
                "no saved credentials, and the input ended before a username",
            ))
        }
    }
}

/// An open `Connect` stream and the clients of its server.
pub(super) struct Live {
    pub(super) url: String,
    pub(super) channel: Channel,
    pub(super) chat: AuthedChatClient,
    frames_out: mpsc::UnboundedSender<pb::ClientFrame>,
    frames_in: tonic::Streaming<pb::ServerFrame>,
}

/// A connection attempt in progress: the stream and its `ready` frame.
pub(super) type Connecting =
    Pin<Box<dyn Future<Output = Result<(Live, pb::Ready), Status>> + Send>>;

/// A send waiting for its ack.
pub(super) struct Pending {
    pub(super) id: String,
    pub(super) to: Target,
    /// How the recipient is shown: the user, or `#name`.
    pub(super) label: String,
    pub(super) body: String,
}

/// The connection to the cluster, whichever server holds it now, and the
/// sends not acknowledged yet.
pub(super) struct Session {
    secret: String,
    servers: Vec<String>,
    /// The server to connect to next.
    server: usize,
    pub(super) live: Option<Live>,
    backoff: Backoff,
    /// Streams opened so far.
    opened: u32,
    /// Sends without an ack yet, oldest first.
    pub(super) pending: Vec<Pending>,
    /// The id of the pending send out on the current stream, if any.
    in_flight: Option<String>,
}

impl Session {
    pub(super) fn new(servers: Vec<String>, secret: String) -> Self {
        Self {
            secret,
            servers,
            server: 0,
            live: None,
            backoff: Backoff::new(),
            opened: 0,
            pending: Vec::new(),
            in_flight: None,
        }
    }

    /// The server the next attempt goes to.
    pub(super) fn server_url(&self) -> &str {
        self.servers
            .get(self.server)
            .map_or(DEFAULT_SERVER, String::as_str)
    }

    /// Whether a stream names its server (there are several to choose from).
    pub(super) fn names_servers(&self) -> bool {
        self.servers.len() > 1
    }

    fn rotate(&mut self) {
        self.server = (self.server + 1) % self.servers.len().max(1);
    }

    /// A connection attempt to the current server.
    pub(super) fn connect(&self) -> Connecting {
        Box::pin(open_live(self.server_url().to_owned(), self.secret.clone()))
    }

    /// The attempt failed: the next goes to the next server, after the
    /// delay returned.
    pub(super) fn attempt_failed(&mut self) -> Duration {
        let delay = self.backoff.next_delay();
        self.rotate();
        delay
    }

    /// How long to wait before connecting again after losing the stream.
    pub(super) fn retry_delay(&mut self) -> Duration {
        self.backoff.next_delay()
    }

    /// The stream is gone; the next attempt goes to the next server.
    pub(super) fn lost(&mut self) {
        self.live = None;
        self.in_flight = None;
        self.rotate();
    }

    /// A stream is open; returns whether it is the first of this run.
    pub(super) fn opened(&mut self, live: Live) -> bool {
        self.live = Some(live);
        self.backoff.reset();
        self.opened += 1;
        self.opened == 1
    }

    /// Sends without an ack go again on the new stream, with the same ids.
    pub(super) fn resend(&mut self) {
        self.in_flight = None;
        self.pump_sends();
    }

    /// A chat client of the current connection.
    pub(super) fn chat(&self) -> Option<AuthedChatClient> {
        self.live.as_ref().map(|live| live.chat.clone())
    }

    /// The channel of the current connection (for the user service).
    pub(super) fn channel(&self) -> Option<Channel> {
        self.live.as_ref().map(|live| live.channel.clone())
    }

    /// Puts `frame` on the stream, if there is one.
    pub(super) fn send_frame(&self, frame: Up) {
        if let Some(live) = &self.live {
            let _ = live.frames_out.send(pb::ClientFrame { frame: Some(frame) });
        }
    }

    /// Queues a send; it goes out when those before it are acked.
    pub(super) fn queue(&mut self, send: Pending) {
        self.pending.push(send);
        self.pump_sends();
    }

    /// Puts the oldest pending send on the stream unless one is out.
    fn pump_sends(&mut self) {
        let (Some(live), None, Some(next)) = (&self.live, &self.in_flight, self.pending.first())
        else {
            return;
        };
        let send = Up::Send(pb::SendMessageRequest {
            target: Some(api::send_target(&next.to)),
            body: next.body.clone(),
            client_msg_id: next.id.clone(),
        });
        if live
            .frames_out
            .send(pb::ClientFrame { frame: Some(send) })
            .is_ok()
        {
            self.in_flight = Some(next.id.clone());
        }
    }

    /// Removes a pending send that got its answer, and sends the next one.
    pub(super) fn settle(&mut self, client_msg_id: &str) -> Option<Pending> {
        let index = self.pending.iter().position(|p| p.id == client_msg_id)?;
        if self.in_flight.as_deref() == Some(client_msg_id) {
            self.in_flight = None;
        }
        let settled = self.pending.remove(index);
        self.pump_sends();
        Some(settled)
    }

    /// The next frame of the stream; never ready without one.
    pub(super) async fn next_frame(&mut self) -> Result<Option<pb::ServerFrame>, Status> {
        match &mut self.live {
            Some(live) => live.frames_in.message().await,
            None => std::future::pending().await,
        }
    }

    /// Closes the stream and waits (briefly) for the server to end it, so
    /// that the `delivered` frames already sent are stored.
    pub(super) async fn close(&mut self) {
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
