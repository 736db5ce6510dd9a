//! One live `Connect` stream.
//!
//! The session registers with [`crate::sessions::LocalSessions`] *before*
//! it reads the store, so nothing committed in between is missed. It then
//! sends `ready`, replays every message after the member's delivered cursor
//! (page by page, waiting on the client's flow control), and then forwards
//! live events. Each conversation reaches the client in seq order, each
//! seq once: a live message above the next seq (its predecessors are
//! still on their way from another server, or lost) is preceded by those
//! predecessors, read from the store where they are committed already,
//! and what arrives late is dropped. Client frames are handled as they
//! come; sends go through a bounded queue to a worker that commits them in
//! order and answers each with an ack.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
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
            Some(ApiError::Stopping)
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

/// What a session has sent of each conversation: the highest seq up to
/// which everything went out in order, and, above it, the seqs of this
/// session's own messages, which the client has from their acks. Shared
/// with the send worker, which records its acks here; the lock is held
/// only for map edits, never across an await.
#[derive(Clone, Default)]
struct Sent(Arc<Mutex<HashMap<String, SentOf>>>);

#[derive(Default)]
struct SentOf {
    high: u64,
    own: BTreeSet<u64>,
}

/// The most own seqs kept above a gap per conversation: past it the
/// lowest is forgotten (a gap fill may then send it again, which a client
/// dedupes by seq), so a session that only sends cannot grow this.
const MAX_OWN_ABOVE_GAP: usize = 1024;

impl Sent {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SentOf>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn high(&self, conversation_id: &str) -> u64 {
        self.lock().get(conversation_id).map_or(0, |c| c.high)
    }

    /// Everything up to `seq` went out; so did the own seqs right above.
    fn advance(&self, conversation_id: &str, seq: u64) {
        let mut map = self.lock();
        let c = map.entry(conversation_id.to_owned()).or_default();
        c.high = c.high.max(seq);
        while c.own.remove(&(c.high + 1)) {
            c.high += 1;
        }
        let high = c.high;
        c.own.retain(|&s| s > high);
    }

    /// This session sent `seq` (the client has its ack).
    fn own(&self, conversation_id: &str, seq: u64) {
        let mut map = self.lock();
        let c = map.entry(conversation_id.to_owned()).or_default();
        if seq == c.high + 1 {
            drop(map);
            self.advance(conversation_id, seq);
        } else if seq > c.high {
            c.own.insert(seq);
            if c.own.len() > MAX_OWN_ABOVE_GAP {
                c.own.pop_first();
            }
        }
    }

    fn is_own(&self, conversation_id: &str, seq: u64) -> bool {
        self.lock()
            .get(conversation_id)
            .is_some_and(|c| c.own.contains(&seq))
    }
}

/// Why [`send_history`] stopped early.
enum Stop {
    ClientGone,
    Store(ApiError),
}

/// Sends the messages of `conversation_id` with a seq above `after` and
/// below `before`, from the store, in order, page by page (each page
/// waits on the client's flow control); returns the highest seq sent (or
/// `after`).
async fn send_history<F, Emitted>(
    state: &AppState,
    username: &str,
    conversation_id: &str,
    after: u64,
    before: u64,
    emit: &F,
    own: Option<&Sent>,
) -> Result<u64, Stop>
where
    F: Fn(pb::ServerFrame) -> Emitted,
    Emitted: Future<Output = bool>,
{
    let mut high = after;
    while high + 1 < before {
        let query = HistoryQuery {
            after_seq: Some(high),
            before_seq: Some(before),
            limit: chat_store::MAX_PAGE,
        };
        let page = state
            .chat
            .history(username, conversation_id, query)
            .await
            .map_err(Stop::Store)?;
        let Some(newest) = page.messages.last().map(|m| m.seq) else {
            break;
        };
        for m in &page.messages {
            if own.is_some_and(|sent| sent.is_own(conversation_id, m.seq)) {
                continue;
            }
            if !emit(convert::frame(Out::Message(convert::message(m)))).await {
                return Err(Stop::ClientGone);
            }
        }
        high = newest;
        if !page.has_more {
            break;
        }
    }
    Ok(high)
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
    // Per conversation, the highest seq this session has sent: everything
    // up to it went out, in order. A record the bus delivers twice (a
    // producer retry), or one overtaken by its successor, is at or below
    // it and dropped.
    let sent = Sent::default();
    for c in &conversations {
        sent.advance(&c.id, c.last_seq.max(c.delivered_seq));
    }
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
        match send_history(
            state,
            username,
            &conversation_id,
            delivered,
            last + 1,
            &emit,
            None,
        )
        .await
        {
            Ok(high) => sent.advance(&conversation_id, high),
            Err(Stop::ClientGone) => return "client gone during replay",
            Err(Stop::Store(e)) => {
                let _ = out.send(Err(Box::new(e.into()))).await;
                return "store unavailable during replay";
            }
        }
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
                let end = Status::from(ApiError::Stopping);
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
                    let high = sent.high(&m.conversation_id);
                    if m.seq <= high {
                        continue;
                    }
                    if m.seq > high + 1 {
                        // Its predecessors first, from the store.
                        let filled = send_history(state, username, &m.conversation_id, high, m.seq, &emit, Some(&sent)).await;
                        match filled {
                            Ok(_) => {}
                            // No longer a member (this is the event of
                            // their removal): nothing more to read.
                            Err(Stop::Store(ApiError::NotFound(_))) => {}
                            Err(Stop::ClientGone) => return "client gone",
                            Err(Stop::Store(e)) => {
                                let _ = out.send(Err(Box::new(e.into()))).await;
                                return "store unavailable filling a gap";
                            }
                        }
                    }
                    sent.advance(&m.conversation_id, m.seq);
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
                        let _ = out.try_send(Err(Box::new(super::unreadable_frame(&status))));
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
                                sent.clone(),
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
    sent: Sent,
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
                    Ok(appended) => {
                        // The client has it from the ack: no gap fill
                        // sends it back.
                        sent.own(&appended.message.conversation_id, appended.message.seq);
                        pb::SendAck {
                            client_msg_id,
                            message: Some(convert::message(&appended.message)),
                            error: None,
                        }
                    }
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
