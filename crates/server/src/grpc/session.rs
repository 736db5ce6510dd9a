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
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Status, Streaming};
use tracing::Instrument;

use super::convert;
use crate::sessions::Event;
use crate::{ApiError, AppState};

/// Boxed, so that the queue's first block (32 slots, allocated with the
/// queue) is 512 bytes instead of 8 KiB: it exists for every idle session.
type Item = Result<Box<pb::ServerFrame>, Box<Status>>;
type Outbound = mpsc::Sender<Item>;

/// Starts the session task and returns the stream of frames to the client.
pub fn start(
    state: Arc<AppState>,
    username: String,
    token_hash: [u8; 32],
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
    // Every log line of the session carries who and which session; the
    // id is known once the session is registered.
    let tasks = state.session_tasks.clone();
    let span = tracing::info_span!(
        "session",
        user = %username,
        session = tracing::field::Empty
    );
    let session = async move {
        let (reason, session_id, contacts) =
            run(&state, &username, token_hash, inbound, &out, closed).await;
        state.delivery.retire_session(&username, session_id).await;
        state.presence.on_disconnect(&username, &contacts).await;
        tracing::info!(user = %username, session = session_id, reason, "session ended");
    };
    tasks.spawn(session.instrument(span));
    stream
}

/// The frames of one session as the client receives them. When the session
/// is disconnected (its reader is too slow) or the server shuts down, the
/// stream ends at once with a status saying why, dropping what the client
/// had not read yet: it is all in the store, and catch-up brings it back.
pub struct Frames {
    frames: mpsc::Receiver<Item>,
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
            Some(ApiError::Unavailable(super::chat::SHUTTING_DOWN.into()))
        } else {
            None
        };
        if let Some(error) = end {
            self.ended = true;
            return Poll::Ready(Some(Err(error.into())));
        }
        self.frames.poll_recv(cx).map(|item| item.map(unbox))
    }
}

/// How many seqs below the highest one a [`SeqWindow`] remembers.
const WINDOW: u64 = 256;

/// The seqs of one conversation a session was sent: everything up to
/// `floor` (the replay), and of the [`WINDOW`] seqs up to `max`, those
/// whose bit is set in `recent` (bit i: seq `max - i`). Live messages of a
/// conversation may arrive out of order (they come from several servers),
/// so a plain "highest seq" would drop real ones; a seq below the window
/// but above the floor is let through, as there is no telling.
#[derive(Debug, Default, Clone, Copy)]
struct SeqWindow {
    floor: u64,
    max: u64,
    recent: [u64; (WINDOW / 64) as usize],
}

impl SeqWindow {
    fn after(floor: u64) -> Self {
        Self {
            floor,
            max: floor,
            ..Self::default()
        }
    }

    /// Records `seq`; false if it was sent already.
    fn insert(&mut self, seq: u64) -> bool {
        if seq <= self.floor {
            return false;
        }
        if seq > self.max {
            let shift = seq - self.max;
            self.max = seq;
            // Shift the whole bit string left by `shift` (words, then bits).
            let (words, bits) = ((shift.min(WINDOW) / 64) as usize, (shift % 64) as u32);
            let n = self.recent.len();
            for i in (0..n).rev() {
                let word = |j: usize| {
                    if j >= words {
                        self.recent[j - words]
                    } else {
                        0
                    }
                };
                let low = if bits == 0 || i < 1 {
                    0
                } else {
                    word(i - 1) >> (64 - bits)
                };
                self.recent[i] = if i >= words { word(i) << bits | low } else { 0 };
            }
            self.recent[0] |= 1;
            return true;
        }
        let age = self.max - seq;
        if age >= WINDOW {
            return true;
        }
        let (word, bit) = ((age / 64) as usize, 1u64 << (age % 64));
        let new = self.recent[word] & bit == 0;
        self.recent[word] |= bit;
        new
    }
}

/// A queued item as the client receives it; tonic's `Status` is large, but
/// it is what the stream must yield.
#[allow(clippy::result_large_err)]
fn unbox(item: Item) -> Result<pb::ServerFrame, Status> {
    item.map(|frame| *frame).map_err(|status| *status)
}

async fn run(
    state: &Arc<AppState>,
    username: &str,
    token_hash: [u8; 32],
    mut inbound: Streaming<pb::ClientFrame>,
    out: &Outbound,
    closed: CancellationToken,
) -> (&'static str, u64, Vec<String>) {
    let limits = &state.config.limits;
    let mut session =
        state
            .delivery
            .sessions
            .register(username, limits.session_queue, closed.clone());
    let session_id = session.id;
    tracing::Span::current().record("session", session_id);
    // Known to the cluster before the store is read: whatever is committed
    // from now on, anywhere, reaches this session live or through replay.
    state.delivery.announce_session(username, session_id).await;
    // A secret replaced between the check at the door and the line above
    // sent its revocation to no session: check it again, now that any
    // later revocation finds this one.
    match state.accounts.owner(&token_hash).await {
        Ok(Some(owner)) if owner == username => {}
        Ok(_) => {
            let _ = out
                .send(Err(Box::new(Status::unauthenticated(
                    "the secret this stream was opened with was replaced",
                ))))
                .await;
            return ("secret revoked", session_id, Vec::new());
        }
        Err(e) => {
            let _ = out.send(Err(Box::new(e.into()))).await;
            return ("store unavailable", session_id, Vec::new());
        }
    }
    let token = crate::auth::fingerprint(&token_hash);
    tracing::info!(user = %username, session = session_id, "session started");
    let (contacts, online) = state.presence.on_connect(username).await;
    let presence = contacts
        .iter()
        .map(|c| pb::Presence {
            username: c.clone(),
            online: online.contains(c),
        })
        .collect();
    let reason = serve(
        state,
        Caller { username, token },
        &mut inbound,
        out,
        &closed,
        &mut session,
        presence,
    )
    .await;
    (reason, session_id, contacts)
}

/// Who opened a session: the user, and the fingerprint of the secret used.
struct Caller<'a> {
    username: &'a str,
    token: u64,
}

/// Ready, replay, then live until the session ends; returns why it ended.
async fn serve(
    state: &Arc<AppState>,
    caller: Caller<'_>,
    inbound: &mut Streaming<pb::ClientFrame>,
    out: &Outbound,
    closed: &CancellationToken,
    session: &mut crate::sessions::Session<'_>,
    presence: Vec<pb::Presence>,
) -> &'static str {
    let Caller { username, token } = caller;
    let limits = &state.config.limits;
    let session_id = session.id;
    let shutdown = state.shutdown.clone();

    // Sends one frame, unless the session is being torn down.
    let emit = |frame: pb::ServerFrame| {
        let (closed, shutdown) = (closed.clone(), shutdown.clone());
        async move {
            tokio::select! {
                sent = out.send(Ok(Box::new(frame))) => sent.is_ok(),
                _ = closed.cancelled() => false,
                _ = shutdown.cancelled() => false,
            }
        }
    };

    // ready, then the replay.
    let conversations = match state.chat.conversations(username).await {
        Ok(c) => c,
        Err(e) => {
            let _ = out.send(Err(Box::new(e.into()))).await;
            return "store unavailable";
        }
    };
    // Per conversation, which seqs this session has been sent: the replay
    // covers everything up to its end, and live events are checked
    // against a window of recent seqs, so a record the bus delivers twice
    // (a producer retry) reaches the client once.
    let mut sent: HashMap<String, SeqWindow> = HashMap::new();
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
            let page = match state.chat.history(username, &conversation_id, query).await {
                Ok(page) => page,
                Err(e) => {
                    let _ = out.send(Err(Box::new(e.into()))).await;
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
        sent.insert(conversation_id, SeqWindow::after(after));
    }

    // Started by the first send: a session that only listens (most of
    // them) costs no task and no queue for it.
    let mut sends: Option<(mpsc::Sender<crate::chat::SendInput>, JoinHandle<()>)> = None;
    let draining = state.draining.clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return "server shutdown",
            _ = draining.cancelled() => {
                // Read nothing more; commit and ack what was read, then
                // tell the client to go elsewhere. Bounded by the grace
                // period (`shutdown`).
                if let Some((queue, worker)) = sends.take() {
                    drop(queue);
                    tokio::select! {
                        _ = worker => {}
                        _ = shutdown.cancelled() => return "server shutdown",
                    }
                }
                let end = Status::from(ApiError::Unavailable(super::chat::SHUTTING_DOWN.into()));
                tokio::select! {
                    _ = out.send(Err(Box::new(end))) => {}
                    _ = shutdown.cancelled() => {}
                }
                return "server shutting down";
            }
            _ = closed.cancelled() => return "slow reader disconnected",
            event = session.events.recv() => {
                let Some(event) = event else { return "session closed" };
                if let Event::Revoked { token: revoked } = event {
                    if revoked != token {
                        // Another device's secret (an older one).
                        continue;
                    }
                    let _ = out.send(Err(Box::new(Status::unauthenticated(
                        "the secret this stream was opened with was replaced",
                    )))).await;
                    return "secret revoked";
                }
                if let Event::Message(m) = &event {
                    let window = sent.entry(m.conversation_id.clone()).or_default();
                    if !window.insert(m.seq) {
                        continue;
                    }
                }
                if !emit(convert::event(&event)).await {
                    return "client gone";
                }
                if let Event::Message(m) = &event {
                    state.metrics.delivered(m.sent_at_unix_ms);
                }
            }
            frame = inbound.message() => {
                let frame = match frame {
                    Ok(Some(frame)) => frame,
                    Ok(None) => return "client closed the stream",
                    Err(status) => {
                        tracing::info!(user = %username, error = %status, "bad client frame");
                        let _ = out.try_send(Err(Box::new(Status::invalid_argument(format!(
                            "cannot read client frame: {}", status.message()
                        )))));
                        return "bad client frame";
                    }
                };
                let Some(frame) = frame.frame else { continue };
                match frame {
                    In::Send(req) => {
                        // Waiting here when the queue is full stops reading
                        // the client, which pushes back on it.
                        let (sends, _) = sends.get_or_insert_with(|| {
                            spawn_send_worker(
                                state,
                                username,
                                session_id,
                                out,
                                limits.queued_sends_per_session,
                            )
                        });
                        // Received now: the send-to-commit latency
                        // includes the wait in the queue.
                        if sends.send(convert::send_input(req)).await.is_err() {
                            return "send worker stopped";
                        }
                    }
                    In::MarkRead(req) => {
                        if let Err(e) = state.chat.mark_read(username, &req.conversation_id, req.seq).await {
                            if !emit(convert::frame(Out::Error(convert::error(&e)))).await {
                                return "client gone";
                            }
                        }
                    }
                    In::Delivered(req) => {
                        if let Err(e) = state.chat.mark_delivered(username, &req.conversation_id, req.seq).await {
                            if !emit(convert::frame(Out::Error(convert::error(&e)))).await {
                                return "client gone";
                            }
                        }
                    }
                    In::Typing(req) => {
                        if let Err(e) = state.chat.typing(username, &req.conversation_id, session_id).await {
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

/// Commits a session's sends in the order the client sent them (so a
/// conversation shows them in typing order), and answers each with an ack.
/// Whatever is queued when the worker turns to the store goes in one batch:
/// one commit for a burst, still in order. The session loop stays free for
/// pings and live events meanwhile. Sends still queued when the client goes
/// away are committed all the same: a client that retries them gets the
/// originals back.
fn spawn_send_worker(
    state: &Arc<AppState>,
    username: &str,
    session_id: u64,
    out: &Outbound,
    capacity: usize,
) -> (mpsc::Sender<crate::chat::SendInput>, JoinHandle<()>) {
    let capacity = capacity.max(1);
    let (sends, mut queued) = mpsc::channel::<crate::chat::SendInput>(capacity);
    let (state, out, user) = (state.clone(), out.clone(), username.to_owned());
    let worker = async move {
        let mut batch = Vec::with_capacity(capacity);
        while queued.recv_many(&mut batch, capacity).await > 0 {
            let ids: Vec<String> = batch.iter().map(|r| r.client_msg_id.clone()).collect();
            let inputs = std::mem::take(&mut batch);
            let answers = state
                .chat
                .send_messages(&user, inputs, Some(session_id))
                .await;
            for (client_msg_id, answer) in ids.into_iter().zip(answers) {
                let ack = match answer {
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
                // A client that is gone needs no ack, but its queued sends
                // are still committed: they may have been acked to nobody,
                // never lost.
                let _ = out.send(Ok(Box::new(convert::frame(Out::Ack(ack))))).await;
            }
        }
    };
    // Its log lines carry the session's span.
    (sends, tokio::spawn(worker.in_current_span()))
}

#[cfg(test)]
mod tests {
    use super::SeqWindow;

    #[test]
    fn each_seq_passes_once_in_any_order() {
        let mut w = SeqWindow::after(10);
        assert!(!w.insert(10), "the replay covered it");
        assert!(!w.insert(3));
        for seq in [12, 11, 15, 13, 14] {
            assert!(w.insert(seq), "{seq} is new");
        }
        for seq in [11, 12, 13, 14, 15] {
            assert!(!w.insert(seq), "{seq} was sent");
        }
        assert!(w.insert(100));
        assert!(w.insert(16), "in the window, not sent yet");
        assert!(!w.insert(16) && !w.insert(15) && !w.insert(100));
        assert!(w.insert(400));
        assert!(!w.insert(400));
        // Out of the window but above the floor: let through.
        assert!(w.insert(17));
        assert!(w.insert(300));
        assert!(!w.insert(300));
        let mut fresh = SeqWindow::default();
        assert!(fresh.insert(1) && !fresh.insert(1));
    }
}
