//! The live terminal view of `edgefilter stats` (ratatui on crossterm): a snapshot every
//! second, rates from the last two, every section of [`View`] in its own panel. `q`, Esc or
//! Ctrl-C quits; the terminal is restored however the view ends (return, error or panic).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Text};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use ratatui::{DefaultTerminal, Frame};

use super::view::{View, rates};
use crate::admin::StatsJson;

/// How often the view fetches a snapshot.
pub const TICK: Duration = Duration::from_secs(1);

/// Leaves raw mode and the alternate screen when dropped.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// What is on screen: the last view, and the last fetch's failure if it failed.
struct Screen<'a> {
    title: &'a str,
    view: Option<View>,
    error: Option<String>,
}

/// Draws the live view until the user quits; `fetch` takes one snapshot.
///
/// # Errors
/// Not a terminal, or the terminal failed. A failed fetch is shown, not returned.
pub fn run(
    title: &str,
    mut fetch: impl FnMut() -> anyhow::Result<StatsJson>,
) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "the live view needs a terminal; use `edgefilter stats --once` (or `--once --json`) in a script"
        );
    }
    let mut terminal = ratatui::try_init()?;
    let _restore = Restore;
    let mut screen = Screen {
        title,
        view: None,
        error: None,
    };
    let mut last: Option<(StatsJson, Instant)> = None;
    let mut next = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next {
            match fetch() {
                Ok(snap) => {
                    let r = last
                        .as_ref()
                        .map(|(prev, at)| rates(prev, &snap, now.duration_since(*at)));
                    screen.view = Some(View::new(&snap, r.as_ref()));
                    screen.error = None;
                    last = Some((snap, now));
                }
                Err(e) => screen.error = Some(format!("{e:#}")),
            }
            next = (next + TICK).max(now);
            draw(&mut terminal, &screen)?;
        }
        if event::poll(next.saturating_duration_since(Instant::now()))? {
            match event::read()? {
                Event::Key(k) if k.kind == KeyEventKind::Press && quits(k) => return Ok(()),
                Event::Resize(..) => draw(&mut terminal, &screen)?,
                _ => {}
            }
        }
    }
}

/// `q`, Esc and Ctrl-C quit (raw mode delivers Ctrl-C as a key).
fn quits(k: KeyEvent) -> bool {
    match k.code {
        KeyCode::Char('q' | 'Q') | KeyCode::Esc => true,
        KeyCode::Char('c') => k.modifiers.contains(KeyModifiers::CONTROL),
        _ => false,
    }
}

fn draw(terminal: &mut DefaultTerminal, screen: &Screen<'_>) -> std::io::Result<()> {
    terminal.draw(|f| render(f, screen)).map(|_| ())
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

/// One table column: its header, its width, and whether it holds numbers (right-aligned).
type Column<'a> = (&'a str, Constraint, bool);

/// A bordered table with a bold header; `empty` as its only line without rows.
fn table<'a, const N: usize>(
    title: &'a str,
    columns: [Column<'a>; N],
    rows: &'a [[String; N]],
    empty: &'a str,
) -> Table<'a> {
    let cell = |s: &'a str, numeric: bool| {
        let text = Text::from(s);
        Cell::from(if numeric {
            text.alignment(Alignment::Right)
        } else {
            text
        })
    };
    let body: Vec<Row<'a>> = if rows.is_empty() {
        vec![Row::new(vec![empty])]
    } else {
        rows.iter()
            .map(|r| Row::new(r.iter().zip(columns).map(|(s, c)| cell(s, c.2))))
            .collect()
    };
    Table::new(body, columns.map(|c| c.1))
        .header(Row::new(columns.map(|c| cell(c.0, c.2))).style(bold()))
        .column_spacing(2)
        .block(Block::bordered().title(Line::styled(title, bold())))
}

fn render(f: &mut Frame<'_>, screen: &Screen<'_>) {
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let at = screen.view.as_ref().map_or("", |v| v.at.as_str());
    f.render_widget(
        Paragraph::new(format!("{}  {at}", screen.title)).style(bold()),
        head,
    );
    let footer = match &screen.error {
        Some(e) => Paragraph::new(format!("daemon unreachable: {e}"))
            .style(Style::default().fg(Color::Red)),
        None => Paragraph::new("q, Esc or Ctrl-C quits; refreshed every second"),
    };
    f.render_widget(footer, foot);
    match &screen.view {
        Some(v) => render_view(f, body, v),
        None => f.render_widget(Paragraph::new("waiting for the daemon…"), body),
    }
}

fn render_view(f: &mut Frame<'_>, area: Rect, v: &View) {
    let [top, middle, bottom] = Layout::vertical([
        Constraint::Fill(1),
        Constraint::Fill(1),
        Constraint::Length(6),
    ])
    .areas(area);
    let [requests, xdp] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(top);
    let [keys, sources] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(middle);
    let [bans, store] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(bottom);
    let num = |h| (h, Constraint::Length(10), true);
    let text = |h, w| (h, w, false);
    f.render_widget(
        table(
            "Requests/s by code",
            [
                text("code", Constraint::Fill(1)),
                num("req/s"),
                num("total"),
            ],
            &v.requests,
            "no requests yet",
        ),
        requests,
    );
    match &v.xdp {
        Some(rows) => f.render_widget(
            table(
                "XDP packets/s by reason",
                [
                    text("action", Constraint::Length(10)),
                    text("reason", Constraint::Fill(1)),
                    num("pkt/s"),
                    num("total"),
                ],
                rows,
                "no packets judged yet",
            ),
            xdp,
        ),
        None => f.render_widget(
            Paragraph::new("XDP is off")
                .block(Block::bordered().title(Line::styled("XDP packets/s by reason", bold()))),
            xdp,
        ),
    }
    let keys_title = format!("Top denied keys ({})", v.denials_title);
    let sources_title = format!("Top denied sources ({})", v.denials_title);
    f.render_widget(
        table(
            &keys_title,
            [
                text("key id", Constraint::Length(16)),
                num("denied"),
                text("code", Constraint::Fill(1)),
            ],
            &v.top_keys,
            "none",
        ),
        keys,
    );
    f.render_widget(
        table(
            &sources_title,
            [
                text("source", Constraint::Fill(1)),
                num("denied"),
                text("code", Constraint::Fill(1)),
            ],
            &v.top_sources,
            "none",
        ),
        sources,
    );
    let ban_lines: Vec<Line<'_>> = if v.bans.is_empty() {
        vec![Line::from("none")]
    } else {
        v.bans.iter().map(|b| Line::from(b.as_str())).collect()
    };
    f.render_widget(
        Paragraph::new(ban_lines).block(Block::bordered().title(Line::styled("Bans", bold()))),
        bans,
    );
    let store_lines = vec![
        Line::from(format!("Propagation p99: {}", v.propagation)),
        Line::from(format!("Store: {}", v.store)),
    ];
    f.render_widget(
        Paragraph::new(store_lines)
            .block(Block::bordered().title(Line::styled("Propagation and store", bold()))),
        store,
    );
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;

    #[test]
    fn every_panel_is_drawn() {
        let mut view = View {
            at: "2027-01-15T08:00:00Z".into(),
            denials_title: "last 60 s".into(),
            propagation: "≤ 50 µs (1 changes)".into(),
            store: "sqlite, revision 3, lag n/a".into(),
            ..View::default()
        };
        view.requests.push(["OK".into(), "2.0".into(), "17".into()]);
        view.top_sources
            .push(["127.0.0.1".into(), "4".into(), "MALFORMED_KEY".into()]);
        let screen = Screen {
            title: "edgefilter stats",
            view: Some(view),
            error: None,
        };
        let mut t = Terminal::new(TestBackend::new(120, 30)).unwrap();
        t.draw(|f| render(f, &screen)).unwrap();
        let text: String = t
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|c| c.symbol())
            .collect();
        for want in [
            "Requests/s by code",
            "XDP is off",
            "Top denied keys (last 60 s)",
            "Top denied sources (last 60 s)",
            "127.0.0.1",
            "MALFORMED_KEY",
            "Bans",
            "Propagation p99: ≤ 50 µs",
            "17",
            "q, Esc or Ctrl-C quits",
        ] {
            assert!(text.contains(want), "{want:?} not drawn");
        }
    }

    #[test]
    fn q_esc_and_ctrl_c_quit() {
        let key = |c, m| KeyEvent::new(c, m);
        assert!(quits(key(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(quits(key(KeyCode::Esc, KeyModifiers::NONE)));
        assert!(quits(key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!quits(key(KeyCode::Char('c'), KeyModifiers::NONE)));
    }
}
