//! Delivery across the cluster.
//!
//! An event for some users goes to their sessions on this node directly
//! ([`crate::sessions::LocalSessions`]) and, through the registry and the
//! bus, to the nodes that hold their other sessions: the registry says
//! which nodes, and one record per node (naming the recipients there) goes
//! to that node's inbox. Each node reads its own inbox and hands what it
//! receives to its local sessions.
//!
//! All of this is best effort by design: the store already holds every
//! message, and a session that misses a live event catches up when it
//! reconnects. A failure here is logged and counted, never returned to the
//! sender, and never delays the sender's acknowledgement.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chat_cluster::{Inbox, SessionEntry};
use serde::{Deserialize, Serialize};

use crate::sessions::{Event, SessionId};
use crate::AppState;

/// The version of [`Envelope`] this node writes and reads.
const ENVELOPE_VERSION: u32 = 1;

/// A delivery record on the bus: an event for some users of the receiving
/// node.
#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u32,
    to: Vec<String>,
    event: Event,
}

/// Counters of what went wrong (and right) in routing.
#[derive(Default, Debug)]
pub struct Stats {
    /// Records read from the inbox that could not be decoded (dropped,
    /// logged).
    pub undecodable_records: AtomicU64,
    /// Records delivered from the inbox to local sessions.
    pub records_received: AtomicU64,
    /// Records handed to the bus for other nodes.
    pub records_published: AtomicU64,
    /// Publishes the bus refused (the recipients catch up later).
    pub publish_failures: AtomicU64,
    /// Registry operations that failed.
    pub registry_failures: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl AppState {
    /// Delivers `event` to every session of `usernames` in the cluster,
    /// except the session `origin` of this node.
    pub fn deliver(
        self: &Arc<Self>,
        usernames: Vec<String>,
        event: Event,
        origin: Option<SessionId>,
    ) {
        self.sessions
            .deliver(usernames.iter().map(String::as_str), &event, origin);
        let state = self.clone();
        tokio::spawn(async move { state.deliver_to_other_nodes(usernames, event).await });
    }

    async fn deliver_to_other_nodes(&self, usernames: Vec<String>, event: Event) {
        let names: Vec<&str> = usernames.iter().map(String::as_str).collect();
        let located = match self.registry.locate(&names).await {
            Ok(located) => located,
            Err(e) => {
                bump(&self.stats.registry_failures);
                tracing::warn!(error = %e, "registry lookup failed; remote sessions will catch up");
                return;
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
        for (node, to) in by_node {
            let envelope = Envelope {
                v: ENVELOPE_VERSION,
                to,
                event: event.clone(),
            };
            let payload = match serde_json::to_vec(&envelope) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a delivery record");
                    return;
                }
            };
            match self.bus.publish(&node, payload.into()).await {
                Ok(()) => bump(&self.stats.records_published),
                Err(e) => {
                    bump(&self.stats.publish_failures);
                    tracing::warn!(%node, error = %e, "publish failed; the recipients will catch up");
                }
            }
        }
    }

    fn entry(&self, username: &str, session: SessionId) -> SessionEntry {
        SessionEntry {
            username: username.to_owned(),
            node: self.node_id().to_owned(),
            session,
        }
    }

    /// Records a new session of this node in the registry.
    pub async fn announce_session(&self, username: &str, session: SessionId) {
        if let Err(e) = self.registry.add(&self.entry(username, session)).await {
            bump(&self.stats.registry_failures);
            tracing::warn!(user = %username, session, error = %e,
                "cannot register the session; the next heartbeat retries");
        }
    }

    /// Removes an ended session of this node from the registry.
    pub async fn retire_session(&self, username: &str, session: SessionId) {
        if let Err(e) = self.registry.remove(&self.entry(username, session)).await {
            bump(&self.stats.registry_failures);
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
        let Some(record) = record else {
            tracing::error!(node = %state.node_id(), "the inbox closed; live delivery from other nodes stopped");
            return;
        };
        match serde_json::from_slice::<Envelope>(&record) {
            Ok(envelope) if envelope.v == ENVELOPE_VERSION => {
                bump(&state.stats.records_received);
                state.sessions.deliver(
                    envelope.to.iter().map(String::as_str),
                    &envelope.event,
                    None,
                );
            }
            Ok(envelope) => {
                bump(&state.stats.undecodable_records);
                tracing::warn!(
                    version = envelope.v,
                    "delivery record of an unknown version dropped"
                );
            }
            Err(e) => {
                bump(&state.stats.undecodable_records);
                tracing::warn!(error = %e, bytes = record.len(), "undecodable delivery record dropped");
            }
        }
    }
}

/// Refreshes this node's sessions in the registry until shutdown, then
/// removes the ones still open, leaving the registry clean.
pub async fn heartbeat(state: Arc<AppState>) {
    let mut beat = tokio::time::interval(state.config.cluster.heartbeat());
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let entries = |state: &AppState| {
        state
            .sessions
            .entries()
            .into_iter()
            .map(|(user, session)| state.entry(&user, session))
            .collect::<Vec<_>>()
    };
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = beat.tick() => {}
        }
        if let Err(e) = state.registry.refresh(&entries(&state)).await {
            bump(&state.stats.registry_failures);
            tracing::warn!(error = %e, "registry heartbeat failed");
        }
    }
    for entry in entries(&state) {
        let _ = state.registry.remove(&entry).await;
    }
}
