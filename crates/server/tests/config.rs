//! The binary's configuration: the file, the environment and the flags, in
//! that order of precedence, and invalid settings stopping the server at
//! start with the setting named.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_chat-server");

/// `chat-server <args>` with exactly `env` as its `CHAT_…` environment,
/// on loopback ports of its own. A server that starts after all is killed
/// after a while (and the test then fails on its exit status).
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BINARY);
    for (key, _) in std::env::vars() {
        if key.starts_with("CHAT_") {
            command.env_remove(key);
        }
    }
    command
        .env("CHAT_GRPC_ADDR", "127.0.0.1:0")
        .env("CHAT_HTTP_ADDR", "127.0.0.1:0")
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("run chat-server");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            child
                .kill()
                .expect("kill a server that should have stopped");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn flags_win_over_the_environment_which_wins_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chat.toml");
    std::fs::write(
        &file,
        "session_queue = 7\nmax_body_bytes = 1000\nsends_per_second = 3\nadmin_token = \"0123456789abcdef-file\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let output = run(
        &["--config", file, "--sends-per-second", "5", "config"],
        &[
            ("CHAT_MAX_BODY_BYTES", "2000"),
            ("CHAT_SENDS_PER_SECOND", "4"),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let shown = stdout(&output);
    let line = |key: &str| {
        shown
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("{key} missing from\n{shown}"))
            .to_owned()
    };
    assert_eq!(line("session_queue"), "session_queue = 7", "from the file");
    assert_eq!(
        line("max_body_bytes"),
        "max_body_bytes = 2000",
        "the environment over the file"
    );
    assert_eq!(
        line("sends_per_second"),
        "sends_per_second = 5",
        "the flag over both"
    );
    assert_eq!(
        line("max_group_members"),
        "max_group_members = 1024",
        "the default"
    );
    assert_eq!(
        line("admin_token"),
        "admin_token = \"***\"",
        "secrets are not printed"
    );
    assert!(!shown.contains("0123456789abcdef"));
}

#[test]
fn the_example_file_is_a_valid_configuration() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../chat-server.example.toml"
    );
    let output = run(&["--config", example, "config"], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn config_example_prints_the_declared_settings() {
    // Given settings change nothing: the example shows the defaults.
    let output = run(&["--max-body-bytes", "1000", "config", "--example"], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), chat_server::settings::Settings::example());
}

/// Arguments, environment, and what the error must name.
type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);

#[test]
fn invalid_settings_stop_the_server_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "max_body_byte = 100\n").unwrap();
    let wrong_type = dir.path().join("type.toml");
    std::fs::write(&wrong_type, "session_queue = \"lots\"\n").unwrap();
    let cases: Vec<Case> = vec![
        (
            vec![],
            vec![("CHAT_MAX_BODY_BYTES", "0")],
            "CHAT_MAX_BODY_BYTES",
        ),
        (vec![], vec![("CHAT_STORE", "postgres")], "postgres_url"),
        (vec![], vec![("CHAT_STORE", "mysql")], "--store"),
        (
            vec![],
            vec![("CHAT_BUS", "kafka"), ("CHAT_KAFKA_BROKERS", "127.0.0.1:1")],
            "registry",
        ),
        (vec![], vec![("CHAT_ADMIN_TOKEN", "short")], "admin_token"),
        (vec![], vec![("CHAT_NODE_ID", "has space")], "node_id"),
        (vec![], vec![("CHAT_LOG", "info,[")], "CHAT_LOG"),
        (vec!["--grpc-addr", "nowhere"], vec![], "--grpc-addr"),
        (
            vec!["--config", unknown.to_str().unwrap()],
            vec![],
            "max_body_byte",
        ),
        (
            vec!["--config", wrong_type.to_str().unwrap()],
            vec![],
            "session_queue",
        ),
        (
            vec!["--config", "/nonexistent/chat.toml"],
            vec![],
            "/nonexistent/chat.toml",
        ),
    ];
    for (args, mut env, named) in cases {
        env.push(("CHAT_DATA_DIR", data));
        // The server itself, not only `config`: it must not start.
        let output = run(&args, &env);
        assert!(!output.status.success(), "{args:?} {env:?} started");
        let message = stderr(&output);
        assert!(
            message.contains(named),
            "{args:?} {env:?}: the error names {named}: {message}"
        );
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().all(|e| {
            let name = e.unwrap().file_name();
            name == "unknown.toml" || name == "type.toml"
        }),
        "no server created its database"
    );
}
