//! The dead-letter queue (DLQ): delivery records this node could not
//! process, kept in the store ([`chat_store::DeadLetterStore`]) with the
//! reason, the time and the original payload, so that nothing is dropped
//! silently, and replayed on an operator's request.
//!
//! What goes there (see [`crate::routing`]):
//!
//! - a record read from this node's inbox that cannot be decoded, or has
//!   an envelope version this node does not know (a newer node sent it
//!   during a rolling upgrade: a node that knows the version can replay
//!   it);
//! - a record for another node's inbox that the bus refused after
//!   [`crate::routing::PUBLISH_ATTEMPTS`] attempts, stored as the encoded
//!   envelope, so that a replay can deliver it once the bus is back.
//!
//! What does not: a record naming users who have no session on this node
//! (they disconnected meanwhile, which happens all the time; they catch up
//! from the store), and typing indicators the bus refused (they expire in
//! seconds: replaying one later would be wrong; they are logged and
//! counted in `chat_bus_publish_failures_total`).
//!
//! Writing a dead letter never delays delivery: [`AppState::dead_letter`]
//! hands it to a bounded queue, and one background task
//! ([`write_dead_letters`]) stores them in order. A letter that cannot be
//! stored (the queue or the table is full, the store fails) is logged at
//! error level and counted (`chat_dead_letter_failures_total`), never
//! dropped silently.
//!
//! Replay decodes the stored payload as an envelope and delivers its event
//! to the named users' sessions wherever they are now (this node's
//! directly, the others' through the registry and the bus: the one
//! delivery path, [`AppState::deliver`], awaited and with refusals only
//! reported, since the letter itself stays pending), then records
//! the replay: the letter stays, marked replayed, until purged. Replaying
//! a message twice is safe: clients dedupe by (conversation, seq).

use std::sync::Arc;

use chat_store::{DeadLetter, DeadLetterPurge, DeadLetterQuery, NewDeadLetter, Store};
use tokio::sync::mpsc;

use crate::record::Envelope;
use crate::routing::{Delivery, Mode, Refused, Undelivered};
use crate::telemetry::Metrics;
use crate::{ApiError, AppState};

/// The largest payload stored with a dead letter. A longer one is cut (and
/// the reason says so): a poisoned record cannot fill the store by itself.
/// Every envelope this server writes fits, with room to spare.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// The longest reason stored, in characters.
const MAX_REASON_CHARS: usize = 1000;

/// Dead letters waiting for the writer. Past this, new ones are counted as
/// failures: a flood of bad records must not grow memory without bound.
const QUEUE_CAPACITY: usize = 1024;

/// The sending side of the queue of dead letters to store; the receiving
/// side goes to [`write_dead_letters`].
pub struct DeadLetterQueue {
    letters: mpsc::Sender<NewDeadLetter>,
}

/// A new queue and the receiver its writer task reads.
pub fn queue() -> (DeadLetterQueue, mpsc::Receiver<NewDeadLetter>) {
    let (letters, rx) = mpsc::channel(QUEUE_CAPACITY);
    (DeadLetterQueue { letters }, rx)
}

/// Stores queued dead letters until shutdown, then stores those still
/// queued and returns.
pub async fn write_dead_letters(state: Arc<AppState>, mut letters: mpsc::Receiver<NewDeadLetter>) {
    loop {
        let letter = tokio::select! {
            biased;
            letter = letters.recv() => letter,
            _ = state.shutdown.cancelled() => break,
        };
        let Some(letter) = letter else { return };
        state.dead_letters.store(letter).await;
    }
    letters.close();
    while let Ok(letter) = letters.try_recv() {
        state.dead_letters.store(letter).await;
    }
}

/// What a replay did.
#[derive(Debug)]
pub enum Replay {
    /// The event went to every session of its recipients that exists now:
    /// `local_sessions` on this node, and the inboxes of `nodes`.
    Delivered {
        local_sessions: usize,
        nodes: Vec<String>,
    },
    /// The payload still cannot be decoded; the letter stays as it was.
    NotReplayable(String),
    /// It decoded, but could not be handed to every node (the registry or
    /// the bus failed); the letter stays pending. Retry later.
    Failed(String),
}

/// The outcome of replaying one letter.
#[derive(Debug)]
pub struct Replayed {
    pub replay: Replay,
    /// The letter after the replay was recorded.
    pub letter: DeadLetter,
}

/// The outcome of replaying pending letters in id order.
#[derive(Debug, Default)]
pub struct ReplayBatch {
    pub results: Vec<Replayed>,
    /// Pending letters after the last one tried may remain.
    pub has_more: bool,
}

impl Delivery {
    /// Queues a dead letter for the store: `payload` is the record as read
    /// from (or meant for) the bus. Never waits.
    pub fn dead_letter(&self, reason: &str, payload: &[u8]) {
        let mut reason: String = reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_REASON_CHARS)
            .collect();
        let payload = if payload.len() > MAX_PAYLOAD_BYTES {
            reason.push_str(&format!(
                " (payload cut from {} to {MAX_PAYLOAD_BYTES} bytes)",
                payload.len()
            ));
            &payload[..MAX_PAYLOAD_BYTES]
        } else {
            payload
        };
        let letter = NewDeadLetter {
            node: self.node_id().to_owned(),
            reason,
            payload: payload.to_vec(),
        };
        if let Err(e) = self.dead_letters.letters.try_send(letter) {
            let (why, letter) = match e {
                mpsc::error::TrySendError::Full(l) => ("the dead-letter queue is full", l),
                mpsc::error::TrySendError::Closed(l) => ("the dead-letter writer stopped", l),
            };
            lost(&self.metrics, why, &letter.reason, letter.payload.len());
        }
    }
}

/// The dead letters in the store: what the writer task stores, and what
/// an operator lists, replays and purges.
pub struct DeadLetters {
    store: Arc<dyn Store>,
    delivery: Arc<Delivery>,
    /// The most kept (`max_dead_letters`).
    max: u64,
}

impl DeadLetters {
    pub(crate) fn new(store: Arc<dyn Store>, delivery: Arc<Delivery>, max: u64) -> Self {
        Self {
            store,
            delivery,
            max,
        }
    }

    /// Stores one dead letter, unless the table is full.
    async fn store(&self, letter: NewDeadLetter) {
        // Counting first costs a query, but only on this failure path, and
        // keeps the bound exact enough: concurrent writers (several
        // nodes) may pass it by a few letters at most.
        let max = self.max;
        match self.store.count_dead_letters().await {
            Ok(stored) if stored >= max => {
                let why =
                    format!("the store holds {stored} dead letters, the most allowed: purge some");
                return lost(
                    &self.delivery.metrics,
                    &why,
                    &letter.reason,
                    letter.payload.len(),
                );
            }
            // Storing will most likely fail too, and say why.
            Ok(_) | Err(_) => {}
        }
        let (reason, bytes) = (letter.reason.clone(), letter.payload.len());
        match self.store.add_dead_letter(letter).await {
            Ok(stored) => {
                self.delivery.metrics.dead_letters.increment(1);
                tracing::warn!(id = stored.id, %reason, bytes, "delivery record dead-lettered");
            }
            Err(e) => lost(
                &self.delivery.metrics,
                &format!("cannot store it: {e}"),
                &reason,
                bytes,
            ),
        }
    }

    /// A page of dead letters, oldest first.
    pub async fn page(&self, query: DeadLetterQuery) -> Result<Vec<DeadLetter>, ApiError> {
        Ok(self.store.dead_letters(query).await?)
    }

    /// One dead letter by id.
    pub async fn get(&self, id: u64) -> Result<DeadLetter, ApiError> {
        self.store
            .dead_letter(id)
            .await?
            .ok_or(ApiError::NotFound("dead letter"))
    }

    /// Deletes the letters `purge` selects; how many.
    pub async fn purge(&self, purge: DeadLetterPurge) -> Result<u64, ApiError> {
        Ok(self.store.purge_dead_letters(purge).await?)
    }

    /// How many are stored.
    pub async fn count(&self) -> Result<u64, ApiError> {
        Ok(self.store.count_dead_letters().await?)
    }

    /// Replays dead letter `id`.
    pub async fn replay_one(&self, id: u64) -> Result<Replayed, ApiError> {
        let letter = self.get(id).await?;
        self.replay(letter).await
    }

    /// Replays up to `limit` pending letters after id `after`, oldest
    /// first, and stops at the first one that decodes but cannot be
    /// delivered: when the bus is down, trying the rest only takes time.
    pub async fn replay_pending(
        &self,
        after: Option<u64>,
        limit: u32,
    ) -> Result<ReplayBatch, ApiError> {
        let limit = limit.clamp(1, chat_store::MAX_PAGE);
        let page = self
            .store
            .dead_letters(DeadLetterQuery {
                limit,
                after_id: after,
                pending_only: true,
            })
            .await?;
        let mut batch = ReplayBatch {
            has_more: page.len() >= limit as usize,
            results: Vec::with_capacity(page.len()),
        };
        let total = page.len();
        for (i, letter) in page.into_iter().enumerate() {
            let replayed = self.replay(letter).await?;
            let failed = matches!(replayed.replay, Replay::Failed(_));
            batch.results.push(replayed);
            if failed {
                batch.has_more |= i + 1 < total;
                break;
            }
        }
        Ok(batch)
    }

    async fn replay(&self, letter: DeadLetter) -> Result<Replayed, ApiError> {
        let replay = match Envelope::decode(&letter.payload) {
            Err(reason) => Replay::NotReplayable(reason),
            Ok(envelope) => {
                let event = envelope.event();
                let delivered = self
                    .delivery
                    .deliver(envelope.to, event, None, Mode::Awaited(Refused::Report))
                    .await;
                match delivered.undelivered.first() {
                    Some(Undelivered::Registry(e)) => {
                        Replay::Failed(format!("registry lookup failed: {e}"))
                    }
                    Some(Undelivered::Node { node, error }) => {
                        Replay::Failed(format!("publish to node {node} failed: {error}"))
                    }
                    None => Replay::Delivered {
                        local_sessions: delivered.local_sessions,
                        nodes: delivered.nodes,
                    },
                }
            }
        };
        let delivered = matches!(replay, Replay::Delivered { .. });
        let letter = self
            .store
            .record_replay(letter.id, delivered)
            .await
            .map_err(|e| match e {
                // Purged meanwhile.
                chat_store::StoreError::NotFound => ApiError::NotFound("dead letter"),
                e => e.into(),
            })?;
        match &replay {
            Replay::Delivered {
                local_sessions,
                nodes,
            } => tracing::info!(
                id = letter.id,
                local_sessions,
                ?nodes,
                "dead letter replayed"
            ),
            Replay::NotReplayable(reason) => {
                tracing::warn!(id = letter.id, %reason, "dead letter not replayable")
            }
            Replay::Failed(reason) => {
                tracing::warn!(id = letter.id, %reason, "dead letter replay failed")
            }
        }
        Ok(Replayed { replay, letter })
    }
}

/// Counts and logs a dead letter that is lost.
fn lost(metrics: &Metrics, why: &str, reason: &str, bytes: usize) {
    metrics.dead_letter_failures.increment(1);
    tracing::error!(
        %reason,
        bytes,
        "a delivery record could not be dead-lettered and is lost: {why}"
    );
}
