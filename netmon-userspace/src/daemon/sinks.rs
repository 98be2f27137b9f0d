//! Where reports go: the files, the alert program, the detail log, the
//! console line, the cross-check with the interface's counters. Each sink
//! keeps what it must retry; one that fails never stops the others.

use std::{io::Write as _, sync::Arc, time::Duration};

use crate::{
    alerts::Alerter,
    console,
    crosscheck::CrossCheck,
    datapath::netns::Netns,
    logs::{self, Files, LogError},
};

use super::report::{IntervalReport, Report};

/// A consumer of the daemon's reports.
pub trait Sink {
    /// Takes one report. An error is logged by the daemon; the sink gets the
    /// next report as usual and retries then what it could not write.
    fn deliver(&mut self, report: &Report<'_>) -> Result<(), LogError>;

    /// What it still could not write when the daemon stops, in words.
    fn unwritten(&self) -> Option<String> {
        None
    }

    /// Forgets interface `iface`, retired after its last report: a
    /// container's veth does not come back, so nothing of it is kept.
    fn retired(&mut self, _iface: &str) {}

    /// Learns that interfaces (or a pattern of them) labelled `label`, of
    /// namespace `netns` (`None`: the daemon's own), are watched from now
    /// on: at the start, and when a reload of the configuration adds them.
    fn watching(&mut self, _label: &str, _netns: Option<&Arc<Netns>>) {}
}

/// The rules file, whenever the policy changed; the state file and the
/// old-format log, in that order, every `--log-every` and at the stop. Each is replaced whole, so a failed write is
/// retried with the next report. The store is the record between those
/// writes: the files are an export of it.
pub struct FilesSink {
    files: Files,
    rules_saved: Option<u64>,
    every: Duration,
    /// The polls' time (the daemon's monotonic clock) since the state file
    /// and the log were last written (or tried).
    since_written: Duration,
    /// A write failed: try again with the next report.
    failed: bool,
}

impl FilesSink {
    /// Writes `files` every `every` (zero: every interval), the rules file
    /// first with the first report. The daemon wrote them at its start.
    pub fn new(files: Files, every: Duration) -> Self {
        FilesSink {
            files,
            rules_saved: None,
            every,
            since_written: Duration::ZERO,
            failed: false,
        }
    }
}

impl Sink for FilesSink {
    fn deliver(&mut self, report: &Report<'_>) -> Result<(), LogError> {
        let (n, count) = report.of_poll;
        if n + 1 < count {
            return Ok(());
        }
        let saved = &report.saved;
        let version = saved.enforcer.rules_version();
        if self.rules_saved != Some(version) {
            self.files.save_rules(&saved.enforcer.persisted_rules())?;
            self.rules_saved = Some(version);
        }
        // Quota usage between these writes is in the store, the rules in
        // the rules file.
        if let Some(interval) = report.interval {
            self.since_written += interval.elapsed;
        }
        let due = self.since_written >= self.every;
        if !(due || self.failed || report.stopping) {
            return Ok(());
        }
        self.since_written = Duration::ZERO;
        let saved_now = self.files.save(saved.state, Some(saved.baseline));
        self.failed = saved_now.is_err();
        saved_now
    }

    fn unwritten(&self) -> Option<String> {
        self.failed.then(|| {
            format!(
                "the totals could not be written to {} at the stop (the history database holds them: `netmon export log`)",
                self.files.log.display()
            )
        })
    }
}

/// Runs `--alert-exec` and logs each alert, after the files hold that it fired.
pub struct AlertSink(pub Alerter);

impl Sink for AlertSink {
    fn deliver(&mut self, report: &Report<'_>) -> Result<(), LogError> {
        for event in report.interval.iter().flat_map(|i| &i.alerts) {
            self.0.deliver(event);
        }
        Ok(())
    }
}

/// The detail log: one JSON line per interval, kept until written.
pub struct DetailSink {
    path: std::path::PathBuf,
    rotation: Option<logs::detail::Rotation>,
    pending: Vec<logs::detail::Interval>,
}

impl DetailSink {
    /// Appends to `path`, rotated by size with `rotation`.
    pub fn new(path: std::path::PathBuf, rotation: Option<logs::detail::Rotation>) -> Self {
        DetailSink {
            path,
            rotation,
            pending: Vec::new(),
        }
    }
}

impl Sink for DetailSink {
    fn deliver(&mut self, report: &Report<'_>) -> Result<(), LogError> {
        let current = report.interval.map(|i| {
            logs::detail::IntervalRecord {
                iface: &i.iface,
                start: i.start,
                end: i.end,
                usage: &i.usage,
            }
            .named(&i.names)
        });
        // Earlier records first, in order; the current one is copied only
        // when it cannot be written now.
        let mut failed = None;
        while let Some(record) = self.pending.first() {
            if let Err(e) = logs::detail::append_rotated(&self.path, self.rotation, record) {
                failed = Some(e);
                break;
            }
            self.pending.remove(0);
        }
        if let Some(record) = current {
            if failed.is_none() {
                failed = logs::detail::append_rotated(&self.path, self.rotation, &record).err();
                if failed.is_none() {
                    return Ok(());
                }
            }
            self.pending.push(record.to_owned());
        }
        failed.map_or(Ok(()), Err)
    }

    fn unwritten(&self) -> Option<String> {
        (!self.pending.is_empty()).then(|| {
            format!(
                "{} interval(s) could not be appended to {}",
                self.pending.len(),
                self.path.display()
            )
        })
    }
}

/// The summary line on stdout: rates and the top pairs, one line per
/// interface (named when there are several).
pub struct ConsoleSink;

impl Sink for ConsoleSink {
    fn deliver(&mut self, report: &Report<'_>) -> Result<(), LogError> {
        if let Some(IntervalReport {
            iface,
            usage,
            elapsed,
            end,
            ..
        }) = report.interval
        {
            let line = console::summary(usage, *elapsed);
            let time = end.strftime("%H:%M:%S");
            let out = match report.of_poll.1 {
                1 => writeln!(std::io::stdout(), "{time}  {line}"),
                _ => writeln!(std::io::stdout(), "{time}  {iface}  {line}"),
            };
            // A closed stdout (`netmon run | head`) must not stop the daemon.
            let _ = out;
        }
        Ok(())
    }
}

/// Warns when an interface counted markedly more frames than netmon. Only
/// interfaces of the daemon's own network namespace: its sysfs shows no other's.
pub struct CrossCheckSink(std::collections::HashMap<String, CrossCheck>);

impl CrossCheckSink {
    /// Compares from the interfaces' counters now; others from their first interval on.
    pub fn new<'a>(ifaces: impl IntoIterator<Item = &'a str>) -> Self {
        CrossCheckSink(
            ifaces
                .into_iter()
                .map(|i| (i.to_string(), CrossCheck::new(i)))
                .collect(),
        )
    }
}

impl Sink for CrossCheckSink {
    /// One of that name later is another interface, its counters from zero.
    fn retired(&mut self, iface: &str) {
        self.0.remove(iface);
    }

    fn deliver(&mut self, report: &Report<'_>) -> Result<(), LogError> {
        let Some(interval) = report.interval else {
            return Ok(());
        };
        if interval.iface.contains(':') {
            return Ok(());
        }
        let frames = [0, 1].map(|d| interval.usage.totals[d].all.frames);
        match self.0.get_mut(&interval.iface) {
            Some(check) => check.interval(&interval.iface, frames),
            // From the interface's counters now: the first interval is not compared.
            None => {
                self.0
                    .insert(interval.iface.clone(), CrossCheck::new(&interval.iface));
            }
        }
        Ok(())
    }
}
