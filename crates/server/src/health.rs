//! Readiness: whether this node can serve now, asked of every backend.
//!
//! `/healthz` says the process is up; `/readyz` says whether a load
//! balancer should send it traffic: each backend answers its probe within
//! [`PROBE_TIMEOUT`], and the server is not shutting down.

use std::future::Future;
use std::time::Duration;

use crate::AppState;

/// How long each backend has to answer its probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a draining server says of each backend.
const NOT_PROBED: &str = "not probed: the server is shutting down";

/// What each backend answered: `Ok`, or why it is not ready.
#[derive(Debug)]
pub struct Readiness {
    pub store: Result<(), String>,
    pub registry: Result<(), String>,
    pub bus: Result<(), String>,
    pub shutting_down: bool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        !self.shutting_down && self.store.is_ok() && self.registry.is_ok() && self.bus.is_ok()
    }

    /// The backends that did not answer, by name.
    pub fn failing(&self) -> Vec<&'static str> {
        [
            ("store", &self.store),
            ("registry", &self.registry),
            ("bus", &self.bus),
        ]
        .into_iter()
        .filter(|(_, answer)| answer.is_err())
        .map(|(name, _)| name)
        .collect()
    }
}

/// Runs `probe` within [`PROBE_TIMEOUT`].
async fn probe<E: std::fmt::Display>(
    probe: impl Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

impl AppState {
    /// Probes the store, the registry and the bus at once; while the server
    /// drains, none of them: whatever they say, it takes no one.
    pub async fn readiness(&self) -> Readiness {
        if self.draining.is_cancelled() {
            let not_probed = || Err(NOT_PROBED.to_owned());
            return Readiness {
                store: not_probed(),
                registry: not_probed(),
                bus: not_probed(),
                shutting_down: true,
            };
        }
        let (store, registry, bus) = tokio::join!(
            probe(self.backends.store.ping()),
            probe(self.backends.registry.ping()),
            probe(self.backends.bus.ping()),
        );
        Readiness {
            store,
            registry,
            bus,
            shutting_down: false,
        }
    }
}
