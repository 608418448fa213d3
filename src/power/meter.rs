//! Energy over a run from any [`Sensor`]: one thread samples it every period and sleeps in
//! between (a condition variable's timed wait, so `stop` need not wait out a period). Energy
//! counters are differenced; power readings are integrated with the trapezoid rule over the
//! samples' times.
//!
//! Overhead: a sysfs read costs microseconds, but some sensors run a program (`vcgencmd`, a few
//! ms). The meter times every read and never samples more often than [`OVERHEAD_SHARE`] of one
//! core allows (a 5 ms read: every 0.5 s), so measuring costs under 1% of a core whatever the
//! sensor.
//!
//! A sensor that fails mid-run is counted (errors, the last one's message), not fatal: the next
//! good sample is integrated from the last good one.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Reading, Sensor};

/// The sampling period when the caller has no reason for another.
pub const DEFAULT_PERIOD: Duration = Duration::from_millis(50);

/// The most of one core's time sampling may take: the wait between samples is at least the
/// last reads' cost divided by this.
pub const OVERHEAD_SHARE: f64 = 0.01;

/// Samples kept for [`Meter::watts_over`]: at 50 ms, the last 3.4 minutes.
const HISTORY: usize = 4096;

pub struct Meter {
    shared: Arc<Shared>,
    sampler: Option<JoinHandle<()>>,
    name: String,
}

struct Shared {
    state: Mutex<State>,
    stopping: Mutex<bool>,
    wake: Condvar,
}

struct State {
    sensor: Box<dyn Sensor>,
    /// The first good sample's time: energy is counted from there.
    first: Option<Instant>,
    /// The last good sample (time, reading).
    last: Option<(Instant, Reading)>,
    /// Joules from `first` to `last`.
    joules: f64,
    /// (time, joules so far) of the last samples, oldest first.
    history: VecDeque<(Instant, f64)>,
    samples: usize,
    errors: usize,
    last_error: Option<String>,
    /// A smoothed cost of one read.
    read_cost: Duration,
}

/// What a meter measured, from its first good sample to its last.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub sensor: String,
    pub joules: f64,
    pub seconds: f64,
    /// Average power (`joules / seconds`), None when under two samples span no time.
    pub watts: Option<f64>,
    pub samples: usize,
    pub errors: usize,
    /// The last error's message, one line.
    pub last_error: Option<String>,
}

impl Summary {
    /// The summary as the commands' JSON gives it.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "sensor": self.sensor,
            "joules": self.joules,
            "seconds": self.seconds,
            "watts": self.watts,
            "samples": self.samples,
            "errors": self.errors,
            "last_error": self.last_error,
        })
    }
}

impl std::fmt::Display for Summary {
    /// `12.34 J in 4.50 s (2.74 W average, 90 samples) from RAPL package-0`, with the errors
    /// when there were any.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2} J in {:.2} s", self.joules, self.seconds)?;
        match self.watts {
            Some(w) => write!(f, " ({w:.2} W average, {} samples)", self.samples)?,
            None => write!(f, " ({} samples)", self.samples)?,
        }
        write!(f, " from {}", self.sensor)?;
        if let Some(e) = &self.last_error {
            write!(f, "; {} read errors, the last: {e}", self.errors)?;
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A sensor that panicked leaves its state as good as after an error.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Meter {
    /// Takes the first sample now, then samples every `period` (or less often, for a slow
    /// sensor) on its own thread until stopped.
    pub fn start(sensor: Box<dyn Sensor>, period: Duration) -> Meter {
        let name = sensor.name();
        let mut state = State {
            sensor,
            first: None,
            last: None,
            joules: 0.0,
            history: VecDeque::with_capacity(HISTORY),
            samples: 0,
            errors: 0,
            last_error: None,
            read_cost: Duration::ZERO,
        };
        state.sample();
        let shared = Arc::new(Shared { state: Mutex::new(state), stopping: Mutex::new(false), wake: Condvar::new() });
        let worker = Arc::clone(&shared);
        let sampler = std::thread::Builder::new()
            .name("power-meter".into())
            .spawn(move || loop {
                let wait = period.max(lock(&worker.state).read_cost.div_f64(OVERHEAD_SHARE));
                let stopping = lock(&worker.stopping);
                let (stopping, _) = worker.wake.wait_timeout_while(stopping, wait, |s| !*s).unwrap_or_else(PoisonError::into_inner);
                if *stopping {
                    return;
                }
                drop(stopping);
                lock(&worker.state).sample();
            })
            .ok();
        let mut meter = Meter { shared, sampler, name };
        if meter.sampler.is_none() {
            // No thread (out of resources): joules() and stop() still sample, so a run is
            // measured at its ends; say so rather than fail the run.
            meter.record_error("cannot start the sampling thread: energy is read only when asked for".into());
        }
        meter
    }

    fn record_error(&mut self, e: String) {
        let mut st = lock(&self.shared.state);
        st.errors += 1;
        st.last_error = Some(e);
    }

    pub fn sensor_name(&self) -> String {
        self.name.clone()
    }

    /// Joules consumed since the meter started, up to now (takes a fresh sample).
    pub fn joules(&self) -> f64 {
        let mut st = lock(&self.shared.state);
        st.sample();
        st.joules
    }

    /// Average watts over the last `window`, from the samples kept: from the last sample at or
    /// before the window's start (or the oldest kept) to the newest. None under two samples.
    pub fn watts_over(&self, window: Duration) -> Option<f64> {
        let st = lock(&self.shared.state);
        let &(t1, j1) = st.history.back()?;
        let from = t1.checked_sub(window);
        let base = from.and_then(|from| st.history.iter().rev().find(|(t, _)| *t <= from)).or(st.history.front());
        let &(t0, j0) = base?;
        let dt = (t1 - t0).as_secs_f64();
        (dt > 0.0).then(|| (j1 - j0) / dt)
    }

    /// Good samples taken.
    pub fn samples(&self) -> usize {
        lock(&self.shared.state).samples
    }

    /// Reads that failed, and the last one's message.
    pub fn errors(&self) -> (usize, Option<String>) {
        let st = lock(&self.shared.state);
        (st.errors, st.last_error.clone())
    }

    /// Stops sampling, takes a last sample and sums up.
    pub fn stop(mut self) -> Summary {
        self.halt();
        let mut st = lock(&self.shared.state);
        st.sample();
        let seconds = match (st.first, st.last) {
            (Some(first), Some((last, _))) => (last - first).as_secs_f64(),
            _ => 0.0,
        };
        Summary {
            sensor: self.name.clone(),
            joules: st.joules,
            seconds,
            watts: (seconds > 0.0).then(|| st.joules / seconds),
            samples: st.samples,
            errors: st.errors,
            last_error: st.last_error.clone(),
        }
    }

    /// Wakes the sampling thread to end, and waits for it.
    fn halt(&mut self) {
        *lock(&self.shared.stopping) = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.sampler.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.halt();
    }
}

impl State {
    /// Reads the sensor once and adds the energy since the last good sample.
    fn sample(&mut self) {
        let started = Instant::now();
        let reading = self.sensor.read();
        let done = Instant::now();
        let cost = done - started;
        self.read_cost = if self.samples + self.errors == 0 { cost } else { (self.read_cost * 3 + cost) / 4 };
        // A slow read (a program run) measured somewhere inside it: take the middle.
        let at = started + cost / 2;
        let reading = match reading {
            Ok(Reading::Watts(w)) if w < 0.0 => Err(format!("the sensor read a negative power ({w} W)")),
            Ok(r) => Ok(r),
            Err(e) => Err(crate::report::one_line(&format!("{e:#}"))),
        };
        let r = match reading {
            Ok(r) => r,
            Err(e) => {
                self.errors += 1;
                self.last_error = Some(e);
                return;
            }
        };
        match self.last.map_or(Ok(0.0), |(t0, r0)| added_joules(t0, r0, at, r)) {
            Ok(j) => self.joules += j,
            // A counter that went back (reset, rewritten) or a sensor that changed kind: an
            // error, and counted from this reading on.
            Err(e) => {
                self.errors += 1;
                self.last_error = Some(e);
            }
        }
        self.first.get_or_insert(at);
        self.last = Some((at, r));
        self.samples += 1;
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back((at, self.joules));
    }
}

/// Joules between two good readings: a counter's difference, or power's trapezoid.
fn added_joules(t0: Instant, r0: Reading, t1: Instant, r1: Reading) -> Result<f64, String> {
    match (r0, r1) {
        (Reading::Joules(a), Reading::Joules(b)) if b >= a => Ok(b - a),
        (Reading::Joules(a), Reading::Joules(b)) => Err(format!("the energy counter went back from {a} J to {b} J")),
        (Reading::Watts(a), Reading::Watts(b)) => Ok((a + b) / 2.0 * t1.saturating_duration_since(t0).as_secs_f64()),
        _ => Err("the sensor changed between energy and power readings".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::file;
    use super::*;
    use std::path::Path;

    /// Writes a reading the way a meter's logger should: a temporary file renamed into place.
    fn put(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// A sensor that sleeps `cost` per read and then gives `watts`.
    struct Slow {
        cost: Duration,
        watts: f64,
    }

    impl Sensor for Slow {
        fn name(&self) -> String {
            "slow".into()
        }

        fn read(&mut self) -> anyhow::Result<Reading> {
            std::thread::sleep(self.cost);
            Ok(Reading::Watts(self.watts))
        }
    }

    #[test]
    fn counters_are_differenced_and_power_is_integrated_by_trapezoid() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(added_joules(t0, Reading::Joules(100.0), t1, Reading::Joules(103.5)), Ok(3.5));
        assert!((added_joules(t0, Reading::Watts(4.0), t1, Reading::Watts(6.0)).unwrap() - 2.5).abs() < 1e-12);
        assert!(added_joules(t0, Reading::Joules(5.0), t1, Reading::Joules(4.0)).unwrap_err().contains("went back"));
        assert!(added_joules(t0, Reading::Joules(5.0), t1, Reading::Watts(4.0)).unwrap_err().contains("changed"));
    }

    #[test]
    fn five_watts_for_half_a_second_is_two_and_a_half_joules() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("watts");
        put(&p, "5 W\n");
        let meter = Meter::start(file::open(&p).unwrap(), Duration::from_millis(10));
        std::thread::sleep(Duration::from_millis(500));
        let w = meter.watts_over(Duration::from_millis(200)).unwrap();
        assert!((w - 5.0).abs() < 1e-9, "{w}");
        let s = meter.stop();
        assert!((0.45..2.0).contains(&s.seconds), "{s}");
        // Constant power: the trapezoid is exact, whatever the samples' times.
        assert!((s.joules - 5.0 * s.seconds).abs() < 1e-9 && (s.joules - 2.5).abs() < 0.25, "{s}");
        assert!(s.samples >= 10 && s.errors == 0 && s.watts.is_some(), "{s}");
        assert_eq!(s.sensor, format!("file {}", p.display()));
    }

    #[test]
    fn a_joules_file_is_differenced_and_a_failing_sensor_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("joules");
        put(&p, "100 J\n");
        let meter = Meter::start(file::open(&p).unwrap(), Duration::from_millis(5));
        put(&p, "103.5 J\n");
        assert!((meter.joules() - 3.5).abs() < 1e-9);
        // The sensor fails for a while: errors, no panic, no energy lost or invented.
        std::fs::remove_file(&p).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!((meter.joules() - 3.5).abs() < 1e-9);
        let (errors, last) = meter.errors();
        assert!(errors >= 2 && last.as_deref().is_some_and(|e| e.contains("cannot read")), "{errors} {last:?}");
        put(&p, "110 J\n");
        assert!((meter.joules() - 10.0).abs() < 1e-9);
        // A counter that goes back (the logger restarted) counts on from its new value.
        put(&p, "2 J\n");
        assert!((meter.joules() - 10.0).abs() < 1e-9);
        put(&p, "3 J\n");
        let s = meter.stop();
        assert!((s.joules - 11.0).abs() < 1e-9, "{s}");
        assert!(s.to_string().contains("read errors, the last: the energy counter went back from 110 J to 2 J"), "{s}");
        assert_eq!(s.to_json()["joules"].as_f64(), Some(s.joules));
    }

    #[test]
    fn a_slow_sensor_is_sampled_less_often_and_stop_does_not_wait_a_period() {
        let slow = Meter::start(Box::new(Slow { cost: Duration::from_millis(5), watts: 1.0 }), Duration::from_millis(1));
        let fast = Meter::start(Box::new(Slow { cost: Duration::ZERO, watts: 1.0 }), Duration::from_millis(10));
        std::thread::sleep(Duration::from_millis(400));
        // 5 ms a read may run once per 0.5 s: the first sample and at most one more.
        assert!(slow.samples() <= 2, "{}", slow.samples());
        assert!(fast.samples() >= 10, "{}", fast.samples());
        let idle = Meter::start(Box::new(Slow { cost: Duration::ZERO, watts: 1.0 }), Duration::from_secs(60));
        let t = Instant::now();
        let s = idle.stop();
        assert!(t.elapsed() < Duration::from_secs(1) && s.samples == 2, "{s}");
        drop(slow);
        drop(fast);
    }
}
