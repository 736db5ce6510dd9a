//! Helpers shared by the client's integration tests: the real binary, run
//! one-shot with a bounded wait or interactively in a pseudo-terminal, each
//! client with its own temporary home.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use chat_server::{Config, Listeners, ServerError};
use chat_test_support::WAIT;
use rexpect::session::PtySession;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const BIN: &str = env!("CARGO_BIN_EXE_chat-client");

/// How long a pseudo-terminal expectation waits.
pub const PTY_TIMEOUT_MS: u64 = 10_000;

/// A client installation: a home directory and a server list.
pub struct Client {
    pub home: tempfile::TempDir,
    pub server: String,
}

/// What a one-shot run did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "exit code; stderr: {}", self.stderr);
        &self.stdout
    }

    /// Asserts a failure with `code`, reported as `error: …` on stderr and
    /// nothing on stdout. Returns stderr.
    #[track_caller]
    pub fn fails(&self, code: i32) -> &str {
        assert_eq!(
            self.code, code,
            "exit code; stdout: {} stderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.starts_with("error: "),
            "stderr: {:?}",
            self.stderr
        );
        assert_eq!(self.stdout, "", "nothing on stdout on failure");
        &self.stderr
    }
}

impl Client {
    pub fn new(server: impl Into<String>) -> Self {
        Self {
            home: tempfile::tempdir().expect("temporary home"),
            server: server.into(),
        }
    }

    /// The binary with this client's environment and nothing from the
    /// test's own (`CHAT_USER` and the like).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env_remove("CHAT_USER")
            .env_remove("XDG_CONFIG_HOME")
            .env("HOME", self.home.path())
            .env("CHAT_CLIENT_HOME", self.home.path())
            .env("CHAT_SERVER", &self.server)
            .env("TZ", "UTC")
            // Line by line: the full screen is driven by its own tests.
            .env("CHAT_UI", "line");
        command
    }

    /// Runs a one-shot command with `stdin`, bounded by [`WAIT`].
    pub async fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Run {
        let mut command = tokio::process::Command::from(self.command(args));
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn chat-client");
        if let Some(mut input) = child.stdin.take() {
            // The command may exit without reading: a broken pipe is fine.
            let _ = input.write_all(stdin.as_bytes()).await;
        }
        let output = tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("chat-client {args:?} did not finish within {WAIT:?}"))
            .expect("chat-client output");
        Run {
            code: output.status.code().expect("an exit code, not a signal"),
            stdout: String::from_utf8(output.stdout).expect("UTF-8 stdout"),
            stderr: String::from_utf8(output.stderr).expect("UTF-8 stderr"),
        }
    }

    pub async fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, "").await
    }

    /// The interactive client in a pseudo-terminal (blocking: call it from
    /// `spawn_blocking`).
    pub fn interactive(&self, args: &[&str]) -> PtySession {
        rexpect::session::spawn_command(self.command(args), Some(PTY_TIMEOUT_MS))
            .expect("spawn the interactive client")
    }

    pub fn credentials(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.home.path().join("credentials.json"))
            .expect("credentials.json");
        serde_json::from_str(&text).expect("credentials.json is JSON")
    }
}

/// Runs blocking pty work off the async runtime (where the server runs).
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work)
        .await
        .expect("pty work panicked")
}

/// An address nothing listens on.
pub fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    address.to_string()
}

/// Waits for the interactive client to exit and returns its exit code.
pub fn exit_code(session: &mut PtySession) -> i32 {
    session.exp_eof().expect("the client exits");
    match session.process.wait().expect("wait for the client") {
        rexpect::process::wait::WaitStatus::Exited(_, code) => code,
        other => panic!("the client did not exit normally: {other:?}"),
    }
}

/// How many times `needle` occurs in `haystack`.
pub fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// Waits for `needle` on a pseudo-terminal and returns what came before it.
///
/// rexpect turns each byte it reads into one `char`, so UTF-8 text (the
/// client prints `—` and `→`) is matched byte for byte and decoded back.
#[track_caller]
pub fn expect(session: &mut PtySession, needle: &str) -> String {
    let as_bytes: String = needle.bytes().map(char::from).collect();
    match session.exp_string(&as_bytes) {
        Ok(before) => decode(&before),
        Err(e) => panic!("waiting for {needle:?}: {}", decode(&format!("{e}"))),
    }
}

fn decode(pty_text: &str) -> String {
    let bytes: Vec<u8> = pty_text.chars().map(|c| c as u32 as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Makes the pseudo-terminal echo what is typed, as a terminal does by
/// default (rexpect turns echo off when it starts the client).
pub fn echo_on(session: &PtySession) {
    use std::os::fd::AsRawFd;
    let fd = session.process().pty.as_raw_fd();
    // SAFETY: reads and writes the termios of a pseudo-terminal we own.
    unsafe {
        let mut termios: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(fd, &mut termios), 0, "tcgetattr");
        termios.c_lflag |= libc::ECHO;
        assert_eq!(libc::tcsetattr(fd, libc::TCSANOW, &termios), 0, "tcsetattr");
    }
}

/// Gives the pseudo-terminal of master `fd` a size (rexpect leaves it
/// 0 × 0); the client gets a SIGWINCH, as on a resize.
pub fn resize_fd(fd: std::os::fd::RawFd, cols: u16, rows: u16) {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: sets the window size of a pseudo-terminal we own.
    let set = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size) };
    assert_eq!(set, 0, "TIOCSWINSZ");
}

/// A server started on a given port over an existing data directory: the
/// same server, restarted.
pub struct Restarted {
    pub url: String,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Restarted {
    pub async fn start(grpc_addr: SocketAddr, data_dir: &Path) -> Self {
        let grpc = TcpListener::bind(grpc_addr)
            .await
            .expect("bind the old gRPC port again");
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind HTTP");
        let config = Config {
            data_dir: data_dir.to_owned(),
            ..Config::default()
        };
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(chat_server::run(
            config,
            Listeners { grpc, http },
            async move {
                let _ = stop.await;
            },
        ));
        Self {
            url: format!("http://{grpc_addr}"),
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the server stops in time")
            .expect("server task")
            .expect("the server ran without error");
    }
}
