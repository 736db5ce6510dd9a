//! This server as a member of the cluster: its entry in the registry (node
//! id, listener addresses, start time), announced on every heartbeat and
//! retired on a clean shutdown, so that operators see every live server,
//! whether it holds sessions or not (`GET /admin/nodes`). A server that
//! dies stops announcing itself and its entry expires within the session
//! TTL, like its sessions.

use chat_cluster::NodeEntry;

use crate::{AppState, Listeners, ServerError};

/// What this server tells the registry about itself.
#[derive(Debug, Clone)]
pub struct Membership {
    /// The gRPC listener's local address.
    pub grpc_addr: String,
    /// The HTTP listener's local address.
    pub http_addr: String,
    /// When this server started (Unix ms).
    pub started_at_unix_ms: i64,
}

impl Membership {
    /// This server, serving on `listeners`, starting now.
    pub fn of(listeners: &Listeners) -> Result<Self, ServerError> {
        Ok(Self {
            grpc_addr: listeners.grpc.local_addr()?.to_string(),
            http_addr: listeners.http.local_addr()?.to_string(),
            started_at_unix_ms: chrono::Utc::now().timestamp_millis(),
        })
    }
}

impl AppState {
    fn node_entry(&self) -> NodeEntry {
        NodeEntry {
            node: self.node_id().to_owned(),
            grpc_addr: self.membership.grpc_addr.clone(),
            http_addr: self.membership.http_addr.clone(),
            started_at_unix_ms: self.membership.started_at_unix_ms,
            // Set by the registry.
            heartbeat_at_unix_ms: 0,
        }
    }

    /// Records this server as alive for another TTL (every heartbeat).
    pub async fn announce_node(&self) {
        if let Err(e) = self
            .backends
            .registry
            .announce_node(&self.node_entry())
            .await
        {
            self.metrics.registry_failures.increment(1);
            tracing::warn!(error = %e, "cannot announce this node; the next heartbeat retries");
        }
    }

    /// Removes this server from the registry (clean shutdown).
    pub async fn retire_node(&self) {
        if let Err(e) = self.backends.registry.retire_node(self.node_id()).await {
            self.metrics.registry_failures.increment(1);
            tracing::warn!(error = %e, "cannot unregister this node; it expires by itself");
        }
    }
}
