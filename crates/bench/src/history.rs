//! History paging: one conversation of `messages` messages, then
//! `requests` pages of `page` messages at random positions.

use chat_proto as pb;
use chat_proto::client_frame::Frame as In;
use chat_proto::server_frame::Frame as Out;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::setup::{run_tag, Target};
use crate::{histogram, micros, percentiles, Outcome, Progress, Rate};

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Messages in the conversation.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Messages per page.
    #[arg(long, default_value_t = 50)]
    page: u32,
    /// Pages to fetch (timed).
    #[arg(long, default_value_t = 2000)]
    requests: u64,
}

pub async fn run(target: &Arc<Target>, o: Options) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        o.messages > 0 && o.page > 0,
        "--messages and --page must be positive"
    );
    let tag = run_tag();
    let (a, b) = (format!("h{tag}a"), format!("h{tag}b"));
    let a_secret = target.register(0, &a).await?;
    target.register(0, &b).await?;

    // Fill over one stream, many sends in flight.
    let before_fill = target.sample();
    let filling = Instant::now();
    let mut chat = target.chat(0, &a_secret).await?;
    let (tx, rx) = mpsc::channel(4096);
    let mut frames = chat.connect(ReceiverStream::new(rx)).await?.into_inner();
    frames.message().await?;
    let feeder = {
        let b = b.clone();
        tokio::spawn(async move {
            for i in 0..o.messages {
                let send = pb::SendMessageRequest {
                    target: Some(pb::send_message_request::Target::ToUser(b.clone())),
                    body: format!("history message {i}"),
                    client_msg_id: format!("h{i}"),
                };
                if tx
                    .send(pb::ClientFrame {
                        frame: Some(In::Send(send)),
                    })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        })
    };
    let mut acked = 0;
    let filled = Arc::new(AtomicU64::new(0));
    let progress = {
        let (filled, mut rate) = (filled.clone(), Rate::start());
        Progress::every_second(move || {
            let n = filled.load(Relaxed);
            format!("filled {n}  ({:.0} msg/s)", rate.per_s(n))
        })
    };
    let mut conversation_id = String::new();
    while acked < o.messages {
        let Some(frame) = frames.message().await? else {
            anyhow::bail!("stream ended while filling")
        };
        if let Some(Out::Ack(ack)) = frame.frame {
            let m = ack
                .message
                .ok_or_else(|| anyhow::anyhow!("send failed: {:?}", ack.error))?;
            conversation_id = m.conversation_id;
            acked += 1;
            filled.store(acked, Relaxed);
        }
    }
    drop(progress);
    feeder.await?;
    let fill_s = filling.elapsed().as_secs_f64();
    let after_fill = target.sample();
    eprintln!(
        "filled {} messages in {fill_s:.1} s ({:.0} msg/s)",
        o.messages,
        o.messages as f64 / fill_s
    );

    let mut h = histogram();
    let mut chat = target.chat(0, &a_secret).await?;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let pages = Arc::new(AtomicU64::new(0));
    let progress = {
        let (pages, mut rate) = (pages.clone(), Rate::start());
        Progress::every_second(move || {
            let n = pages.load(Relaxed);
            format!("pages {n}  ({:.0} pages/s)", rate.per_s(n))
        })
    };
    for _ in 0..o.requests {
        // xorshift: a position anywhere in the conversation.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let before = 1 + x % o.messages + 1;
        let t = Instant::now();
        let page = chat
            .get_history(pb::GetHistoryRequest {
                conversation_id: conversation_id.clone(),
                before_seq: before,
                after_seq: 0,
                limit: o.page,
            })
            .await?
            .into_inner();
        let _ = h.record(micros(t.elapsed()));
        anyhow::ensure!(
            page.messages.last().map(|m| m.seq) == Some(before - 1),
            "a page ended at the wrong message"
        );
        pages.fetch_add(1, Relaxed);
    }
    drop(progress);
    let (json, line) = percentiles(&h);
    let (cost_json, cost_line) = target.cost(
        before_fill.zip(after_fill),
        target.sample(),
        Some(o.messages),
    );
    let summary = format!(
        "history: pages of {} from a conversation of {} messages\n  GetHistory: {line}\n  fill: {:.0} msg/s\n  while filling, {cost_line}",
        o.page,
        o.messages,
        o.messages as f64 / fill_s
    );
    let json = serde_json::json!({
        "scenario": "history", "messages": o.messages, "page": o.page,
        "get_history": json, "fill_msg_per_s": o.messages as f64 / fill_s,
        "server": cost_json,
    });
    Ok(Outcome { summary, json })
}
