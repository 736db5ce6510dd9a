//! Open-loop 1:1 traffic: `pairs` sender→recipient pairs, each on its own
//! live stream, at `rate` messages per second in total (see `pairs.rs`).

use std::sync::Arc;

use crate::pairs::{self, StepPlan};
use crate::setup::Target;
use crate::{percentiles, Outcome};

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Sender→recipient pairs (2 × pairs users, each with one stream).
    #[arg(long, default_value_t = 200)]
    pairs: usize,
    /// Messages per second, all pairs together.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Seconds of measured load.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Size of each message body in bytes (at least 24).
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
}

pub async fn run(target: &Arc<Target>, o: Options) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        o.pairs > 0 && o.rate > 0 && o.duration > 0,
        "--pairs, --rate and --duration must be positive"
    );
    eprintln!(
        "setting up {} pairs on {} server(s)",
        o.pairs,
        target.servers()
    );
    let connected = pairs::connect(target, o.pairs).await?;
    let mut plan = Vec::new();
    if o.warmup > 0 {
        plan.push(StepPlan {
            name: "warm-up".into(),
            rate: o.rate,
            secs: o.warmup as f64,
        });
    }
    plan.push(StepPlan {
        name: "measuring".into(),
        rate: o.rate,
        secs: o.duration as f64,
    });
    eprintln!(
        "running: {} pairs, {} msg/s, {} s warm-up + {} s",
        o.pairs, o.rate, o.warmup, o.duration
    );
    let r = pairs::run(target, connected, &plan, o.body_bytes, None).await?;
    let measured = r.steps.last().expect("the measured step");
    let (e2e_json, e2e_line) = percentiles(&measured.e2e);
    let (ack_json, ack_line) = percentiles(&measured.ack);
    let (cost_json, cost_line) = target.cost(measured.cpu, r.end, Some(measured.arrived));
    let mut summary = format!(
        "direct: {} pairs on {} server(s), {} msg/s for {} s (after {} s warm-up)\n  end to end: {e2e_line}\n  ack:        {ack_line}\n  delivered {:.0} msg/s while measuring\n  sent {}  acked {}  failed {}  delivered {}  lost {}  duplicated {}  unanswered {}\n  {cost_line}",
        o.pairs,
        target.servers(),
        o.rate,
        o.duration,
        o.warmup,
        measured.arrived_per_s(),
        r.sent,
        r.acked,
        r.failed,
        r.delivered,
        r.lost(),
        r.duplicated,
        r.unanswered,
    );
    if let Some(e) = &r.first_error {
        summary += &format!(
            "\n  streams ended with an error: {}; first error: {e}",
            r.stream_errors
        );
    }
    let json = serde_json::json!({
        "scenario": "direct",
        "servers": target.servers(),
        "pairs": o.pairs, "rate": o.rate, "duration_s": o.duration, "warmup_s": o.warmup,
        "body_bytes": o.body_bytes.max(24),
        "end_to_end": e2e_json, "ack": ack_json,
        "delivered_per_s": measured.arrived_per_s(),
        "sent": r.sent, "acked": r.acked, "failed": r.failed, "delivered": r.delivered,
        "lost": r.lost(), "duplicated": r.duplicated, "unanswered": r.unanswered,
        "stream_errors": r.stream_errors, "first_error": r.first_error,
        "server": cost_json,
    });
    Ok(Outcome { summary, json })
}
