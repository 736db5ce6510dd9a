//! Connection churn: `cycles` times, open a new connection, `Connect`,
//! wait for `ready`, close; `concurrency` at a time. Reports the cycle
//! rate, connect→ready latency, and whether the server gives back its
//! descriptors and memory afterwards.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::idle::{release, released_line};
use crate::proc::mib;
use crate::setup::{bounded, run_tag, Target};
use crate::{histogram, micros, percentiles, Outcome, Progress, Rate};

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Connect/ready/close cycles in total.
    #[arg(long, default_value_t = 1000)]
    cycles: u64,
    /// Cycles in flight at once (one user each).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

pub async fn run(target: &Arc<Target>, o: Options) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        o.cycles > 0 && o.concurrency > 0,
        "--cycles and --concurrency must be positive"
    );
    let tag = run_tag();
    let n = target.servers();
    let workers = o.concurrency.min(o.cycles as usize);
    let secrets = bounded("registered", workers, 64, |i| {
        let (target, username) = (target.clone(), format!("c{tag}u{i}"));
        async move { target.register(i % n, &username).await }
    })
    .await?;
    let before = target.sample();
    let kinds_before = crate::proc::fd_kinds(&target.pids);
    if let Some(s) = &before {
        eprintln!("before: {}", s.line());
    }

    let claimed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let latency = Arc::new(Mutex::new(histogram()));
    let progress = {
        let (done, failed) = (done.clone(), failed.clone());
        let mut rate = Rate::start();
        Progress::every_second(move || {
            let d = done.load(Relaxed);
            format!(
                "cycles {d}  failed {}  ({:.0} cycles/s)",
                failed.load(Relaxed),
                rate.per_s(d)
            )
        })
    };
    eprintln!(
        "churning: {} cycles, {workers} at a time, on {n} server(s)",
        o.cycles
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, secret) in secrets.into_iter().enumerate() {
        let (target, claimed, done, failed, first_error, latency) = (
            target.clone(),
            claimed.clone(),
            done.clone(),
            failed.clone(),
            first_error.clone(),
            latency.clone(),
        );
        let cycles = o.cycles;
        tasks.push(tokio::spawn(async move {
            while claimed.fetch_add(1, Relaxed) < cycles {
                let t = Instant::now();
                match target.open(i % n, &secret, 1).await {
                    Ok(stream) => {
                        let _ = latency.lock().expect("latency").record(micros(t.elapsed()));
                        // Closing: the client side, the stream and its
                        // connection all go with it.
                        drop(stream);
                        done.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        failed.fetch_add(1, Relaxed);
                        first_error
                            .lock()
                            .expect("first error")
                            .get_or_insert(format!("{e:#}"));
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(progress);
    let (done, failed) = (done.load(Relaxed), failed.load(Relaxed));

    let after = match before {
        Some(_) => Some(release(target, &kinds_before).await?),
        None => None,
    };
    let latency = latency.lock().expect("latency");
    let (lat_json, lat_line) = percentiles(&latency);
    let mut summary = format!(
        "churn: {done} of {} cycles in {elapsed:.2} s ({:.0} cycles/s), {workers} at a time, on {n} server(s)\n  connect→ready: {lat_line}\n  failed {failed}",
        o.cycles,
        done as f64 / elapsed
    );
    if let Some(e) = first_error.lock().expect("first error").as_ref() {
        summary += &format!("; first error: {e}");
    }
    let (server_json, server_line) = match (before, after) {
        (Some(b), Some(released)) => {
            let a = released.sample;
            (
                serde_json::json!({
                    "pids": target.pids,
                    "includes_load_generator": target.includes_generator,
                    "before": b.json(), "after": a.json(),
                    "fds_released": released.fds,
                    "sockets_released": released.sockets,
                    "fds_left_over": released.left_over,
                    "cpu_s": a.cpu_s - b.cpu_s,
                    "cpu_us_per_cycle": (done > 0).then(|| (a.cpu_s - b.cpu_s) * 1e6 / done as f64),
                    "rss_bytes": a.rss_bytes, "fds": a.fds, "threads": a.threads,
                }),
                format!(
                    "server before: {}\n  server after:  {}\n  {}; RSS grew {}{}",
                    b.line(),
                    a.line(),
                    released_line(&released),
                    mib(a.rss_bytes.saturating_sub(b.rss_bytes)),
                    if target.includes_generator {
                        "\n  (embedded: these figures include the load generator itself)"
                    } else {
                        ""
                    }
                ),
            )
        }
        _ => (
            serde_json::Value::Null,
            "server cost: unknown (give --server-pid, --spawn or --embedded)".to_owned(),
        ),
    };
    summary += &format!("\n  {server_line}");
    let json = serde_json::json!({
        "scenario": "churn",
        "servers": n,
        "cycles": o.cycles, "concurrency": workers,
        "completed": done, "failed": failed,
        "first_error": first_error.lock().expect("first error").clone(),
        "elapsed_s": elapsed,
        "cycles_per_s": done as f64 / elapsed,
        "connect_to_ready": lat_json,
        "server": server_json,
    });
    Ok(Outcome { summary, json })
}
