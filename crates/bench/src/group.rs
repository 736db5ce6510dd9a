//! Fan-out: one group of `members` users (the owner included), every member
//! on a live stream of its own; the owner posts open loop at `rate`
//! messages per second. For each message: the latency until each member
//! has it, and until the last member has it, both from the intended send
//! time.

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

use crate::setup::{bounded, match_acks, run_tag, Stream, Target};
use crate::{histogram, micros, percentiles, Outcome, Progress, Rate};

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Members of the group, the owner (the sender) included.
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// Messages per second the owner posts.
    #[arg(long, default_value_t = 10)]
    rate: u64,
    /// Seconds of measured load.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Size of each message body in bytes (at least 24).
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// Registrations and connects in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

/// Usernames per CreateGroup / AddMembers request (the server decodes at
/// most 64 KiB per request; 200 names stay far below).
const BATCH: usize = 200;
/// How long, after the last send, deliveries may take before the missing
/// ones count as lost.
const DRAIN: Duration = Duration::from_secs(10);

struct Shared {
    base: Instant,
    measure_from: Instant,
    end: Instant,
    owner: String,
    /// Members other than the owner: deliveries expected per message.
    fanout: u64,
    sent: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    delivered: AtomicU64,
    duplicated: AtomicU64,
    /// Deliveries that arrived while measuring (for CPU per delivery).
    arrived_measuring: AtomicU64,
    /// Frames other than the owner's messages (presence, membership
    /// events, …), all members together.
    other_frames: AtomicU64,
    stream_errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Per message index: members that have it so far.
    reached: Mutex<HashMap<u64, u64>>,
    /// Messages every member has.
    complete: AtomicU64,
    all: Mutex<Histogram<u64>>,
    last: Mutex<Histogram<u64>>,
    ack: Mutex<Histogram<u64>>,
    delivery: Notify,
}

impl Shared {
    fn error(&self, what: String) {
        self.first_error
            .lock()
            .expect("first error")
            .get_or_insert(what);
    }
}

pub async fn run(target: &Arc<Target>, o: Options) -> anyhow::Result<Outcome> {
    anyhow::ensure!(o.members >= 2, "--members must be at least 2");
    anyhow::ensure!(
        o.rate > 0 && o.duration > 0,
        "--rate and --duration must be positive"
    );
    let tag = run_tag();
    let n = target.servers();
    let name = |i: usize| format!("g{tag}m{i}");
    let setup = Instant::now();
    eprintln!("registering {} users on {n} server(s)", o.members);
    let secrets = Arc::new(
        bounded("registered", o.members, o.concurrency, |i| {
            let (target, username) = (target.clone(), name(i));
            async move { target.register(i % n, &username).await }
        })
        .await?,
    );
    let register_s = setup.elapsed().as_secs_f64();

    // The group exists before anyone connects, as members of a real group
    // come online.
    let creating = Instant::now();
    let mut owner_chat = target.chat_shared(0, &secrets[0])?;
    let others: Vec<String> = (1..o.members).map(name).collect();
    let mut batches = others.chunks(BATCH);
    let created = owner_chat
        .create_group(pb::CreateGroupRequest {
            name: format!("bench {tag}"),
            members: batches.next().unwrap_or_default().to_vec(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("CreateGroup: {s}"))?
        .into_inner();
    let group_id = created
        .group
        .map(|g| g.group_id)
        .ok_or_else(|| anyhow::anyhow!("CreateGroup answered no group"))?;
    for batch in batches {
        owner_chat
            .add_members(pb::AddMembersRequest {
                group_id: group_id.clone(),
                usernames: batch.to_vec(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("AddMembers: {s}"))?;
    }
    let create_s = creating.elapsed().as_secs_f64();

    // Times are fixed once everyone is connected; until then readers only
    // count frames.
    let shared_slot: Arc<std::sync::OnceLock<Arc<Shared>>> = Arc::default();
    let finish = CancellationToken::new();
    let other_frames_setup = Arc::new(AtomicU64::new(0));
    let connecting = Instant::now();
    let streams = bounded("connected", o.members, o.concurrency, |i| {
        let (target, secrets) = (target.clone(), secrets.clone());
        let (slot, finish, setup_frames) = (
            shared_slot.clone(),
            finish.clone(),
            other_frames_setup.clone(),
        );
        async move {
            // The owner's stream sends; it is read by the ack reader.
            let queue = if i == 0 { 1024 } else { 1 };
            let stream = target.open(i % n, &secrets[i], queue).await?;
            if i == 0 {
                return Ok((Some(stream), None));
            }
            // Read at once: connecting members are told about each other
            // (presence), and a session that is not read is disconnected.
            let reader = tokio::spawn(receive(stream, slot, finish, setup_frames));
            Ok((None, Some(reader)))
        }
    })
    .await?;
    let connect_s = connecting.elapsed().as_secs_f64();
    let mut owner = None;
    let mut readers = Vec::new();
    for (stream, reader) in streams {
        owner = owner.or(stream);
        readers.extend(reader);
    }
    let owner = owner.ok_or_else(|| anyhow::anyhow!("the owner's stream is missing"))?;
    let setup_frames = other_frames_setup.load(Relaxed);
    eprintln!(
        "set up in {:.1} s: register {register_s:.1} s, group {create_s:.1} s, connect {connect_s:.1} s ({setup_frames} other frames to members meanwhile)",
        setup.elapsed().as_secs_f64()
    );

    let base = Instant::now();
    let start = base + Duration::from_millis(100);
    let measure_from = start + Duration::from_secs(o.warmup);
    let end = measure_from + Duration::from_secs(o.duration);
    let shared = Arc::new(Shared {
        base,
        measure_from,
        end,
        owner: name(0),
        fanout: (o.members - 1) as u64,
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        duplicated: AtomicU64::new(0),
        arrived_measuring: AtomicU64::new(0),
        other_frames: AtomicU64::new(0),
        stream_errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
        reached: Mutex::new(HashMap::new()),
        complete: AtomicU64::new(0),
        all: Mutex::new(histogram()),
        last: Mutex::new(histogram()),
        ack: Mutex::new(histogram()),
        delivery: Notify::new(),
    });
    if shared_slot.set(shared.clone()).is_err() {
        anyhow::bail!("the run started twice");
    }

    let abandon = CancellationToken::new();
    let watchdog = {
        let abandon = abandon.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(end + DRAIN).await;
            abandon.cancel();
        })
    };
    let cpu_start = {
        let target = target.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from).await;
            let before = target.sample();
            tokio::time::sleep_until(end).await;
            before.zip(target.sample())
        })
    };
    let progress = {
        let shared = shared.clone();
        let mut rate = Rate::start();
        Progress::every_second(move || {
            let delivered = shared.delivered.load(Relaxed);
            format!(
                "sent {}  acked {}  delivered {} of {}  ({:.0} deliveries/s)",
                shared.sent.load(Relaxed),
                shared.acked.load(Relaxed),
                delivered,
                shared.acked.load(Relaxed) * shared.fanout,
                rate.per_s(delivered)
            )
        })
    };
    eprintln!(
        "running: {} members, {} msg/s, {} s warm-up + {} s",
        o.members, o.rate, o.warmup, o.duration
    );
    let Stream { tx, frames } = owner;
    let outstanding = Arc::new(Mutex::new(HashMap::<String, Instant>::new()));
    let acks = tokio::spawn(read_acks(
        frames,
        outstanding.clone(),
        shared.clone(),
        abandon.clone(),
    ));
    send(
        tx,
        &group_id,
        o.rate,
        start,
        o.body_bytes.max(24),
        outstanding,
        &shared,
        &abandon,
    )
    .await;
    let _ = acks.await;
    loop {
        let delivered = shared.delivery.notified();
        if shared.delivered.load(Relaxed) >= shared.acked.load(Relaxed) * shared.fanout {
            break;
        }
        tokio::select! {
            _ = delivered => {}
            _ = abandon.cancelled() => break,
        }
    }
    finish.cancel();
    for reader in readers {
        let _ = reader.await;
    }
    watchdog.abort();
    drop(progress);
    let window = if cpu_start.is_finished() {
        cpu_start.await.ok().flatten()
    } else {
        cpu_start.abort();
        None
    };
    let end_sample = target.sample();

    let s = &shared;
    let (sent, acked, failed, delivered, duplicated) = (
        s.sent.load(Relaxed),
        s.acked.load(Relaxed),
        s.failed.load(Relaxed),
        s.delivered.load(Relaxed),
        s.duplicated.load(Relaxed),
    );
    let expected = acked * s.fanout;
    let lost = expected.saturating_sub(delivered);
    let complete = s.complete.load(Relaxed);
    let (all_json, all_line) = percentiles(&s.all.lock().expect("histogram"));
    let (last_json, last_line) = percentiles(&s.last.lock().expect("histogram"));
    let (ack_json, ack_line) = percentiles(&s.ack.lock().expect("histogram"));
    let arrived = s.arrived_measuring.load(Relaxed);
    let (cost_json, cost_line) = target.cost(window, end_sample, Some(arrived));
    let first_error = s.first_error.lock().expect("first error").clone();
    let mut summary = format!(
        "group: {} members on {n} server(s), {} msg/s for {} s (after {} s warm-up)\n  last member: {last_line}\n  every delivery: {all_line}\n  ack:         {ack_line}\n  sent {sent}  acked {acked}  failed {failed}  expected deliveries {expected}  delivered {delivered}  lost {lost}  duplicated {duplicated}\n  messages every member got: {complete} of {acked}\n  setup: register {register_s:.1} s, group {create_s:.1} s, connect {connect_s:.1} s; {setup_frames} other frames (presence, membership) to members while connecting\n  {cost_line}",
        o.members, o.rate, o.duration, o.warmup,
    );
    if let Some(e) = &first_error {
        summary += &format!(
            "\n  streams ended with an error: {}; first error: {e}",
            s.stream_errors.load(Relaxed)
        );
    }
    let json = serde_json::json!({
        "scenario": "group",
        "servers": n,
        "members": o.members, "rate": o.rate, "duration_s": o.duration, "warmup_s": o.warmup,
        "body_bytes": o.body_bytes.max(24),
        "last_member": last_json, "every_delivery": all_json, "ack": ack_json,
        "sent": sent, "acked": acked, "failed": failed,
        "expected_deliveries": expected, "delivered": delivered,
        "lost": lost, "duplicated": duplicated,
        "complete_messages": complete,
        "other_frames": s.other_frames.load(Relaxed),
        "setup": {
            "register_s": register_s, "create_group_s": create_s, "connect_s": connect_s,
            "other_frames_while_connecting": setup_frames,
        },
        "stream_errors": s.stream_errors.load(Relaxed), "first_error": first_error,
        "server": cost_json,
    });
    Ok(Outcome { summary, json })
}

/// The owner's posts, open loop: each at its scheduled time.
#[allow(clippy::too_many_arguments)]
async fn send(
    tx: tokio::sync::mpsc::Sender<pb::ClientFrame>,
    group_id: &str,
    rate: u64,
    start: Instant,
    body_bytes: usize,
    outstanding: Arc<Mutex<HashMap<String, Instant>>>,
    shared: &Shared,
    abandon: &CancellationToken,
) {
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut ticks = tokio::time::interval_at(start, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut index = 0u64;
    loop {
        let intended = ticks.tick().await;
        if intended >= shared.end {
            break;
        }
        let offset = (intended - shared.base).as_nanos();
        let mut body = format!("{offset} {index} ");
        body.extend(std::iter::repeat_n(
            'x',
            body_bytes.saturating_sub(body.len()),
        ));
        let client_msg_id = format!("g{index}");
        index += 1;
        outstanding
            .lock()
            .expect("outstanding")
            .insert(client_msg_id.clone(), intended);
        let frame = In::Send(pb::SendMessageRequest {
            target: Some(pb::send_message_request::Target::GroupId(
                group_id.to_owned(),
            )),
            body,
            client_msg_id,
        });
        let sent = tokio::select! {
            r = tx.send(pb::ClientFrame { frame: Some(frame) }) => r.is_ok(),
            _ = abandon.cancelled() => false,
        };
        if !sent {
            break;
        }
        shared.sent.fetch_add(1, Relaxed);
    }
    // Dropping `tx` closes the owner's side of the stream.
}

async fn read_acks(
    mut frames: tonic::Streaming<pb::ServerFrame>,
    outstanding: Arc<Mutex<HashMap<String, Instant>>>,
    shared: Arc<Shared>,
    abandon: CancellationToken,
) {
    let failed = match_acks(
        &mut frames,
        &outstanding,
        &abandon,
        |intended, error, now| {
            if let Some(error) = error {
                shared.failed.fetch_add(1, Relaxed);
                shared.error(format!("send refused: {}: {}", error.kind, error.message));
                return;
            }
            shared.acked.fetch_add(1, Relaxed);
            if intended >= shared.measure_from {
                let _ = shared
                    .ack
                    .lock()
                    .expect("histogram")
                    .record(micros(now - intended));
            }
        },
    )
    .await;
    if let Some(status) = failed {
        shared.stream_errors.fetch_add(1, Relaxed);
        shared.error(format!("the owner's stream ended: {status}"));
    }
}

/// One member's frames from the moment it connected until told to finish.
async fn receive(
    stream: Stream,
    slot: Arc<std::sync::OnceLock<Arc<Shared>>>,
    finish: CancellationToken,
    setup_frames: Arc<AtomicU64>,
) {
    let Stream {
        tx: _keep_open,
        mut frames,
    } = stream;
    let mut seen = HashSet::new();
    loop {
        let frame = tokio::select! {
            f = frames.message() => f,
            _ = finish.cancelled() => break,
        };
        let now = Instant::now();
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(status) => {
                if let Some(shared) = slot.get() {
                    shared.stream_errors.fetch_add(1, Relaxed);
                    shared.error(format!("a member's stream ended: {status}"));
                } else {
                    eprintln!("a member's stream ended while connecting: {status}");
                }
                break;
            }
        };
        let Some(shared) = slot.get() else {
            setup_frames.fetch_add(1, Relaxed);
            continue;
        };
        let m = match frame.frame {
            Some(Out::Message(m))
                if m.kind == pb::MessageKind::Text as i32 && m.sender == shared.owner =>
            {
                m
            }
            _ => {
                shared.other_frames.fetch_add(1, Relaxed);
                continue;
            }
        };
        if !seen.insert(m.seq) {
            shared.duplicated.fetch_add(1, Relaxed);
            continue;
        }
        let mut fields = m.body.split(' ');
        let offset = fields.next().and_then(|s| s.parse::<u64>().ok());
        let index = fields.next().and_then(|s| s.parse::<u64>().ok());
        if let (Some(offset), Some(index)) = (offset, index) {
            let intended = shared.base + Duration::from_nanos(offset);
            let latency = micros(now.saturating_duration_since(intended));
            let measured = intended >= shared.measure_from;
            if measured {
                let _ = shared.all.lock().expect("histogram").record(latency);
            }
            let mut reached = shared.reached.lock().expect("reached");
            let count = reached.entry(index).or_default();
            *count += 1;
            if *count == shared.fanout {
                reached.remove(&index);
                drop(reached);
                shared.complete.fetch_add(1, Relaxed);
                if measured {
                    let _ = shared.last.lock().expect("histogram").record(latency);
                }
            }
        }
        if now >= shared.measure_from && now < shared.end {
            shared.arrived_measuring.fetch_add(1, Relaxed);
        }
        shared.delivered.fetch_add(1, Relaxed);
        shared.delivery.notify_waiters();
    }
}
