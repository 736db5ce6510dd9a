//! The full-screen client in a pseudo-terminal against a real server: what
//! it draws is read back through a terminal emulator (vt100), so the test
//! sees the screen a person sees, not the escape sequences.

mod common;

use chat_client::cli::Target;
use chat_test_support::TestServer;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{blocking, exit_code, expect, resize_fd, Client, Restarted, PTY_TIMEOUT_MS};
use rexpect::process::wait::WaitStatus;
use rexpect::process::PtyProcess;

const ROWS: u16 = 30;
const COLS: u16 = 100;

/// A full-screen client and the screen it drew so far.
struct Screen {
    process: PtyProcess,
    /// Writes the keys.
    keyboard: std::fs::File,
    /// What the client writes, as a reader thread gets it.
    output: mpsc::Receiver<Vec<u8>>,
    terminal: vt100::Parser,
}

impl Screen {
    fn start(client: &Client) -> Self {
        let mut command = client.command(&[]);
        command
            .env("CHAT_UI", "screen")
            .env("TERM", "xterm-256color");
        let process = PtyProcess::new(command).expect("spawn the full-screen client");
        let fd = process.pty.as_raw_fd();
        resize_fd(fd, COLS, ROWS);
        let mut reader = process.get_file_handle().expect("the pty");
        let keyboard = process.get_file_handle().expect("the pty");
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            // Ends when the client is gone (EIO) or the test is.
            while let Ok(n @ 1..) = reader.read(&mut buffer) {
                if tx.send(buffer[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Self {
            process,
            keyboard,
            output,
            terminal: vt100::Parser::new(ROWS, COLS, 0),
        }
    }

    fn contents(&self) -> String {
        self.terminal.screen().contents()
    }

    /// Reads what the client draws until the screen shows `needle`;
    /// returns the screen.
    #[track_caller]
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_millis(PTY_TIMEOUT_MS);
        loop {
            let contents = self.contents();
            if contents.contains(needle) {
                return contents;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(bytes) => self.terminal.process(&bytes),
                Err(e) => panic!("waiting for {needle:?} ({e}); the screen:\n{contents}"),
            }
        }
    }

    /// The row of the screen that shows `needle`.
    #[track_caller]
    fn row_with(&self, needle: &str) -> String {
        self.terminal
            .screen()
            .rows(0, COLS)
            .find(|row| row.contains(needle))
            .unwrap_or_else(|| panic!("no row with {needle:?}:\n{}", self.contents()))
    }

    fn keys(&mut self, keys: &str) {
        self.keyboard.write_all(keys.as_bytes()).expect("keys sent");
        self.keyboard.flush().expect("keys flushed");
    }

    /// Waits for the client to exit; its exit code.
    fn exit_code(&mut self) -> i32 {
        match self.process.wait().expect("wait for the client") {
            WaitStatus::Exited(_, code) => code,
            other => panic!("the client did not exit normally: {other:?}"),
        }
    }
}

const ENTER: &str = "\r";
const TAB: &str = "\t";
const PAGE_UP: &str = "\x1b[5~";
const UP: &str = "\x1b[A";
const CTRL_U: &str = "\x15";
const CTRL_C: &str = "\x03";

#[tokio::test(flavor = "multi_thread")]
async fn chat_scroll_back_and_edit_on_the_full_screen() {
    let server = TestServer::start().await;
    let alice = Client::new(server.grpc_url());
    let bob = Client::new(server.grpc_url());
    alice.run(&["register", "alice"]).await.ok();
    bob.run(&["register", "bob"]).await.ok();
    // More than a page of history, unread by alice.
    let secret = bob.credentials()["users"]["bob"]["secret"]
        .as_str()
        .expect("bob's secret")
        .to_owned();
    let mut chat = server.chat_as(&secret).await;
    for n in 1..=60 {
        chat_client::api::send(
            &mut chat,
            &Target::User("alice".into()),
            &format!("old {n}"),
            &format!("old-{n}"),
        )
        .await
        .expect("sent");
    }

    let mut screen = Screen::start(&alice);
    let mut other = bob.interactive(&[]);
    let (screen, other) = blocking(move || {
        // Logged in: the status line, and bob in the sidebar with his
        // exact unread count.
        screen.wait_for("connected as alice");
        let row = screen.row_with("bob");
        assert!(row.contains("(60)"), "{row}");
        expect(&mut other, "connected as bob");

        // Tab opens the conversation: its newest page, read.
        screen.keys(TAB);
        screen.wait_for("bob: old 60");
        assert!(!screen.row_with("> bob").contains("(60)"), "read once open");
        // PageUp scrolls back into the page before, from the server.
        for _ in 0..6 {
            screen.keys(PAGE_UP);
        }
        screen.wait_for("bob: old 1 ");

        // Send; bob gets it live, and answers live.
        other.send_line("/to alice").unwrap();
        expect(&mut other, "talking to alice");
        screen.keys("hello bob");
        // Typing is told to bob while alice types.
        expect(&mut other, "* alice is typing");
        screen.keys(ENTER);
        expect(&mut other, "alice: hello bob");
        screen.wait_for("you: hello bob");
        other.send_line("hi alice").unwrap();
        screen.wait_for("bob: hi alice");

        // ↑ from the empty input selects bob's message, ↑ again ours; e
        // edits it.
        screen.keys(UP);
        screen.wait_for("e edit · d delete");
        screen.keys(UP);
        screen.keys("e");
        screen.wait_for("edit 61> hello bob");
        screen.keys(CTRL_U);
        screen.keys("hello again");
        screen.keys(ENTER);
        expect(&mut other, "* alice edited message 61: hello again");
        screen.wait_for("you: hello again (edited)");
        (screen, other)
    })
    .await;

    let mut screen = screen;
    let mut other = other;
    blocking(move || {
        screen.keys(CTRL_C);
        assert_eq!(screen.exit_code(), 0, "ctrl-c quits with 0");
        other.send_line("/quit").unwrap();
        assert_eq!(exit_code(&mut other), 0);
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_line_follows_a_server_restart() {
    let mut server = TestServer::start().await;
    let grpc_addr = server.grpc_addr;
    let alice = Client::new(server.grpc_url());
    alice.run(&["register", "bob"]).await.ok();
    alice.run(&["register", "alice"]).await.ok();
    let bob_secret = alice.credentials()["users"]["bob"]["secret"]
        .as_str()
        .expect("bob's secret")
        .to_owned();

    let mut screen = Screen::start(&alice);
    let screen = blocking(move || {
        screen.wait_for("connected as alice");
        screen
    })
    .await;

    // Stop the server, keeping its data for the restart: the status line
    // says so, and counts down to the next attempt.
    let data_dir = std::mem::replace(&mut server.data_dir, tempfile::tempdir().unwrap());
    server.stop().await;
    let mut screen = screen;
    let screen = blocking(move || {
        screen.wait_for("retrying in");
        assert!(
            !screen.contents().contains("connected as alice"),
            "{}",
            screen.contents()
        );
        screen
    })
    .await;

    let restarted = Restarted::start(grpc_addr, data_dir.path()).await;
    let mut screen = screen;
    let screen = blocking(move || {
        screen.wait_for("connected as alice");
        screen
    })
    .await;
    // Back and live: bob writes, alice's sidebar counts it.
    let mut chat = chat_test_support::ledger::chat_via(grpc_addr, &bob_secret).await;
    chat_client::api::send(&mut chat, &Target::User("alice".into()), "back?", "b-1")
        .await
        .expect("sent");
    let mut screen = screen;
    blocking(move || {
        screen.wait_for("(1)");
        assert!(screen.row_with("(1)").contains("bob"));
        screen.keys(TAB);
        screen.wait_for("bob: back?");
        screen.keys(CTRL_C);
        assert_eq!(screen.exit_code(), 0);
    })
    .await;
    restarted.stop().await;
}
