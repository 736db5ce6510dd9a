//! The full-screen interface (ratatui on crossterm): a [`Render`] that
//! draws a [`Model`] of the conversations instead of printing lines, and
//! turns keys into what the user asks for ([`Intent`]).
//!
//! Until logged in it is the line interface (the questions of the
//! sign-up are lines); [`Render::begin`] then takes the terminal over (raw
//! mode, the alternate screen, the mouse) and dropping the screen gives it
//! back, also when the mode ends with an error, so the closing `error: …`
//! line lands on the normal screen.
//!
//! # Layout
//!
//! - this module: the terminal, and the keys.
//! - [`model`]: what is shown, without a terminal.
//! - [`draw`]: how it is drawn.

pub mod draw;
pub mod model;

use std::io::{self, Stdout};

use crossterm::event::{
    DisableMouseCapture, EnableMouseCapture, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers,
    MouseEventKind,
};
use crossterm::execute;
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use tokio::time::Instant;

use super::render::{Intent, LineRenderer, Output, Render};
use draw::{Pane, Theme};
use model::{Focus, Model};

/// Rows the mouse wheel scrolls.
const WHEEL_ROWS: usize = 3;

/// The full screen.
pub struct Screen {
    model: Model,
    theme: Theme,
    /// Set once [`Render::begin`] took the terminal over.
    terminal: Option<Terminal<CrosstermBackend<Stdout>>>,
    /// What shows until then.
    lines: LineRenderer,
    /// The open conversation as last drawn.
    pane: Pane,
}

impl Screen {
    pub fn new() -> Self {
        Self {
            model: Model::new(),
            theme: Theme::from_env(),
            terminal: None,
            lines: LineRenderer::default(),
            pane: Pane::default(),
        }
    }

    fn redraw(&mut self) {
        let Some(terminal) = &mut self.terminal else {
            return;
        };
        let (model, theme) = (&self.model, self.theme);
        let mut pane = self.pane;
        // A failed draw (the terminal gone) leaves nothing to tell.
        let _ = terminal.draw(|frame| pane = draw::draw(frame, model, theme, Instant::now()));
        self.pane = pane;
    }

    fn on_key(&mut self, key: KeyEvent) -> Vec<Intent> {
        if key.kind == KeyEventKind::Release {
            return Vec::new();
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        // Keys that act wherever the focus is.
        match key.code {
            KeyCode::Char('c') if ctrl => return vec![Intent::Line("/quit".into())],
            KeyCode::Char('d') if ctrl && self.model.editor.text.is_empty() => {
                return vec![Intent::Line("/quit".into())];
            }
            KeyCode::PageUp => return self.scroll_up(self.pane.height.max(2) - 1),
            KeyCode::PageDown => {
                self.model.scroll_down(self.pane.height.max(2) - 1);
                return Vec::new();
            }
            KeyCode::Tab => return self.open_neighbour(1),
            KeyCode::BackTab => return self.open_neighbour(-1),
            KeyCode::Char('g') if ctrl => {
                self.model.focus = Focus::GoTo(String::new());
                return Vec::new();
            }
            _ => {}
        }
        self.model.notices.clear();
        match self.model.focus.clone() {
            Focus::GoTo(query) => self.on_go_to_key(key, query),
            Focus::Selecting(_) => self.on_selecting_key(key),
            Focus::Input => self.on_input_key(key, ctrl, alt),
        }
    }

    fn scroll_up(&mut self, rows: usize) -> Vec<Intent> {
        self.model
            .scroll_up(rows, self.pane.rows, self.pane.height)
            .into_iter()
            .collect()
    }

    fn open_neighbour(&mut self, step: isize) -> Vec<Intent> {
        self.model.focus = Focus::Input;
        self.model
            .neighbour(step)
            .map(Intent::Open)
            .into_iter()
            .collect()
    }

    fn on_go_to_key(&mut self, key: KeyEvent, mut query: String) -> Vec<Intent> {
        match key.code {
            KeyCode::Esc => self.model.focus = Focus::Input,
            KeyCode::Enter => {
                self.model.focus = Focus::Input;
                return match self.model.go_to(&query) {
                    Some(id) => vec![Intent::Open(id)],
                    None => vec![Intent::Line(format!("/to {query}"))],
                };
            }
            KeyCode::Backspace => {
                query.pop();
                self.model.focus = Focus::GoTo(query);
            }
            KeyCode::Char(c) => {
                query.push(c);
                self.model.focus = Focus::GoTo(query);
            }
            _ => {}
        }
        Vec::new()
    }

    fn on_selecting_key(&mut self, key: KeyEvent) -> Vec<Intent> {
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => self.model.select(true),
            KeyCode::Down | KeyCode::Char('j') => self.model.select(false),
            KeyCode::Esc => self.model.focus = Focus::Input,
            KeyCode::Char('e') | KeyCode::Enter => {
                self.model.edit_selected();
            }
            KeyCode::Char('r') => self.model.reply_to_selected(),
            KeyCode::Char('d') | KeyCode::Delete => {
                return self.model.delete_selected().into_iter().collect();
            }
            _ => {}
        }
        Vec::new()
    }

    fn on_input_key(&mut self, key: KeyEvent, ctrl: bool, alt: bool) -> Vec<Intent> {
        let editor = &mut self.model.editor;
        match key.code {
            KeyCode::Enter if alt || key.modifiers.contains(KeyModifiers::SHIFT) => {
                editor.insert('\n');
            }
            KeyCode::Char('j') if ctrl => editor.insert('\n'),
            KeyCode::Enter => {
                let editing = editor.editing;
                let text = editor.take();
                self.model.scroll = 0;
                return match editing {
                    Some(seq) if !text.trim().is_empty() => {
                        vec![Intent::Line(format!("/edit {seq} {text}"))]
                    }
                    Some(_) => Vec::new(),
                    None => vec![Intent::Line(text)],
                };
            }
            KeyCode::Esc => editor.clear(),
            KeyCode::Up if editor.text.is_empty() => self.model.select(true),
            KeyCode::Char('p') if ctrl => editor.older(),
            KeyCode::Char('n') if ctrl => editor.newer(),
            KeyCode::Char('a') if ctrl => editor.home(),
            KeyCode::Char('e') if ctrl => editor.end(),
            KeyCode::Char('u') if ctrl => editor.clear_text(),
            KeyCode::Home => editor.home(),
            KeyCode::End => editor.end(),
            KeyCode::Left => editor.left(),
            KeyCode::Right => editor.right(),
            KeyCode::Backspace => editor.backspace(),
            KeyCode::Delete => editor.delete(),
            KeyCode::Char(c) if !ctrl => {
                editor.insert(c);
                if self.model.tell_typing(Instant::now()) {
                    return vec![Intent::Typing];
                }
            }
            _ => {}
        }
        Vec::new()
    }

    /// Gives the terminal back as it was.
    fn end(&mut self) {
        if self.terminal.take().is_some() {
            let _ = disable_raw_mode();
            let _ = execute!(io::stdout(), DisableMouseCapture, LeaveAlternateScreen);
        }
    }
}

impl Default for Screen {
    fn default() -> Self {
        Self::new()
    }
}

impl Render for Screen {
    fn show(&mut self, output: Output<'_>) {
        if self.terminal.is_none() {
            self.lines.show(output);
            return;
        }
        self.model.apply(&output);
        self.redraw();
    }

    fn begin(&mut self) -> bool {
        if enable_raw_mode().is_err() {
            return false;
        }
        let mut stdout = io::stdout();
        if execute!(stdout, EnterAlternateScreen, EnableMouseCapture).is_err() {
            let _ = disable_raw_mode();
            return false;
        }
        match Terminal::new(CrosstermBackend::new(stdout)) {
            Ok(terminal) => self.terminal = Some(terminal),
            Err(_) => {
                let _ = disable_raw_mode();
                let _ = execute!(io::stdout(), DisableMouseCapture, LeaveAlternateScreen);
                return false;
            }
        }
        self.redraw();
        true
    }

    fn key(&mut self, event: Option<Event>) -> Vec<Intent> {
        let intents = match event {
            Some(Event::Key(key)) => self.on_key(key),
            Some(Event::Mouse(mouse)) => match mouse.kind {
                MouseEventKind::ScrollUp => self.scroll_up(WHEEL_ROWS),
                MouseEventKind::ScrollDown => {
                    self.model.scroll_down(WHEEL_ROWS);
                    Vec::new()
                }
                _ => Vec::new(),
            },
            Some(Event::Paste(text)) => {
                for c in text.chars() {
                    self.model.editor.insert(c);
                }
                Vec::new()
            }
            // A resize, or a second passed (countdowns, typing that ends).
            _ => Vec::new(),
        };
        self.redraw();
        intents
    }

    fn scrollback(&self) -> bool {
        self.terminal.is_some()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        self.end();
    }
}
