//! The server's settings as an operator writes them: one flat list of
//! names, each spelled three ways — a key in the TOML file
//! (`max_body_bytes`), a flag (`--max-body-bytes`) and an environment
//! variable (`CHAT_MAX_BODY_BYTES`). Flags win over the environment, which
//! wins over the file, which wins over the defaults.
//!
//! Every setting is declared once, in the table at the `settings!` call
//! below: its name, type, default, meaning and check. Everything else is
//! derived from that line: [`Settings`] (the TOML keys and the defaults),
//! [`Overrides`] (the flags and variables, each optional, with the
//! defaults in `--help`), [`SETTINGS`] (the list in the file's order) and
//! [`Settings::example`], the text of `chat-server.example.toml` at the
//! repository root (a test holds the file to it).
//!
//! [`Settings::into_config`] checks every value and builds the
//! [`Config`](crate::Config) the server runs with; an invalid value stops
//! the server at start with a message naming the setting. This module does
//! not decide what the server does with a value: that is [`crate::config`]
//! and the modules it configures.

use std::fmt::Write as _;
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

/// One setting as the table declares it, without its type: what the
/// flags, the help and the example file are made from.
#[derive(Debug)]
pub struct Setting {
    /// The TOML key; the flag and the variable are spelled from it.
    pub key: &'static str,
    /// The heading it is listed under in the example file.
    pub section: &'static str,
    /// Its meaning, one entry per line of its doc comment.
    pub doc: &'static [&'static str],
    /// What happens when a setting without a default is not given, if
    /// more than "nothing".
    pub unset: Option<&'static str>,
    /// A value shown (commented out) in the example file for a setting
    /// without a default.
    pub example: Option<&'static str>,
    /// Never printed: `***` in `chat-server config`, hidden in `--help`.
    pub secret: bool,
    /// Parses the flag's or the variable's text.
    parser: fn() -> clap::builder::ValueParser,
}

/// The declaration of every setting: the one place a setting is added.
///
/// An entry is its doc comment (the help, the example file's comment and
/// the field's doc), then `name: Type = default`, then options:
/// `check = f` (`f(&value) -> Result<(), String>`; a refused value names
/// the setting) and, for a setting without a default (an `Option<Type>`,
/// absent unless given), `example = "…"` (its line in the example file),
/// `unset = "what happens without it"` and `secret = true` (a string never
/// printed). Options come in that order.
macro_rules! settings {
    ($(
        $section:literal {
            $(
                $(#[doc = $doc:literal])*
                $name:ident: $ty:ty $(= $default:expr)?
                    $(, unset = $unset:literal)?
                    $(, example = $example:literal)?
                    $(, secret = $secret:literal)?
                    $(, check = $check:expr)?;
            )*
        }
    )*) => {
        /// Every setting with its default.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Settings {
            $($(
                $(#[doc = $doc])*
                pub $name: setting_type!($ty $(, $default)?),
            )*)*
        }

        impl Default for Settings {
            fn default() -> Self {
                Self {
                    $($($name: setting_default!($($default)?),)*)*
                }
            }
        }

        /// The settings as flags and `CHAT_…` variables, each optional:
        /// what is given replaces the file's value or the default.
        #[derive(Debug, Default, Clone)]
        pub struct Overrides {
            /// A TOML file of settings (keys as the flags, with `_`); see
            /// chat-server.example.toml.
            pub config: Option<PathBuf>,
            $($(
                $(#[doc = $doc])*
                pub $name: Option<$ty>,
            )*)*
        }

        /// Every setting, in the order of the example file.
        pub const SETTINGS: &[Setting] = &[$($(
            Setting {
                key: stringify!($name),
                section: $section,
                doc: &[$($doc),*],
                unset: some!($($unset)?),
                example: some!($($example)?),
                secret: false $(|| $secret)?,
                parser: || clap::builder::ValueParser::from(clap::value_parser!($ty)),
            },
        )*)*];

        impl clap::FromArgMatches for Overrides {
            fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
                Ok(Self {
                    config: given(matches, "config")?,
                    $($($name: given(matches, stringify!($name))?,)*)*
                })
            }

            fn update_from_arg_matches(
                &mut self,
                matches: &clap::ArgMatches,
            ) -> Result<(), clap::Error> {
                let given = Self::from_arg_matches(matches)?;
                self.config = given.config.or(self.config.take());
                $($(self.$name = given.$name.or(self.$name.take());)*)*
                Ok(())
            }
        }

        impl Settings {
            /// Replaces every setting `overrides` gives.
            pub fn apply(&mut self, overrides: Overrides) {
                $($(
                    if let Some(value) = overrides.$name {
                        self.$name = value.into();
                    }
                )*)*
            }

            /// The settings as TOML, secrets replaced by `***`: what
            /// `chat-server config` prints.
            pub fn to_toml_redacted(&self) -> String {
                let mut shown = self.clone();
                $($($(
                    if $secret && shown.$name.is_some() {
                        shown.$name = Some("***".into());
                    }
                )?)*)*
                toml::to_string(&shown)
                    .unwrap_or_else(|e| format!("# cannot show the settings: {e}\n"))
            }

            /// Runs the check of every setting that has one.
            fn check(&self) -> Result<(), InvalidSetting> {
                $($($(
                    ($check)(&self.$name).map_err(|reason| invalid(stringify!($name), reason))?;
                )?)*)*
                Ok(())
            }
        }
    };
}

/// The field type of a setting: optional without a default.
macro_rules! setting_type {
    ($ty:ty) => { Option<$ty> };
    ($ty:ty, $default:expr) => { $ty };
}

/// The default of a setting: absent without one.
macro_rules! setting_default {
    () => {
        None
    };
    ($default:expr) => {
        $default
    };
}

macro_rules! some {
    () => {
        None
    };
    ($value:expr) => {
        Some($value)
    };
}

settings! {
    "Listening and storage" {
        /// gRPC listen address; 0.0.0.0:50050 serves other machines.
        grpc_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 50050));
        /// HTTP listen address (registration, JSON API, /healthz, /readyz,
        /// /metrics).
        http_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 3000));
        /// Certificate chain in PEM (the server's certificate first): with
        /// `tls_key`, gRPC and HTTP are served over TLS only. Reloaded on
        /// SIGHUP and when the file changes. `chat-server tls self-signed`
        /// makes one for a trial.
        tls_cert: PathBuf,
            unset = "plaintext (fine on loopback only)",
            example = "/etc/chat-server/cert.pem";
        /// Private key in PEM (PKCS#8, RSA or EC) of the `tls_cert`
        /// certificate.
        tls_key: PathBuf, example = "/etc/chat-server/key.pem";
        /// Directory of the SQLite database (`store = "sqlite"`).
        data_dir: PathBuf = PathBuf::from("data");
        /// `full`: fsync every commit (survives power loss); `normal`: survives
        /// a crash of the server process only.
        durability: DurabilityKind = DurabilityKind::Full;
        /// Store operations that run at once: SQLite's read connections (each
        /// on a thread of its own while it runs), PostgreSQL's pool. A burst
        /// of requests waits for a turn instead of opening more.
        store_connections: usize = 16, check = positive;
    }
    "Logs" {
        /// A level (error, warn, info, debug, trace) or per-module directives
        /// such as `info,chat_server=debug`.
        log: String = "info".into(), check = log_filter;
        /// `text` or `json` (one object per line, with the fields of its
        /// spans: request, gRPC call, session).
        log_format: LogFormat = LogFormat::Text;
    }
    "Cluster" {
        /// This server's id in the cluster: letters, digits, `.`, `_`, `-`.
        node_id: String,
            unset = "`node-` and 8 random hex digits, new at every start",
            example = "chat-1",
            check = node_id;
        /// Where durable data lives: `sqlite` (one server) or `postgres` (a
        /// cluster).
        store: StoreKind = StoreKind::Sqlite;
        /// PostgreSQL URL, needed by `store = "postgres"`; the server migrates
        /// the schema at start.
        postgres_url: String, example = "postgres://chat@db:5432/chat", secret = true;
        /// Where sessions are registered: `memory` (one server) or `redis`
        /// (who is connected where, shared by the cluster).
        registry: RegistryKind = RegistryKind::Memory;
        /// Redis URL, needed by `registry = "redis"` and `bus = "redis"`.
        redis_url: String, example = "redis://cache:6379/", secret = true;
        /// Prefix of every Redis key and channel: servers sharing it are one
        /// cluster.
        redis_prefix: String = "chat:".into();
        /// How servers reach each other: `memory` (one server), `redis`
        /// (pub/sub) or `kafka` (an inbox topic per server). Both shared buses
        /// need `registry = "redis"`.
        bus: BusKind = BusKind::Memory;
        /// Kafka bootstrap servers, needed by `bus = "kafka"`.
        kafka_brokers: String, example = "kafka:9092";
        /// Prefix of the per-server inbox topics (`<prefix><node_id>`, created
        /// at start, deleted at a clean stop).
        kafka_topic_prefix: String = chat_cluster::bus::KafkaConfig::new("").topic_prefix;
        /// Producer `linger.ms`.
        kafka_linger_ms: u64 = chat_cluster::bus::KafkaConfig::new("").linger_ms;
        /// Consumer `fetch.wait.max.ms`: how long an idle inbox's fetch waits
        /// at the broker. Apache Kafka answers a waiting fetch as soon as a
        /// record arrives, so this does not delay delivery.
        kafka_fetch_wait_ms: u64 = chat_cluster::bus::KafkaConfig::new("").fetch_wait_ms;
        /// Seconds a session stays registered without a heartbeat: a crashed
        /// server's sessions disappear within this time.
        session_ttl_secs: u64 = 15, check = positive;
    }
    "Limits" {
        /// Largest message body in bytes: a chat message, not a file.
        max_body_bytes: usize = 4096, check = body_size;
        /// Frames queued for one slow session before it is disconnected.
        session_queue: usize = 1024, check = positive;
        /// Most members of one group, the owner included.
        max_group_members: usize = 1024, check = positive;
        /// Most groups one user belongs to.
        max_groups_per_user: usize = 1000, check = positive;
        /// Members of groups at most this large see each other's presence; in
        /// larger groups only direct contacts do (a group of N members all
        /// connecting costs N² presence frames).
        presence_group_members: usize = 100;
        /// Registrations per client address per minute, HTTP and gRPC together
        /// (0: no limit).
        registrations_per_minute: u32 = 0;
        /// `Connect` streams opened per client address per minute (0: no
        /// limit).
        connects_per_minute: u32 = 0;
        /// Messages per user per second, all devices together (0: no limit).
        sends_per_second: u32 = 0;
        /// Dead letters kept before new ones are refused (and logged): a bus
        /// outage must not fill the disk.
        max_dead_letters: u64 = 100_000;
    }
    "Operations" {
        /// Token of the admin API (`/admin/…`: users, sessions, servers, dead
        /// letters; `chat-server admin`), sent as `Authorization: Bearer
        /// <token>`: at least 16 visible characters. Without one the admin API
        /// does not exist (404).
        admin_token: String, example = "change-me-to-a-long-random-string", secret = true;
        /// Seconds a stopping server (SIGTERM, ctrl-c) gives its sessions to
        /// finish the sends they have read before it closes them anyway.
        shutdown_grace_secs: u64 = 10;
        /// Delete messages older than this many days, for everyone, in the
        /// background (0: keep history forever). Seqs are not reused: histories
        /// start later.
        retention_days: u32 = 0;
        /// Seconds between two retention passes; the first runs when the server
        /// starts.
        retention_interval_secs: u64 = Retention::new(Duration::from_secs(1)).interval.as_secs(),
            check = positive;
    }
}

// ------------------------------------------------------------- checks

/// The largest message body a server may be configured for.
pub const MAX_BODY_BYTES: usize = 1 << 20;

fn positive<T: Default + PartialEq>(value: &T) -> Result<(), String> {
    if *value == T::default() {
        return Err("must be positive".into());
    }
    Ok(())
}

fn body_size(bytes: &usize) -> Result<(), String> {
    positive(bytes)?;
    if *bytes > MAX_BODY_BYTES {
        return Err(format!(
            "at most {MAX_BODY_BYTES}: a chat message, not a file"
        ));
    }
    Ok(())
}

fn log_filter(filter: &String) -> Result<(), String> {
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn node_id(node: &Option<String>) -> Result<(), String> {
    match node {
        Some(node) => chat_cluster::check_node_id(node).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

// ------------------------------------------------------- flags and help

/// The value of one flag or variable, if given.
fn given<T: Clone + Send + Sync + 'static>(
    matches: &clap::ArgMatches,
    id: &str,
) -> Result<Option<T>, clap::Error> {
    matches
        .try_get_one::<T>(id)
        .map(|value| value.cloned())
        .map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, e))
}

impl clap::Args for Overrides {
    fn augment_args(command: clap::Command) -> clap::Command {
        let defaults = Settings::default().table();
        let config = clap::Arg::new("config")
            .long("config")
            .env("CHAT_CONFIG")
            .value_name("CONFIG")
            .value_parser(clap::value_parser!(PathBuf))
            .help("A TOML file of settings (keys as the flags, with `_`); see chat-server.example.toml.");
        SETTINGS
            .iter()
            .fold(command.arg(config), |command, setting| {
                command.arg(setting.arg(defaults.get(setting.key)))
            })
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

impl Setting {
    /// The doc comment as one line.
    fn doc_line(&self) -> String {
        let words: Vec<&str> = self.doc.iter().map(|line| line.trim()).collect();
        words.join(" ")
    }

    /// The flag and the variable of this setting.
    fn arg(&self, default: Option<&toml::Value>) -> clap::Arg {
        let default = match default {
            // What `--help` shows: strings without their quotes.
            Some(toml::Value::String(text)) => text.clone(),
            Some(value) => value.to_string(),
            None => self.unset.unwrap_or("none").to_owned(),
        };
        clap::Arg::new(self.key)
            .long(flag(self.key))
            .env(env_var(self.key))
            .hide_env_values(self.secret)
            .value_name(self.key.to_ascii_uppercase())
            .action(clap::ArgAction::Set)
            .value_parser((self.parser)())
            .help(format!("{} Default: {default}.", self.doc_line()))
    }
}

fn flag(key: &str) -> String {
    key.replace('_', "-")
}

/// The environment variable of a setting.
pub fn env_var(key: &str) -> String {
    format!("CHAT_{}", key.to_ascii_uppercase())
}

// ------------------------------------------------------- example file

/// How `chat-server.example.toml` starts.
const EXAMPLE_HEADER: &str = "\
# chat-server settings: every one with its default.
#
# Use it with `chat-server --config chat-server.toml` (or CHAT_CONFIG).
# Each key is also a flag (`max_body_bytes` is `--max-body-bytes`) and an
# environment variable (`CHAT_MAX_BODY_BYTES`). Flags win over variables,
# variables over this file, this file over the defaults. Keys the server
# does not know, and invalid values, stop it at start with the key named.
# `chat-server config` prints the settings it would run with.
#
# Lines starting with `# key =` are settings without a default: remove the
# `# ` and give a value.
#
# `chat-server config --example` writes this file, from the settings'
# declarations in crates/server/src/settings.rs.
";

/// The width of a section heading in the example file.
const HEADING_WIDTH: usize = 76;

/// The widest comment line of the example file.
const COMMENT_WIDTH: usize = 78;

/// `text` in lines of at most `width` characters (or one word), broken
/// between words.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    lines
}

// ------------------------------------------------------------- errors

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

    /// Each setting's value as TOML, by key; settings without a value are
    /// absent.
    fn table(&self) -> toml::Table {
        match toml::Value::try_from(self) {
            Ok(toml::Value::Table(table)) => table,
            // Not reached: every setting is a string, a number or absent.
            _ => toml::Table::new(),
        }
    }

    /// The text of `chat-server.example.toml`: every setting with its
    /// meaning and its default, or commented out with an example value.
    pub fn example() -> String {
        let defaults = Self::default().table();
        let mut text = EXAMPLE_HEADER.to_owned();
        let mut section = "";
        for setting in SETTINGS {
            if setting.section != section {
                section = setting.section;
                let heading = format!("# --- {section} ");
                let dashes = "-".repeat(HEADING_WIDTH.saturating_sub(heading.len()));
                let _ = write!(text, "\n{heading}{dashes}\n\n");
            }
            for line in wrap(&setting.doc_line(), COMMENT_WIDTH - 2) {
                let _ = writeln!(text, "# {line}");
            }
            let key = setting.key;
            match defaults.get(key) {
                Some(value) => {
                    let _ = writeln!(text, "{key} = {value}");
                }
                None => {
                    if let Some(unset) = setting.unset {
                        let _ = writeln!(text, "# Default: {unset}.");
                    }
                    let example = toml::Value::String(setting.example.unwrap_or("").into());
                    let _ = writeln!(text, "# {key} = {example}");
                }
            }
        }
        text
    }

    /// The limits these settings give; unchecked (see [`Self::check`]).
    pub(crate) fn limits(&self) -> Limits {
        let body = self.max_body_bytes;
        Limits {
            max_body_bytes: body,
            // Room for the largest body in a frame or an HTTP request:
            // JSON may escape a byte as six (`\u0001`).
            max_frame_bytes: Limits::MIN_FRAME_BYTES.max(2 * body + 4096),
            max_http_body_bytes: Limits::MIN_HTTP_BODY_BYTES.max(6 * body + 4096),
            queued_sends_per_session: Limits::QUEUED_SENDS_PER_SESSION,
            session_queue: self.session_queue,
            max_group_members: self.max_group_members,
            max_groups_per_user: self.max_groups_per_user,
            presence_group_members: self.presence_group_members,
            registrations_per_minute: self.registrations_per_minute,
            connects_per_minute: self.connects_per_minute,
            sends_per_second: self.sends_per_second,
            max_dead_letters: self.max_dead_letters,
        }
    }

    /// The backends and this node's place in the cluster; refuses a
    /// backend without the address it needs.
    pub(crate) fn cluster(&self) -> Result<ClusterConfig, InvalidSetting> {
        let required = |key, value: &Option<String>, by: &str| match value {
            Some(v) if !v.trim().is_empty() => Ok(v.clone()),
            _ => Err(invalid(key, format!("{by} needs it"))),
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
        Ok(ClusterConfig {
            node_id: self
                .node_id
                .clone()
                .unwrap_or_else(|| format!("node-{:08x}", rand::random::<u32>())),
            store,
            registry,
            bus,
            session_ttl: Duration::from_secs(self.session_ttl_secs),
        })
    }

    /// Checks every value and builds the server's configuration.
    pub fn into_config(self) -> Result<Config, InvalidSetting> {
        self.check()?;
        let limits = self.limits();
        let cluster = self.cluster()?;
        let admin_token = self
            .admin_token
            .map(AdminToken::new)
            .transpose()
            .map_err(|e| invalid("admin_token", e))?;
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
        let tls = match (self.tls_cert, self.tls_key) {
            (None, None) => None,
            (Some(_), None) => return Err(invalid("tls_key", "tls_cert needs it")),
            (None, Some(_)) => return Err(invalid("tls_cert", "tls_key needs it")),
            (Some(cert), Some(key)) => {
                let files = crate::tls::TlsFiles { cert, key };
                crate::tls::load(&files).map_err(|e| invalid(e.setting(), e.to_string()))?;
                Some(files)
            }
        };
        Ok(Config {
            data_dir: self.data_dir,
            grpc_addr: self.grpc_addr,
            http_addr: self.http_addr,
            tls,
            durability: match self.durability {
                DurabilityKind::Full => Durability::Full,
                DurabilityKind::Normal => Durability::Normal,
            },
            store_connections: self.store_connections,
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
    fn the_example_file_is_the_declared_settings() {
        let (file, rendered) = (example(), Settings::example());
        if file != rendered {
            let differs = file
                .lines()
                .map(Some)
                .chain(std::iter::repeat(None))
                .zip(rendered.lines().map(Some).chain(std::iter::repeat(None)))
                .enumerate()
                .find(|(_, (a, b))| a != b);
            let (line, (file_line, rendered_line)) = differs.unwrap_or((0, (None, None)));
            panic!(
                "chat-server.example.toml differs from the declared settings at line {}:\n  \
                 file:     {}\n  declared: {}\nRegenerate it: \
                 cargo run -p chat-server -- config --example > chat-server.example.toml",
                line + 1,
                file_line.unwrap_or("(end of file)"),
                rendered_line.unwrap_or("(end of file)"),
            );
        }
    }

    #[test]
    fn tls_needs_both_files_readable_and_matching() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = crate::tls::self_signed(&["localhost".into()]).unwrap();
        let (other_cert, _) = crate::tls::self_signed(&["localhost".into()]).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            Some(path)
        };
        let refused = |cert: Option<PathBuf>, key: Option<PathBuf>| {
            let settings = Settings {
                tls_cert: cert,
                tls_key: key,
                ..Settings::default()
            };
            settings.into_config().err().map(|e| e.key)
        };
        let (cert, key) = (write("cert.pem", &cert), write("key.pem", &key));
        let missing = Some(dir.path().join("missing.pem"));
        assert_eq!(refused(cert.clone(), None), Some("tls_key"));
        assert_eq!(refused(None, key.clone()), Some("tls_cert"));
        assert_eq!(refused(missing.clone(), key.clone()), Some("tls_cert"));
        assert_eq!(refused(cert.clone(), missing), Some("tls_key"));
        assert_eq!(refused(key.clone(), key.clone()), Some("tls_cert"));
        assert_eq!(refused(cert.clone(), cert.clone()), Some("tls_key"));
        assert_eq!(
            refused(write("other.pem", &other_cert), key.clone()),
            Some("tls_key")
        );
        assert_eq!(refused(cert.clone(), key.clone()), None);
    }

    #[test]
    fn the_defaults_are_a_valid_configuration() {
        let settings = Settings::default();
        let config = settings.clone().into_config().unwrap();
        assert_eq!(config.limits.max_group_members, settings.max_group_members);
        assert_eq!(
            config.cluster.session_ttl,
            Duration::from_secs(settings.session_ttl_secs)
        );
        assert!(config.cluster.node_id.starts_with("node-"));
        assert_eq!(Limits::default().max_body_bytes, settings.max_body_bytes);
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
