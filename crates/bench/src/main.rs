//! `chat-bench`: drives real gRPC clients against a running server (or one
//! it starts in-process with `--embedded`) and reports latency percentiles
//! and counts, as a human summary and as JSON.
//!
//! Scenarios:
//! - `direct`: open-loop 1:1 traffic at a fixed total rate over many user
//!   pairs. Latency is measured from each message's *intended* send time,
//!   so a stalled server cannot hide its stall (no coordinated omission).
//! - `history`: fills one conversation, then times pages of history.

mod direct;
mod history;
mod setup;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "chat-bench", version, about = "Load generator for chat-apps")]
struct Args {
    /// gRPC URL of the server to load.
    #[arg(
        long,
        default_value = "http://127.0.0.1:50050",
        conflicts_with = "embedded"
    )]
    server: String,
    /// Start a server in this process (data in a temporary directory) and
    /// load it.
    #[arg(long)]
    embedded: bool,
    /// With --embedded: `full` (fsync every commit) or `normal`.
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
    /// Pages of history from one large conversation.
    History(history::Options),
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let target = if args.embedded {
            setup::Target::embedded(&args.durability).await?
        } else {
            setup::Target::remote(&args.server)
        };
        let result = match args.scenario {
            Scenario::Direct(options) => direct::run(&target, options).await?,
            Scenario::History(options) => history::run(&target, options).await?,
        };
        println!("{}", result.summary);
        if let Some(path) = args.json {
            std::fs::write(&path, serde_json::to_string_pretty(&result.json)?)?;
        }
        target.stop().await;
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
