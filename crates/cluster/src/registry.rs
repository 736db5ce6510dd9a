//! The session registry: which sessions each user has on which node.
//!
//! An entry lives for the registry's TTL after it was last added or
//! refreshed. Every node refreshes its own entries on a heartbeat, well
//! within the TTL; a node that dies stops refreshing, and its entries
//! expire by themselves. Refreshing re-creates missing entries, so a
//! registry that lost its data (Redis restarted or flushed) is whole again
//! after one heartbeat.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use crate::{now_ms, NodeId, Result};

/// One live session.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionEntry {
    pub username: String,
    pub node: NodeId,
    pub session: u64,
}

#[async_trait]
pub trait SessionRegistry: Send + Sync + 'static {
    /// Records a session, valid for the TTL.
    async fn add(&self, entry: &SessionEntry) -> Result<()>;
    /// Forgets a session.
    async fn remove(&self, entry: &SessionEntry) -> Result<()>;
    /// Extends (or re-creates) the given entries for another TTL.
    async fn refresh(&self, entries: &[SessionEntry]) -> Result<()>;
    /// For each of `usernames`, the nodes where it has a live session
    /// (users without one are left out).
    async fn locate(&self, usernames: &[&str]) -> Result<HashMap<String, BTreeSet<NodeId>>>;
    /// Every live session of `username`.
    async fn sessions_of(&self, username: &str) -> Result<Vec<SessionEntry>>;
    /// `Ok` when the registry answers now, else why not: a readiness
    /// probe.
    async fn ping(&self) -> Result<()>;
}

// --------------------------------------------------------------- memory

/// Sessions of one user: (node, session) → expiry in Unix ms.
type UserSessions = HashMap<(NodeId, u64), i64>;

/// The registry of a single node, or of several nodes in one process.
pub struct MemoryRegistry {
    ttl: Duration,
    /// A std mutex: held for map edits only, never across an await.
    entries: Mutex<HashMap<String, UserSessions>>,
}

impl MemoryRegistry {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, UserSessions>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expiry(&self) -> i64 {
        now_ms() + self.ttl.as_millis() as i64
    }
}

#[async_trait]
impl SessionRegistry for MemoryRegistry {
    async fn add(&self, e: &SessionEntry) -> Result<()> {
        let expiry = self.expiry();
        self.lock()
            .entry(e.username.clone())
            .or_default()
            .insert((e.node.clone(), e.session), expiry);
        Ok(())
    }

    async fn remove(&self, e: &SessionEntry) -> Result<()> {
        let mut map = self.lock();
        if let Some(sessions) = map.get_mut(&e.username) {
            sessions.remove(&(e.node.clone(), e.session));
            if sessions.is_empty() {
                map.remove(&e.username);
            }
        }
        Ok(())
    }

    async fn refresh(&self, entries: &[SessionEntry]) -> Result<()> {
        let expiry = self.expiry();
        let now = now_ms();
        let mut map = self.lock();
        for e in entries {
            map.entry(e.username.clone())
                .or_default()
                .insert((e.node.clone(), e.session), expiry);
        }
        // Drop what expired, so the map does not grow with dead nodes.
        map.retain(|_, sessions| {
            sessions.retain(|_, exp| *exp > now);
            !sessions.is_empty()
        });
        Ok(())
    }

    async fn locate(&self, usernames: &[&str]) -> Result<HashMap<String, BTreeSet<NodeId>>> {
        let now = now_ms();
        let map = self.lock();
        let mut out = HashMap::new();
        for user in usernames {
            let Some(sessions) = map.get(*user) else {
                continue;
            };
            let nodes: BTreeSet<NodeId> = sessions
                .iter()
                .filter(|(_, exp)| **exp > now)
                .map(|((node, _), _)| node.clone())
                .collect();
            if !nodes.is_empty() {
                out.insert((*user).to_owned(), nodes);
            }
        }
        Ok(out)
    }

    async fn sessions_of(&self, username: &str) -> Result<Vec<SessionEntry>> {
        let now = now_ms();
        let mut out: Vec<SessionEntry> = self
            .lock()
            .get(username)
            .into_iter()
            .flatten()
            .filter(|(_, exp)| **exp > now)
            .map(|((node, session), _)| SessionEntry {
                username: username.to_owned(),
                node: node.clone(),
                session: *session,
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Always: the map is in this process.
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------- redis

/// The registry in Redis: one sorted set per user,
/// `<prefix>sessions:<username>`, whose members are `<node>/<session>` and
/// whose scores are expiry times (Unix ms). Lookups ignore expired members;
/// refreshes trim them. The key itself expires a TTL after its last write,
/// so the sets of users who left vanish too.
pub struct RedisRegistry {
    redis: ConnectionManager,
    prefix: String,
    ttl: Duration,
}

impl RedisRegistry {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379/`). `prefix`
    /// namespaces the keys (e.g. `chat:`).
    pub async fn connect(url: &str, prefix: &str, ttl: Duration) -> Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| crate::ClusterError::Config(format!("redis url: {e}")))?;
        let redis = connect_manager(client).await?;
        Ok(Self {
            redis,
            prefix: prefix.to_owned(),
            ttl,
        })
    }

    fn key(&self, username: &str) -> String {
        format!("{}sessions:{username}", self.prefix)
    }

    fn key_ttl_secs(&self) -> i64 {
        (self.ttl.as_secs() as i64).max(1) * 2
    }
}

/// A connection manager that reconnects by itself after Redis restarts.
/// Commands fail fast while Redis is down instead of hanging.
pub(crate) async fn connect_manager(client: redis::Client) -> Result<ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(2))
        .set_number_of_retries(2)
        .set_max_delay(500);
    Ok(ConnectionManager::new_with_config(client, config).await?)
}

fn member(e: &SessionEntry) -> String {
    format!("{}/{}", e.node, e.session)
}

fn parse_member(username: &str, member: &str) -> Option<SessionEntry> {
    let (node, session) = member.rsplit_once('/')?;
    Some(SessionEntry {
        username: username.to_owned(),
        node: node.to_owned(),
        session: session.parse().ok()?,
    })
}

#[async_trait]
impl SessionRegistry for RedisRegistry {
    async fn add(&self, e: &SessionEntry) -> Result<()> {
        self.refresh(std::slice::from_ref(e)).await
    }

    async fn remove(&self, e: &SessionEntry) -> Result<()> {
        let mut redis = self.redis.clone();
        redis::cmd("ZREM")
            .arg(self.key(&e.username))
            .arg(member(e))
            .query_async::<()>(&mut redis)
            .await?;
        Ok(())
    }

    async fn refresh(&self, entries: &[SessionEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let expiry = now + self.ttl.as_millis() as i64;
        let mut pipe = redis::pipe();
        let mut keys = BTreeSet::new();
        for e in entries {
            let key = self.key(&e.username);
            pipe.cmd("ZADD")
                .arg(&key)
                .arg(expiry)
                .arg(member(e))
                .ignore();
            keys.insert(key);
        }
        for key in keys {
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(now)
                .ignore();
            pipe.cmd("EXPIRE")
                .arg(&key)
                .arg(self.key_ttl_secs())
                .ignore();
        }
        let mut redis = self.redis.clone();
        pipe.query_async::<()>(&mut redis).await?;
        Ok(())
    }

    async fn locate(&self, usernames: &[&str]) -> Result<HashMap<String, BTreeSet<NodeId>>> {
        if usernames.is_empty() {
            return Ok(HashMap::new());
        }
        let now = now_ms();
        let mut pipe = redis::pipe();
        for user in usernames {
            pipe.cmd("ZRANGEBYSCORE")
                .arg(self.key(user))
                .arg(format!("({now}"))
                .arg("+inf");
        }
        let mut redis = self.redis.clone();
        let found: Vec<Vec<String>> = pipe.query_async(&mut redis).await?;
        let mut out = HashMap::new();
        for (user, members) in usernames.iter().zip(found) {
            let nodes: BTreeSet<NodeId> = members
                .iter()
                .filter_map(|m| parse_member(user, m))
                .map(|e| e.node)
                .collect();
            if !nodes.is_empty() {
                out.insert((*user).to_owned(), nodes);
            }
        }
        Ok(out)
    }

    async fn sessions_of(&self, username: &str) -> Result<Vec<SessionEntry>> {
        let now = now_ms();
        let mut redis = self.redis.clone();
        let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.key(username))
            .arg(format!("({now}"))
            .arg("+inf")
            .query_async(&mut redis)
            .await?;
        let mut out: Vec<SessionEntry> = members
            .iter()
            .filter_map(|m| parse_member(username, m))
            .collect();
        out.sort();
        Ok(out)
    }

    /// A Redis `PING` on the registry's connection.
    async fn ping(&self) -> Result<()> {
        let mut redis = self.redis.clone();
        redis::cmd("PING").query_async::<()>(&mut redis).await?;
        Ok(())
    }
}
