//! `chat-bench`: drives real gRPC clients against chat servers and reports
//! latency percentiles, counts and what the servers cost, as a human
//! summary on stdout and as JSON (`--json FILE`). Progress goes to stderr
//! about once a second.
//!
//! Targets (global flags, before the scenario):
//! - `--server URL` (repeatable, default `http://127.0.0.1:50050`; `https://`
//!   verified against the system's roots or `--ca-cert FILE`): running
//!   servers. `--server-pid PID` (repeatable) names their processes, whose
//!   CPU, memory, descriptors and threads are read from `/proc`.
//! - `--embedded`: a server in this process (its cost figures then include
//!   the load generator).
//! - `--spawn N`: N `chat-server` child processes (`--server-bin PATH`,
//!   default: next to this executable), each with a temporary data
//!   directory, free loopback ports and `--node-id bench-<i>`, plus every
//!   `--server-arg ARG` (e.g. `--server-arg=--bus=redis`); they inherit the
//!   environment (`CHAT_*`) and are stopped at the end.
//! - `--durability full|normal` applies to embedded and spawned servers.
//!
//! With several servers, `direct` and `ramp` put pair i's sender on server
//! i % n and its recipient on server (i + 1) % n, so with n ≥ 2 every
//! message crosses servers (which needs a shared store, registry and bus);
//! the other scenarios spread users round-robin. The soft limit of open
//! files is raised to the hard limit at start.
//!
//! Scenarios:
//! - `direct`: open-loop 1:1 traffic at a fixed total rate over many user
//!   pairs. Latency is measured from each message's *intended* send time,
//!   so a stalled server cannot hide its stall (no coordinated omission).
//! - `ramp`: the same traffic at rising rates, step by step, until
//!   delivery falls below 95 % of the offered rate or p99 exceeds
//!   `--max-p99-ms`; reports the saturation point and a per-step table.
//! - `idle`: N live streams that do nothing; server memory and descriptors
//!   per session.
//! - `group`: one group of M members, all connected; the owner posts at a
//!   fixed rate; latency until each member and until the last member has
//!   each message.
//! - `churn`: connect, wait for `ready`, disconnect, over and over;
//!   cycles per second, connect latency, and whether the server's
//!   descriptors return to where they were.
//! - `history`: fills one conversation, then times pages of history.

mod churn;
mod direct;
mod group;
mod history;
mod idle;
mod pairs;
mod proc;
mod ramp;
mod setup;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "chat-bench", version, about = "Load generator for chat-apps")]
struct Args {
    /// gRPC URL of a running server to load (repeatable).
    #[arg(
        long = "server",
        value_name = "URL",
        default_value = "http://127.0.0.1:50050",
        conflicts_with_all = ["embedded", "spawn"]
    )]
    servers: Vec<String>,
    /// Trust only this CA certificate (PEM) for `https://` servers,
    /// instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
    /// Pid of a server process whose cost is read from /proc (repeatable).
    #[arg(long = "server-pid", value_name = "PID")]
    server_pids: Vec<u32>,
    /// Start a server in this process (data in a temporary directory) and
    /// load it. Its cost figures include the load generator.
    #[arg(long, conflicts_with = "spawn")]
    embedded: bool,
    /// Start N chat-server processes and load them.
    #[arg(long, value_name = "N", default_value_t = 0)]
    spawn: usize,
    /// The chat-server binary for --spawn (default: next to chat-bench).
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,
    /// An extra argument for every spawned server (repeatable), e.g.
    /// `--server-arg=--bus=redis`.
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Embedded and spawned servers: `full` (fsync every commit) or `normal`.
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    durability: String,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Open-loop 1:1 messages between user pairs.
    Direct(direct::Options),
    /// Open-loop 1:1 messages at rising rates until the server saturates.
    Ramp(ramp::Options),
    /// Many idle live streams: memory and descriptors per session.
    Idle(idle::Options),
    /// One large group: fan-out latency to every member.
    Group(group::Options),
    /// Connect, ready, disconnect, over and over.
    Churn(churn::Options),
    /// Pages of history from one large conversation.
    History(history::Options),
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    setup::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let running = setup::Running::start(&setup::TargetArgs {
            servers: args.servers,
            server_pids: args.server_pids,
            embedded: args.embedded,
            spawn: args.spawn,
            server_bin: args.server_bin,
            server_args: args.server_args,
            durability: args.durability,
            ca_cert: args.ca_cert,
        })
        .await?;
        let target = running.target.clone();
        let result = match args.scenario {
            Scenario::Direct(options) => direct::run(&target, options).await,
            Scenario::Ramp(options) => ramp::run(&target, options).await,
            Scenario::Idle(options) => idle::run(&target, options).await,
            Scenario::Group(options) => group::run(&target, options).await,
            Scenario::Churn(options) => churn::run(&target, options).await,
            Scenario::History(options) => history::run(&target, options).await,
        };
        // Stop what we started even when the scenario failed.
        running.stop().await;
        let result = result?;
        println!("{}", result.summary);
        if let Some(path) = args.json {
            std::fs::write(&path, serde_json::to_string_pretty(&result.json)?)?;
        }
        Ok(())
    })
}

/// What a scenario reports.
pub struct Outcome {
    pub summary: String,
    pub json: serde_json::Value,
}

/// Percentiles of a histogram of microseconds, as JSON and as one line.
pub fn percentiles(h: &hdrhistogram::Histogram<u64>) -> (serde_json::Value, String) {
    let ms = |us: u64| us as f64 / 1000.0;
    let q = |p: f64| ms(h.value_at_quantile(p));
    let json = serde_json::json!({
        "count": h.len(),
        "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "p999_ms": q(0.999),
        "max_ms": ms(h.max()),
    });
    let line = format!(
        "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  (n={})",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        ms(h.max()),
        h.len()
    );
    (json, line)
}

pub fn histogram() -> hdrhistogram::Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits.
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub fn micros(d: Duration) -> u64 {
    d.as_micros().clamp(1, 60_000_000) as u64
}

/// Prints `line()` to stderr about once a second until dropped.
pub struct Progress(tokio::task::JoinHandle<()>);

impl Progress {
    pub fn every_second(mut line: impl FnMut() -> String + Send + 'static) -> Self {
        Self(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            every.tick().await;
            loop {
                every.tick().await;
                eprintln!("  {}", line());
            }
        }))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Counts a rate between successive calls (for progress lines).
pub struct Rate {
    last: u64,
    at: std::time::Instant,
}

impl Rate {
    pub fn start() -> Self {
        Self {
            last: 0,
            at: std::time::Instant::now(),
        }
    }

    /// Per second since the previous call, given the running total.
    pub fn per_s(&mut self, total: u64) -> f64 {
        let now = std::time::Instant::now();
        let secs = (now - self.at).as_secs_f64().max(1e-3);
        let rate = total.saturating_sub(self.last) as f64 / secs;
        (self.last, self.at) = (total, now);
        rate
    }
}
