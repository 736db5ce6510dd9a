//! chat-bench itself works: a few seconds of each scenario against a
//! server it starts in-process (or, once, as a child process), with a
//! machine-readable result whose counts add up.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// Runs chat-bench with `target` flags, then `args`; returns the JSON
/// result and the human summary.
fn run_with(target: &[&str], args: &[&str]) -> (Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("result.json");
    let output = Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args(target)
        .arg("--json")
        .arg(&json)
        .args(args)
        .output()
        .expect("run chat-bench");
    assert!(
        output.status.success(),
        "chat-bench {target:?} {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = String::from_utf8_lossy(&output.stdout).into_owned();
    (
        serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap(),
        summary,
    )
}

fn run(args: &[&str]) -> (Value, String) {
    run_with(&["--embedded", "--durability", "normal"], args)
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a count in {v}"))
}

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

/// Every message sent was acked and delivered exactly once.
fn assert_all_delivered(result: &Value) {
    let sent = u(result, "sent");
    assert!(sent > 0, "{result}");
    assert_eq!(u(result, "acked"), sent, "{result}");
    assert_eq!(u(result, "delivered"), sent, "{result}");
    assert_eq!(
        (
            u(result, "failed"),
            u(result, "lost"),
            u(result, "duplicated")
        ),
        (0, 0, 0),
        "{result}"
    );
    assert_eq!(u(result, "unanswered"), 0, "{result}");
}

#[test]
fn direct_scenario_counts_every_message() {
    let (result, summary) = run(&[
        "direct",
        "--pairs",
        "4",
        "--rate",
        "200",
        "--duration",
        "1",
        "--warmup",
        "0",
    ]);
    assert!(summary.contains("p50"), "{summary}");
    assert!(u(&result, "sent") >= 150, "{result}");
    assert_all_delivered(&result);
    assert!(u(&result["end_to_end"], "count") > 0);
    assert!(f(&result["end_to_end"], "p50_ms") > 0.0);
    // Embedded: the cost is this process's, and says so.
    let server = &result["server"];
    assert_eq!(
        server["includes_load_generator"],
        Value::Bool(true),
        "{server}"
    );
    assert!(u(server, "rss_bytes") > 0, "{server}");
    assert!(summary.contains("include the load generator"), "{summary}");
}

#[test]
fn ramp_scenario_judges_every_step_and_loses_nothing() {
    let (result, summary) = run(&[
        "ramp",
        "--pairs",
        "4",
        "--start-rate",
        "100",
        "--step-rate",
        "100",
        "--step-secs",
        "1",
        "--max-rate",
        "200",
        // Generous: the machine running the tests is busy with the others.
        "--max-p99-ms",
        "2000",
    ]);
    assert!(summary.contains("saturation"), "{summary}");
    assert_all_delivered(&result);
    let steps = result["steps"].as_array().unwrap();
    assert!(!steps.is_empty() && steps.len() <= 2, "{result}");
    assert_eq!(u(&steps[0], "offered_rate"), 100);
    // Per-step counts add up to the totals.
    let sum = |key: &str| steps.iter().map(|s| u(s, key)).sum::<u64>();
    assert_eq!(sum("sent"), u(&result, "sent"), "{result}");
    assert_eq!(sum("delivered"), u(&result, "delivered"), "{result}");
    assert_eq!(sum("lost"), 0, "{result}");
    if result["saturated"] == Value::Bool(false) {
        // Not stopped: both steps ran, were judged and sustained.
        assert_eq!(steps.len(), 2, "{result}");
        assert!(steps.iter().all(|s| s["sustained"] == Value::Bool(true)));
        assert_eq!(u(&result["saturation"], "offered_rate"), 200, "{result}");
    } else {
        assert!(
            steps.iter().any(|s| s["sustained"] == Value::Bool(false)),
            "{result}"
        );
    }
}

#[test]
fn idle_scenario_opens_every_session_and_reads_memory() {
    let (result, summary) = run(&["idle", "--sessions", "20", "--concurrency", "8"]);
    assert!(summary.contains("per session"), "{summary}");
    assert_eq!(u(&result, "sessions"), 20);
    assert_eq!(u(&result, "ended_early"), 0, "{result}");
    let (before, open) = (&result["before"], &result["open"]);
    assert!(u(open, "rss_bytes") > 0, "{result}");
    // One connection per session at least (both ends, embedded).
    assert!(u(open, "fds") >= u(before, "fds") + 20, "{result}");
    assert!(result["bytes_per_session"].is_number(), "{result}");
    assert_eq!(
        result["sockets_released"],
        Value::Bool(true),
        "closed sessions keep sockets: {result}"
    );
}

#[test]
fn group_scenario_reaches_every_member() {
    let (result, summary) = run(&[
        "group",
        "--members",
        "8",
        "--rate",
        "20",
        "--duration",
        "1",
        "--warmup",
        "0",
    ]);
    assert!(summary.contains("last member"), "{summary}");
    let (sent, acked) = (u(&result, "sent"), u(&result, "acked"));
    assert!(sent >= 15, "{result}");
    assert_eq!(acked, sent, "{result}");
    assert_eq!(u(&result, "expected_deliveries"), acked * 7, "{result}");
    assert_eq!(u(&result, "delivered"), acked * 7, "{result}");
    assert_eq!(
        (
            u(&result, "lost"),
            u(&result, "duplicated"),
            u(&result, "failed")
        ),
        (0, 0, 0),
        "{result}"
    );
    assert_eq!(u(&result, "complete_messages"), acked, "{result}");
    assert_eq!(u(&result["last_member"], "count"), acked, "{result}");
    assert_eq!(u(&result["every_delivery"], "count"), acked * 7, "{result}");
}

#[test]
fn churn_scenario_completes_every_cycle() {
    let (result, summary) = run(&["churn", "--cycles", "30", "--concurrency", "4"]);
    assert!(summary.contains("cycles/s"), "{summary}");
    assert_eq!(
        (u(&result, "completed"), u(&result, "failed")),
        (30, 0),
        "{result}"
    );
    assert_eq!(u(&result["connect_to_ready"], "count"), 30, "{result}");
    assert!(f(&result, "cycles_per_s") > 0.0, "{result}");
    assert_eq!(
        result["server"]["sockets_released"],
        Value::Bool(true),
        "{result}"
    );
}

#[test]
fn history_scenario_pages_a_filled_conversation() {
    let (result, summary) = run(&[
        "history",
        "--messages",
        "300",
        "--page",
        "50",
        "--requests",
        "20",
    ]);
    assert!(summary.contains("p50"), "{summary}");
    assert_eq!(result["messages"].as_u64(), Some(300));
    assert_eq!(result["get_history"]["count"].as_u64(), Some(20));
}

#[test]
fn spawned_server_reports_its_cost() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_chat-bench"));
    let server = bench.with_file_name("chat-server");
    assert!(
        server.is_file(),
        "no chat-server next to chat-bench at {}: build it first with `cargo build -p chat-server` \
         (`cargo test --workspace` builds it)",
        server.display()
    );
    let (result, summary) = run_with(
        &[
            "--spawn",
            "1",
            "--server-bin",
            server.to_str().unwrap(),
            "--durability",
            "normal",
        ],
        &[
            "direct",
            "--pairs",
            "2",
            "--rate",
            "100",
            "--duration",
            "1",
            "--warmup",
            "0",
        ],
    );
    assert!(summary.contains("µs per delivered message"), "{summary}");
    assert_all_delivered(&result);
    let cost = &result["server"];
    assert_eq!(cost["pids"].as_array().map(Vec::len), Some(1), "{cost}");
    assert_eq!(
        cost["includes_load_generator"],
        Value::Bool(false),
        "{cost}"
    );
    assert!(f(cost, "cpu_s") > 0.0, "{cost}");
    assert!(f(cost, "cpu_us_per_msg") > 0.0, "{cost}");
    assert!(u(cost, "rss_bytes") > 0, "{cost}");
    assert!(u(cost, "fds") > 0 && u(cost, "threads") > 0, "{cost}");
}
