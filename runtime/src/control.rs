//! The memory controller's policy: which rung of a ladder of run states the process should be
//! on, given how much room the device has left. Plain arithmetic on numbers the caller gives:
//! the readings come from std-only readers (the binary's `/proc` and cgroup readers), and the
//! caller applies a decision (`Model::set_views`, `set_kv_format`, `set_kv_window`).
//!
//! ```text
//! ladder:  rung 0 (the plan the run started with) ... rung n-1 (the smallest state)
//!          bytes[0] >= bytes[1] >= ... >= bytes[n-1]      (predicted process bytes)
//!
//! room < low, or pressure >= threshold      -> step down: the nearest rung that frees
//!                                              (low + high) / 2 - room bytes (pressure: one rung)
//! room > high, `hold` tokens since the last -> step up: the highest rung whose extra bytes
//!   step                                       still leave `high` of room
//! ```
//!
//! `low < high` is the hysteresis: a step down aims at the middle of the band, so the room it
//! makes does not immediately allow a step back up, and a step up keeps `high` free, so it
//! does not immediately call for a step down.

use alloc::vec::Vec;

/// Thresholds of the policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Step down when the room falls below this many bytes.
    pub low: u64,
    /// Step back up only while more than this many bytes would stay free after the step.
    pub high: u64,
    /// Step down one rung when memory pressure (PSI `some avg10`, percent) reaches this.
    pub pressure: f32,
    /// Tokens to wait after any step before stepping up, or down again for pressure (PSI is a
    /// 10-second average: it stays high for a while after the cause is gone).
    pub hold: usize,
}

impl Policy {
    /// Thresholds scaled to a run whose top rung takes `top` bytes: `low` is 4% of it (at least
    /// 4 MiB, below a budget plan's margin), `high` three times `low`.
    pub fn for_bytes(top: u64) -> Policy {
        let low = (top / 25).max(4 << 20);
        Policy { low, high: 3 * low, pressure: 10.0, hold: 32 }
    }
}

/// What the device has left, as the readers see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Bytes the process may still grow by before the device runs short: the least of the
    /// budget's, the cgroup's and the system's (`MemAvailable` less its reserve).
    pub room: u64,
    /// Memory pressure, PSI `some avg10` (percent of time stalled), where the kernel gives it.
    pub pressure: Option<f32>,
}

/// Why a step was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The room fell below `low`.
    LowMemory,
    /// PSI reached the pressure threshold.
    Pressure,
    /// The room is above `high` again.
    Recovered,
    /// The power controller asked for a deeper rung (or let go of one); the caller applies the
    /// deeper of the two controllers' rungs.
    Power,
}

impl Cause {
    pub fn name(self) -> &'static str {
        match self {
            Cause::LowMemory => "low-memory",
            Cause::Pressure => "pressure",
            Cause::Recovered => "recovered",
            Cause::Power => "power",
        }
    }
}

/// A step the caller should take: from rung `from` to rung `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub from: usize,
    pub to: usize,
    pub cause: Cause,
}

/// The policy's state: the ladder's predicted bytes and the rung the run is on.
#[derive(Debug, Clone)]
pub struct Controller {
    bytes: Vec<u64>,
    at: usize,
    last_step: Option<usize>,
    pub policy: Policy,
}

impl Controller {
    /// A controller on rung 0 of a ladder whose rungs take `bytes` (non-increasing, at least
    /// one rung).
    pub fn new(bytes: Vec<u64>, policy: Policy) -> Controller {
        assert!(!bytes.is_empty(), "a ladder has at least the rung the run starts on");
        assert!(bytes.windows(2).all(|w| w[0] >= w[1]), "a ladder's rungs take fewer bytes going down");
        Controller { bytes, at: 0, last_step: None, policy }
    }

    /// The rung the run is on.
    pub fn rung(&self) -> usize {
        self.at
    }

    /// Rungs in the ladder.
    pub fn rungs(&self) -> usize {
        self.bytes.len()
    }

    /// Predicted bytes of rung `i`.
    pub fn bytes(&self, i: usize) -> u64 {
        self.bytes[i]
    }

    fn held(&self, token: usize) -> bool {
        self.last_step.is_some_and(|t| token < t + self.policy.hold)
    }

    /// The step to take at token `token` given reading `r`, if any; the controller assumes the
    /// caller takes it.
    pub fn observe(&mut self, token: usize, r: Reading) -> Option<Decision> {
        let p = self.policy;
        let last = self.bytes.len() - 1;
        let to = if r.room < p.low && self.at < last {
            let need = (p.low + p.high) / 2 - r.room;
            let at = self.bytes[self.at];
            let to = (self.at + 1..=last).find(|&k| at - self.bytes[k] >= need).unwrap_or(last);
            Some((to, Cause::LowMemory))
        } else if r.pressure.is_some_and(|x| x >= p.pressure) && self.at < last && !self.held(token) {
            Some((self.at + 1, Cause::Pressure))
        } else if r.room > p.high && self.at > 0 && !self.held(token) && r.pressure.is_none_or(|x| x < p.pressure) {
            let spare = r.room - p.high;
            let at = self.bytes[self.at];
            (0..self.at).find(|&j| self.bytes[j] - at <= spare).map(|j| (j, Cause::Recovered))
        } else {
            None
        };
        let (to, cause) = to?;
        let d = Decision { from: self.at, to, cause };
        self.at = to;
        self.last_step = Some(token);
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn ladder() -> Controller {
        // 200, 190, ..., 100 MiB.
        let bytes = (0..11).map(|i| (200 - 10 * i) * MIB).collect();
        Controller::new(bytes, Policy { low: 16 * MIB, high: 48 * MIB, pressure: 10.0, hold: 4 })
    }

    fn room(mib: u64) -> Reading {
        Reading { room: mib * MIB, pressure: None }
    }

    #[test]
    fn steps_down_far_enough_to_reach_the_middle_of_the_band() {
        let mut c = ladder();
        assert_eq!(c.observe(0, room(30)), None);
        // 4 MiB of room: 28 MiB to free to reach 32, three rungs of 10.
        let d = c.observe(1, room(4)).unwrap();
        assert_eq!((d.from, d.to, d.cause), (0, 3, Cause::LowMemory));
        // Still short right after (the memory has not come back yet): further down, hold or not.
        let d = c.observe(2, room(10)).unwrap();
        assert_eq!((d.from, d.to), (3, 6));
    }

    #[test]
    fn the_last_rung_is_the_floor() {
        let mut c = ladder();
        assert_eq!(c.observe(0, room(0)).unwrap().to, 4);
        assert_eq!(c.observe(1, Reading { room: 0, pressure: None }).unwrap().to, 8);
        assert_eq!(c.observe(2, room(0)).unwrap().to, 10);
        assert_eq!(c.observe(3, room(0)), None);
    }

    #[test]
    fn steps_up_with_hysteresis_and_hold() {
        let mut c = ladder();
        c.observe(0, room(0)).unwrap(); // rung 4
        // In the band: nothing either way.
        assert_eq!(c.observe(10, room(40)), None);
        // Above high, but within the hold after the step at token 0? hold is 4: token 2 waits.
        let mut c2 = ladder();
        c2.observe(0, room(0)).unwrap();
        assert_eq!(c2.observe(2, room(200)), None);
        // 75 MiB of room: up by at most 27 MiB, keeping 48 free: two rungs (20 MiB).
        let d = c.observe(11, room(75)).unwrap();
        assert_eq!((d.from, d.to, d.cause), (4, 2, Cause::Recovered));
        // Held right after.
        assert_eq!(c.observe(12, room(500)), None);
        // Plenty: back to the top.
        assert_eq!(c.observe(20, room(500)).unwrap().to, 0);
        assert_eq!(c.observe(40, room(500)), None);
    }

    #[test]
    fn pressure_steps_one_rung_at_a_time_and_blocks_stepping_up() {
        let mut c = ladder();
        let hot = Reading { room: 500 * MIB, pressure: Some(25.0) };
        assert_eq!(c.observe(0, hot).unwrap(), Decision { from: 0, to: 1, cause: Cause::Pressure });
        assert_eq!(c.observe(1, hot), None, "held");
        assert_eq!(c.observe(4, hot).unwrap().to, 2);
        // Plenty of room but still under pressure: no step up.
        let warm = Reading { room: 500 * MIB, pressure: Some(12.0) };
        assert_eq!(c.observe(9, warm).unwrap().to, 3);
        let calm = Reading { room: 500 * MIB, pressure: Some(0.5) };
        assert_eq!(c.observe(13, calm).unwrap().to, 0);
    }

    #[test]
    fn thresholds_scale_with_the_run() {
        let p = Policy::for_bytes(50 * MIB);
        assert_eq!(p.low, 4 * MIB);
        let p = Policy::for_bytes(4000 * MIB);
        assert_eq!(p.low, 160 * MIB);
        assert_eq!(p.high, 480 * MIB);
    }
}
