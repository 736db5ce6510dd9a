//! Rate limits: a token bucket per key (a client address, a user).
//!
//! Each limit is "N per window": a bucket holds at most N tokens, refills at
//! N per window, and each event takes one. An event that finds the bucket
//! empty is refused with the time until a token is back, which the answer
//! passes on (`Retry-After`, `retry-after-ms`). Limits are per server: a
//! cluster of K servers lets a client through up to K times as often,
//! which is enough to stop abuse without a shared counter on every request.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept before full ones (keys idle for a whole window) are
/// dropped, so that many distinct keys cannot grow the map without bound.
const PRUNE_AT: usize = 10_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One limit, for every key.
pub struct Limiter<K> {
    /// Tokens per bucket; 0 turns the limit off.
    burst: f64,
    /// Tokens added per second.
    refill: f64,
    /// A std mutex: held for one map lookup, never across an await.
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// `per_window` events per `window` for each key; 0 turns it off.
    pub fn new(per_window: u32, window: Duration) -> Self {
        Self {
            burst: f64::from(per_window),
            refill: f64::from(per_window) / window.as_secs_f64().max(1e-3),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`, or says how long until one is back.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &K, now: Instant) -> Result<(), Duration> {
        if self.burst == 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= PRUNE_AT && !buckets.contains_key(key) {
            let (burst, refill) = (self.burst, self.refill);
            buckets
                .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * refill < burst);
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.refill;
            Err(Duration::from_secs_f64(wait).max(Duration::from_millis(1)))
        }
    }
}

/// The limits of one server.
pub struct Rates {
    /// Registrations per client address, per minute.
    pub register: Limiter<std::net::IpAddr>,
    /// `Connect` streams opened per client address, per minute.
    pub connect: Limiter<std::net::IpAddr>,
    /// Messages sent per user, per second.
    pub send: Limiter<String>,
}

impl Rates {
    pub fn new(limits: &crate::config::Limits) -> Self {
        let minute = Duration::from_secs(60);
        Self {
            register: Limiter::new(limits.registrations_per_minute, minute),
            connect: Limiter::new(limits.connects_per_minute, minute),
            send: Limiter::new(limits.sends_per_second, Duration::from_secs(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_empties_refills_and_keys_are_apart() {
        let limiter = Limiter::new(3, Duration::from_secs(60));
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at(&"a", start).is_ok());
        }
        let wait = limiter.check_at(&"a", start).unwrap_err();
        assert!(
            (Duration::from_secs(19)..=Duration::from_secs(20)).contains(&wait),
            "{wait:?}"
        );
        assert!(
            limiter.check_at(&"b", start).is_ok(),
            "another key is apart"
        );
        // One token is back after a third of the window, not more.
        let later = start + Duration::from_secs(20);
        assert!(limiter.check_at(&"a", later).is_ok());
        assert!(limiter.check_at(&"a", later).is_err());
    }

    #[test]
    fn zero_is_off() {
        let limiter = Limiter::new(0, Duration::from_secs(1));
        for _ in 0..1000 {
            assert!(limiter.check(&1).is_ok());
        }
    }

    #[test]
    fn idle_keys_are_dropped_past_the_prune_mark() {
        let limiter = Limiter::new(1, Duration::from_secs(1));
        let start = Instant::now();
        for key in 0..PRUNE_AT {
            let _ = limiter.check_at(&key, start);
        }
        // A window later every bucket is full again, so a new key prunes
        // them all.
        let later = start + Duration::from_secs(2);
        assert!(limiter.check_at(&usize::MAX, later).is_ok());
        assert_eq!(limiter.buckets.lock().unwrap().len(), 1);
    }
}
