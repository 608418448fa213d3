//! Energy per token and the power loop, as `generate` runs them: a meter on the board's sensor
//! (`crate::power`), joules between marks (prefill, decode), and with `--power W` the policy of
//! `edge_runtime::power` deciding threads (pinned to cores, `crate::affinity`), a pause after
//! each token and a rung of the memory controller's ladder (views and KV precision, applied by
//! `crate::controller::Memory`, whose own rung wins where deeper), each change an event.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use edge_runtime::kernels;
use edge_runtime::plan::Planner;
use edge_runtime::power::{Levers, PowerController, Reason, Sample, Span};
use serde_json::json;

use crate::affinity::{self, Pinning};
use crate::board::Board;
use crate::controller::Memory;
use crate::power::{self, Meter};

/// How often the sensor is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// How often the power loop decides, and the window its average covers (the policy's
/// `settle`, 5 decisions, is one window and a decision more).
const DECIDE_EVERY: Duration = Duration::from_millis(250);
pub const WINDOW: Duration = Duration::from_secs(1);
/// Tokens a span needs before its joules per token count (a rung's verdict waits for them).
const MIN_SPAN_TOKENS: usize = 8;
/// How often `--power-budget-file` is re-read.
const BUDGET_EVERY: Duration = Duration::from_secs(1);

/// The watts in a budget file: `10`, `10W`, `7.5 W`.
pub fn read_budget(path: &Path) -> Result<f64> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("cannot read the power budget file {}: {e}", path.display()))?;
    crate::cli::parse_watts(text.trim()).map_err(|e| anyhow!("the power budget file {}: {e}", path.display()))
}

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

/// One change of the levers (or of the budget).
#[derive(Debug, Clone)]
pub struct Event {
    pub seconds: f64,
    pub token: usize,
    pub watts: f64,
    pub budget: f64,
    pub from: Levers,
    pub to: Levers,
    /// over, room, rung-trial, rung-kept, rung-undone, budget.
    pub reason: &'static str,
    /// A rung trial's joules per token above idle, before and after.
    pub joules: Option<(f64, f64)>,
    /// The pace that started a trial (tokens/s at the budget on one thread, as a share of the
    /// top rung's full speed).
    pub pace: Option<f64>,
    /// The budget before, for a change of the budget.
    pub budget_before: Option<f64>,
    /// The rung the power loop asked for, in words, when it changed.
    pub rung_state: Option<String>,
}

impl Event {
    pub fn line(&self) -> String {
        if let Some(b) = self.budget_before {
            return format!("edge-run: power: token {} at {:.2} s: budget {b:.2} W -> {:.2} W (--power-budget-file)", self.token, self.seconds, self.budget);
        }
        let mut changes = Vec::new();
        if self.from.threads != self.to.threads {
            changes.push(format!("threads {} -> {}", self.from.threads, self.to.threads));
        }
        if self.from.duty != self.to.duty {
            changes.push(format!("duty {:.0}% -> {:.0}%", 100.0 * self.from.duty, 100.0 * self.to.duty));
        }
        if self.from.rung != self.to.rung {
            let state = self.rung_state.as_deref().map(|s| format!(" ({s})")).unwrap_or_default();
            changes.push(format!("views/KV rung {} -> {}{state}", self.from.rung, self.to.rung));
        }
        match (self.reason, self.joules, self.pace) {
            ("rung-trial", _, Some(p)) => changes.push(format!("on trial: one thread would run at {:.0}% of the top rung's speed", 100.0 * p)),
            ("rung-kept", Some((a, b)), _) => changes.push(format!("rung {} kept: {a:.4} -> {b:.4} J/token above idle", self.to.rung)),
            ("rung-undone", Some((a, b)), _) => changes.push(format!("did not pay ({a:.4} -> {b:.4} J/token above idle): no lower from now on")),
            _ => {}
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
            "reason": self.reason,
            "threads_before": self.from.threads, "threads_after": self.to.threads,
            "duty_before": self.from.duty, "duty_after": self.to.duty,
            "rung_before": self.from.rung, "rung_after": self.to.rung, "rung_state": self.rung_state,
            "joules_per_token_before": self.joules.map(|j| j.0), "joules_per_token_after": self.joules.map(|j| j.1),
            "pace": self.pace,
            "budget_before": self.budget_before,
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
    /// When the last tokens finished (the last window's).
    tokens: VecDeque<Instant>,
    budget_file: Option<(PathBuf, Instant, Option<String>)>,
    pub pinning: Pinning,
    /// Joules per token above idle since the levers that matter to them last changed (the
    /// rung, the thread count, the duty beyond a drift), no move under way.
    span: Span,
    counted: usize,
}

/// How long the loop watches the board at rest before the run, to learn its idle watts.
pub const IDLE_WINDOW: Duration = Duration::from_millis(500);

impl PowerLoop {
    /// A loop holding `watts`, after measuring the board at rest for [`IDLE_WINDOW`] (the run
    /// has not started: what the sensor reads then is what computing adds nothing to). `ladder`:
    /// the predicted bytes of the rungs it may step the views and KV precision down to (the
    /// memory controller's; empty without one). The pool's threads are pinned to cores.
    pub fn new(watts: f64, meter: &Meter, ladder: Vec<u64>, budget_file: Option<PathBuf>, board: Option<&Board>) -> PowerLoop {
        let threads = kernels::threads();
        let pinning = affinity::pin(threads, board);
        std::thread::sleep(IDLE_WINDOW);
        let idle = meter.watts_over(IDLE_WINDOW).unwrap_or(0.0).min(watts);
        let now = Instant::now();
        PowerLoop {
            ctl: PowerController::new(watts, threads, idle).with_ladder(ladder),
            t0: now,
            last: now,
            idle,
            events: Vec::new(),
            paused_seconds: 0.0,
            tokens: VecDeque::new(),
            budget_file: budget_file.map(|p| (p, now, None)),
            pinning,
            span: Span::new(idle, WINDOW.as_secs_f64(), MIN_SPAN_TOKENS),
            counted: 0,
        }
    }

    /// The idle watts measured before the run.
    pub fn idle(&self) -> f64 {
        self.idle
    }

    /// Rungs of views and KV precision it may move on (1: none but the run's own).
    pub fn rungs(&self) -> usize {
        self.ctl.rungs()
    }

    /// Re-reads the budget file when due; an event when the budget changed, a warning (once per
    /// distinct problem) when the file cannot be read.
    fn reread_budget(&mut self, token: usize, now: Instant) -> Option<String> {
        let (path, last, warned) = self.budget_file.as_mut()?;
        if now - *last < BUDGET_EVERY {
            return None;
        }
        *last = now;
        match read_budget(path) {
            Ok(w) if w != self.ctl.budget_watts => {
                *warned = None;
                let before = self.ctl.budget_watts;
                self.ctl.set_budget(w);
                let l = self.ctl.levers();
                let e = Event {
                    seconds: self.t0.elapsed().as_secs_f64(), token, watts: f64::NAN, budget: w, from: l, to: l, reason: "budget",
                    joules: None, pace: None, budget_before: Some(before), rung_state: None,
                };
                let line = e.line();
                self.events.push(e);
                Some(line)
            }
            Ok(_) => None,
            Err(e) => {
                let msg = format!("{e:#}");
                if warned.as_deref() == Some(msg.as_str()) {
                    return None;
                }
                *warned = Some(msg.clone());
                Some(format!("edge-run: warning: {msg}; keeping {:.2} W", self.ctl.budget_watts))
            }
        }
    }

    /// Before token `token`: the budget file, and a decision, if one is due and the meter has
    /// a window's average. `memory`: the memory controller that owns the views (with the
    /// planner, for the rung's description). Returns the lines to print.
    pub fn before(&mut self, token: usize, meter: &Meter, mut memory: Option<(&mut Memory, &Planner)>) -> Vec<String> {
        let now = Instant::now();
        let mut lines: Vec<String> = self.reread_budget(token, now).into_iter().collect();
        if now - self.last < DECIDE_EVERY {
            return lines;
        }
        self.last = now;
        let Some(watts) = meter.watts_over(WINDOW) else { return lines };
        while self.tokens.front().is_some_and(|&t| now - t > WINDOW) {
            self.tokens.pop_front();
        }
        let span = (now - self.t0).min(WINDOW).as_secs_f64();
        let tokens_per_second = if span > 0.0 { self.tokens.len() as f64 / span } else { 0.0 };
        let moving = memory.as_ref().is_some_and(|(m, _)| m.moving());
        if let Some((m, _)) = memory.as_ref() {
            self.ctl.set_outside_rung(m.memory_rung());
            self.ctl.set_applying(moving);
        }
        if moving {
            self.span.restart();
        }
        let from = self.ctl.levers();
        let joules_per_token = self.span.observe((now - self.t0).as_secs_f64(), meter.joules(), self.counted, from);
        let Some(d) = self.ctl.observe(Sample { watts, tokens_per_second, joules_per_token }) else { return lines };
        let to = d.levers;
        if (to.rung, to.threads) != (from.rung, from.threads) {
            self.span.restart();
        }
        if to.threads != from.threads {
            kernels::set_threads(to.threads);
        }
        let mut rung_state = None;
        if let Some((m, p)) = memory.as_mut() {
            if to.rung != from.rung {
                m.set_power_floor(to.rung);
                rung_state = Some(m.rung_state(p, to.rung));
            }
        }
        let (reason, joules, pace) = match d.reason {
            Reason::Over => ("over", None, None),
            Reason::Room => ("room", None, None),
            Reason::RungTrial { pace } => ("rung-trial", None, Some(pace)),
            Reason::RungKept { before, after } => ("rung-kept", Some((before, after)), None),
            Reason::RungUndone { before, after } => ("rung-undone", Some((before, after)), None),
        };
        let e = Event {
            seconds: self.t0.elapsed().as_secs_f64(), token, watts, budget: self.ctl.budget_watts, from, to, reason, joules, pace,
            budget_before: None, rung_state,
        };
        lines.push(e.line());
        self.events.push(e);
        lines
    }

    /// After a token that took `compute` to run: the pause the duty asks for. Below full duty,
    /// `work` runs first (one step of work a call, e.g. a rung of a move of the views; it
    /// returns false when none is left), for at most as long as the token took, and the pause
    /// that follows keeps the duty over the token and the work together.
    pub fn after(&mut self, compute: Duration, mut work: impl FnMut() -> Result<bool>) -> Result<()> {
        self.tokens.push_back(Instant::now());
        self.counted += 1;
        let duty = self.ctl.levers().duty;
        if duty >= 1.0 {
            return Ok(());
        }
        // Work for at most as long as the token took, and count it as computing: the pause
        // keeps the duty over both, so a move of the views costs no watts over the budget.
        let t = Instant::now();
        while t.elapsed() < compute && work()? {}
        let worked = t.elapsed();
        let pause = Duration::from_secs_f64(self.ctl.levers().pause_seconds((compute + worked).as_secs_f64()));
        std::thread::sleep(pause);
        self.paused_seconds += pause.as_secs_f64();
        Ok(())
    }

    pub fn to_json(&self) -> serde_json::Value {
        let l = self.ctl.levers();
        json!({
            "budget_watts": self.ctl.budget_watts,
            "budget_file": self.budget_file.as_ref().map(|b| b.0.display().to_string()),
            "idle_watts": self.idle,
            "window_seconds": WINDOW.as_secs_f64(),
            "threads": l.threads,
            "duty": l.duty,
            "rung": l.rung,
            "rungs": self.ctl.rungs(),
            "deepest_rung": self.ctl.deepest(),
            "cores": self.pinning.to_json(),
            "paused_seconds": self.paused_seconds,
            "events": self.events.iter().map(Event::to_json).collect::<Vec<_>>(),
        })
    }
}
