//! The screen: a header with the views, the chosen view, a status line, and
//! the help over them when asked. Drawn whole on every refresh, key and
//! resize, to whatever size the terminal has.

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Clear, LineGauge, Paragraph, Sparkline},
    Frame,
};

use super::{
    screen::{Figures, Screen},
    view::{LineMode, Tab, View, HELP},
};

/// Draws everything; `screen` is the daemon's latest answer (none before
/// the first), `problem` its last failure to answer, if any.
pub fn draw(frame: &mut Frame<'_>, screen: Option<&Screen>, view: &View, problem: Option<&str>) {
    let [header, body, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(header_line(screen, view)), header);
    if let Some(screen) = screen {
        match view.tab {
            Tab::Interfaces => interfaces(frame, body, screen, view),
            Tab::Conversations => scrolled(frame, body, conversations(screen, view, body), 0),
            Tab::Protocols => scrolled(frame, body, protocols(screen, view), view.scroll),
            Tab::Policy => policy(frame, body, screen, view),
        }
    }
    frame.render_widget(Paragraph::new(status_line(screen, view, problem)), status);
    if view.help {
        help(frame);
    }
}

fn header_line(screen: Option<&Screen>, view: &View) -> Line<'static> {
    let mut spans = vec![Span::styled(
        "netmon top",
        Style::default().add_modifier(Modifier::BOLD),
    )];
    if let Some(s) = screen {
        spans.push(Span::raw(format!(" · {} ·", s.iface)));
    }
    for tab in Tab::ALL {
        let style = if tab == view.tab {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default()
        };
        spans.push(Span::raw(" "));
        spans.push(Span::styled(format!("[{}]", tab.title()), style));
    }
    spans.push(Span::raw(format!(
        " · sort: {} · {}",
        view.sort.name(),
        view.lines.name()
    )));
    if view.paused {
        spans.push(Span::styled(
            " · PAUSED",
            Style::default().add_modifier(Modifier::BOLD),
        ));
    }
    if !view.filter.is_empty() {
        spans.push(Span::raw(format!(" · filter: {}", view.filter)));
    }
    Line::from(spans)
}

fn status_line(screen: Option<&Screen>, view: &View, problem: Option<&str>) -> Line<'static> {
    if let Some(typed) = &view.editing {
        return Line::from(format!("filter (host, port, protocol, iface): {typed}_"));
    }
    if let Some(problem) = problem {
        return Line::styled(
            format!("the daemon does not answer: {problem}"),
            Style::default().add_modifier(Modifier::BOLD),
        );
    }
    let Some(s) = screen else {
        return Line::from("waiting for the daemon's first snapshot…");
    };
    let rates = s.interface.averages[0];
    Line::from(format!(
        "? help, q quit · in {} · out {} · {} pairs of {}",
        view.rate(rates[0]),
        view.rate(rates[1]),
        s.table.pairs,
        s.table.capacity,
    ))
}

/// A header line and rows, `skip` of them scrolled past (as far as the end).
fn scrolled(frame: &mut Frame<'_>, area: Rect, lines: Vec<Line<'static>>, skip: usize) {
    let [head, rest] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
    let mut lines = lines.into_iter();
    if let Some(first) = lines.next() {
        frame.render_widget(
            Paragraph::new(first).style(Style::default().add_modifier(Modifier::UNDERLINED)),
            head,
        );
    }
    let rows: Vec<Line<'static>> = lines.collect();
    let last_start = rows.len().saturating_sub(rest.height as usize);
    let shown: Vec<Line<'static>> = rows.into_iter().skip(skip.min(last_start)).collect();
    frame.render_widget(Paragraph::new(shown), rest);
}

const RATE: usize = 12;
const CUM: usize = 11;

/// The conversations a body of `height` rows shows in line mode `lines`.
pub fn rows_that_fit(height: u16, lines: LineMode) -> usize {
    let per_row = if lines == LineMode::TwoLines { 2 } else { 1 };
    // One row is the header.
    (height.saturating_sub(1) as usize / per_row).max(1)
}

/// The body's height in a terminal of `height` rows (less the header and
/// the status line).
pub fn body_height(height: u16) -> u16 {
    height.saturating_sub(2)
}

/// iftop's screen: one or two lines per conversation, 2 s, 10 s and 40 s
/// averages, cumulative bytes and the peak; the header line first, then the
/// rows the daemon picked to fit.
fn conversations(screen: &Screen, view: &View, area: Rect) -> Vec<Line<'static>> {
    let width = area.width;
    let fixed = 4 + 1 + 6 + 3 * RATE + CUM + RATE;
    let host = (width as usize).saturating_sub(fixed) / 2;
    let host = host.max(15);
    let mut lines = vec![Line::from(format!(
        "{:<host$}    {:<host$} {:<6}{:>RATE$}{:>RATE$}{:>RATE$}{:>CUM$}{:>RATE$}",
        "this side", "other side", "proto", "2s", "10s", "40s", "cum", "peak"
    ))];
    for c in &screen.conversations {
        let local = clip(&c.local, host);
        let remote = clip(&c.remote, host);
        let Figures {
            averages,
            latest,
            peak,
        } = c.figures;
        // One side of the conversation: 1 for sent, 0 for received, None for both.
        let figures = |side: Option<usize>| {
            let pick = |r: [f64; 2]| side.map_or(r[0] + r[1], |i| r[i]);
            let cum = side.map_or(latest[0] + latest[1], |i| latest[i]);
            format!(
                "{:>RATE$}{:>RATE$}{:>RATE$}{:>CUM$}{:>RATE$}",
                view.rate(pick(averages[0])),
                view.rate(pick(averages[1])),
                view.rate(pick(averages[2])),
                super::view::human(cum as f64, "B"),
                view.rate(pick(peak)),
            )
        };
        let proto = &c.proto;
        match view.lines {
            LineMode::TwoLines => {
                lines.push(Line::from(format!(
                    "{local:<host$} => {remote:<host$} {proto:<6}{}",
                    figures(Some(1))
                )));
                lines.push(Line::from(format!(
                    "{:<host$} <= {:<host$} {:<6}{}",
                    "",
                    "",
                    "",
                    figures(Some(0))
                )));
            }
            LineMode::Sent => lines.push(Line::from(format!(
                "{local:<host$} => {remote:<host$} {proto:<6}{}",
                figures(Some(1))
            ))),
            LineMode::Received => lines.push(Line::from(format!(
                "{local:<host$} <= {remote:<host$} {proto:<6}{}",
                figures(Some(0))
            ))),
            LineMode::Total => {
                // "<=>" takes one column more than "=>": the other side one less.
                let narrower = host.saturating_sub(1);
                let remote = clip(&c.remote, narrower);
                lines.push(Line::from(format!(
                    "{local:<host$} <=> {remote:<narrower$} {proto:<6}{}",
                    figures(None)
                )))
            }
        }
    }
    lines
}

/// At most `width` characters, the cut marked.
fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let kept: String = text.chars().take(width.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// Per interface: rates in and out, totals, the table's fill, and a
/// sparkline of each direction's rate over the last 40 s.
fn interfaces(frame: &mut Frame<'_>, area: Rect, snapshot: &Screen, view: &View) {
    let [text, spark_in, spark_out] = Layout::vertical([
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(5),
    ])
    .areas(area);
    let [now, ten, forty] = snapshot.interface.averages;
    let total = snapshot.interface.latest;
    let dropped = snapshot.dropped;
    let lines = vec![
        Line::from(format!(
            "{:<16}{:>RATE$}{:>RATE$}{:>RATE$}{:>CUM$}",
            "interface", "2s", "10s", "40s", "cum"
        ))
        .style(Style::default().add_modifier(Modifier::UNDERLINED)),
        Line::from(format!(
            "{:<16}{:>RATE$}{:>RATE$}{:>RATE$}{:>CUM$}",
            format!("{} in", snapshot.iface),
            view.rate(now[0]),
            view.rate(ten[0]),
            view.rate(forty[0]),
            super::view::human(total[0] as f64, "B"),
        )),
        Line::from(format!(
            "{:<16}{:>RATE$}{:>RATE$}{:>RATE$}{:>CUM$}",
            format!("{} out", snapshot.iface),
            view.rate(now[1]),
            view.rate(ten[1]),
            view.rate(forty[1]),
            super::view::human(total[1] as f64, "B"),
        )),
        Line::from(format!(
            "pairs {} of {} · dropped by the policy {}{}",
            snapshot.table.pairs,
            snapshot.table.capacity,
            super::view::human(dropped as f64, "B"),
            match snapshot.attaching.is_empty() {
                true => String::new(),
                false => format!(" · attaching {}", snapshot.attaching.join(", ")),
            }
        )),
        Line::from(format!(
            "names {} · DNS answers read {}, ignored {} (oversized {}, cut short {}, \
             unreadable {}), held back {} (rate limit {}, ring full {})",
            snapshot.names,
            snapshot.dns.answers,
            snapshot.dns.oversized + snapshot.dns.truncated + snapshot.dns.malformed,
            snapshot.dns.oversized,
            snapshot.dns.truncated,
            snapshot.dns.malformed,
            snapshot.dns.limited + snapshot.dns.lost,
            snapshot.dns.limited,
            snapshot.dns.lost,
        )),
    ];
    frame.render_widget(Paragraph::new(lines), text);
    let steps = &snapshot.steps;
    let width = spark_in.width.saturating_sub(2) as usize;
    let recent = &steps[steps.len().saturating_sub(width)..];
    for (side, area, title) in [(0, spark_in, "in"), (1, spark_out, "out")] {
        let data: Vec<u64> = recent.iter().map(|r| r[side] as u64).collect();
        let peak = data.iter().max().copied().unwrap_or(0);
        frame.render_widget(
            Sparkline::default()
                .block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(format!("{title}, peak {}", view.rate(peak as f64))),
                )
                .data(&data),
            area,
        );
    }
}

/// The hierarchy report's tree with rates in and out and totals.
fn protocols(screen: &Screen, view: &View) -> Vec<Line<'static>> {
    let mut lines = vec![Line::from(format!(
        "{:<28}{:>RATE$}{:>RATE$}{:>RATE$}{:>RATE$}{:>CUM$}{:>CUM$}",
        "protocol", "in 2s", "out 2s", "in 10s", "out 10s", "in cum", "out cum"
    ))];
    for row in &screen.protocols {
        let Figures {
            averages, latest, ..
        } = row.figures;
        let (now, ten, total) = (averages[0], averages[1], latest);
        lines.push(Line::from(format!(
            "{:<28}{:>RATE$}{:>RATE$}{:>RATE$}{:>RATE$}{:>CUM$}{:>CUM$}",
            format!("{}{}", "  ".repeat(row.depth), row.name),
            view.rate(now[0]),
            view.rate(now[1]),
            view.rate(ten[0]),
            view.rate(ten[1]),
            super::view::human(total[0] as f64, "B"),
            super::view::human(total[1] as f64, "B"),
        )));
    }
    lines
}

/// Rules with hits per second, quotas as bars with their rate and when they
/// run out at it, and the latest alerts.
fn policy(frame: &mut Frame<'_>, area: Rect, snapshot: &Screen, view: &View) {
    let quotas = snapshot.quotas.len() as u16;
    let [rules_area, quota_title, quota_area, alerts_area] = Layout::vertical([
        Constraint::Length(snapshot.rules.len().max(1) as u16 + 1),
        Constraint::Length(1),
        Constraint::Length(quotas.max(1)),
        Constraint::Min(1),
    ])
    .areas(area);
    let mut rules = vec![Line::from(format!(
        "{:>4}  {:<40}{:>14}{:>14}{:>14}",
        "id", "rule", "hits/s in", "hits/s out", "hits"
    ))
    .style(Style::default().add_modifier(Modifier::UNDERLINED))];
    for super::screen::RuleRow { rule, rate } in &snapshot.rules {
        rules.push(Line::from(format!(
            "{:>4}  {:<40}{:>14.1}{:>14.1}{:>14}",
            rule.id,
            clip(&rule.rule, 40),
            rate[0],
            rate[1],
            rule.ingress.frames + rule.egress.frames
        )));
    }
    if snapshot.rules.is_empty() {
        rules.push(Line::from("no rules"));
    }
    frame.render_widget(Paragraph::new(rules), rules_area);
    frame.render_widget(
        Paragraph::new("quotas").style(Style::default().add_modifier(Modifier::UNDERLINED)),
        quota_title,
    );
    if snapshot.quotas.is_empty() {
        frame.render_widget(Paragraph::new("no quotas"), quota_area);
    }
    for (i, super::screen::QuotaRow { quota, rate }) in snapshot.quotas.iter().enumerate() {
        let rate = *rate;
        let ratio = if quota.limit == 0 {
            1.0
        } else {
            (quota.used as f64 / quota.limit as f64).min(1.0)
        };
        let left = quota.limit.saturating_sub(quota.used);
        let runs_out = if quota.blocked || left == 0 {
            "spent".to_string()
        } else if rate > 0.0 {
            let secs = (left as f64 / rate).round() as u64;
            format!(
                "spent in {}",
                humantime::format_duration(std::time::Duration::from_secs(secs))
            )
        } else {
            "not used now".to_string()
        };
        let label = format!(
            "{:<16} {} of {} ({:.0}%) · {} · {runs_out}",
            clip(&quota.name, 16),
            super::view::human(quota.used as f64, "B"),
            super::view::human(quota.limit as f64, "B"),
            ratio * 100.0,
            view.rate(rate),
        );
        let row = Rect {
            y: quota_area.y + i as u16,
            height: 1,
            ..quota_area
        };
        if row.y < quota_area.bottom() {
            frame.render_widget(LineGauge::default().ratio(ratio).label(label), row);
        }
    }
    let mut alerts = vec![
        Line::from("recent alerts").style(Style::default().add_modifier(Modifier::UNDERLINED))
    ];
    alerts.extend(
        snapshot
            .alerts
            .iter()
            .rev()
            .map(|a| Line::from(format!("{}  {}", a.time, a.message()))),
    );
    if snapshot.alerts.is_empty() {
        alerts.push(Line::from("none"));
    }
    let shown: Vec<Line<'static>> = alerts.into_iter().skip(view.scroll).collect();
    frame.render_widget(Paragraph::new(shown), alerts_area);
}

/// The keys, in a box over the view.
fn help(frame: &mut Frame<'_>) {
    let area = frame.area();
    let width = 64.min(area.width);
    let height = (HELP.len() as u16 + 2).min(area.height);
    let boxed = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    let lines: Vec<Line<'static>> = HELP
        .iter()
        .map(|(keys, what)| Line::from(format!("{keys:<16} {what}")))
        .collect();
    frame.render_widget(Clear, boxed);
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title("keys")),
        boxed,
    );
}
