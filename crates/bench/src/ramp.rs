//! Saturation: the traffic of `direct` at rising rates, `--step-secs`
//! each, until a step is not sustained (less than 95 % of the offered rate
//! delivered within the step, or p99 above `--max-p99-ms`) or the maximum
//! rate has run. The last sustained step is the saturation point.

use std::sync::Arc;
use std::time::Duration;

use crate::pairs::{self, Judge, StepPlan};
use crate::setup::Target;
use crate::{percentiles, Outcome};

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Sender→recipient pairs (2 × pairs users, each with one stream).
    #[arg(long, default_value_t = 200)]
    pairs: usize,
    /// Messages per second of the first step, all pairs together.
    #[arg(long, default_value_t = 500)]
    start_rate: u64,
    /// How much each step adds, in messages per second.
    #[arg(long, default_value_t = 500)]
    step_rate: u64,
    /// Seconds per step.
    #[arg(long, default_value_t = 5)]
    step_secs: u64,
    /// The last step's rate (at most).
    #[arg(long, default_value_t = 20_000)]
    max_rate: u64,
    /// A step whose p99 end-to-end latency exceeds this is not sustained.
    #[arg(long, default_value_t = 100)]
    max_p99_ms: u64,
    /// Size of each message body in bytes (at least 24).
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
}

/// A step is sustained when at least this share of its rate is delivered.
const MIN_RATIO: f64 = 0.95;
const MAX_STEPS: usize = 1000;

pub async fn run(target: &Arc<Target>, o: Options) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        o.pairs > 0 && o.start_rate > 0 && o.step_secs > 0 && o.max_p99_ms > 0,
        "--pairs, --start-rate, --step-secs and --max-p99-ms must be positive"
    );
    anyhow::ensure!(
        o.start_rate <= o.max_rate,
        "--start-rate must not exceed --max-rate"
    );
    let mut plan = Vec::new();
    let mut rate = o.start_rate;
    while rate <= o.max_rate && plan.len() < MAX_STEPS {
        plan.push(StepPlan {
            name: format!("step {}", plan.len() + 1),
            rate,
            secs: o.step_secs as f64,
        });
        if o.step_rate == 0 {
            break;
        }
        rate += o.step_rate;
    }
    eprintln!(
        "setting up {} pairs on {} server(s)",
        o.pairs,
        target.servers()
    );
    let connected = pairs::connect(target, o.pairs).await?;
    eprintln!(
        "ramping: {} to {} msg/s in steps of {} every {} s (at most {} steps)",
        o.start_rate,
        plan.last().map_or(o.start_rate, |s| s.rate),
        o.step_rate,
        o.step_secs,
        plan.len()
    );
    let judge = Judge {
        max_p99: Duration::from_millis(o.max_p99_ms),
        min_ratio: MIN_RATIO,
    };
    let r = pairs::run(target, connected, &plan, o.body_bytes, Some(judge)).await?;

    let mut table = String::from(
        "  step  offered/s     sent/s  delivered/s   p50 ms    p99 ms  failed    lost  cpu µs/msg  verdict\n",
    );
    let mut steps_json = Vec::new();
    let mut saturation = None;
    let mut all_sustained = true;
    for (k, s) in r.steps.iter().enumerate() {
        let (e2e_json, _) = percentiles(&s.e2e);
        let q = |p: f64| (!s.e2e.is_empty()).then(|| s.e2e.value_at_quantile(p) as f64 / 1000.0);
        let (p50, p99) = (q(0.5), q(0.99));
        let sustained = s.verdict.as_ref().map(|v| v.sustained);
        if all_sustained && sustained == Some(true) {
            saturation = Some(k);
        } else {
            all_sustained = false;
        }
        let verdict = match &s.verdict {
            Some(v) if v.sustained => "sustained".to_owned(),
            Some(v) => format!("NOT sustained: {}", v.why),
            None => "not judged (the ramp stopped during it)".to_owned(),
        };
        let opt = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
        };
        table += &format!(
            "  {:>4}  {:>9}  {:>9.0}  {:>11.0}  {:>7}  {:>8}  {:>6}  {:>6}  {:>10}  {verdict}\n",
            k + 1,
            s.plan.rate,
            s.sent as f64 / s.ran_secs.max(1e-3),
            s.arrived_per_s(),
            opt(p50, 2),
            opt(p99, 2),
            s.failed,
            s.lost(),
            opt(s.cpu_us_per_msg(), 1),
        );
        steps_json.push(serde_json::json!({
            "step": k + 1,
            "offered_rate": s.plan.rate,
            "secs": s.ran_secs,
            "sent": s.sent, "acked": s.acked, "failed": s.failed,
            "delivered": s.delivered, "lost": s.lost(),
            "sent_per_s": s.sent as f64 / s.ran_secs.max(1e-3),
            "delivered_per_s": s.arrived_per_s(),
            "p50_ms": p50, "p99_ms": p99,
            "end_to_end": e2e_json,
            "server_cpu_us_per_msg": s.cpu_us_per_msg(),
            "judged": s.verdict.is_some(),
            "judged_delivered_per_s": s.verdict.as_ref().map(|v| v.delivered_per_s),
            "judged_p99_ms": s.verdict.as_ref().and_then(|v| v.p99_ms),
            "sustained": sustained,
            "why_not": s.verdict.as_ref().filter(|v| !v.sustained).map(|v| v.why.clone()),
        }));
    }
    let stop_reason = match r.stopped_after {
        Some(k) => format!(
            "step {} ({} msg/s) was not sustained: {}",
            k + 1,
            r.steps[k].plan.rate,
            r.steps[k].verdict.as_ref().map_or("", |v| v.why.as_str())
        ),
        None => format!(
            "the maximum rate ran ({} msg/s) without saturating",
            plan.last().map_or(0, |s| s.rate)
        ),
    };
    let saturation_line = match saturation {
        Some(k) if r.stopped_after.is_none() => format!(
            "saturation: not reached; the highest step, {} msg/s offered, delivered {:.0} msg/s",
            r.steps[k].plan.rate,
            r.steps[k].arrived_per_s(),
        ),
        Some(k) => format!(
            "saturation: {:.0} msg/s delivered at {} msg/s offered (step {})",
            r.steps[k].arrived_per_s(),
            r.steps[k].plan.rate,
            k + 1
        ),
        None => "saturation: not even the first step was sustained".to_owned(),
    };
    let (cost_json, cost_line) = target.cost(
        r.steps
            .first()
            .and_then(|s| s.cpu)
            .zip(r.steps.last().and_then(|s| s.cpu))
            .map(|(a, b)| (a.0, b.1)),
        r.end,
        Some(r.delivered),
    );
    let mut summary = format!(
        "ramp: {} pairs on {} server(s), {} s per step, limit p99 {} ms and {:.0}% delivered\n{table}  {saturation_line}\n  stopped: {stop_reason}\n  sent {}  acked {}  failed {}  delivered {}  lost {}  duplicated {}  unanswered {}\n  {cost_line}",
        o.pairs,
        target.servers(),
        o.step_secs,
        o.max_p99_ms,
        MIN_RATIO * 100.0,
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
        "scenario": "ramp",
        "servers": target.servers(),
        "pairs": o.pairs, "start_rate": o.start_rate, "step_rate": o.step_rate,
        "step_secs": o.step_secs, "max_rate": o.max_rate, "max_p99_ms": o.max_p99_ms,
        "min_delivered_ratio": MIN_RATIO,
        "saturation": saturation.map(|k| serde_json::json!({
            "step": k + 1,
            "offered_rate": r.steps[k].plan.rate,
            "delivered_per_s": r.steps[k].arrived_per_s(),
        })),
        "saturated": r.stopped_after.is_some(),
        "stop_reason": stop_reason,
        "steps": steps_json,
        "sent": r.sent, "acked": r.acked, "failed": r.failed, "delivered": r.delivered,
        "lost": r.lost(), "duplicated": r.duplicated, "unanswered": r.unanswered,
        "stream_errors": r.stream_errors, "first_error": r.first_error,
        "server": cost_json,
    });
    Ok(Outcome { summary, json })
}
