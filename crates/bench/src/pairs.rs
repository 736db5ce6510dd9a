//! The 1:1 traffic of `direct` and `ramp`: `pairs` sender→recipient pairs,
//! each user on a live stream of its own, sending open loop through a plan
//! of steps (a rate for some seconds each).
//!
//! Every message carries its intended send time and step in its body, so
//! latency is measured from when it *should* have left (a stalled server
//! cannot hide its stall), and each delivery is counted against the step
//! that sent it. Deliveries are also counted by the step during which they
//! arrived: that is the delivered rate of a step.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_proto as pb;
use chat_proto::client_frame::Frame as In;
use chat_proto::server_frame::Frame as Out;
use hdrhistogram::Histogram;
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::proc::Sample;
use crate::setup::{bounded, match_acks, next_frame, run_tag, Next, Stream, Target};
use crate::{histogram, micros, Progress, Rate};

/// How long, after the last send, acks and deliveries may take to arrive
/// before the missing ones count as lost.
const DRAIN: Duration = Duration::from_secs(10);

/// Connected pairs, ready to send.
pub struct Pairs {
    senders: Vec<(Stream, String)>,
    recipients: Vec<Stream>,
}

/// Registers and connects `pairs` pairs: pair i's sender on server i % n,
/// its recipient on server (i + 1) % n.
pub async fn connect(target: &Arc<Target>, pairs: usize) -> anyhow::Result<Pairs> {
    let tag = run_tag();
    let n = target.servers();
    // User j: pair j / 2, its sender (even j) or recipient (odd j).
    let user = move |j: usize| {
        let (pair, recipient) = (j / 2, j % 2 == 1);
        let name = format!("b{tag}{}{pair}", if recipient { 'b' } else { 'a' });
        (name, (pair + usize::from(recipient)) % n)
    };
    let secrets = bounded("registered", 2 * pairs, 64, |j| {
        let target = target.clone();
        let (name, server) = user(j);
        async move { target.register(server, &name).await }
    })
    .await?;
    let secrets = Arc::new(secrets);
    let mut streams = bounded("connected", 2 * pairs, 64, |j| {
        let (target, secrets) = (target.clone(), secrets.clone());
        let (_, server) = user(j);
        // Senders queue up to 1024 frames; recipients never send.
        let queue = if j % 2 == 0 { 1024 } else { 1 };
        async move { target.open(server, &secrets[j], queue).await }
    })
    .await?
    .into_iter();
    let mut out = Pairs {
        senders: Vec::new(),
        recipients: Vec::new(),
    };
    for pair in 0..pairs {
        let (sender, recipient) = (streams.next(), streams.next());
        let (Some(sender), Some(recipient)) = (sender, recipient) else {
            anyhow::bail!("a stream is missing");
        };
        out.senders.push((sender, user(2 * pair + 1).0));
        out.recipients.push(recipient);
    }
    Ok(out)
}

/// One step of the plan: `rate` messages per second, all pairs together,
/// for `secs` seconds.
#[derive(Clone, Debug)]
pub struct StepPlan {
    /// For progress lines.
    pub name: String,
    pub rate: u64,
    pub secs: f64,
}

/// When a step counts as sustained (the plan stops at the first that is
/// not): at least `min_ratio` × the offered rate delivered within the step,
/// and p99 of the step's messages within `max_p99`.
#[derive(Clone, Copy, Debug)]
pub struct Judge {
    pub max_p99: Duration,
    pub min_ratio: f64,
}

#[derive(Debug)]
pub struct Verdict {
    pub sustained: bool,
    pub delivered_per_s: f64,
    /// p99 of the step's messages with the undelivered counted as
    /// infinitely late; `None`: more than 1 % were not delivered in time.
    pub p99_ms: Option<f64>,
    pub why: String,
}

pub struct StepReport {
    pub plan: StepPlan,
    /// How long the step really ran (shorter when the plan stopped in it).
    pub ran_secs: f64,
    /// Counts of the messages *sent* in this step.
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub delivered: u64,
    /// Deliveries (of any step's messages) that *arrived* in this step.
    pub arrived: u64,
    /// From intended send time to delivery, and to ack, in µs.
    pub e2e: Histogram<u64>,
    pub ack: Histogram<u64>,
    /// Server readings at the start and end of the step.
    pub cpu: Option<(Sample, Sample)>,
    /// Set when the plan was judged.
    pub verdict: Option<Verdict>,
}

impl StepReport {
    pub fn lost(&self) -> u64 {
        self.acked.saturating_sub(self.delivered)
    }

    pub fn arrived_per_s(&self) -> f64 {
        self.arrived as f64 / self.ran_secs.max(1e-3)
    }

    /// Server CPU µs per message that arrived in the step.
    pub fn cpu_us_per_msg(&self) -> Option<f64> {
        let (before, after) = self.cpu?;
        (self.arrived > 0)
            .then(|| (after.cpu_s - before.cpu_s).max(0.0) * 1e6 / self.arrived as f64)
    }
}

pub struct Report {
    pub steps: Vec<StepReport>,
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub delivered: u64,
    pub duplicated: u64,
    /// Sent but neither acked nor refused before the drain ended.
    pub unanswered: u64,
    /// Streams the server ended with an error.
    pub stream_errors: u64,
    /// The first refusal or stream error, to show what went wrong.
    pub first_error: Option<String>,
    /// The judge stopped the plan after this step.
    pub stopped_after: Option<usize>,
    /// Server reading after the drain.
    pub end: Option<Sample>,
}

impl Report {
    pub fn lost(&self) -> u64 {
        self.acked.saturating_sub(self.delivered)
    }
}

struct Step {
    plan: StepPlan,
    start: Instant,
    end: Instant,
    counts: Mutex<Counts>,
}

struct Counts {
    sent: u64,
    acked: u64,
    failed: u64,
    delivered: u64,
    arrived: u64,
    /// Allocated on first use: a plan may have many steps.
    e2e: Option<Histogram<u64>>,
    ack: Option<Histogram<u64>>,
}

impl Counts {
    fn new() -> Self {
        Self {
            sent: 0,
            acked: 0,
            failed: 0,
            delivered: 0,
            arrived: 0,
            e2e: None,
            ack: None,
        }
    }
}

struct Shared {
    base: Instant,
    steps: Vec<Step>,
    sent: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    delivered: AtomicU64,
    duplicated: AtomicU64,
    stream_errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Woken on every delivery.
    delivery: Notify,
    /// The step being sent, for progress lines.
    current: AtomicU64,
}

impl Shared {
    fn step(&self, k: usize) -> std::sync::MutexGuard<'_, Counts> {
        self.steps[k].counts.lock().expect("step counts")
    }

    /// The step during which `at` falls.
    fn step_at(&self, at: Instant) -> Option<usize> {
        self.steps.iter().position(|s| s.start <= at && at < s.end)
    }

    fn error(&self, what: String) {
        self.first_error
            .lock()
            .expect("first error")
            .get_or_insert(what);
    }
}

/// Sends through `plan` over `pairs`, waits (bounded) for every ack and
/// delivery, and reports per step.
pub async fn run(
    target: &Arc<Target>,
    pairs: Pairs,
    plan: &[StepPlan],
    body_bytes: usize,
    judge: Option<Judge>,
) -> anyhow::Result<Report> {
    anyhow::ensure!(!plan.is_empty(), "an empty plan");
    let count = pairs.senders.len();
    anyhow::ensure!(count > 0, "no pairs");
    let base = Instant::now();
    let mut at = base + Duration::from_millis(100);
    let steps = plan
        .iter()
        .map(|p| {
            let start = at;
            at += Duration::from_secs_f64(p.secs);
            Step {
                plan: p.clone(),
                start,
                end: at,
                counts: Mutex::new(Counts::new()),
            }
        })
        .collect();
    let plan_end = at;
    let shared = Arc::new(Shared {
        base,
        steps,
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        duplicated: AtomicU64::new(0),
        stream_errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
        delivery: Notify::new(),
        current: AtomicU64::new(0),
    });
    // `stop`: the judge ends the plan early. `abandon`: the drain is over,
    // whatever has not arrived is not waited for. `finish`: recipients stop.
    let (stop, abandon, finish) = (
        CancellationToken::new(),
        CancellationToken::new(),
        CancellationToken::new(),
    );
    let stopped_at = Arc::new(Mutex::new(None::<(usize, Instant)>));
    let watchdog = {
        let (stop, abandon) = (stop.clone(), abandon.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep_until(plan_end) => {}
                _ = stop.cancelled() => {}
            }
            tokio::time::sleep(DRAIN).await;
            abandon.cancel();
        })
    };

    let mut recipients = Vec::new();
    for stream in pairs.recipients {
        recipients.push(tokio::spawn(receive(
            stream,
            shared.clone(),
            finish.clone(),
        )));
    }
    let mut senders = Vec::new();
    let mut ack_readers = Vec::new();
    for (i, (stream, peer)) in pairs.senders.into_iter().enumerate() {
        let outstanding = Arc::new(Mutex::new(HashMap::<String, (Instant, usize)>::new()));
        let Stream { tx, frames } = stream;
        ack_readers.push(tokio::spawn(read_acks(
            frames,
            outstanding.clone(),
            shared.clone(),
            abandon.clone(),
        )));
        senders.push(tokio::spawn(send(
            Sender {
                i,
                count,
                peer,
                body_bytes: body_bytes.max(24),
                tx,
                outstanding,
            },
            shared.clone(),
            stop.clone(),
            abandon.clone(),
        )));
    }

    // Server readings at every step boundary.
    let samples = Arc::new(Mutex::new(Vec::<Option<Sample>>::new()));
    let sampler = (!target.pids.is_empty()).then(|| {
        let (target, shared, samples, stop) = (
            target.clone(),
            shared.clone(),
            samples.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let bounds =
                std::iter::once(shared.steps[0].start).chain(shared.steps.iter().map(|s| s.end));
            for at in bounds {
                let stopped = tokio::select! {
                    _ = tokio::time::sleep_until(at) => false,
                    _ = stop.cancelled() => true,
                };
                samples.lock().expect("samples").push(target.sample());
                if stopped {
                    break;
                }
            }
        })
    });
    let verdicts = Arc::new(Mutex::new(Vec::<Verdict>::new()));
    let judging = judge.map(|judge| {
        let (shared, verdicts, stop, stopped_at) = (
            shared.clone(),
            verdicts.clone(),
            stop.clone(),
            stopped_at.clone(),
        );
        tokio::spawn(async move {
            // Whatever has not arrived `max_p99` after the step ended is
            // later than the limit anyway.
            let grace = judge.max_p99;
            for k in 0..shared.steps.len() {
                tokio::time::sleep_until(shared.steps[k].end + grace).await;
                let verdict = evaluate(&shared, k, judge);
                let sustained = verdict.sustained;
                verdicts.lock().expect("verdicts").push(verdict);
                if !sustained {
                    let now = Instant::now();
                    *stopped_at.lock().expect("stopped") = Some((k, now));
                    stop.cancel();
                    break;
                }
            }
        })
    });
    let progress = {
        let shared = shared.clone();
        let mut rate = Rate::start();
        Progress::every_second(move || {
            let delivered = shared.delivered.load(Relaxed);
            let step = shared.current.load(Relaxed) as usize;
            let mut line = format!(
                "sent {}  acked {}  failed {}  delivered {}  ({:.0} msg/s delivered)",
                shared.sent.load(Relaxed),
                shared.acked.load(Relaxed),
                shared.failed.load(Relaxed),
                delivered,
                rate.per_s(delivered)
            );
            if let Some(step) = shared.steps.get(step) {
                line += &format!("  [{}: {} msg/s offered]", step.plan.name, step.plan.rate);
            }
            line
        })
    };

    for task in senders {
        let _ = task.await;
    }
    // The server ends each sender's stream after answering all its sends.
    for task in ack_readers {
        let _ = task.await;
    }
    // Then every acked message should reach its recipient.
    loop {
        let delivered = shared.delivery.notified();
        if shared.delivered.load(Relaxed) >= shared.acked.load(Relaxed) {
            break;
        }
        tokio::select! {
            _ = delivered => {}
            _ = abandon.cancelled() => break,
        }
    }
    // The judge's last verdict comes `max_p99` after the plan's end (or
    // it stopped the plan already); deliveries keep counting until then.
    if let Some(task) = judging {
        let _ = task.await;
    }
    finish.cancel();
    for task in recipients {
        let _ = task.await;
    }
    watchdog.abort();
    if let Some(task) = sampler {
        task.abort();
    }
    drop(progress);

    let stopped = *stopped_at.lock().expect("stopped");
    let samples = std::mem::take(&mut *samples.lock().expect("samples"));
    let mut verdicts = std::mem::take(&mut *verdicts.lock().expect("verdicts")).into_iter();
    let mut steps = Vec::new();
    for (k, step) in shared.steps.iter().enumerate() {
        // Steps after the stop never ran.
        if stopped.is_some_and(|(after, at)| k > after && step.start >= at) {
            break;
        }
        let ran_until = match stopped {
            Some((_, at)) if at < step.end => at,
            _ => step.end,
        };
        let c = std::mem::replace(&mut *shared.step(k), Counts::new());
        let cpu = match (samples.get(k), samples.get(k + 1)) {
            (Some(Some(a)), Some(Some(b))) => Some((*a, *b)),
            _ => None,
        };
        steps.push(StepReport {
            plan: step.plan.clone(),
            ran_secs: (ran_until - step.start).as_secs_f64(),
            sent: c.sent,
            acked: c.acked,
            failed: c.failed,
            delivered: c.delivered,
            arrived: c.arrived,
            e2e: c.e2e.unwrap_or_else(histogram),
            ack: c.ack.unwrap_or_else(histogram),
            cpu,
            verdict: verdicts.next(),
        });
    }
    let (sent, acked, failed) = (
        shared.sent.load(Relaxed),
        shared.acked.load(Relaxed),
        shared.failed.load(Relaxed),
    );
    let first_error = shared.first_error.lock().expect("first error").clone();
    Ok(Report {
        steps,
        sent,
        acked,
        failed,
        delivered: shared.delivered.load(Relaxed),
        duplicated: shared.duplicated.load(Relaxed),
        unanswered: sent.saturating_sub(acked + failed),
        stream_errors: shared.stream_errors.load(Relaxed),
        first_error,
        stopped_after: stopped.map(|(k, _)| k),
        end: target.sample(),
    })
}

fn evaluate(shared: &Shared, k: usize, judge: Judge) -> Verdict {
    let step = &shared.steps[k];
    let c = shared.step(k);
    let offered = step.plan.rate as f64;
    let delivered_per_s = c.arrived as f64 / step.plan.secs;
    // Messages the step should have sent: those not sent yet (the client
    // fell behind) or not delivered yet count as infinitely late.
    let planned = (offered * step.plan.secs).round() as u64;
    let expected = c.sent.max(planned).max(1);
    let rank = (0.99 * expected as f64).ceil() as u64;
    let p99_ms = (c.delivered >= rank && c.delivered > 0).then(|| {
        let q = (rank as f64 / c.delivered as f64).min(1.0);
        c.e2e
            .as_ref()
            .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0)
    });
    let max_ms = judge.max_p99.as_secs_f64() * 1000.0;
    let mut why = Vec::new();
    if delivered_per_s < judge.min_ratio * offered {
        why.push(format!(
            "delivered {delivered_per_s:.0} msg/s < {:.0}% of {offered:.0}",
            judge.min_ratio * 100.0
        ));
    }
    match p99_ms {
        None => why.push(format!(
            "over 1% of the step's messages not delivered within {max_ms:.0} ms"
        )),
        Some(p) if p > max_ms => why.push(format!("p99 {p:.1} ms > {max_ms:.0} ms")),
        Some(_) => {}
    }
    Verdict {
        sustained: why.is_empty(),
        delivered_per_s,
        p99_ms,
        why: why.join("; "),
    }
}

struct Sender {
    i: usize,
    count: usize,
    peer: String,
    body_bytes: usize,
    tx: tokio::sync::mpsc::Sender<pb::ClientFrame>,
    outstanding: Arc<Mutex<HashMap<String, (Instant, usize)>>>,
}

/// One pair's sends, open loop: each at its scheduled time, however long
/// the previous took (missed ticks are sent at once, as a burst).
async fn send(s: Sender, shared: Arc<Shared>, stop: CancellationToken, abandon: CancellationToken) {
    let mut n = 0u64;
    'steps: for (k, step) in shared.steps.iter().enumerate() {
        // Pair i's schedule is offset by i/count of a period, so that the
        // pairs together send evenly.
        let period = Duration::from_secs_f64(s.count as f64 / step.plan.rate.max(1) as f64);
        let first = step.start + period.mul_f64(s.i as f64 / s.count as f64);
        let mut ticks = tokio::time::interval_at(first, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
        loop {
            let intended = tokio::select! {
                biased;
                _ = stop.cancelled() => break 'steps,
                t = ticks.tick() => t,
            };
            if intended >= step.end {
                break;
            }
            if s.i == 0 {
                shared.current.store(k as u64, Relaxed);
            }
            let offset = (intended - shared.base).as_nanos();
            let mut body = format!("{offset} {k} ");
            body.extend(std::iter::repeat_n(
                'x',
                s.body_bytes.saturating_sub(body.len()),
            ));
            let client_msg_id = format!("{}-{n}", s.i);
            n += 1;
            s.outstanding
                .lock()
                .expect("outstanding")
                .insert(client_msg_id.clone(), (intended, k));
            let frame = In::Send(pb::SendMessageRequest {
                target: Some(pb::send_message_request::Target::ToUser(s.peer.clone())),
                body,
                client_msg_id,
            });
            let sent = tokio::select! {
                r = s.tx.send(pb::ClientFrame { frame: Some(frame) }) => r.is_ok(),
                _ = abandon.cancelled() => false,
            };
            if !sent {
                break 'steps;
            }
            shared.sent.fetch_add(1, Relaxed);
            shared.step(k).sent += 1;
        }
    }
    // Dropping `tx` closes the stream's client side.
}

/// A sender's acks, until the server ends the stream (after answering
/// every send) or the drain is over.
async fn read_acks(
    mut frames: tonic::Streaming<pb::ServerFrame>,
    outstanding: Arc<Mutex<HashMap<String, (Instant, usize)>>>,
    shared: Arc<Shared>,
    abandon: CancellationToken,
) {
    let failed = match_acks(
        &mut frames,
        &outstanding,
        &abandon,
        |(intended, k), error, now| {
            if let Some(error) = error {
                shared.failed.fetch_add(1, Relaxed);
                shared.step(k).failed += 1;
                shared.error(format!("send refused: {}: {}", error.kind, error.message));
                return;
            }
            shared.acked.fetch_add(1, Relaxed);
            let mut step = shared.step(k);
            step.acked += 1;
            let _ = step
                .ack
                .get_or_insert_with(histogram)
                .record(micros(now - intended));
        },
    )
    .await;
    if let Some(status) = failed {
        shared.stream_errors.fetch_add(1, Relaxed);
        shared.error(format!("sender stream ended: {status}"));
    }
}

/// A recipient's deliveries, until told to finish.
async fn receive(stream: Stream, shared: Arc<Shared>, finish: CancellationToken) {
    let Stream {
        tx: _keep_open,
        mut frames,
    } = stream;
    let mut seen = HashSet::new();
    let message = |f: Out| match f {
        Out::Message(m) => Some(m),
        _ => None,
    };
    loop {
        let m = match next_frame(&mut frames, &finish, message).await {
            Next::Frame(m) => m,
            Next::Ended | Next::Stopped => break,
            Next::Failed(status) => {
                shared.stream_errors.fetch_add(1, Relaxed);
                shared.error(format!("recipient stream ended: {status}"));
                break;
            }
        };
        let now = Instant::now();
        if m.kind != pb::MessageKind::Text as i32 {
            continue;
        }
        if !seen.insert(m.seq) {
            shared.duplicated.fetch_add(1, Relaxed);
            continue;
        }
        let mut fields = m.body.split(' ');
        let offset = fields.next().and_then(|s| s.parse::<u64>().ok());
        let k = fields.next().and_then(|s| s.parse::<usize>().ok());
        if let (Some(offset), Some(k)) = (offset, k.filter(|&k| k < shared.steps.len())) {
            let intended = shared.base + Duration::from_nanos(offset);
            let mut step = shared.step(k);
            step.delivered += 1;
            let _ = step
                .e2e
                .get_or_insert_with(histogram)
                .record(micros(now.saturating_duration_since(intended)));
        }
        if let Some(at) = shared.step_at(now) {
            shared.step(at).arrived += 1;
        }
        shared.delivered.fetch_add(1, Relaxed);
        shared.delivery.notify_waiters();
    }
}
