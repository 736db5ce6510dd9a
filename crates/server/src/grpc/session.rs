//! One live `Connect` stream.
//!
//! The session registers with [`crate::sessions::LocalSessions`] *before*
//! it reads the store, so nothing committed in between is missed. It then
//! sends `ready`, replays every message after the member's delivered cursor
//! (page by page, waiting on the client's flow control), and then forwards
//! live events, dropping those the replay already covered. Client frames
//! are handled as they come; sends go through a bounded queue to a worker
//! that commits them in order and answers each with an ack.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use chat_proto as pb;
use chat_proto::client_frame::Frame as In;
use chat_proto::server_frame::Frame as Out;
use chat_store::HistoryQuery;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Status, Streaming};

use super::convert;
use crate::sessions::Event;
use crate::{ApiError, AppState};

type Outbound = mpsc::Sender<Result<pb::ServerFrame, Status>>;

/// Starts the session task and returns the stream of frames to the client.
pub fn start(
    state: Arc<AppState>,
    username: String,
    inbound: Streaming<pb::ClientFrame>,
) -> Frames {
    // Small on purpose: the real buffer is the session's event queue, whose
    // overflow is what disconnects a slow reader.
    let (out, frames) = mpsc::channel(64);
    let closed = CancellationToken::new();
    let stream = Frames {
        frames,
        closed: Box::pin(closed.clone().cancelled_owned()),
        shutdown: Box::pin(state.shutdown.clone().cancelled_owned()),
        ended: false,
    };
    tokio::spawn(async move {
        let (reason, session_id, contacts) = run(&state, &username, inbound, &out, closed).await;
        state.retire_session(&username, session_id).await;
        state.presence_on_disconnect(&username, &contacts).await;
        tracing::info!(user = %username, session = session_id, reason, "session ended");
    });
    stream
}

/// The frames of one session as the client receives them. When the session
/// is disconnected (its reader is too slow) or the server shuts down, the
/// stream ends at once with a status saying why, dropping what the client
/// had not read yet: it is all in the store, and catch-up brings it back.
pub struct Frames {
    frames: mpsc::Receiver<Result<pb::ServerFrame, Status>>,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    ended: bool,
}

impl tokio_stream::Stream for Frames {
    type Item = Result<pb::ServerFrame, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let end = if self.closed.as_mut().poll(cx).is_ready() {
            Some(ApiError::ResourceExhausted(
                "too many undelivered frames: the client is not reading".into(),
            ))
        } else if self.shutdown.as_mut().poll(cx).is_ready() {
            Some(ApiError::Unavailable("the server is shutting down".into()))
        } else {
            None
        };
        if let Some(error) = end {
            self.ended = true;
            return Poll::Ready(Some(Err(error.into())));
        }
        self.frames.poll_recv(cx)
    }
}

async fn run(
    state: &Arc<AppState>,
    username: &str,
    mut inbound: Streaming<pb::ClientFrame>,
    out: &Outbound,
    closed: CancellationToken,
) -> (&'static str, u64, Vec<String>) {
    let limits = &state.config.limits;
    let mut session = state
        .sessions
        .register(username, limits.session_queue, closed.clone());
    let session_id = session.id;
    // Known to the cluster before the store is read: whatever is committed
    // from now on, anywhere, reaches this session live or through replay.
    state.announce_session(username, session_id).await;
    tracing::info!(user = %username, session = session_id, "session started");
    let (contacts, online) = state.presence_on_connect(username).await;
    let presence = contacts
        .iter()
        .map(|c| pb::Presence {
            username: c.clone(),
            online: online.contains(c),
        })
        .collect();
    let reason = serve(
        state,
        username,
        &mut inbound,
        out,
        &closed,
        &mut session,
        presence,
    )
    .await;
    (reason, session_id, contacts)
}

/// Ready, replay, then live until the session ends; returns why it ended.
async fn serve(
    state: &Arc<AppState>,
    username: &str,
    inbound: &mut Streaming<pb::ClientFrame>,
    out: &Outbound,
    closed: &CancellationToken,
    session: &mut crate::sessions::Session<'_>,
    presence: Vec<pb::Presence>,
) -> &'static str {
    let limits = &state.config.limits;
    let session_id = session.id;
    let shutdown = state.shutdown.clone();

    // Sends one frame, unless the session is being torn down.
    let emit = |frame: pb::ServerFrame| {
        let (closed, shutdown) = (closed.clone(), shutdown.clone());
        async move {
            tokio::select! {
                sent = out.send(Ok(frame)) => sent.is_ok(),
                _ = closed.cancelled() => false,
                _ = shutdown.cancelled() => false,
            }
        }
    };

    // ready, then the replay.
    let conversations = match state.store.conversations(username).await {
        Ok(c) => c,
        Err(e) => {
            let _ = out.send(Err(ApiError::from(e).into())).await;
            return "store unavailable";
        }
    };
    let mut replayed: HashMap<String, u64> = HashMap::new();
    let pending: Vec<(String, u64, u64)> = conversations
        .iter()
        .filter(|c| c.delivered_seq < c.last_seq)
        .map(|c| (c.id.clone(), c.delivered_seq, c.last_seq))
        .collect();
    let ready = pb::Ready {
        username: username.to_owned(),
        conversations: conversations
            .into_iter()
            .map(convert::conversation)
            .collect(),
        session_id: session_id.to_string(),
        presence,
    };
    if !emit(convert::frame(Out::Ready(ready))).await {
        return "client gone before ready";
    }
    for (conversation_id, delivered, last) in pending {
        let mut after = delivered;
        while after < last {
            let query = HistoryQuery {
                after_seq: Some(after),
                before_seq: None,
                limit: 200,
            };
            let page = match state.store.history(username, &conversation_id, query).await {
                Ok(page) => page,
                Err(e) => {
                    let _ = out.send(Err(ApiError::from(e).into())).await;
                    return "store unavailable during replay";
                }
            };
            let Some(newest) = page.messages.last().map(|m| m.seq) else {
                break;
            };
            for m in &page.messages {
                if !emit(convert::frame(Out::Message(convert::message(m)))).await {
                    return "client gone during replay";
                }
            }
            after = newest;
            if !page.has_more {
                break;
            }
        }
        replayed.insert(conversation_id, after);
    }

    let sends = spawn_send_worker(
        state,
        username,
        session_id,
        out,
        limits.queued_sends_per_session,
    );
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return "server shutdown",
            _ = closed.cancelled() => return "slow reader disconnected",
            event = session.events.recv() => {
                let Some(event) = event else { return "session closed" };
                if let Event::Message(m) = &event {
                    if replayed.get(&m.conversation_id).is_some_and(|&upto| m.seq <= upto) {
                        continue;
                    }
                }
                if !emit(convert::event(&event)).await {
                    return "client gone";
                }
            }
            frame = inbound.message() => {
                let frame = match frame {
                    Ok(Some(frame)) => frame,
                    Ok(None) => return "client closed the stream",
                    Err(status) => {
                        tracing::info!(user = %username, error = %status, "bad client frame");
                        let _ = out.try_send(Err(Status::invalid_argument(format!(
                            "cannot read client frame: {}", status.message()
                        ))));
                        return "bad client frame";
                    }
                };
                let Some(frame) = frame.frame else { continue };
                match frame {
                    In::Send(req) => {
                        // Waiting here when the queue is full stops reading
                        // the client, which pushes back on it.
                        if sends.send(req).await.is_err() {
                            return "send worker stopped";
                        }
                    }
                    In::MarkRead(req) => {
                        if let Err(e) = state.mark_read(username, &req.conversation_id, req.seq).await {
                            if !emit(convert::frame(Out::Error(convert::error(&e)))).await {
                                return "client gone";
                            }
                        }
                    }
                    In::Delivered(req) => {
                        if let Err(e) = state.store.mark_delivered(username, &req.conversation_id, req.seq).await {
                            let e = ApiError::from(e);
                            if !emit(convert::frame(Out::Error(convert::error(&e)))).await {
                                return "client gone";
                            }
                        }
                    }
                    In::Typing(req) => {
                        if let Err(e) = state.typing(username, &req.conversation_id, session_id).await {
                            if !emit(convert::frame(Out::Error(convert::error(&e)))).await {
                                return "client gone";
                            }
                        }
                    }
                    In::Ping(ping) => {
                        if !emit(convert::frame(Out::Pong(pb::Pong { nonce: ping.nonce }))).await {
                            return "client gone";
                        }
                    }
                }
            }
        }
    }
}

/// Commits a session's sends one after another, in the order the client
/// sent them (so a conversation shows them in typing order), and answers
/// each with an ack. The session loop stays free for pings and live events
/// meanwhile. Sends still queued when the client goes away are committed
/// all the same: a client that retries them gets the originals back.
fn spawn_send_worker(
    state: &Arc<AppState>,
    username: &str,
    session_id: u64,
    out: &Outbound,
    capacity: usize,
) -> mpsc::Sender<pb::SendMessageRequest> {
    let (sends, mut queued) = mpsc::channel::<pb::SendMessageRequest>(capacity.max(1));
    let (state, out, user) = (state.clone(), out.clone(), username.to_owned());
    tokio::spawn(async move {
        while let Some(req) = queued.recv().await {
            let client_msg_id = req.client_msg_id.clone();
            let input = convert::send_input(req);
            let ack = match state.send_message(&user, input, Some(session_id)).await {
                Ok(appended) => pb::SendAck {
                    client_msg_id,
                    message: Some(convert::message(&appended.message)),
                    error: None,
                },
                Err(e) => pb::SendAck {
                    client_msg_id,
                    message: None,
                    error: Some(convert::error(&e)),
                },
            };
            // A client that is gone needs no ack, but its queued sends are
            // still committed: they may have been acked to nobody, never lost.
            let _ = out.send(Ok(convert::frame(Out::Ack(ack)))).await;
        }
    });
    sends
}
