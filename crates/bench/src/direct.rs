//! Open-loop 1:1 traffic: `pairs` sender→recipient pairs, each on its own
//! live stream, at `rate` messages per second in total.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_proto as pb;
use chat_proto::client_frame::Frame as In;
use chat_proto::server_frame::Frame as Out;
use chat_proto::user_service_client::UserServiceClient;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;

use crate::setup::{run_tag, Target};
use crate::{histogram, micros, percentiles, Outcome};

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

#[derive(Default)]
struct Tally {
    sent: u64,
    acked: u64,
    failed: u64,
    delivered: u64,
    duplicated: u64,
}

pub async fn run(target: &Target, o: Options) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        o.pairs > 0 && o.rate > 0,
        "--pairs and --rate must be positive"
    );
    let tag = run_tag();
    let mut users = UserServiceClient::new(target.channel().await?);
    let e2e = Arc::new(Mutex::new(histogram()));
    let acks = Arc::new(Mutex::new(histogram()));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let warm_until = Duration::from_secs(o.warmup);

    // Register and connect everyone before the clock starts.
    let mut recipients = Vec::new();
    let mut senders = Vec::new();
    for i in 0..o.pairs {
        let a = format!("b{tag}a{i}");
        let b = format!("b{tag}b{i}");
        let a_secret = target.register(&mut users, &a).await?;
        let b_secret = target.register(&mut users, &b).await?;
        let (sender, sender_frames) = open(target, &a_secret, 1024).await?;
        let (keep, recipient_frames) = open(target, &b_secret, 1).await?;
        senders.push((sender, sender_frames, b));
        recipients.push((keep, recipient_frames));
        if i % 50 == 49 {
            eprintln!("connected {} pairs", i + 1);
        }
    }

    let base = Instant::now();
    let start = base + Duration::from_millis(100);
    let end = start + warm_until + Duration::from_secs(o.duration);
    let measure_from = start + warm_until;
    let drain_until = end + Duration::from_secs(5);

    let mut receivers = Vec::new();
    for (keep, mut stream) in recipients {
        let (e2e, tally) = (e2e.clone(), tally.clone());
        receivers.push(tokio::spawn(async move {
            let _keep = keep;
            let mut seen = HashSet::new();
            while let Ok(Ok(Some(frame))) =
                tokio::time::timeout_at(drain_until, stream.message()).await
            {
                let Some(Out::Message(m)) = frame.frame else {
                    continue;
                };
                let now = Instant::now();
                let mut t = tally.lock().expect("tally");
                if !seen.insert(m.seq) {
                    t.duplicated += 1;
                    continue;
                }
                t.delivered += 1;
                let all_in = now >= end && t.delivered >= t.sent;
                drop(t);
                if let Some(offset) = m.body.split(' ').next().and_then(|s| s.parse::<u64>().ok()) {
                    let intended = base + Duration::from_nanos(offset);
                    if intended >= measure_from {
                        let _ = e2e
                            .lock()
                            .expect("histogram")
                            .record(micros(now - intended));
                    }
                }
                if all_in {
                    break;
                }
            }
        }));
    }

    let period = Duration::from_secs_f64(o.pairs as f64 / o.rate as f64);
    let mut tasks = Vec::new();
    for (i, (tx, mut stream, peer)) in senders.into_iter().enumerate() {
        let (acks, ack_tally) = (acks.clone(), tally.clone());
        let outstanding = Arc::new(Mutex::new(HashMap::<String, Instant>::new()));
        let pending = outstanding.clone();
        // Acks: read until the server ends the stream (after the sender
        // closed its side and every send was answered).
        tasks.push(tokio::spawn(async move {
            while let Ok(Ok(Some(frame))) =
                tokio::time::timeout_at(drain_until, stream.message()).await
            {
                let Some(Out::Ack(ack)) = frame.frame else {
                    continue;
                };
                let now = Instant::now();
                let intended = pending.lock().expect("pending").remove(&ack.client_msg_id);
                let mut t = ack_tally.lock().expect("tally");
                if ack.error.is_some() {
                    t.failed += 1;
                    continue;
                }
                t.acked += 1;
                drop(t);
                if let Some(intended) = intended.filter(|at| *at >= measure_from) {
                    let _ = acks
                        .lock()
                        .expect("histogram")
                        .record(micros(now - intended));
                }
            }
        }));
        let body_bytes = o.body_bytes.max(24);
        let tally = tally.clone();
        // Spread the pairs' schedules evenly over one period.
        let first = start + period.mul_f64(i as f64 / o.pairs as f64);
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(first, period);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
            let mut n = 0u64;
            loop {
                let intended = ticks.tick().await;
                if intended >= end {
                    break;
                }
                let offset = (intended - base).as_nanos();
                let mut body = format!("{offset} ");
                body.extend(std::iter::repeat_n(
                    'x',
                    body_bytes.saturating_sub(body.len()),
                ));
                let client_msg_id = format!("{i}-{n}");
                n += 1;
                outstanding
                    .lock()
                    .expect("pending")
                    .insert(client_msg_id.clone(), intended);
                let frame = In::Send(pb::SendMessageRequest {
                    target: Some(pb::send_message_request::Target::ToUser(peer.clone())),
                    body,
                    client_msg_id,
                });
                if tx
                    .send(pb::ClientFrame { frame: Some(frame) })
                    .await
                    .is_err()
                {
                    break;
                }
                tally.lock().expect("tally").sent += 1;
            }
            // Dropping `tx` closes the stream's client side.
        }));
    }
    eprintln!(
        "running: {} pairs, {} msg/s, {} s warm-up + {} s",
        o.pairs, o.rate, o.warmup, o.duration
    );
    let progress = {
        let tally = tally.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            every.tick().await;
            loop {
                every.tick().await;
                let t = tally.lock().expect("tally");
                eprintln!(
                    "  sent {}  acked {}  delivered {}",
                    t.sent, t.acked, t.delivered
                );
            }
        })
    };
    for task in tasks.into_iter().chain(receivers) {
        let _ = task.await;
    }
    progress.abort();
    let t = tally.lock().expect("tally");
    let lost = t.acked.saturating_sub(t.delivered);
    let (e2e_json, e2e_line) = percentiles(&e2e.lock().expect("histogram"));
    let (ack_json, ack_line) = percentiles(&acks.lock().expect("histogram"));
    let summary = format!(
        "direct: {} pairs, {} msg/s for {} s (after {} s warm-up)\n  end to end: {e2e_line}\n  ack:        {ack_line}\n  sent {}  acked {}  failed {}  delivered {}  lost {}  duplicated {}",
        o.pairs, o.rate, o.duration, o.warmup, t.sent, t.acked, t.failed, t.delivered, lost, t.duplicated
    );
    let json = serde_json::json!({
        "scenario": "direct",
        "pairs": o.pairs, "rate": o.rate, "duration_s": o.duration, "warmup_s": o.warmup,
        "end_to_end": e2e_json, "ack": ack_json,
        "sent": t.sent, "acked": t.acked, "failed": t.failed, "delivered": t.delivered,
        "lost": lost, "duplicated": t.duplicated,
    });
    Ok(Outcome { summary, json })
}

type Frames = tonic::Streaming<pb::ServerFrame>;

/// Opens a live stream and waits for its `ready`.
async fn open(
    target: &Target,
    secret: &str,
    queue: usize,
) -> anyhow::Result<(mpsc::Sender<pb::ClientFrame>, Frames)> {
    let mut chat = target.chat(secret).await?;
    let (tx, rx) = mpsc::channel(queue);
    let mut frames = chat.connect(ReceiverStream::new(rx)).await?.into_inner();
    frames.message().await?;
    Ok((tx, frames))
}
