//! chat-bench itself works: a few seconds of each scenario against a
//! server it starts in-process, with a machine-readable result.

use std::process::Command;

fn run(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("result.json");
    let output = Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args(["--embedded", "--durability", "normal", "--json"])
        .arg(&json)
        .args(args)
        .output()
        .expect("run chat-bench");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains("p50"), "{summary}");
    serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap()
}

#[test]
fn direct_scenario_counts_every_message() {
    let result = run(&[
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
    let sent = result["sent"].as_u64().unwrap();
    assert!(sent >= 150, "{result}");
    assert_eq!(result["acked"].as_u64().unwrap(), sent);
    assert_eq!(result["delivered"].as_u64().unwrap(), sent);
    assert_eq!(
        (result["lost"].as_u64(), result["duplicated"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(result["end_to_end"]["count"].as_u64().unwrap() > 0);
    assert!(result["end_to_end"]["p50_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn history_scenario_pages_a_filled_conversation() {
    let result = run(&[
        "history",
        "--messages",
        "300",
        "--page",
        "50",
        "--requests",
        "20",
    ]);
    assert_eq!(result["messages"].as_u64(), Some(300));
    assert_eq!(result["get_history"]["count"].as_u64(), Some(20));
}
