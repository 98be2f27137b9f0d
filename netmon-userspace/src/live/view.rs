//! What the operator chose to see, and the keys that change it (iftop's
//! where it has one). Pure: no terminal, so every key is unit-tested.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::screen::ScreenQuery;

/// The views, in the order Tab goes through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    /// Rates in and out per interface, with sparklines.
    Interfaces,
    /// Conversations, like iftop.
    Conversations,
    /// The protocol and service tree.
    Protocols,
    /// Rules, quotas and alerts.
    Policy,
}

impl Tab {
    /// Every view, in Tab order.
    pub const ALL: [Tab; 4] = [
        Tab::Interfaces,
        Tab::Conversations,
        Tab::Protocols,
        Tab::Policy,
    ];

    /// Its title.
    pub fn title(self) -> &'static str {
        match self {
            Tab::Interfaces => "Interfaces",
            Tab::Conversations => "Conversations",
            Tab::Protocols => "Protocols",
            Tab::Policy => "Policy",
        }
    }

    fn step(self, by: isize) -> Tab {
        let at = Tab::ALL.iter().position(|t| *t == self).unwrap_or(0) as isize;
        Tab::ALL[(at + by).rem_euclid(Tab::ALL.len() as isize) as usize]
    }
}

/// What rows are sorted by: their 2 s average.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortBy {
    /// Received.
    In,
    /// Sent.
    Out,
    /// Both.
    Total,
}

impl SortBy {
    /// As the header shows it.
    pub fn name(self) -> &'static str {
        match self {
            SortBy::In => "in",
            SortBy::Out => "out",
            SortBy::Total => "total",
        }
    }
}

/// How a conversation is shown (iftop's `t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineMode {
    /// Two lines: sent (`=>`) and received (`<=`).
    TwoLines,
    /// One line: sent.
    Sent,
    /// One line: received.
    Received,
    /// One line: both added up (`<=>`).
    Total,
}

impl LineMode {
    /// As the header shows it.
    pub fn name(self) -> &'static str {
        match self {
            LineMode::TwoLines => "two-line",
            LineMode::Sent => "sent",
            LineMode::Received => "received",
            LineMode::Total => "one-line total",
        }
    }
}

/// The operator's choices.
#[derive(Clone, Debug)]
pub struct View {
    /// The view shown.
    pub tab: Tab,
    /// The sort.
    pub sort: SortBy,
    /// The line mode of conversations.
    pub lines: LineMode,
    /// Names from DNS answers instead of addresses, where known.
    pub names: bool,
    /// No new snapshots are fetched.
    pub paused: bool,
    /// Rows scrolled past.
    pub scroll: usize,
    /// What rows must match (see [`matches`]).
    pub filter: String,
    /// The filter being typed after `/`, until Enter or Esc.
    pub editing: Option<String>,
    /// Rates in bits per second rather than bytes.
    pub bits: bool,
    /// The help is shown.
    pub help: bool,
    /// The operator asked to quit.
    pub quit: bool,
    /// The interface shown (`--iface`), or the daemon's first.
    pub iface: Option<String>,
    /// The daemon's interfaces, which `i` goes through.
    pub ifaces: Vec<String>,
}

impl Default for View {
    fn default() -> Self {
        View {
            tab: Tab::Conversations,
            sort: SortBy::Total,
            lines: LineMode::TwoLines,
            names: true,
            paused: false,
            scroll: 0,
            filter: String::new(),
            editing: None,
            bits: false,
            help: false,
            quit: false,
            iface: None,
            ifaces: Vec::new(),
        }
    }
}

/// The keys, as the help shows them.
pub const HELP: &[(&str, &str)] = &[
    ("Tab / Shift-Tab", "next / previous view"),
    ("1 / 2 / 3", "sort by in / out / total"),
    ("s", "cycle the sort"),
    ("t", "line mode: two-line, sent, received, total"),
    ("n", "names from DNS answers on / off"),
    ("P or Space", "pause / resume"),
    ("j k, Down Up", "scroll; PgDn PgUp, Home"),
    ("i", "next interface"),
    ("/", "filter: host, port, protocol or iface (Enter, Esc)"),
    ("b", "bits / bytes per second"),
    ("?", "this help"),
    ("q", "quit"),
];

impl View {
    /// Takes one key press.
    pub fn key(&mut self, key: KeyEvent) {
        if let Some(typed) = &mut self.editing {
            match key.code {
                KeyCode::Enter => {
                    self.filter = typed.trim().to_string();
                    self.editing = None;
                    self.scroll = 0;
                }
                KeyCode::Esc => self.editing = None,
                KeyCode::Backspace => {
                    typed.pop();
                }
                KeyCode::Char(c) if !c.is_control() => typed.push(c),
                _ => {}
            }
            return;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return;
        }
        if self.help && !matches!(key.code, KeyCode::Char('q')) {
            // Any key closes the help.
            self.help = false;
            return;
        }
        match key.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Tab => self.switch(1),
            KeyCode::BackTab => self.switch(-1),
            KeyCode::Char('1') => self.sort = SortBy::In,
            KeyCode::Char('2') => self.sort = SortBy::Out,
            KeyCode::Char('3') => self.sort = SortBy::Total,
            KeyCode::Char('s') => {
                self.sort = match self.sort {
                    SortBy::In => SortBy::Out,
                    SortBy::Out => SortBy::Total,
                    SortBy::Total => SortBy::In,
                }
            }
            KeyCode::Char('t') => {
                self.lines = match self.lines {
                    LineMode::TwoLines => LineMode::Sent,
                    LineMode::Sent => LineMode::Received,
                    LineMode::Received => LineMode::Total,
                    LineMode::Total => LineMode::TwoLines,
                }
            }
            KeyCode::Char('n') => self.names = !self.names,
            KeyCode::Char('P') | KeyCode::Char(' ') => self.paused = !self.paused,
            KeyCode::Char('j') | KeyCode::Down => self.scroll += 1,
            KeyCode::Char('k') | KeyCode::Up => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::PageDown => self.scroll += 10,
            KeyCode::PageUp => self.scroll = self.scroll.saturating_sub(10),
            KeyCode::Home => self.scroll = 0,
            KeyCode::Char('/') => self.editing = Some(self.filter.clone()),
            KeyCode::Char('b') => self.bits = !self.bits,
            KeyCode::Char('?') => self.help = true,
            KeyCode::Char('i') => self.next_iface(),
            _ => {}
        }
    }

    /// Shows the interface after the one shown, in the daemon's order.
    fn next_iface(&mut self) {
        let at = self
            .ifaces
            .iter()
            .position(|i| Some(i) == self.iface.as_ref())
            .map_or(0, |at| at + 1);
        if let Some(next) = self.ifaces.get(at % self.ifaces.len().max(1)) {
            self.iface = Some(next.clone());
            self.scroll = 0;
        }
    }

    /// What the screen asks the daemon for, with `rows` conversations.
    pub fn query(&self, rows: usize, fresh: bool) -> ScreenQuery {
        ScreenQuery {
            iface: self.iface.clone(),
            fresh,
            sort: self.sort,
            filter: self.filter.clone(),
            names: self.names,
            scroll: self.scroll,
            rows,
        }
    }

    fn switch(&mut self, by: isize) {
        self.tab = self.tab.step(by);
        self.scroll = 0;
    }

    /// A rate as the view shows it: bytes or bits per second.
    pub fn rate(&self, bytes_per_s: f64) -> String {
        if self.bits {
            format!("{}/s", human(bytes_per_s * 8.0, "b"))
        } else {
            format!("{}/s", human(bytes_per_s, "B"))
        }
    }
}

/// A quantity with a decimal prefix: `12.34 kB`.
pub fn human(value: f64, unit: &str) -> String {
    crate::console::human_bytes(value).replace('B', unit)
}

/// What a row offers the filter: its interface, hosts (addresses and names),
/// ports and protocol.
pub struct Haystack<'a> {
    /// The interface.
    pub iface: &'a str,
    /// Addresses and names, as shown.
    pub hosts: &'a [&'a str],
    /// Ports (zero when not known).
    pub ports: [u16; 2],
    /// The protocol's name.
    pub proto: &'a str,
}

/// True when every word of `filter` matches: a number matches a port, a
/// protocol's name the protocol, an interface's name the interface, and
/// anything else a part of a host's address or name.
pub fn matches(filter: &str, row: &Haystack<'_>) -> bool {
    filter.split_whitespace().all(|word| {
        let word = word.to_ascii_lowercase();
        if let Ok(port) = word.parse::<u16>() {
            if row.ports.contains(&port) {
                return true;
            }
        }
        word == row.proto
            || word == row.iface
            || row
                .hosts
                .iter()
                .any(|h| h.to_ascii_lowercase().contains(&word))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(view: &mut View, keys: &str) {
        for c in keys.chars() {
            let code = match c {
                '\t' => KeyCode::Tab,
                '\n' => KeyCode::Enter,
                c => KeyCode::Char(c),
            };
            view.key(KeyEvent::new(code, KeyModifiers::NONE));
        }
    }

    #[test]
    fn keys_switch_views_sorts_and_modes_as_in_iftop() {
        let mut view = View::default();
        assert_eq!(view.tab, Tab::Conversations);
        press(&mut view, "\t\t\t");
        assert_eq!(view.tab, Tab::Interfaces, "Tab wraps around");
        press(&mut view, "1");
        assert_eq!(view.sort, SortBy::In);
        press(&mut view, "ss");
        assert_eq!(view.sort, SortBy::Total);
        press(&mut view, "t");
        assert_eq!(view.lines, LineMode::Sent);
        press(&mut view, "nbP jjjk");
        assert!(!view.names && view.bits && !view.paused);
        assert_eq!(view.scroll, 2);
        press(&mut view, "/udp 53\n");
        assert_eq!(view.filter, "udp 53");
        assert_eq!(view.scroll, 0);
        press(&mut view, "?");
        assert!(view.help);
        press(&mut view, "x");
        assert!(!view.help && !view.quit, "a key closes the help");
        press(&mut view, "q");
        assert!(view.quit);
    }

    #[test]
    fn i_goes_through_the_daemons_interfaces_from_the_one_shown() {
        let mut view = View {
            iface: Some("nm1".into()),
            ifaces: vec!["nm0".into(), "nm1".into(), "ns:nm2".into()],
            scroll: 3,
            ..View::default()
        };
        press(&mut view, "i");
        assert_eq!(view.iface.as_deref(), Some("ns:nm2"));
        assert_eq!(view.scroll, 0);
        press(&mut view, "i");
        assert_eq!(view.iface.as_deref(), Some("nm0"));
        assert_eq!(view.query(20, true).iface.as_deref(), Some("nm0"));
    }

    #[test]
    fn a_filter_matches_hosts_ports_protocols_and_interfaces() {
        let row = Haystack {
            iface: "eth0",
            hosts: &["10.200.0.1", "name.test"],
            ports: [53, 40000],
            proto: "udp",
        };
        for yes in ["", "udp", "53", "NAME", "10.200", "eth0 udp 53"] {
            assert!(matches(yes, &row), "{yes}");
        }
        for no in ["tcp", "54", "other.test", "eth1", "udp 80"] {
            assert!(!matches(no, &row), "{no}");
        }
    }

    #[test]
    fn rates_read_in_bytes_or_bits() {
        let mut view = View::default();
        assert_eq!(view.rate(12_345.0), "12.35 kB/s");
        view.bits = true;
        assert_eq!(view.rate(12_345.0), "98.76 kb/s");
    }
}
