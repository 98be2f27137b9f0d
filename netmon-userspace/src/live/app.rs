//! The terminal loop: a fresh screen from the daemon every refresh (unless
//! paused), keys as they come, and the screen asked again, from the
//! daemon's readings, when a key or a resize changes what it must hold.
//! Drawn only when something changed.

use std::{
    fmt::Display,
    time::{Duration, Instant},
};

use ratatui::{
    crossterm::event::{self, Event, KeyEventKind},
    DefaultTerminal,
};

use super::{
    draw::{body_height, draw, rows_that_fit},
    screen::{Screen, ScreenQuery},
    view::{Tab, View},
};

/// Runs until the operator quits. `view` holds the choices given on the
/// command line; `ask` gets a screen from the daemon, and a failure is shown
/// and retried at the next refresh.
pub fn run<E: Display>(
    terminal: &mut DefaultTerminal,
    refresh: Duration,
    mut view: View,
    mut ask: impl FnMut(&ScreenQuery) -> Result<Screen, E>,
) -> std::io::Result<()> {
    let mut screen: Option<Screen> = None;
    let mut problem: Option<String> = None;
    // What the screen shown answered (asked again when the view needs more).
    let mut answered: Option<ScreenQuery> = None;
    let mut next = Instant::now();
    let mut dirty = true;
    loop {
        let rows = rows_that_fit(body_height(terminal.size()?.height), view.lines);
        let due = Instant::now() >= next;
        let wanted = view.query(rows, false);
        if (due && !view.paused) || answered.as_ref() != Some(&wanted) {
            if due {
                next = (next + refresh).max(Instant::now());
            }
            let query = view.query(rows, due && !view.paused);
            match ask(&query) {
                Ok(fresh) => {
                    view.iface = Some(fresh.iface.clone());
                    view.ifaces.clone_from(&fresh.ifaces);
                    if view.tab == Tab::Conversations {
                        // Scrolled no further than the last rows.
                        view.scroll = fresh.first;
                    }
                    screen = Some(fresh);
                    problem = None;
                }
                Err(e) => problem = Some(e.to_string()),
            }
            // Asked once per change, answered or not: a failure waits for
            // the next refresh.
            answered = Some(view.query(rows, false));
            dirty = true;
        }
        if dirty {
            terminal.draw(|frame| draw(frame, screen.as_ref(), &view, problem.as_deref()))?;
            dirty = false;
        }
        let wait = if view.paused {
            // Nothing to fetch: wait for a key.
            refresh
        } else {
            next.saturating_duration_since(Instant::now())
        };
        if event::poll(wait)? {
            match event::read()? {
                Event::Key(key) if key.kind == KeyEventKind::Press => view.key(key),
                // Drawn again to the new size, with the rows that fit it.
                Event::Resize(..) => {}
                _ => continue,
            }
            if view.quit {
                return Ok(());
            }
            dirty = true;
        }
    }
}
