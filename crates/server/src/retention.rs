//! The data retention policy ([`crate::config::Retention`]): a background
//! task that deletes every message sent longer ago than the policy's
//! maximum age, once when the server starts and then every interval.
//!
//! A pass deletes in batches ([`chat_store::MessageStore::delete_messages_before`])
//! until a batch finds nothing, so that no transaction holds the store for
//! long and sends go on between batches. The cutoff is fixed when the pass
//! starts: messages that age past it meanwhile wait for the next pass, and
//! the pass cannot chase the clock forever. A store error ends the pass
//! (logged and counted); the next one retries. Every server of a cluster
//! may run the task on the shared store: a message deleted by one is simply
//! not found by the others.
//!
//! Deleting history changes nothing else: seqs are never reused, cursors
//! stay, and unread counts count the messages that remain. Clients see a
//! history that starts later, and sessions never hear of the deletion (it
//! is not an event of the conversation).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Retention;
use crate::AppState;

/// Runs a pass now and then one every `policy.interval`, until shutdown.
pub async fn run(state: Arc<AppState>, policy: Retention) {
    tracing::info!(
        max_age = ?policy.max_age,
        interval = ?policy.interval,
        batch = policy.batch,
        "data retention on"
    );
    let mut ticks = tokio::time::interval(policy.interval);
    // A pass that takes longer than the interval is followed by the next
    // one an interval later, not by a burst of passes that catch up.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The first tick completes at once: the first pass runs at start.
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        pass(&state, &policy).await;
    }
}

/// Deletes the messages sent before now minus `policy.max_age`, batch
/// after batch, until a batch finds none, the store fails, or the server
/// shuts down (checked between batches: a batch in flight is short and is
/// let finish). Returns how many messages it deleted.
pub async fn pass(state: &AppState, policy: &Retention) -> u64 {
    let cutoff = cutoff(now_ms(), policy);
    let mut deleted = 0u64;
    while !state.shutdown.is_cancelled() {
        match state
            .backends
            .store
            .delete_messages_before(cutoff, policy.batch)
            .await
        {
            Ok(0) => break,
            Ok(n) => {
                deleted += n;
                state.metrics.retention_deleted.increment(n);
            }
            Err(e) => {
                state.metrics.retention_failures.increment(1);
                tracing::warn!(error = %e, deleted, cutoff_unix_ms = cutoff,
                    "retention: the store refused a delete; the next pass retries");
                return deleted;
            }
        }
    }
    tracing::info!(
        deleted,
        cutoff_unix_ms = cutoff,
        "retention: deleted the messages sent before the cutoff"
    );
    deleted
}

/// The time before which messages go: `now` minus the maximum age (before
/// any message, when the age reaches further back than the clock).
fn cutoff(now_unix_ms: i64, policy: &Retention) -> i64 {
    let age = i64::try_from(policy.max_age.as_millis()).unwrap_or(i64::MAX);
    now_unix_ms.saturating_sub(age)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_cutoff_is_now_minus_the_age_and_never_overflows() {
        let day = Retention::new(Duration::from_secs(86_400));
        assert_eq!(cutoff(100_000_000_000, &day), 100_000_000_000 - 86_400_000);
        let forever = Retention::new(Duration::MAX);
        assert_eq!(
            cutoff(100_000_000_000, &forever),
            100_000_000_000 - i64::MAX
        );
        assert!(cutoff(100_000_000_000, &forever) < 0);
    }
}
