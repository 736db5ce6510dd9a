//! The server's cost as a benchmark reports it (JSON and a summary line),
//! from readings of `/proc` that `chat_test_support::proc` takes.

pub use chat_test_support::proc::{fd_growth, fd_kinds, mib, sample, sample_all, Sample};

/// The server's cost: CPU over a `window` (per delivered message when
/// `delivered` is given) and the state at `end`. JSON `null` when no
/// server pid is known.
pub fn cost(
    pids: &[u32],
    includes_generator: bool,
    window: Option<(Sample, Sample)>,
    end: Option<Sample>,
    delivered: Option<u64>,
) -> (serde_json::Value, String) {
    let Some(end) = end else {
        let why = if pids.is_empty() {
            "unknown (give --server-pid, --spawn or --embedded)"
        } else {
            "unknown (a server process could not be read)"
        };
        return (serde_json::Value::Null, format!("server cost: {why}"));
    };
    let cpu_s = window.map(|(before, after)| (after.cpu_s - before.cpu_s).max(0.0));
    let per_msg = cpu_s
        .zip(delivered.filter(|&n| n > 0))
        .map(|(cpu_s, n)| cpu_s * 1e6 / n as f64);
    let json = serde_json::json!({
        "pids": pids,
        "includes_load_generator": includes_generator,
        "cpu_s": cpu_s,
        "cpu_us_per_msg": per_msg,
        "rss_bytes": end.rss_bytes,
        "fds": end.fds,
        "threads": end.threads,
    });
    let mut line = String::from("server cost:");
    if let Some(cpu_s) = cpu_s {
        line += &format!(" CPU {cpu_s:.2} s");
        if let Some(per_msg) = per_msg {
            line += &format!(" = {per_msg:.1} µs per delivered message");
        }
        line += ",";
    }
    line += &format!(
        " at the end RSS {}  fds {}  threads {}",
        mib(end.rss_bytes),
        end.fds,
        end.threads
    );
    if includes_generator {
        line += "\n  (embedded: these figures include the load generator itself)";
    }
    (json, line)
}
