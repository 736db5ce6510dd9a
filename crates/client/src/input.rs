//! The lines the user types: a thread reads stdin and hands each line to
//! the async side over a channel.
//!
//! A plain thread rather than `tokio::io::stdin`: a blocking read of stdin
//! cannot be cancelled, and tokio would wait for it when the runtime shuts
//! down, so `/quit` would hang until the next Enter. A detached thread dies
//! with the process.

use std::io::BufRead;

use tokio::sync::mpsc;

pub struct Input {
    lines: mpsc::Receiver<String>,
    closed: bool,
}

impl Input {
    /// Starts reading stdin.
    pub fn spawn() -> Self {
        let (tx, lines) = mpsc::channel(64);
        let spawned = std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                let stdin = std::io::stdin();
                let mut reader = stdin.lock();
                let mut buffer = Vec::new();
                loop {
                    buffer.clear();
                    match reader.read_until(b'\n', &mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let text = String::from_utf8_lossy(&buffer);
                            let line = text.trim_end_matches(['\n', '\r']).to_owned();
                            if tx.blocking_send(line).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        // Without the thread there is no input: that is end of input.
        let closed = spawned.is_err();
        Self { lines, closed }
    }

    /// The next line, or `None` at the end of input (ctrl-d, a closed pipe).
    pub async fn next(&mut self) -> Option<String> {
        if self.closed {
            return None;
        }
        let line = self.lines.recv().await;
        self.closed = line.is_none();
        line
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }
}
