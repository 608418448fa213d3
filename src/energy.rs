//! Energy per token and the power loop, as `generate` runs them: a meter on the board's sensor
//! (`crate::power`), joules between marks (prefill, decode), and with `--power W` the policy of
//! `edge_runtime::power` deciding threads and a pause after each token, each change an event.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use edge_runtime::kernels;
use edge_runtime::power::{Levers, PowerController};
use serde_json::json;

use crate::board::Board;
use crate::power::{self, Meter};

/// How often the sensor is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// How often the power loop decides, and the window its average covers.
const DECIDE_EVERY: Duration = Duration::from_millis(250);
pub const WINDOW: Duration = Duration::from_secs(1);

/// A meter, if a sensor is found: required with `--power` (an error names what was looked
/// for), else only when `--power-sensor` names one or one is found by itself.
pub fn meter(spec: Option<&str>, board: Option<&Board>, required: bool) -> Result<Option<Meter>> {
    // With `--power`, a board config may name the rail to hold.
    let held = match (spec, board.and_then(|b| b.power.hold.as_deref())) {
        (None, Some(rail)) if required => Some(format!("board:{rail}")),
        _ => None,
    };
    match power::open(held.as_deref().or(spec), board) {
        Ok(s) => Ok(Some(Meter::start(s, SAMPLE_EVERY))),
        Err(e) if required || spec.is_some() => bail!("{e:#}"),
        Err(_) => Ok(None),
    }
}

/// Joules of a phase and its tokens, for the report.
pub fn phase_json(joules: f64, tokens: usize, seconds: f64) -> serde_json::Value {
    json!({
        "joules": joules,
        "joules_per_token": (tokens > 0).then(|| joules / tokens as f64),
        "watts": (seconds > 0.0).then(|| joules / seconds),
    })
}

/// One change of the levers.
#[derive(Debug, Clone)]
pub struct Event {
    pub seconds: f64,
    pub token: usize,
    pub watts: f64,
    pub budget: f64,
    pub from: Levers,
    pub to: Levers,
}

impl Event {
    pub fn line(&self) -> String {
        let mut changes = Vec::new();
        if self.from.threads != self.to.threads {
            changes.push(format!("threads {} -> {}", self.from.threads, self.to.threads));
        }
        if self.from.duty != self.to.duty {
            changes.push(format!("duty {:.0}% -> {:.0}%", 100.0 * self.from.duty, 100.0 * self.to.duty));
        }
        format!(
            "edge-run: power: token {} at {:.2} s: {:.2} W against {:.2} W: {}",
            self.token,
            self.seconds,
            self.watts,
            self.budget,
            changes.join(", ")
        )
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "seconds": self.seconds, "token": self.token, "watts": self.watts, "budget_watts": self.budget,
            "threads_before": self.from.threads, "threads_after": self.to.threads,
            "duty_before": self.from.duty, "duty_after": self.to.duty,
        })
    }
}

/// `--power W`: decides between tokens, pauses after them.
pub struct PowerLoop {
    ctl: PowerController,
    t0: Instant,
    last: Instant,
    idle: f64,
    pub events: Vec<Event>,
    pub paused_seconds: f64,
}

/// How long the loop watches the board at rest before the run, to learn its idle watts.
pub const IDLE_WINDOW: Duration = Duration::from_millis(500);

impl PowerLoop {
    /// A loop holding `watts`, after measuring the board at rest for [`IDLE_WINDOW`] (the run
    /// has not started: what the sensor reads then is what computing adds nothing to).
    pub fn new(watts: f64, meter: &Meter) -> PowerLoop {
        std::thread::sleep(IDLE_WINDOW);
        let idle = meter.watts_over(IDLE_WINDOW).unwrap_or(0.0).min(watts);
        let now = Instant::now();
        PowerLoop {
            ctl: PowerController::new(watts, kernels::threads(), idle),
            t0: now,
            last: now,
            idle,
            events: Vec::new(),
            paused_seconds: 0.0,
        }
    }

    /// The idle watts measured before the run.
    pub fn idle(&self) -> f64 {
        self.idle
    }

    /// Before token `token`: a decision, if one is due and the meter has a window's average.
    pub fn before(&mut self, token: usize, meter: &Meter) -> Option<&Event> {
        let now = Instant::now();
        if now - self.last < DECIDE_EVERY {
            return None;
        }
        self.last = now;
        let watts = meter.watts_over(WINDOW)?;
        let from = self.ctl.levers();
        let to = self.ctl.observe(watts)?;
        if to.threads != from.threads {
            kernels::set_threads(to.threads);
        }
        self.events.push(Event { seconds: self.t0.elapsed().as_secs_f64(), token, watts, budget: self.ctl.budget_watts, from, to });
        self.events.last()
    }

    /// After a token that took `compute` to run: the pause the duty asks for.
    pub fn after(&mut self, compute: Duration) {
        let pause = self.ctl.levers().pause_seconds(compute.as_secs_f64());
        if pause > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(pause));
            self.paused_seconds += pause;
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let l = self.ctl.levers();
        json!({
            "budget_watts": self.ctl.budget_watts,
            "idle_watts": self.idle,
            "window_seconds": WINDOW.as_secs_f64(),
            "threads": l.threads,
            "duty": l.duty,
            "paused_seconds": self.paused_seconds,
            "events": self.events.iter().map(Event::to_json).collect::<Vec<_>>(),
        })
    }
}
