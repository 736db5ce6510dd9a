//! What the user types: a thread reads stdin and hands each line to the
//! async side over a channel; for a full screen, the terminal's events
//! instead (keys, resizes, the mouse), after the lines of the sign-up.
//!
//! [`EchoOff`] keeps what is typed off the screen while it lives (a
//! secret).
//!
//! A plain thread rather than `tokio::io::stdin`: a blocking read of stdin
//! cannot be cancelled, and tokio would wait for it when the runtime shuts
//! down, so `/quit` would hang until the next Enter. A detached thread dies
//! with the process.

use std::io::BufRead;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// How often the key reader reports that nothing happened (the screen
/// redraws its countdowns then).
const TICK: Duration = Duration::from_secs(1);

/// What the user did.
#[derive(Debug)]
pub enum Typed {
    /// A line typed (or piped).
    Line(String),
    /// A key, a resize, a mouse event; `None` when a second passed without.
    Event(Option<crossterm::event::Event>),
}

pub struct Input {
    source: Source,
    closed: bool,
}

enum Source {
    /// A thread reads every line ahead.
    Lines(mpsc::Receiver<String>),
    /// A line is read only when asked for, by a thread that then ends, so
    /// that nothing reads stdin between the questions and the keys.
    OnRequest(Option<oneshot::Receiver<Option<String>>>),
    /// A thread reads the terminal's events.
    Keys(mpsc::Receiver<Option<crossterm::event::Event>>),
}

impl Input {
    /// Starts reading stdin, line by line.
    pub fn spawn() -> Self {
        let (tx, lines) = mpsc::channel(64);
        let spawned = std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                let stdin = std::io::stdin();
                let mut reader = stdin.lock();
                while let Some(line) = read_line(&mut reader) {
                    if tx.blocking_send(line).is_err() {
                        break;
                    }
                }
            });
        // Without the thread there is no input: that is end of input.
        let closed = spawned.is_err();
        Self {
            source: Source::Lines(lines),
            closed,
        }
    }

    /// Reads a line of stdin only when one is asked for (the questions
    /// before a full screen takes the keys over).
    pub fn on_request() -> Self {
        Self {
            source: Source::OnRequest(None),
            closed: false,
        }
    }

    /// From now on, the terminal's events instead of lines.
    pub fn keys(&mut self) {
        let (tx, events) = mpsc::channel(64);
        let spawned = std::thread::Builder::new()
            .name("keys".into())
            .spawn(move || loop {
                let event = match crossterm::event::poll(TICK) {
                    Ok(true) => match crossterm::event::read() {
                        Ok(event) => Some(event),
                        Err(_) => break,
                    },
                    Ok(false) => None,
                    Err(_) => break,
                };
                if tx.blocking_send(event).is_err() {
                    break;
                }
            });
        self.closed = spawned.is_err();
        self.source = Source::Keys(events);
    }

    /// The next thing typed, or `None` at the end of input (ctrl-d, a
    /// closed pipe).
    pub async fn next(&mut self) -> Option<Typed> {
        if self.closed {
            return None;
        }
        let next = match &mut self.source {
            Source::Lines(lines) => lines.recv().await.map(Typed::Line),
            Source::Keys(events) => events.recv().await.map(Typed::Event),
            Source::OnRequest(waiting) => {
                let rx = match waiting {
                    Some(rx) => rx,
                    None => {
                        let (tx, rx) = oneshot::channel();
                        let spawned = std::thread::Builder::new().name("stdin line".into()).spawn(
                            move || {
                                let stdin = std::io::stdin();
                                let _ = tx.send(read_line(&mut stdin.lock()));
                            },
                        );
                        if spawned.is_err() {
                            self.closed = true;
                            return None;
                        }
                        waiting.insert(rx)
                    }
                };
                let line = rx.await.ok().flatten();
                *waiting = None;
                line.map(Typed::Line)
            }
        };
        self.closed = next.is_none();
        next
    }

    /// The next line; events are skipped (only lines are asked for).
    pub async fn next_line(&mut self) -> Option<String> {
        loop {
            match self.next().await? {
                Typed::Line(line) => return Some(line),
                Typed::Event(_) => {}
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

/// One line without its line end; `None` at the end of input.
fn read_line(reader: &mut impl BufRead) -> Option<String> {
    let mut buffer = Vec::new();
    match reader.read_until(b'\n', &mut buffer) {
        Ok(0) | Err(_) => None,
        Ok(_) => {
            let text = String::from_utf8_lossy(&buffer);
            Some(text.trim_end_matches(['\n', '\r']).to_owned())
        }
    }
}

/// While it lives, the terminal on stdin does not echo what is typed (the
/// line is still read as a line). Nothing happens when stdin is not a
/// terminal. The echo comes back when it is dropped.
pub struct EchoOff {
    #[cfg(unix)]
    saved: Option<libc::termios>,
}

impl EchoOff {
    pub fn new() -> Self {
        #[cfg(unix)]
        {
            // SAFETY: tcgetattr and tcsetattr only read and write the
            // termios struct given, on fd 0; a failure (not a terminal)
            // leaves everything as it was.
            unsafe {
                let mut termios: libc::termios = std::mem::zeroed();
                if libc::tcgetattr(libc::STDIN_FILENO, &mut termios) != 0 {
                    return Self { saved: None };
                }
                let saved = termios;
                termios.c_lflag &= !libc::ECHO;
                termios.c_lflag |= libc::ECHONL;
                if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &termios) != 0 {
                    return Self { saved: None };
                }
                Self { saved: Some(saved) }
            }
        }
        #[cfg(not(unix))]
        Self {}
    }
}

impl Default for EchoOff {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(saved) = &self.saved {
            // SAFETY: restores the attributes read in `new`.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved);
            }
        }
    }
}
