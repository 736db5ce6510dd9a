//! The server's settings as an operator writes them: one flat list of
//! names, each spelled three ways — a key in the TOML file
//! (`max_body_bytes`), a flag (`--max-body-bytes`) and an environment
//! variable (`CHAT_MAX_BODY_BYTES`). Flags win over the environment, which
//! wins over the file, which wins over the defaults.
//!
//! [`Settings`] is the whole set with its defaults; [`Overrides`] is the
//! same set as command-line flags and variables, each optional.
//! [`Settings::into_config`] checks every value and builds the
//! [`Config`](crate::Config) the server runs with; an invalid value stops
//! the server at start with a message naming the setting.
//!
//! `chat-server.example.toml` at the repository root lists every setting
//! with its default; a test holds it, the flags and the defaults to the
//! same list.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{
    AdminToken, BusBackend, ClusterConfig, Config, Durability, Limits, RegistryBackend, Retention,
    StoreBackend,
};

/// Where durable data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

/// Where sessions are registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RegistryKind {
    Memory,
    Redis,
}

/// How servers reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    Memory,
    Redis,
    Kafka,
}

/// How much a commit survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityKind {
    Full,
    Normal,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, with the fields of its spans.
    Json,
}

/// Every setting with its default. Field docs are the reference; the
/// flags in [`Overrides`] repeat them for `--help`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Directory of the SQLite database. Default: `data`.
    pub data_dir: PathBuf,
    /// gRPC listen address. Default: `127.0.0.1:50050`.
    pub grpc_addr: SocketAddr,
    /// HTTP listen address. Default: `127.0.0.1:3000`.
    pub http_addr: SocketAddr,
    /// `full`: fsync every commit (survives power loss); `normal`: survives
    /// a crash of the server process only. Default: `full`.
    pub durability: DurabilityKind,
    /// Log filter: a level (`info`) or per-module directives
    /// (`info,chat_server=debug`). Default: `info`.
    pub log: String,
    /// `text` or `json`. Default: `text`.
    pub log_format: LogFormat,
    /// This server's id in the cluster. Default: `node-` and 8 random hex
    /// digits.
    pub node_id: Option<String>,
    /// `sqlite` or `postgres`. Default: `sqlite`.
    pub store: StoreKind,
    /// PostgreSQL URL, needed by `store = "postgres"`. Default: none.
    pub postgres_url: Option<String>,
    /// `memory` (single node) or `redis`. Default: `memory`.
    pub registry: RegistryKind,
    /// Redis URL, needed by the Redis registry and bus. Default: none.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel. Default: `chat:`.
    pub redis_prefix: String,
    /// `memory` (single node), `redis` (pub/sub) or `kafka` (an inbox
    /// topic per server). Default: `memory`.
    pub bus: BusKind,
    /// Kafka bootstrap servers, needed by `bus = "kafka"`. Default: none.
    pub kafka_brokers: Option<String>,
    /// Prefix of the per-server inbox topics. Default: `chat-inbox-`.
    pub kafka_topic_prefix: String,
    /// Producer `linger.ms`. Default: 1.
    pub kafka_linger_ms: u64,
    /// Consumer `fetch.wait.max.ms`. Default: 100.
    pub kafka_fetch_wait_ms: u64,
    /// Seconds a session stays registered without a heartbeat. Default: 15.
    pub session_ttl_secs: u64,
    /// Largest message body in bytes. Default: 4096.
    pub max_body_bytes: usize,
    /// Frames queued for one slow session before it is disconnected.
    /// Default: 1024.
    pub session_queue: usize,
    /// Most members of one group. Default: 1024.
    pub max_group_members: usize,
    /// Most groups one user belongs to. Default: 1000.
    pub max_groups_per_user: usize,
    /// Groups at most this large share presence. Default: 100.
    pub presence_group_members: usize,
    /// Registrations per client address per minute, 0 for no limit.
    /// Default: 0.
    pub registrations_per_minute: u32,
    /// `Connect` streams per client address per minute, 0 for no limit.
    /// Default: 0.
    pub connects_per_minute: u32,
    /// Messages per user per second, 0 for no limit. Default: 0.
    pub sends_per_second: u32,
    /// Dead letters kept before new ones are refused. Default: 100000.
    pub max_dead_letters: u64,
    /// Token of the admin API; without one the admin API does not exist.
    /// Default: none.
    pub admin_token: Option<String>,
    /// Seconds a stopping server gives its sessions to finish their
    /// in-flight sends before it closes them anyway. Default: 10.
    pub shutdown_grace_secs: u64,
    /// Delete messages older than this many days, for everyone; 0 keeps
    /// history forever. Default: 0.
    pub retention_days: u32,
    /// Seconds between two retention passes. Default: 3600.
    pub retention_interval_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        let config = Config::default();
        let limits = Limits::default();
        let kafka = chat_cluster::bus::KafkaConfig::new("");
        Self {
            data_dir: config.data_dir,
            grpc_addr: config.grpc_addr,
            http_addr: config.http_addr,
            durability: DurabilityKind::Full,
            log: "info".into(),
            log_format: LogFormat::Text,
            node_id: None,
            store: StoreKind::Sqlite,
            postgres_url: None,
            registry: RegistryKind::Memory,
            redis_url: None,
            redis_prefix: "chat:".into(),
            bus: BusKind::Memory,
            kafka_brokers: None,
            kafka_topic_prefix: kafka.topic_prefix,
            kafka_linger_ms: kafka.linger_ms,
            kafka_fetch_wait_ms: kafka.fetch_wait_ms,
            session_ttl_secs: ClusterConfig::default().session_ttl.as_secs(),
            max_body_bytes: limits.max_body_bytes,
            session_queue: limits.session_queue,
            max_group_members: limits.max_group_members,
            max_groups_per_user: limits.max_groups_per_user,
            presence_group_members: limits.presence_group_members,
            registrations_per_minute: limits.registrations_per_minute,
            connects_per_minute: limits.connects_per_minute,
            sends_per_second: limits.sends_per_second,
            max_dead_letters: limits.max_dead_letters,
            admin_token: None,
            shutdown_grace_secs: config.shutdown_grace.as_secs(),
            retention_days: 0,
            retention_interval_secs: Retention::new(Duration::from_secs(1)).interval.as_secs(),
        }
    }
}

/// The settings as flags and `CHAT_…` variables, each optional: what is
/// given replaces the file's value or the default.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct Overrides {
    /// A TOML file of settings (keys as the flags, with `_`); see
    /// chat-server.example.toml.
    #[arg(long, env = "CHAT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of the SQLite database. Default: data.
    #[arg(long, env = "CHAT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address (0.0.0.0:50050 serves other machines). Default:
    /// 127.0.0.1:50050.
    #[arg(long, env = "CHAT_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// HTTP listen address. Default: 127.0.0.1:3000.
    #[arg(long, env = "CHAT_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// `full`: fsync every commit (survives power loss); `normal`: survive
    /// a crash of the server process only. Default: full.
    #[arg(long, env = "CHAT_DURABILITY")]
    pub durability: Option<DurabilityKind>,
    /// Log filter: a level or per-module directives
    /// (info,chat_server=debug). Default: info.
    #[arg(long, env = "CHAT_LOG")]
    pub log: Option<String>,
    /// Log lines as text or JSON. Default: text.
    #[arg(long, env = "CHAT_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// This server's id in the cluster: letters, digits, `.`, `_`, `-`.
    /// Default: node- and 8 random hex digits.
    #[arg(long, env = "CHAT_NODE_ID")]
    pub node_id: Option<String>,
    /// Where durable data lives. Default: sqlite.
    #[arg(long, env = "CHAT_STORE")]
    pub store: Option<StoreKind>,
    /// PostgreSQL URL for `--store postgres`, e.g.
    /// postgres://chat@db:5432/chat. Default: none.
    #[arg(long, env = "CHAT_POSTGRES_URL", hide_env_values = true)]
    pub postgres_url: Option<String>,
    /// Where sessions are registered: memory (single node) or redis.
    /// Default: memory.
    #[arg(long, env = "CHAT_REGISTRY")]
    pub registry: Option<RegistryKind>,
    /// Redis URL for the registry and the Redis bus, e.g.
    /// redis://cache:6379/. Default: none.
    #[arg(long, env = "CHAT_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel. Default: chat:.
    #[arg(long, env = "CHAT_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,
    /// How servers reach each other: memory (single node), redis (pub/sub)
    /// or kafka (an inbox topic per server). Default: memory.
    #[arg(long, env = "CHAT_BUS")]
    pub bus: Option<BusKind>,
    /// Kafka bootstrap servers for `--bus kafka`, e.g. kafka:9092.
    /// Default: none.
    #[arg(long, env = "CHAT_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Prefix of the per-server inbox topics. Default: chat-inbox-.
    #[arg(long, env = "CHAT_KAFKA_TOPIC_PREFIX")]
    pub kafka_topic_prefix: Option<String>,
    /// Producer linger.ms. Default: 1.
    #[arg(long, env = "CHAT_KAFKA_LINGER_MS")]
    pub kafka_linger_ms: Option<u64>,
    /// Consumer fetch.wait.max.ms (keep it small with brokers that do not
    /// answer a waiting fetch when data arrives). Default: 100.
    #[arg(long, env = "CHAT_KAFKA_FETCH_WAIT_MS")]
    pub kafka_fetch_wait_ms: Option<u64>,
    /// Seconds a session stays registered without a heartbeat; a crashed
    /// server's sessions disappear within this time. Default: 15.
    #[arg(long, env = "CHAT_SESSION_TTL_SECS")]
    pub session_ttl_secs: Option<u64>,
    /// Largest message body in bytes. Default: 4096.
    #[arg(long, env = "CHAT_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Frames queued for one slow session before it is disconnected.
    /// Default: 1024.
    #[arg(long, env = "CHAT_SESSION_QUEUE")]
    pub session_queue: Option<usize>,
    /// Most members of one group, the owner included. Default: 1024.
    #[arg(long, env = "CHAT_MAX_GROUP_MEMBERS")]
    pub max_group_members: Option<usize>,
    /// Most groups one user belongs to. Default: 1000.
    #[arg(long, env = "CHAT_MAX_GROUPS_PER_USER")]
    pub max_groups_per_user: Option<usize>,
    /// Members of groups at most this large see each other's presence; in
    /// larger groups only direct contacts do. Default: 100.
    #[arg(long, env = "CHAT_PRESENCE_GROUP_MEMBERS")]
    pub presence_group_members: Option<usize>,
    /// Registrations per client address per minute (0: no limit).
    /// Default: 0.
    #[arg(long, env = "CHAT_REGISTRATIONS_PER_MINUTE")]
    pub registrations_per_minute: Option<u32>,
    /// `Connect` streams opened per client address per minute (0: no
    /// limit). Default: 0.
    #[arg(long, env = "CHAT_CONNECTS_PER_MINUTE")]
    pub connects_per_minute: Option<u32>,
    /// Messages per user per second (0: no limit). Default: 0.
    #[arg(long, env = "CHAT_SENDS_PER_SECOND")]
    pub sends_per_second: Option<u32>,
    /// Dead letters kept before new ones are refused (and logged). Default:
    /// 100000.
    #[arg(long, env = "CHAT_MAX_DEAD_LETTERS")]
    pub max_dead_letters: Option<u64>,
    /// Enables the admin HTTP API (`/admin/…`: users, sessions, servers,
    /// dead letters) for requests with
    /// `Authorization: Bearer <token>`; at least 16 characters. Without it
    /// the admin API does not exist (404). Default: none.
    #[arg(long, env = "CHAT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Seconds a stopping server (SIGTERM, ctrl-c) gives its sessions to
    /// finish their in-flight sends before closing them anyway. Default:
    /// 10.
    #[arg(long, env = "CHAT_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// Delete messages older than this many days, for everyone, in the
    /// background (0: keep history forever). Default: 0.
    #[arg(long, env = "CHAT_RETENTION_DAYS")]
    pub retention_days: Option<u32>,
    /// Seconds between two retention passes (the first runs at start).
    /// Default: 3600.
    #[arg(long, env = "CHAT_RETENTION_INTERVAL_SECS")]
    pub retention_interval_secs: Option<u64>,
}

/// A setting with a value the server cannot run with.
#[derive(Debug)]
pub struct InvalidSetting {
    pub key: &'static str,
    pub reason: String,
}

impl std::fmt::Display for InvalidSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid setting `{}` (--{}, {}): {}",
            self.key,
            flag(self.key),
            env_var(self.key),
            self.reason
        )
    }
}

impl std::error::Error for InvalidSetting {}

/// The largest message body a server may be configured for.
pub const MAX_BODY_BYTES: usize = 1 << 20;

fn flag(key: &str) -> String {
    key.replace('_', "-")
}

/// The environment variable of a setting.
pub fn env_var(key: &str) -> String {
    format!("CHAT_{}", key.to_ascii_uppercase())
}

fn invalid(key: &'static str, reason: impl Into<String>) -> InvalidSetting {
    InvalidSetting {
        key,
        reason: reason.into(),
    }
}

impl Settings {
    /// The settings of a TOML file over the defaults. Unknown keys and
    /// values of the wrong type are errors naming the key.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Reads `path` as a TOML file of settings.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The defaults, then the file `overrides.config` names (if any), then
    /// `overrides` themselves.
    pub fn load(overrides: Overrides) -> Result<Self, String> {
        let mut settings = match &overrides.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        settings.apply(overrides);
        Ok(settings)
    }

    /// Replaces every setting `overrides` gives.
    pub fn apply(&mut self, overrides: Overrides) {
        macro_rules! apply {
            ($($name:ident),* $(,)?) => {
                let Overrides { config: _, $($name),* } = overrides;
                $(if let Some(value) = $name { self.$name = value.into(); })*
            };
        }
        apply!(
            data_dir,
            grpc_addr,
            http_addr,
            durability,
            log,
            log_format,
            node_id,
            store,
            postgres_url,
            registry,
            redis_url,
            redis_prefix,
            bus,
            kafka_brokers,
            kafka_topic_prefix,
            kafka_linger_ms,
            kafka_fetch_wait_ms,
            session_ttl_secs,
            max_body_bytes,
            session_queue,
            max_group_members,
            max_groups_per_user,
            presence_group_members,
            registrations_per_minute,
            connects_per_minute,
            sends_per_second,
            max_dead_letters,
            admin_token,
            shutdown_grace_secs,
            retention_days,
            retention_interval_secs,
        );
    }

    /// The settings as TOML, secrets replaced by `***`: what
    /// `chat-server config` prints.
    pub fn to_toml_redacted(&self) -> String {
        let mut shown = self.clone();
        let hide = |value: &mut Option<String>| {
            if value.is_some() {
                *value = Some("***".into());
            }
        };
        hide(&mut shown.admin_token);
        hide(&mut shown.postgres_url);
        hide(&mut shown.redis_url);
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot show the settings: {e}\n"))
    }

    /// Checks every value and builds the server's configuration.
    pub fn into_config(self) -> Result<Config, InvalidSetting> {
        let positive = |key, value: usize| {
            if value == 0 {
                Err(invalid(key, "must be positive"))
            } else {
                Ok(value)
            }
        };
        let required = |key, value: &Option<String>, by: &str| match value {
            Some(v) if !v.trim().is_empty() => Ok(v.clone()),
            _ => Err(invalid(key, format!("{by} needs it"))),
        };
        if self.max_body_bytes > MAX_BODY_BYTES {
            return Err(invalid(
                "max_body_bytes",
                format!("at most {MAX_BODY_BYTES}: a chat message, not a file"),
            ));
        }
        let defaults = Limits::default();
        let max_body_bytes = positive("max_body_bytes", self.max_body_bytes)?;
        let limits = Limits {
            max_body_bytes,
            // Room for the largest body in a frame or an HTTP request:
            // JSON may escape a byte as six (`\u0001`).
            max_frame_bytes: defaults.max_frame_bytes.max(2 * max_body_bytes + 4096),
            max_http_body_bytes: defaults.max_http_body_bytes.max(6 * max_body_bytes + 4096),
            session_queue: positive("session_queue", self.session_queue)?,
            max_group_members: positive("max_group_members", self.max_group_members)?,
            max_groups_per_user: positive("max_groups_per_user", self.max_groups_per_user)?,
            presence_group_members: self.presence_group_members,
            registrations_per_minute: self.registrations_per_minute,
            connects_per_minute: self.connects_per_minute,
            sends_per_second: self.sends_per_second,
            max_dead_letters: self.max_dead_letters,
            ..defaults
        };
        let store = match self.store {
            StoreKind::Sqlite => StoreBackend::Sqlite,
            StoreKind::Postgres => StoreBackend::Postgres {
                url: required("postgres_url", &self.postgres_url, "store = postgres")?,
            },
        };
        let registry = match self.registry {
            RegistryKind::Memory => RegistryBackend::Memory,
            RegistryKind::Redis => RegistryBackend::Redis {
                url: required("redis_url", &self.redis_url, "registry = redis")?,
                prefix: self.redis_prefix.clone(),
            },
        };
        let bus = match self.bus {
            BusKind::Memory => BusBackend::Memory,
            BusKind::Redis => BusBackend::Redis {
                url: required("redis_url", &self.redis_url, "bus = redis")?,
                prefix: self.redis_prefix.clone(),
            },
            BusKind::Kafka => {
                let mut kafka = chat_cluster::bus::KafkaConfig::new(required(
                    "kafka_brokers",
                    &self.kafka_brokers,
                    "bus = kafka",
                )?);
                kafka.topic_prefix = self.kafka_topic_prefix.clone();
                kafka.linger_ms = self.kafka_linger_ms;
                kafka.fetch_wait_ms = self.kafka_fetch_wait_ms;
                BusBackend::Kafka(kafka)
            }
        };
        if !matches!(bus, BusBackend::Memory) && registry == RegistryBackend::Memory {
            return Err(invalid(
                "registry",
                "a Redis or Kafka bus needs the Redis registry",
            ));
        }
        if self.session_ttl_secs == 0 {
            return Err(invalid("session_ttl_secs", "must be at least 1"));
        }
        let node_id = match self.node_id {
            Some(node) => {
                chat_cluster::check_node_id(&node)
                    .map_err(|e| invalid("node_id", e.to_string()))?;
                node
            }
            None => ClusterConfig::default().node_id,
        };
        let cluster = ClusterConfig {
            node_id,
            store,
            registry,
            bus,
            session_ttl: Duration::from_secs(self.session_ttl_secs),
        };
        let admin_token = self
            .admin_token
            .map(AdminToken::new)
            .transpose()
            .map_err(|e| invalid("admin_token", e))?;
        if self.retention_interval_secs == 0 {
            return Err(invalid("retention_interval_secs", "must be at least 1"));
        }
        let retention = match self.retention_days {
            0 => None,
            days => {
                let mut policy = Retention::new(Duration::from_secs(u64::from(days) * 86_400));
                policy.interval = Duration::from_secs(self.retention_interval_secs);
                policy
                    .validate()
                    .map_err(|e| invalid("retention_interval_secs", e))?;
                Some(policy)
            }
        };
        Ok(Config {
            data_dir: self.data_dir,
            grpc_addr: self.grpc_addr,
            http_addr: self.http_addr,
            durability: match self.durability {
                DurabilityKind::Full => Durability::Full,
                DurabilityKind::Normal => Durability::Normal,
            },
            limits,
            cluster,
            admin_token,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            retention,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Args as _;

    /// The example file of the repository.
    fn example() -> String {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../chat-server.example.toml"
        );
        std::fs::read_to_string(path).expect("chat-server.example.toml")
    }

    /// Every setting's key, as the defaults serialise (options as null).
    fn keys() -> Vec<String> {
        let json = serde_json::to_value(Settings::default()).unwrap();
        json.as_object().unwrap().keys().cloned().collect()
    }

    fn flags() -> clap::Command {
        Overrides::augment_args(clap::Command::new("chat-server"))
    }

    #[test]
    fn the_example_file_is_the_defaults_and_names_every_setting() {
        let text = example();
        // Uncommented, it is exactly the defaults.
        assert_eq!(Settings::from_toml(&text).unwrap(), Settings::default());
        for key in keys() {
            let set = text.lines().any(|l| l.starts_with(&format!("{key} = ")));
            let shown = text.lines().any(|l| l.starts_with(&format!("# {key} = ")));
            assert!(set || shown, "chat-server.example.toml lacks `{key}`");
        }
        // The commented-out lines are real settings with valid values.
        let keys = keys();
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if keys.iter().any(|k| rest.starts_with(&format!("{k} = "))) => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        Settings::from_toml(&uncommented).expect("every commented-out example parses");
    }

    #[test]
    fn every_setting_is_a_flag_and_a_variable_with_its_default_in_the_help() {
        let command = flags();
        let defaults = serde_json::to_value(Settings::default()).unwrap();
        let mut seen = Vec::new();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str().to_owned();
            let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or_default();
            assert_eq!(env, env_var(&id), "the variable of --{}", flag(&id));
            assert_eq!(arg.get_long(), Some(flag(&id).as_str()));
            if id == "config" {
                continue;
            }
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let default = match &defaults[&id] {
                // No fixed default: the help says what happens instead.
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert!(
                help.contains(&format!("Default: {default}")),
                "--{} says its default ({default}): {help}",
                flag(&id)
            );
            seen.push(id);
        }
        seen.sort();
        let mut keys = keys();
        keys.sort();
        assert_eq!(seen, keys, "flags and file keys are the same settings");
    }

    #[test]
    fn precedence_is_flags_then_file_then_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.toml");
        std::fs::write(&path, "max_body_bytes = 1000\nsession_queue = 7\n").unwrap();
        let overrides = Overrides {
            config: Some(path),
            max_body_bytes: Some(2000),
            ..Overrides::default()
        };
        let settings = Settings::load(overrides).unwrap();
        assert_eq!(settings.max_body_bytes, 2000, "the flag wins");
        assert_eq!(settings.session_queue, 7, "the file wins over the default");
        assert_eq!(settings.max_group_members, 1024, "the default otherwise");
        let config = settings.into_config().unwrap();
        assert_eq!(config.limits.max_body_bytes, 2000);
        assert_eq!(config.limits.session_queue, 7);
    }

    #[test]
    fn errors_name_the_setting() {
        let unknown = Settings::from_toml("max_body_byte = 1\n").unwrap_err();
        assert!(unknown.contains("max_body_byte"), "{unknown}");
        let wrong = Settings::from_toml("session_queue = \"many\"\n").unwrap_err();
        assert!(wrong.contains("session_queue"), "{wrong}");
        let store = Settings::from_toml("store = \"mysql\"\n").unwrap_err();
        assert!(store.contains("mysql"), "{store}");

        let check = |settings: Settings, key: &str| {
            let e = settings.into_config().unwrap_err().to_string();
            assert!(
                e.contains(&format!("`{key}`")) && e.contains(&env_var(key)),
                "{e}"
            );
        };
        let base = Settings::default;
        check(
            Settings {
                max_body_bytes: 0,
                ..base()
            },
            "max_body_bytes",
        );
        check(
            Settings {
                max_body_bytes: MAX_BODY_BYTES + 1,
                ..base()
            },
            "max_body_bytes",
        );
        check(
            Settings {
                store: StoreKind::Postgres,
                ..base()
            },
            "postgres_url",
        );
        check(
            Settings {
                bus: BusKind::Kafka,
                kafka_brokers: Some("k:9092".into()),
                ..base()
            },
            "registry",
        );
        check(
            Settings {
                node_id: Some("no spaces".into()),
                ..base()
            },
            "node_id",
        );
        check(
            Settings {
                admin_token: Some("short".into()),
                ..base()
            },
            "admin_token",
        );
        check(
            Settings {
                session_ttl_secs: 0,
                ..base()
            },
            "session_ttl_secs",
        );
    }

    #[test]
    fn retention_is_off_by_default_and_in_days() {
        assert_eq!(Settings::default().into_config().unwrap().retention, None);
        let config = Settings {
            retention_days: 30,
            retention_interval_secs: 60,
            ..Settings::default()
        }
        .into_config()
        .unwrap();
        let policy = config.retention.expect("a policy");
        assert_eq!(policy.max_age, Duration::from_secs(30 * 86_400));
        assert_eq!(policy.interval, Duration::from_secs(60));
        let e = Settings {
            retention_interval_secs: 0,
            ..Settings::default()
        }
        .into_config()
        .unwrap_err();
        assert_eq!(e.key, "retention_interval_secs");
    }

    #[test]
    fn the_printed_settings_hide_secrets_and_read_back() {
        let settings = Settings {
            admin_token: Some("0123456789abcdef-secret".into()),
            postgres_url: Some("postgres://chat:pw@db/chat".into()),
            ..Settings::default()
        };
        let shown = settings.to_toml_redacted();
        assert!(
            !shown.contains("secret") && !shown.contains("pw@"),
            "{shown}"
        );
        let back = Settings::from_toml(&shown).unwrap();
        assert_eq!(back.max_body_bytes, settings.max_body_bytes);
        assert_eq!(back.admin_token.as_deref(), Some("***"));
    }
}
