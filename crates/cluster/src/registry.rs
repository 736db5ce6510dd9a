//! The session registry: which sessions each user has on which node.
//!
//! An entry lives for the registry's TTL after it was last added or
//! refreshed. Every node refreshes its own entries on a heartbeat, well
//! within the TTL; a node that dies stops refreshing, and its entries
//! expire by themselves. Refreshing re-creates missing entries, so a
//! registry that lost its data (Redis restarted or flushed) is whole again
//! after one heartbeat.
//!
//! Servers announce themselves the same way ([`NodeEntry`]): each
//! heartbeat refreshes its node's entry for another TTL, a clean shutdown
//! removes it, and a dead server's entry expires, so the registry also
//! says which servers make up the cluster, sessions or not.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// One server of the cluster, as it announces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    pub node: NodeId,
    /// Where its gRPC listener is bound (as the server sees it).
    pub grpc_addr: String,
    /// Where its HTTP listener is bound.
    pub http_addr: String,
    /// When the server started (Unix ms).
    pub started_at_unix_ms: i64,
    /// When it last announced itself (Unix ms): set by the registry.
    pub heartbeat_at_unix_ms: i64,
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
    /// Live sessions of every user (of `node` only, when given), sorted,
    /// at most `limit`: which ones, when more are live, is unspecified.
    /// For operators; the delivery path never lists.
    async fn list_sessions(&self, node: Option<&str>, limit: usize) -> Result<Vec<SessionEntry>>;
    /// Records a server as alive for the TTL, or refreshes it, with its
    /// `heartbeat_at_unix_ms` set to now (the value given is ignored).
    async fn announce_node(&self, node: &NodeEntry) -> Result<()>;
    /// Forgets a server (it is shutting down).
    async fn retire_node(&self, node: &str) -> Result<()>;
    /// Every live server, by node id.
    async fn nodes(&self) -> Result<Vec<NodeEntry>>;
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
    /// Servers: node → (entry, expiry in Unix ms).
    nodes: Mutex<BTreeMap<NodeId, (NodeEntry, i64)>>,
}

impl MemoryRegistry {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
            nodes: Mutex::default(),
        }
    }

    fn lock_nodes(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, (NodeEntry, i64)>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
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

    async fn list_sessions(&self, node: Option<&str>, limit: usize) -> Result<Vec<SessionEntry>> {
        let now = now_ms();
        let mut out: Vec<SessionEntry> = self
            .lock()
            .iter()
            .flat_map(|(user, sessions)| {
                sessions
                    .iter()
                    .filter(|((n, _), exp)| **exp > now && node.is_none_or(|want| n == want))
                    .map(|((n, session), _)| SessionEntry {
                        username: user.clone(),
                        node: n.clone(),
                        session: *session,
                    })
            })
            .collect();
        out.sort();
        out.truncate(limit);
        Ok(out)
    }

    async fn announce_node(&self, node: &NodeEntry) -> Result<()> {
        let now = now_ms();
        let entry = NodeEntry {
            heartbeat_at_unix_ms: now,
            ..node.clone()
        };
        let mut nodes = self.lock_nodes();
        nodes.insert(node.node.clone(), (entry, self.expiry()));
        nodes.retain(|_, (_, exp)| *exp > now);
        Ok(())
    }

    async fn retire_node(&self, node: &str) -> Result<()> {
        self.lock_nodes().remove(node);
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeEntry>> {
        let now = now_ms();
        Ok(self
            .lock_nodes()
            .values()
            .filter(|(_, exp)| *exp > now)
            .map(|(entry, _)| entry.clone())
            .collect())
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
///
/// Servers: the sorted set `<prefix>nodes` (member: node id, score: expiry)
/// and the hash `<prefix>nodes:info` (node id → `<grpc addr> <http addr>
/// <started ms> <heartbeat ms>`), written together by a script that also
/// drops the expired nodes from both; both keys expire like the session
/// sets when no server is left to refresh them.
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

    fn nodes_key(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    fn nodes_info_key(&self) -> String {
        format!("{}nodes:info", self.prefix)
    }
}

/// Announces a node and drops the expired ones, atomically (a script runs
/// alone), so a node that comes back at the same moment is never dropped.
/// KEYS: the nodes' sorted set and info hash; ARGV: now, expiry, node,
/// info, key TTL in seconds.
const ANNOUNCE_NODE: &str = r"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, node in ipairs(dead) do
  redis.call('ZREM', KEYS[1], node)
  redis.call('HDEL', KEYS[2], node)
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return #dead
";

/// Keys scanned per `SCAN` call when listing sessions: large enough for
/// few round trips, small enough that no call blocks Redis for long.
const SCAN_COUNT: usize = 500;

/// `text` as a `SCAN MATCH` pattern matching itself only.
fn glob_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn node_info(e: &NodeEntry, heartbeat: i64) -> String {
    format!(
        "{} {} {} {heartbeat}",
        e.grpc_addr, e.http_addr, e.started_at_unix_ms
    )
}

fn parse_node_info(node: &str, info: &str) -> Option<NodeEntry> {
    let mut parts = info.split(' ');
    let entry = NodeEntry {
        node: node.to_owned(),
        grpc_addr: parts.next()?.to_owned(),
        http_addr: parts.next()?.to_owned(),
        started_at_unix_ms: parts.next()?.parse().ok()?,
        heartbeat_at_unix_ms: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(entry)
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

    async fn list_sessions(&self, node: Option<&str>, limit: usize) -> Result<Vec<SessionEntry>> {
        let now = now_ms();
        let users_from = format!("{}sessions:", self.prefix);
        let pattern = format!("{}*", glob_literal(&users_from));
        let mut redis = self.redis.clone();
        // A key may come back from SCAN more than once.
        let mut found = BTreeSet::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut redis)
                .await?;
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.cmd("ZRANGEBYSCORE")
                        .arg(key)
                        .arg(format!("({now}"))
                        .arg("+inf");
                }
                let members: Vec<Vec<String>> = pipe.query_async(&mut redis).await?;
                for (key, members) in keys.iter().zip(members) {
                    let Some(user) = key.strip_prefix(&users_from) else {
                        continue;
                    };
                    found.extend(
                        members
                            .iter()
                            .filter_map(|m| parse_member(user, m))
                            .filter(|e| node.is_none_or(|want| e.node == want)),
                    );
                }
            }
            // SCAN ends when the cursor is back at 0; stopping early once
            // there are enough keeps a huge registry from being read whole.
            if next == 0 || found.len() >= limit {
                break;
            }
            cursor = next;
        }
        Ok(found.into_iter().take(limit).collect())
    }

    async fn announce_node(&self, node: &NodeEntry) -> Result<()> {
        let now = now_ms();
        let expiry = now + self.ttl.as_millis() as i64;
        let mut redis = self.redis.clone();
        redis::cmd("EVAL")
            .arg(ANNOUNCE_NODE)
            .arg(2)
            .arg(self.nodes_key())
            .arg(self.nodes_info_key())
            .arg(now)
            .arg(expiry)
            .arg(&node.node)
            .arg(node_info(node, now))
            .arg(self.key_ttl_secs())
            .query_async::<()>(&mut redis)
            .await?;
        Ok(())
    }

    async fn retire_node(&self, node: &str) -> Result<()> {
        let mut redis = self.redis.clone();
        redis::pipe()
            .atomic()
            .cmd("ZREM")
            .arg(self.nodes_key())
            .arg(node)
            .ignore()
            .cmd("HDEL")
            .arg(self.nodes_info_key())
            .arg(node)
            .ignore()
            .query_async::<()>(&mut redis)
            .await?;
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeEntry>> {
        let now = now_ms();
        let mut redis = self.redis.clone();
        let live: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.nodes_key())
            .arg(format!("({now}"))
            .arg("+inf")
            .query_async(&mut redis)
            .await?;
        if live.is_empty() {
            return Ok(Vec::new());
        }
        let infos: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.nodes_info_key())
            .arg(&live)
            .query_async(&mut redis)
            .await?;
        let mut out: Vec<NodeEntry> = live
            .iter()
            .zip(infos)
            // No info: retired between the two reads.
            .filter_map(|(node, info)| parse_node_info(node, info.as_deref()?))
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(out)
    }
    /// A Redis `PING` on the registry's connection.
    async fn ping(&self) -> Result<()> {
        let mut redis = self.redis.clone();
        redis::cmd("PING").query_async::<()>(&mut redis).await?;
        Ok(())
    }
}
