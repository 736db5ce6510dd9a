//! Delivery across the cluster.
//!
//! An event for some users goes to their sessions on this node directly
//! ([`crate::sessions::LocalSessions`]) and, through the registry and the
//! bus, to the nodes that hold their other sessions: the registry says
//! which nodes, and one record per node (naming the recipients there) goes
//! to that node's inbox. Each node reads its own inbox and hands what it
//! receives to its local sessions.
//!
//! [`Delivery`] is the service that owns this node's sessions, the
//! registry, the bus and the dead-letter queue's intake; nothing else
//! touches them to deliver.
//!
//! [`Delivery::deliver`] is the only way an event leaves this node, for
//! every caller: its [`Mode`] says whether publishing to other nodes is
//! awaited (an operator's revocation, a dead-letter replay: the answer
//! says where the event went) or runs in the background (everything
//! else), and whether what the bus refused is dead-lettered or only
//! reported. Other modules must not publish to the bus or dead-letter a
//! refused record themselves.
//!
//! All of this is best effort by design: the store already holds every
//! message, and a session that misses a live event catches up when it
//! reconnects. A failure here is logged and counted, never returned to the
//! sender, and never delays the sender's acknowledgement. A record that
//! cannot be processed (undecodable, or refused by the bus after
//! [`PUBLISH_ATTEMPTS`] attempts) also goes to the dead-letter queue
//! ([`crate::dead_letters`]), from which an operator can replay it.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chat_cluster::{Bus, Inbox, SessionEntry, SessionRegistry};
use tokio_util::sync::CancellationToken;

use crate::dead_letters::DeadLetterQueue;
use crate::record::Envelope;
use crate::sessions::{Event, LocalSessions, SessionId};
use crate::telemetry::Metrics;
use crate::AppState;

/// Delivery: this node's sessions, and the other nodes' through the
/// registry and the bus.
pub struct Delivery {
    node_id: String,
    /// The live sessions of this node.
    pub sessions: LocalSessions,
    pub(crate) registry: Arc<dyn SessionRegistry>,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) metrics: Arc<Metrics>,
    /// Where records that cannot be processed go ([`Delivery::dead_letter`]).
    pub(crate) dead_letters: DeadLetterQueue,
    /// Cancelled when the server stops: retries give up.
    shutdown: CancellationToken,
}

/// How many times a record is offered to the bus for one node before it
/// goes to the dead-letter queue. Few and quick: the event is already in
/// the store, and a bus that refuses three times in a row is down for
/// longer than is worth holding the record in memory.
pub const PUBLISH_ATTEMPTS: u32 = 3;

/// The wait before the second attempt, doubled before each later one.
const PUBLISH_BACKOFF: Duration = Duration::from_millis(50);

/// How far [`Delivery::deliver`] goes before it returns, and what becomes
/// of a record the bus refused after every attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Publishing to other nodes runs in a task of its own, so it never
    /// delays the caller (a sender's acknowledgement); what the bus
    /// refuses is dead-lettered.
    Background,
    /// Publishing is awaited, so the answer says where the event went;
    /// `refused` says what becomes of what the bus refused.
    Awaited(Refused),
}

/// What becomes of a record the bus refused for a node after
/// [`PUBLISH_ATTEMPTS`] attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// It goes to the dead-letter queue, to be replayed. Ephemeral events
    /// (typing, presence) never do: they are logged and dropped.
    DeadLetter,
    /// It is only reported: the caller still holds the event (a replayed
    /// dead letter stays pending).
    Report,
}

/// Where [`Delivery::deliver`] took an event.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Sessions on this node that were handed the event.
    pub local_sessions: usize,
    /// Other nodes whose inbox took a record. Known only with
    /// [`Mode::Awaited`]; empty otherwise.
    pub nodes: Vec<String>,
    /// Where the event could not go. Known only with [`Mode::Awaited`];
    /// empty otherwise.
    pub undelivered: Vec<Undelivered>,
}

/// Why an event did not reach some of its recipients' nodes.
#[derive(Debug)]
pub enum Undelivered {
    /// The registry could not say where the sessions are.
    Registry(String),
    /// The bus refused the record for `node` after every attempt.
    Node { node: String, error: String },
}

/// A record for one node's inbox, and the bus's last refusal of it.
struct Record {
    node: String,
    error: String,
    payload: Bytes,
}

/// Where an event went beyond this node.
struct FanOut {
    /// The nodes whose inbox took a record.
    published: Vec<String>,
    failed: Vec<Record>,
}

impl Delivery {
    pub(crate) fn new(
        node_id: String,
        registry: Arc<dyn SessionRegistry>,
        bus: Arc<dyn Bus>,
        metrics: Arc<Metrics>,
        dead_letters: DeadLetterQueue,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            node_id,
            sessions: LocalSessions::default(),
            registry,
            bus,
            metrics,
            dead_letters,
            shutdown,
        }
    }

    /// This node's id in the cluster.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Delivers `event` to every session of `usernames` in the cluster
    /// (except the session `origin` of this node): this node's sessions
    /// directly, the other nodes' through the registry and their inboxes
    /// on the bus.
    pub async fn deliver(
        self: &Arc<Self>,
        usernames: Vec<String>,
        event: Event,
        origin: Option<SessionId>,
        mode: Mode,
    ) -> Delivered {
        let local_sessions =
            self.sessions
                .deliver(usernames.iter().map(String::as_str), &event, origin);
        match mode {
            Mode::Background => {
                let delivery = self.clone();
                let mut remote = Box::pin(async move {
                    delivery
                        .deliver_to_other_nodes(&usernames, &event, Refused::DeadLetter)
                        .await
                });
                // With the in-process registry this finishes at once
                // (nobody is on another node); only work that really
                // waits, on Redis or a broker, becomes a task of its own.
                // Polling it once here is safe: if it is pending, the
                // spawned task polls it again at once and registers its
                // real waker.
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                if remote.as_mut().poll(&mut cx).is_pending() {
                    tokio::spawn(remote);
                }
                Delivered {
                    local_sessions,
                    ..Delivered::default()
                }
            }
            Mode::Awaited(refused) => {
                let (nodes, undelivered) = self
                    .deliver_to_other_nodes(&usernames, &event, refused)
                    .await;
                Delivered {
                    local_sessions,
                    nodes,
                    undelivered,
                }
            }
        }
    }

    /// Publishes `event` to the other nodes of `usernames` and settles
    /// what the bus refused: the nodes that took it, and where it did not
    /// go.
    async fn deliver_to_other_nodes(
        &self,
        usernames: &[String],
        event: &Event,
        refused: Refused,
    ) -> (Vec<String>, Vec<Undelivered>) {
        let out = match self.fan_out(usernames, event).await {
            Ok(out) => out,
            Err(e) => return (Vec::new(), vec![Undelivered::Registry(e)]),
        };
        // Stale in seconds (typing), or corrected by the next presence
        // sweep: a replay could only mislead.
        let ephemeral = matches!(event, Event::Typing { .. } | Event::Presence { .. });
        let mut undelivered = Vec::with_capacity(out.failed.len());
        for failed in out.failed {
            match refused {
                Refused::Report => {}
                Refused::DeadLetter if ephemeral => {
                    tracing::warn!(node = %failed.node, error = %failed.error,
                        "publish of an ephemeral event failed; dropped");
                }
                Refused::DeadLetter => {
                    tracing::warn!(node = %failed.node, error = %failed.error,
                        "publish failed; the record goes to the dead-letter queue");
                    self.dead_letter(
                        &format!(
                            "publish to node {} failed after {PUBLISH_ATTEMPTS} attempts: {}",
                            failed.node, failed.error
                        ),
                        &failed.payload,
                    );
                }
            }
            undelivered.push(Undelivered::Node {
                node: failed.node,
                error: failed.error,
            });
        }
        (out.published, undelivered)
    }

    /// Hands `event` to the inbox of every other node holding a session of
    /// `usernames`, one record per node naming its recipients there, and
    /// says which nodes took it. Each node gets [`PUBLISH_ATTEMPTS`]
    /// attempts, in rounds: every node is tried once before any is retried,
    /// so a failing node never delays a healthy one. `Err` when the
    /// registry cannot say where the sessions are (logged and counted).
    async fn fan_out(&self, usernames: &[String], event: &Event) -> Result<FanOut, String> {
        let names: Vec<&str> = usernames.iter().map(String::as_str).collect();
        let located = match self.registry.locate(&names).await {
            Ok(located) => located,
            Err(e) => {
                self.metrics.registry_failures.increment(1);
                tracing::warn!(error = %e, "registry lookup failed; remote sessions will catch up");
                return Err(e.to_string());
            }
        };
        let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (user, nodes) in located {
            for node in nodes {
                if node != self.node_id() {
                    by_node.entry(node).or_default().push(user.clone());
                }
            }
        }
        let mut pending = Vec::with_capacity(by_node.len());
        let at = crate::telemetry::now_unix_ms();
        for (node, to) in by_node {
            match Envelope::encode(to, event, at) {
                Ok(payload) => pending.push(Record {
                    node,
                    // The bus's answer, once it refuses.
                    error: String::new(),
                    payload: payload.into(),
                }),
                // Not a bad record but a bug: there is no record to keep.
                Err(e) => tracing::error!(%node, error = %e, "cannot encode a delivery record"),
            }
        }
        let mut out = FanOut {
            published: Vec::new(),
            failed: Vec::new(),
        };
        let mut backoff = PUBLISH_BACKOFF;
        for attempt in 1..=PUBLISH_ATTEMPTS {
            if attempt > 1 {
                if pending.is_empty() {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    // Stopping: what is left fails now.
                    _ = self.shutdown.cancelled() => break,
                }
                backoff *= 2;
            }
            let mut refused = Vec::new();
            for mut record in pending {
                match self.bus.publish(&record.node, record.payload.clone()).await {
                    Ok(()) => {
                        self.metrics.bus_published.increment(1);
                        out.published.push(record.node);
                    }
                    Err(e) => {
                        tracing::debug!(node = %record.node, attempt, error = %e, "publish failed");
                        record.error = e.to_string();
                        refused.push(record);
                    }
                }
            }
            pending = refused;
        }
        self.metrics
            .bus_publish_failures
            .increment(pending.len() as u64);
        out.failed = pending;
        Ok(out)
    }

    fn entry(&self, username: &str, session: SessionId) -> SessionEntry {
        SessionEntry {
            username: username.to_owned(),
            node: self.node_id().to_owned(),
            session,
        }
    }

    /// The sessions of `username` anywhere in the cluster (for operators).
    pub async fn sessions_of(&self, username: &str) -> chat_cluster::Result<Vec<SessionEntry>> {
        self.registry.sessions_of(username).await
    }

    /// At most `limit` sessions in the cluster, of `node` only when given
    /// (for operators).
    pub async fn list_sessions(
        &self,
        node: Option<&str>,
        limit: usize,
    ) -> chat_cluster::Result<Vec<SessionEntry>> {
        self.registry.list_sessions(node, limit).await
    }

    /// The servers alive in the cluster (for operators).
    pub async fn nodes(&self) -> chat_cluster::Result<Vec<chat_cluster::NodeEntry>> {
        self.registry.nodes().await
    }

    /// Records a new session of this node in the registry.
    pub async fn announce_session(&self, username: &str, session: SessionId) {
        if let Err(e) = self.registry.add(&self.entry(username, session)).await {
            self.metrics.registry_failures.increment(1);
            tracing::warn!(user = %username, session, error = %e,
                "cannot register the session; the next heartbeat retries");
        }
    }

    /// Removes an ended session of this node from the registry.
    pub async fn retire_session(&self, username: &str, session: SessionId) {
        if let Err(e) = self.registry.remove(&self.entry(username, session)).await {
            self.metrics.registry_failures.increment(1);
            tracing::warn!(user = %username, session, error = %e,
                "cannot unregister the session; it expires by itself");
        }
    }
}

/// Reads this node's inbox until shutdown and delivers each record to the
/// local sessions it names.
pub async fn read_inbox(state: Arc<AppState>, mut inbox: Inbox) {
    loop {
        let record = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            record = inbox.recv() => record,
        };
        let delivery = &state.delivery;
        let Some(record) = record else {
            tracing::error!(node = %state.node_id(), "the inbox closed; live delivery from other nodes stopped");
            return;
        };
        match Envelope::decode(&record) {
            Ok(envelope) => {
                delivery.metrics.bus_received.increment(1);
                if let Some(at) = envelope.at {
                    delivery
                        .metrics
                        .bus_record_age
                        .record(crate::telemetry::age_seconds(at));
                }
                // Recipients with no session here any more is normal, not
                // a dead letter: users disconnect all the time, and they
                // catch up from the store when they come back.
                delivery.sessions.deliver(
                    envelope.to.iter().map(String::as_str),
                    &envelope.event(),
                    None,
                );
            }
            Err(reason) => {
                delivery.metrics.bus_undecodable.increment(1);
                tracing::warn!(%reason, bytes = record.len(), "bad delivery record: dead-lettered");
                delivery.dead_letter(&reason, &record);
            }
        }
    }
}

/// Announces this node and refreshes its sessions in the registry until
/// shutdown, then removes the ones still open and the node itself, leaving
/// the registry clean.
pub async fn heartbeat(state: Arc<AppState>) {
    let delivery = &state.delivery;
    let mut beat = tokio::time::interval(state.config.cluster.heartbeat());
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let entries = |delivery: &Delivery| {
        delivery
            .sessions
            .entries()
            .into_iter()
            .map(|(user, session)| delivery.entry(&user, session))
            .collect::<Vec<_>>()
    };
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = beat.tick() => {}
        }
        state.announce_node().await;
        let refreshed = entries(delivery);
        if let Err(e) = delivery.registry.refresh(&refreshed).await {
            delivery.metrics.registry_failures.increment(1);
            tracing::warn!(error = %e, "registry heartbeat failed");
        }
        // A session that ended while this refresh was on its way may have
        // been removed from the registry before the refresh added it back:
        // remove it again, or it lingers until it expires (its user looks
        // online, other nodes publish to it).
        let open: HashSet<SessionId> = delivery
            .sessions
            .entries()
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        for entry in refreshed.iter().filter(|e| !open.contains(&e.session)) {
            let _ = delivery.registry.remove(entry).await;
        }
        state.presence.sweep().await;
    }
    for entry in entries(delivery) {
        let _ = delivery.registry.remove(&entry).await;
    }
    state.retire_node().await;
}
