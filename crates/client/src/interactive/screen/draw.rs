//! How the full screen looks: the sidebar, the open conversation, the
//! notices, the input and the status line, drawn from a [`Model`] into a
//! ratatui frame. It changes no state and knows no terminal (tests draw
//! it on ratatui's `TestBackend`).
//!
//! Colours are the terminal's own named ones (they follow its dark or
//! light theme) and are left out entirely under `NO_COLOR`; what must be
//! told apart without colour is told apart by text or by a modifier too.

use chat_proto as pb;
use chrono::{Local, NaiveDate, TimeZone};
use ratatui::layout::{Constraint, Direction, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};
use ratatui::Frame;
use tokio::time::Instant;

use super::super::render::{event_line, terminal_text, Said};
use super::model::{Conversation, Focus, Link, Model};
use crate::view::is_event;

/// The width of the sidebar, borders included.
const SIDEBAR: u16 = 24;

/// How the screen is coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Theme {
    pub color: bool,
}

impl Theme {
    /// Colours unless `NO_COLOR` is set to anything but empty.
    pub fn from_env() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self { color: !no_color }
    }

    fn fg(self, color: Color) -> Style {
        if self.color {
            Style::default().fg(color)
        } else {
            Style::default()
        }
    }

    fn dim(self) -> Style {
        Style::default().add_modifier(Modifier::DIM)
    }
}

/// Where the open conversation was drawn: what scrolling needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pane {
    /// Rows of the whole scrollback, wrapped to the pane's width.
    pub rows: usize,
    /// Rows shown.
    pub height: usize,
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, model: &Model, theme: Theme, now: Instant) -> Pane {
    let area = frame.area();
    let input_rows = u16::try_from(model.editor.text.split('\n').count())
        .unwrap_or(u16::MAX)
        .clamp(1, 6);
    let notice_rows = u16::try_from(model.notices.len())
        .unwrap_or(u16::MAX)
        .min(area.height / 2);
    let [main, notices, input, status] = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Min(3),
            Constraint::Length(notice_rows),
            Constraint::Length(input_rows),
            Constraint::Length(1),
        ])
        .areas(area);
    let sidebar_width = SIDEBAR.min(main.width / 3);
    let [sidebar, pane] = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Length(sidebar_width), Constraint::Min(10)])
        .areas(main);
    draw_sidebar(frame, sidebar, model, theme);
    let drawn = draw_conversation(frame, pane, model, theme);
    draw_notices(frame, notices, model, theme);
    draw_input(frame, input, model, theme);
    draw_status(frame, status, model, theme, now);
    drawn
}

fn draw_sidebar(frame: &mut Frame, area: Rect, model: &Model, theme: Theme) {
    let block = Block::default()
        .borders(Borders::ALL)
        .title(" conversations ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let width = usize::from(inner.width);
    let lines: Vec<Line> = model
        .sorted()
        .into_iter()
        .map(|c| {
            sidebar_line(
                c,
                model.open.as_deref() == Some(c.id.as_str()),
                width,
                theme,
            )
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

/// `> alice      (3)`: the open one marked, the unread count right-aligned.
fn sidebar_line(c: &Conversation, open: bool, width: usize, theme: Theme) -> Line<'static> {
    let marker = if open { "> " } else { "  " };
    let badge = if c.unread > 0 {
        format!(" ({})", c.unread)
    } else {
        String::new()
    };
    let room = width.saturating_sub(marker.len() + badge.chars().count());
    let mut label: String = c.label.chars().take(room).collect();
    let pad = room.saturating_sub(label.chars().count());
    label.push_str(&" ".repeat(pad));
    let mut label_style = if c.group {
        theme.fg(Color::Magenta)
    } else {
        Style::default()
    };
    if open {
        label_style = label_style.add_modifier(Modifier::BOLD);
    }
    Line::from(vec![
        Span::raw(marker),
        Span::styled(label, label_style),
        Span::styled(badge, theme.fg(Color::Yellow).add_modifier(Modifier::BOLD)),
    ])
}

fn draw_conversation(frame: &mut Frame, area: Rect, model: &Model, theme: Theme) -> Pane {
    let title = match model.title() {
        Some(title) => format!(" {title} "),
        None => " no conversation: Tab, Ctrl+G or /to <user> ".to_owned(),
    };
    let block = Block::default().borders(Borders::ALL).title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let Some(c) = model.open_conversation() else {
        return Pane {
            rows: 0,
            height: usize::from(inner.height),
        };
    };
    let selected = match model.focus {
        Focus::Selecting(seq) => Some(seq),
        _ => None,
    };
    let width = usize::from(inner.width).max(1);
    let mut rows: Vec<Line> = Vec::new();
    if c.loading {
        rows.push(Line::styled("loading older messages…", theme.dim()));
    } else if !c.complete && !c.messages.is_empty() {
        rows.push(Line::styled("PageUp: older messages", theme.dim()));
    }
    let mut day: Option<NaiveDate> = None;
    for m in c.messages.values() {
        let date = Local
            .timestamp_millis_opt(m.sent_at_unix_ms)
            .single()
            .map(|t| t.date_naive());
        if date.is_some() && date != day {
            day = date;
            if let Some(date) = date {
                let label = format!("── {} ──", date.format("%a %Y-%m-%d"));
                rows.push(Line::styled(label, theme.dim()));
            }
        }
        let line = message_line(m, c, &model.me, theme);
        let line = if selected == Some(m.seq) {
            line.patch_style(Style::default().add_modifier(Modifier::REVERSED))
        } else {
            line
        };
        rows.extend(wrap(line, width));
    }
    let height = usize::from(inner.height);
    let total = rows.len();
    let bottom = total.saturating_sub(model.scroll.min(total.saturating_sub(height)));
    let top = bottom.saturating_sub(height);
    // Short conversations sit at the bottom, next to the input.
    let shown: Vec<Line> = rows[top..bottom].to_vec();
    let blank = height.saturating_sub(shown.len());
    let mut lines = vec![Line::default(); blank];
    lines.extend(shown);
    frame.render_widget(Paragraph::new(lines), inner);
    Pane {
        rows: total,
        height,
    }
}

/// One message: `HH:MM sender: body`, yours as `you`, with marks for an
/// edited or a deleted one and the read state of yours (✓ in a direct
/// conversation, `read by N` in a group).
fn message_line(m: &pb::Message, c: &Conversation, me: &str, theme: Theme) -> Line<'static> {
    let time = Local
        .timestamp_millis_opt(m.sent_at_unix_ms)
        .single()
        .map_or_else(|| "--:--".to_owned(), |t| t.format("%H:%M").to_string());
    let mut spans = vec![Span::styled(format!("{time} "), theme.dim())];
    if is_event(m) {
        let text = event_line(m, me, &c.label, Local::now());
        let text = text.split_once("] ").map_or(text.as_str(), |(_, t)| t);
        spans.push(Span::styled(
            text.to_owned(),
            theme.fg(Color::Yellow).add_modifier(Modifier::ITALIC),
        ));
        return Line::from(spans);
    }
    let mine = m.sender == me;
    let (who, style) = if mine {
        ("you".to_owned(), theme.fg(Color::Green))
    } else {
        (terminal_text(&m.sender), theme.fg(Color::Cyan))
    };
    spans.push(Span::styled(who, style.add_modifier(Modifier::BOLD)));
    spans.push(Span::raw(": "));
    if m.deleted {
        spans.push(Span::styled(
            "[deleted]",
            theme.dim().add_modifier(Modifier::ITALIC),
        ));
        return Line::from(spans);
    }
    spans.push(Span::raw(terminal_text(&m.body)));
    if m.edited {
        spans.push(Span::styled(" (edited)", theme.dim()));
    }
    if mine {
        let read = c.read_by(m);
        if read > 0 && c.group {
            spans.push(Span::styled(format!(" (read by {read})"), theme.dim()));
        } else if read > 0 {
            spans.push(Span::styled(" ✓", theme.fg(Color::Green)));
        }
    }
    Line::from(spans)
}

/// Cuts a line into rows of `width` columns (and at its newlines), styles
/// kept.
fn wrap(line: Line<'static>, width: usize) -> Vec<Line<'static>> {
    let style = line.style;
    let mut rows = Vec::new();
    let mut row: Vec<Span<'static>> = Vec::new();
    let mut used = 0;
    for span in line.spans {
        let mut piece = String::new();
        for ch in span.content.chars() {
            let w = Span::raw(ch.to_string()).width();
            if ch == '\n' || used + w > width {
                if !piece.is_empty() {
                    row.push(Span::styled(std::mem::take(&mut piece), span.style));
                }
                rows.push(Line::from(std::mem::take(&mut row)).style(style));
                used = 0;
                if ch == '\n' {
                    continue;
                }
            }
            piece.push(ch);
            used += w;
        }
        if !piece.is_empty() {
            row.push(Span::styled(piece, span.style));
        }
    }
    rows.push(Line::from(row).style(style));
    rows
}

fn draw_notices(frame: &mut Frame, area: Rect, model: &Model, theme: Theme) {
    if area.height == 0 {
        return;
    }
    let skip = model.notices.len().saturating_sub(usize::from(area.height));
    let lines: Vec<Line> = model.notices[skip..]
        .iter()
        .map(|said| match said {
            Said::Err(text) => Line::styled(text.clone(), theme.fg(Color::Red)),
            Said::Out(text) | Said::Prompt(text) => Line::raw(text.clone()),
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), area);
}

fn draw_input(frame: &mut Frame, area: Rect, model: &Model, theme: Theme) {
    let prompt = match (&model.focus, model.editor.editing) {
        (Focus::GoTo(_), _) => "go to: ".to_owned(),
        (_, Some(seq)) => format!("edit {seq}> "),
        _ => "> ".to_owned(),
    };
    let text = match &model.focus {
        Focus::GoTo(query) => query.clone(),
        _ => model.editor.text.clone(),
    };
    let indent = " ".repeat(prompt.chars().count());
    let lines: Vec<Line> = text
        .split('\n')
        .enumerate()
        .map(|(i, part)| {
            let lead = if i == 0 {
                prompt.clone()
            } else {
                indent.clone()
            };
            Line::from(vec![
                Span::styled(lead, theme.fg(Color::Blue).add_modifier(Modifier::BOLD)),
                Span::raw(part.to_owned()),
            ])
        })
        .collect();
    // The rows at the end when there are more than shown.
    let skip = lines.len().saturating_sub(usize::from(area.height));
    frame.render_widget(Paragraph::new(lines[skip..].to_vec()), area);
    if matches!(model.focus, Focus::Selecting(_)) {
        return;
    }
    let (row, col) = match &model.focus {
        Focus::GoTo(query) => (0, query.chars().count()),
        _ => {
            let before: String = model
                .editor
                .text
                .chars()
                .take(model.editor.cursor)
                .collect();
            let row = before.matches('\n').count();
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count());
            (row, col)
        }
    };
    let x = area.x + u16::try_from(prompt.chars().count() + col).unwrap_or(u16::MAX);
    let y = area.y + u16::try_from(row.saturating_sub(skip)).unwrap_or(u16::MAX);
    frame.set_cursor_position(Position {
        x: x.min(area.right().saturating_sub(1)),
        y: y.min(area.bottom().saturating_sub(1)),
    });
}

fn draw_status(frame: &mut Frame, area: Rect, model: &Model, theme: Theme, now: Instant) {
    let (link, style) = match &model.link {
        Link::Connecting => ("connecting…".to_owned(), theme.fg(Color::Yellow)),
        Link::Connected { server } => (
            match server {
                Some(server) => format!("connected as {} via {server}", model.me),
                None => format!("connected as {}", model.me),
            },
            theme.fg(Color::Green),
        ),
        Link::Reconnecting { why } => (format!("reconnecting ({why})"), theme.fg(Color::Yellow)),
        Link::Offline { server, why, at } => {
            let secs = at.saturating_duration_since(now).as_secs();
            (
                // The countdown first: a long reason is cut at the edge.
                format!("offline, retrying in {secs} s: {server} ({why})"),
                theme.fg(Color::Red),
            )
        }
    };
    let mut spans = vec![Span::styled(link, style.add_modifier(Modifier::BOLD))];
    if let Some(peer) = model.peer() {
        if let Some(online) = model.presence.get(peer) {
            let state = if *online { "online" } else { "offline" };
            spans.push(Span::raw(format!(" · {peer} is {state}")));
        }
    }
    let typists = model.typists(now);
    if !typists.is_empty() {
        spans.push(Span::styled(
            format!(" · {} typing…", typists.join(", ")),
            theme.fg(Color::Cyan),
        ));
    }
    let hint = match model.focus {
        Focus::Selecting(_) => " · e edit · d delete · r reply · Esc back",
        Focus::GoTo(_) => " · Enter open · Esc back",
        Focus::Input => " · Tab next · Ctrl+G go to · ↑ select · PgUp older · /help",
    };
    spans.push(Span::styled(hint, theme.dim()));
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

#[cfg(test)]
mod tests {
    use super::super::super::render::Output;
    use super::super::model::samples::model_with_two;
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::buffer::Buffer;
    use ratatui::Terminal;

    fn text(seq: u64, sender: &str, body: &str) -> pb::Message {
        pb::Message {
            conversation_id: "c1".into(),
            seq,
            sender: sender.into(),
            body: body.into(),
            sent_at_unix_ms: Local::now().timestamp_millis(),
            ..Default::default()
        }
    }

    fn screen(model: &Model, width: u16, height: u16, theme: Theme) -> Buffer {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("a test terminal");
        terminal
            .draw(|frame| {
                draw(frame, model, theme, Instant::now());
            })
            .expect("drawn");
        terminal.backend().buffer().clone()
    }

    fn rows(buffer: &Buffer) -> Vec<String> {
        let area = buffer.area;
        (0..area.height)
            .map(|y| {
                (0..area.width)
                    .map(|x| buffer[(x, y)].symbol().to_owned())
                    .collect::<String>()
            })
            .collect()
    }

    /// "me" talking with alice, who wrote, edited and deleted.
    fn chatting() -> Model {
        let mut model = model_with_two();
        model.apply(&Output::Talking(&super::super::super::Chosen::User(
            "alice".into(),
        )));
        model.apply(&Output::Opened { conversation: "c1" });
        let mut mine = text(1, "me", "hello alice");
        mine.read_count = 1;
        let mut edited = text(2, "alice", "hi there");
        edited.edited = true;
        let mut deleted = text(3, "alice", "");
        deleted.deleted = true;
        model.apply(&Output::Page {
            conversation: "c1",
            label: "alice",
            messages: &[mine, edited, deleted],
            before: 0,
        });
        model.apply(&Output::Presence {
            user: "alice",
            online: true,
        });
        model
    }

    #[test]
    fn the_screen_shows_sidebar_messages_input_and_status() {
        let model = chatting();
        let buffer = screen(&model, 80, 12, Theme { color: true });
        let rows = rows(&buffer);
        let all = rows.join("\n");
        assert!(rows[0].starts_with("┌ conversations"), "{all}");
        assert!(rows[0].contains("┌ alice "), "{all}");
        // The sidebar: the group with its exact unread count, the open one
        // marked.
        assert!(
            rows.iter()
                .any(|r| r.starts_with("│  #Team ") && r.contains(" (4)│")),
            "{all}"
        );
        assert!(rows.iter().any(|r| r.starts_with("│> alice ")), "{all}");
        // The messages sit at the bottom of their pane, after the day.
        let pane: Vec<&String> = rows.iter().filter(|r| r.contains(':')).collect();
        assert!(
            pane.iter().any(|r| r.contains("you: hello alice ✓")),
            "{all}"
        );
        assert!(
            pane.iter().any(|r| r.contains("alice: hi there (edited)")),
            "{all}"
        );
        assert!(pane.iter().any(|r| r.contains("alice: [deleted]")), "{all}");
        assert!(
            rows.iter().any(|r| r.contains("── ")),
            "a day separator: {all}"
        );
        assert!(rows[10].starts_with("> "), "the input: {all}");
        assert!(
            rows[11].starts_with("connected as me · alice is online"),
            "the status: {all}"
        );
        let deleted_row = rows
            .iter()
            .position(|r| r.contains("[deleted]"))
            .expect("a deleted row");
        assert_eq!(deleted_row, 8, "the newest right above the border: {all}");
    }

    #[test]
    fn a_selected_message_is_reversed_and_the_status_says_the_keys() {
        let mut model = chatting();
        model.select(true);
        model.select(true);
        let buffer = screen(&model, 80, 12, Theme { color: true });
        let rows = rows(&buffer);
        let y = rows
            .iter()
            .position(|r| r.contains("hi there"))
            .expect("the row");
        let x = rows[y].find("alice").expect("the sender") as u16;
        let x = u16::try_from(rows[y][..usize::from(x)].chars().count()).unwrap();
        let y = u16::try_from(y).unwrap();
        assert!(buffer[(x, y)].modifier.contains(Modifier::REVERSED));
        assert!(rows[11].contains("e edit · d delete"), "{}", rows[11]);
    }

    #[test]
    fn no_color_draws_no_colour() {
        let model = chatting();
        let buffer = screen(&model, 80, 12, Theme { color: false });
        let area = buffer.area;
        for y in 0..area.height {
            for x in 0..area.width {
                let cell = &buffer[(x, y)];
                assert_eq!(cell.fg, Color::Reset, "at {x},{y}");
                assert_eq!(cell.bg, Color::Reset, "at {x},{y}");
            }
        }
        let coloured = screen(&model, 80, 12, Theme { color: true });
        let area = coloured.area;
        let any =
            (0..area.height).any(|y| (0..area.width).any(|x| coloured[(x, y)].fg != Color::Reset));
        assert!(any, "with colours, some");
    }

    #[test]
    fn a_narrow_screen_wraps_long_messages_and_keeps_the_status() {
        let mut model = chatting();
        let long = text(4, "alice", &"word ".repeat(30));
        model.apply(&Output::Message {
            message: &long,
            me: "me",
            label: "alice",
        });
        let buffer = screen(&model, 40, 16, Theme { color: true });
        let rows = rows(&buffer);
        let wrapped = rows.iter().filter(|r| r.contains("word")).count();
        assert!(wrapped >= 3, "{}", rows.join("\n"));
        assert!(
            rows[15].starts_with("connected as me"),
            "{}",
            rows.join("\n")
        );
    }

    #[test]
    fn offline_counts_down_and_typing_shows() {
        let mut model = chatting();
        model.apply(&Output::CannotConnect {
            server: "http://h:1",
            why: "connection refused",
            retry_in: std::time::Duration::from_secs(8),
        });
        model.apply(&Output::Typing { user: "alice" });
        let rows = rows(&screen(&model, 100, 12, Theme { color: true }));
        let countdown = ["7", "8"].iter().any(|secs| {
            rows[11].starts_with(&format!(
                "offline, retrying in {secs} s: http://h:1 (connection refused)"
            ))
        });
        assert!(countdown, "{}", rows[11]);
        assert!(rows[11].contains("alice typing…"), "{}", rows[11]);
    }
}
