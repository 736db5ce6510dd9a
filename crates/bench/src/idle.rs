//! Idle sessions: what a live stream that does nothing costs the server.
//! `sessions` users are registered, then each opens a stream on an HTTP/2
//! connection of its own and waits for `ready`; the server's memory and
//! descriptors are read before the streams, with all of them open, and
//! after they are closed.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use std::collections::BTreeMap;

use crate::proc::{self, mib, Sample};
use crate::setup::{bounded, run_tag, Target};
use crate::Outcome;

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Live streams to open (one user and one connection each).
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Registrations and connects in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

/// After the last stream is ready, the server may still be finishing its
/// side of the last sessions (tasks, buffers): there is no event for
/// "memory has settled", so the reading waits this long.
const SETTLE: Duration = Duration::from_secs(1);
/// How long descriptors may take to return to the baseline after closing.
const RELEASE_WITHIN: Duration = Duration::from_secs(10);

pub async fn run(target: &Arc<Target>, o: Options) -> anyhow::Result<Outcome> {
    anyhow::ensure!(o.sessions > 0, "--sessions must be positive");
    anyhow::ensure!(
        !target.pids.is_empty(),
        "idle measures the server's memory: give --spawn N, --server-pid PID (or --embedded, which mixes in this process)"
    );
    if target.includes_generator {
        eprintln!("note: embedded, so the readings include this process's own client side");
    }
    let tag = run_tag();
    let n = target.servers();
    eprintln!("registering {} users on {n} server(s)", o.sessions);
    let secrets = bounded("registered", o.sessions, o.concurrency, |i| {
        let (target, username) = (target.clone(), format!("i{tag}u{i}"));
        async move { target.register(i % n, &username).await }
    })
    .await?;
    let secrets = Arc::new(secrets);
    let before = read(target)?;
    let kinds_before = proc::fd_kinds(&target.pids);
    eprintln!("before the streams: {}", before.line());

    let opening = Instant::now();
    let streams = bounded("streams ready", o.sessions, o.concurrency, |i| {
        let (target, secrets) = (target.clone(), secrets.clone());
        async move { target.open(i % n, &secrets[i], 1).await }
    })
    .await?;
    let open_s = opening.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let open = read(target)?;
    eprintln!("with {} streams open: {}", streams.len(), open.line());

    // Every stream is still there (none was ended by the server).
    let mut ended = 0;
    let mut streams = streams;
    for s in &mut streams {
        if let Ok(frame) = tokio::time::timeout(Duration::ZERO, s.frames.message()).await {
            if !matches!(frame, Ok(Some(_))) {
                ended += 1;
            }
        }
    }
    let closing = Instant::now();
    drop(streams);
    let released = release(target, &kinds_before).await?;
    let closed = released.sample;
    let close_s = closing.elapsed().as_secs_f64();
    eprintln!("after closing: {}", closed.line());

    let per = |a: u64, b: u64| (a as f64 - b as f64) / o.sessions as f64;
    let bytes_per_session = per(open.rss_bytes, before.rss_bytes);
    let fds_per_session = per(open.fds, before.fds);
    let mut summary = format!(
        "idle: {} sessions on {n} server(s), opened in {open_s:.2} s ({:.0} per s)\n  before:  {}\n  open:    {}\n  closed:  {}\n  per session: {:.0} bytes RSS ({:.1} KiB), {:.2} fds\n  after closing ({close_s:.1} s): {}; RSS {} above the start",
        o.sessions,
        o.sessions as f64 / open_s,
        before.line(),
        open.line(),
        closed.line(),
        bytes_per_session,
        bytes_per_session / 1024.0,
        fds_per_session,
        released_line(&released),
        mib(closed.rss_bytes.saturating_sub(before.rss_bytes)),
    );
    if ended > 0 {
        summary += &format!("\n  {ended} streams had been ended by the server before closing");
    }
    if target.includes_generator {
        summary += "\n  (embedded: these figures include the load generator itself)";
    }
    let json = serde_json::json!({
        "scenario": "idle",
        "servers": n,
        "sessions": o.sessions,
        "open_s": open_s,
        "opened_per_s": o.sessions as f64 / open_s,
        "ended_early": ended,
        "bytes_per_session": bytes_per_session,
        "fds_per_session": fds_per_session,
        "before": before.json(), "open": open.json(), "closed": closed.json(),
        "fds_released": released.fds,
        "sockets_released": released.sockets,
        "fds_left_over": released.left_over,
        "server": {
            "pids": target.pids,
            "includes_load_generator": target.includes_generator,
            "rss_bytes": closed.rss_bytes, "fds": closed.fds, "threads": closed.threads,
        },
    });
    Ok(Outcome { summary, json })
}

fn read(target: &Target) -> anyhow::Result<Sample> {
    target
        .sample()
        .ok_or_else(|| anyhow::anyhow!("cannot read the server processes"))
}

/// The server after its sessions were closed.
pub struct Released {
    pub sample: Sample,
    /// All descriptors back to the baseline.
    pub fds: bool,
    /// Sockets back to the baseline (what sessions hold).
    pub sockets: bool,
    /// Kinds of descriptors above the baseline, e.g. "+4 chat.db".
    pub left_over: Vec<String>,
}

/// Waits (bounded) until the server's sockets are back to what
/// `baseline` (from [`proc::fd_kinds`]) had. Other descriptors (database
/// files of a pool that grew, say) need not be: waiting does not close them.
pub async fn release(
    target: &Target,
    baseline: &BTreeMap<String, u64>,
) -> anyhow::Result<Released> {
    let deadline = Instant::now() + RELEASE_WITHIN;
    let sockets = |kinds: &BTreeMap<String, u64>| kinds.get("socket").copied().unwrap_or(0);
    let total = |kinds: &BTreeMap<String, u64>| kinds.values().sum::<u64>();
    loop {
        let kinds = proc::fd_kinds(&target.pids);
        let sockets_back = sockets(&kinds) <= sockets(baseline);
        if sockets_back || Instant::now() >= deadline {
            return Ok(Released {
                sample: read(target)?,
                fds: total(&kinds) <= total(baseline),
                sockets: sockets_back,
                left_over: proc::fd_growth(baseline, &kinds),
            });
        }
        // The server closes its side when it notices: nothing to await here.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// "back to the baseline" or what is left over.
pub fn released_line(r: &Released) -> String {
    match (r.fds, r.sockets) {
        (true, _) => "descriptors back to the baseline".to_owned(),
        (false, true) => format!(
            "sockets back to the baseline; other descriptors left over: {}",
            r.left_over.join(", ")
        ),
        (false, false) => format!(
            "sockets NOT back to the baseline within {RELEASE_WITHIN:?}; left over: {}",
            r.left_over.join(", ")
        ),
    }
}
