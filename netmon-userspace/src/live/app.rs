//! The terminal loop: a snapshot every refresh (unless paused), keys as they
//! come, and a redraw after each of them and after every resize.

use std::{
    fmt::Display,
    time::{Duration, Instant},
};

use ratatui::{
    crossterm::event::{self, Event, KeyEventKind},
    DefaultTerminal,
};

use super::{draw::draw, model::Live, snapshot::LiveSnapshot, view::View};

/// Runs until the operator quits. `first` is the snapshot the caller fetched
/// before it took the terminal; `fetch` gets the next ones, and a failure is
/// shown and retried at the next refresh.
pub fn run<E: Display>(
    terminal: &mut DefaultTerminal,
    refresh: Duration,
    first: LiveSnapshot,
    mut fetch: impl FnMut() -> Result<LiveSnapshot, E>,
) -> std::io::Result<()> {
    let mut live = Live::default();
    live.update(first);
    let mut view = View::default();
    let mut problem: Option<String> = None;
    let mut next = Instant::now() + refresh;
    loop {
        terminal.draw(|frame| draw(frame, &live, &view, problem.as_deref()))?;
        let wait = next.saturating_duration_since(Instant::now());
        if !wait.is_zero() && event::poll(wait)? {
            match event::read()? {
                Event::Key(key) if key.kind == KeyEventKind::Press => view.key(key),
                // Drawn again at the top of the loop, to the new size.
                Event::Resize(..) => {}
                _ => {}
            }
            if view.quit {
                return Ok(());
            }
            continue;
        }
        next = (next + refresh).max(Instant::now());
        if !view.paused {
            match fetch() {
                Ok(snapshot) => {
                    live.update(snapshot);
                    problem = None;
                }
                Err(e) => problem = Some(e.to_string()),
            }
        }
    }
}
