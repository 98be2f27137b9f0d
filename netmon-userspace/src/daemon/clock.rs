//! The daemon's two clocks, passed in so that tests can drive time.

use jiff::Timestamp;

/// Where the daemon reads the time.
pub trait Clock {
    /// Wall-clock time: interval records, quota periods, alerts.
    fn now(&self) -> Timestamp;
    /// `CLOCK_MONOTONIC` in ns: interval lengths and how long a pair stood still.
    fn monotonic_ns(&self) -> u64;
}

/// The system's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn monotonic_ns(&self) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime fills the timespec.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        // CLOCK_MONOTONIC exists on every Linux; a failure is a broken system.
        assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
}
