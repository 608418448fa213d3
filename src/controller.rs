//! The memory controller as `generate` runs it: a ladder of run states below the budget's plan,
//! the device's memory read between tokens, and the steps `edge_runtime::control` decides
//! applied to the model, each one an event.
//!
//! ```text
//! rung 0      the plan the run started with (weights P0, KV format F0, no window)
//! rungs 1..   the weights' plans for less and less (the least sensitive units lowered first,
//!             as the profile's knapsack picks them), down to every unit at its lowest view
//! then        KV int8, then int4 (where the run's format is above them)
//! then        a KV window of ctx/2, ctx/4, ... down to MIN_WINDOW slots (sink 4)
//! ```
//!
//! A step to another rung changes what differs: `Model::set_views` (the file ranges no longer
//! read are released), `set_kv_format`, `set_kv_window`; freed heap is given back at once.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use edge_runtime::control::{Controller, Decision, Policy, Reading as PolicyReading};
use edge_runtime::kv::{KvBits, KvFormat, KvWindow};
use edge_runtime::plan::{Plan, Planner};
use edge_runtime::{Checkpoint, Config, Model};
use serde_json::json;

use crate::budget;
use crate::loader::ModelFile;
use crate::memory::{self, Sources};
use crate::session::kv_format_name as kv_name;
use crate::stats::human_bytes;

/// The smallest window the controller shrinks the cache to.
pub const MIN_WINDOW: usize = 256;

/// Readings are taken at most this often (a token of a small model takes a few milliseconds;
/// reading `/proc` and the cgroup takes tens of microseconds).
const READ_EVERY: Duration = Duration::from_millis(20);

/// One state of the run.
#[derive(Debug, Clone, PartialEq)]
struct Rung {
    weights: Plan,
    /// Each layer's KV format (a change of format goes a layer per rung).
    kv: Vec<KvFormat>,
    window: Option<KvWindow>,
    /// Predicted bytes of the whole process in this state.
    bytes: u64,
}

/// A step taken, as reported.
#[derive(Debug, Clone)]
pub struct Event {
    pub seconds: f64,
    /// The token the move started before, and how many tokens it was spread over (one rung
    /// before each).
    pub token: usize,
    pub tokens: usize,
    pub cause: &'static str,
    pub source: &'static str,
    pub room: u64,
    pub from: usize,
    pub to: usize,
    pub actions: Vec<String>,
    pub predicted_before: u64,
    pub predicted_after: u64,
    pub rss_before: u64,
    pub rss_after: u64,
    /// Time of every rung together, and of the longest (what one token waited at most).
    pub step_seconds: f64,
    pub longest_rung_seconds: f64,
}

impl Event {
    pub fn line(&self) -> String {
        format!(
            "edge-run: memory: token {} at {:.2} s: {} ({} room {}): {}; RSS {} -> {} (predicted {} -> {}); {} rungs over {} tokens, {:.1} ms in all, {:.1} ms at most before a token",
            self.token,
            self.seconds,
            self.cause,
            self.source,
            human_bytes(self.room),
            self.actions.join(", "),
            human_bytes(self.rss_before),
            human_bytes(self.rss_after),
            human_bytes(self.predicted_before),
            human_bytes(self.predicted_after),
            self.from.abs_diff(self.to),
            self.tokens,
            1e3 * self.step_seconds,
            1e3 * self.longest_rung_seconds
        )
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "seconds": self.seconds,
            "token": self.token,
            "cause": self.cause,
            "source": self.source,
            "room_bytes": self.room,
            "from_rung": self.from,
            "to_rung": self.to,
            "actions": self.actions,
            "predicted_bytes_before": self.predicted_before,
            "predicted_bytes_after": self.predicted_after,
            "rss_before": self.rss_before,
            "rss_after": self.rss_after,
            "step_seconds": self.step_seconds,
            "longest_rung_seconds": self.longest_rung_seconds,
            "tokens": self.tokens,
        })
    }
}

/// What the ladder is built from: the budget's plan and the planner it came from.
pub struct Start<'p> {
    pub planner: &'p Planner,
    pub weights: Plan,
    pub budget: &'p budget::Budget,
    /// The budget the room is measured against (`--budget`), or `None` when fitting to the
    /// device's free memory (the room is then what the system and the cgroup have left).
    pub hold_to: Option<u64>,
}

pub struct Memory {
    ladder: Vec<Rung>,
    policy: Controller,
    sources: Sources,
    hold_to: Option<u64>,
    ctx: usize,
    t0: Instant,
    last_read: Option<Instant>,
    pending: Option<Move>,
    pub events: Vec<Event>,
    /// Time spent reading and deciding (not stepping), for the report.
    pub watch_seconds: f64,
    pub readings: usize,
}

/// The weights' plans below `top`, each one unit one view lower than the one before: the unit
/// whose next lower view loses the least predicted KL per byte it frees, until every unit is at
/// its lowest view. A step between neighbours rebinds one unit's matrices only.
fn descent(p: &Planner, top: &Plan) -> Vec<Plan> {
    let mut at = top.clone();
    let mut out = Vec::new();
    loop {
        let mut best: Option<(f64, usize, u8, u64, f64)> = None;
        for (i, u) in p.units.iter().enumerate() {
            let Some(cur) = u.views.iter().find(|v| v.bits == at.bits[i]) else { continue };
            // The next lower view this unit has.
            let Some(next) = u.views.iter().filter(|v| v.bits < cur.bits && v.bytes < cur.bytes).max_by_key(|v| v.bits) else { continue };
            let freed = cur.bytes - next.bytes;
            let cost = (next.kl - cur.kl).max(0.0) / freed as f64;
            if best.is_none_or(|b| cost < b.0) {
                best = Some((cost, i, next.bits, freed, next.kl - cur.kl));
            }
        }
        let Some((_, i, bits, freed, dkl)) = best else { return out };
        at.bits[i] = bits;
        at.bytes -= freed;
        at.kl += dkl;
        out.push(at.clone());
    }
}

fn weight_bytes(p: &Planner, w: &Plan) -> u64 {
    w.bytes + p.fixed_bytes
}

fn bits_per_weight(p: &Planner, w: &Plan) -> f64 {
    8.0 * (w.bytes + p.fixed_matrix_bytes) as f64 / p.matrix_weights.max(1) as f64
}

/// The layers' formats in words: `int8`, or `int8 (12 of 30 layers; the rest f16)`.
fn kv_layers_name(kv: &[KvFormat]) -> String {
    let first = kv[0];
    let at = kv.iter().filter(|&&f| f == first).count();
    match kv.iter().find(|&&f| f != first) {
        None => kv_name(first),
        Some(&other) => format!("{} ({at} of {} layers; the rest {})", kv_name(first), kv.len(), kv_name(other)),
    }
}


impl Memory {
    pub fn new(s: Start<'_>, config: &Config) -> Result<Memory> {
        let b = s.budget;
        let ctx = b.shape.ctx;
        let other = b.fixed + b.state_bytes;
        let n = config.n_layers.max(1) as u64;
        let kv_at = |kv: &[KvFormat], window: Option<KvWindow>| -> u64 {
            let shape = |f| budget::Shape { ctx: window.map_or(ctx, |w| w.slots), kv: f, ..b.shape };
            kv.iter().map(|&f| budget::kv_bytes(config, shape(f)) / n).sum()
        };
        let rung = |weights: Plan, kv: Vec<KvFormat>, window: Option<KvWindow>| {
            let bytes = other + weight_bytes(s.planner, &weights) + kv_at(&kv, window);
            Rung { weights, kv, window, bytes }
        };
        let mut kv = vec![b.shape.kv; config.n_layers];
        let mut ladder = vec![rung(s.weights.clone(), kv.clone(), None)];
        for w in descent(s.planner, &s.weights) {
            ladder.push(rung(w, kv.clone(), None));
        }
        let floor = ladder.last().expect("rung 0").weights.clone();
        if budget::integer_kv(config) {
            for bits in [KvBits::Q8, KvBits::Q4] {
                let lower = KvFormat::uniform(bits);
                for l in 0..kv.len() {
                    if kv[l].keys.bits() > bits.bits() || kv[l].values.bits() > bits.bits() {
                        kv[l] = lower;
                        ladder.push(rung(floor.clone(), kv.clone(), None));
                    }
                }
            }
        }
        // A model with sliding-window layers cannot take a KV window (Model::set_kv_window
        // refuses it): its ladder ends at the lowest KV format.
        let mut slots = if config.local.any() { 0 } else { ctx / 2 };
        while slots >= MIN_WINDOW {
            ladder.push(rung(floor.clone(), kv.clone(), Some(KvWindow { sink: crate::cli::KvArgs::DEFAULT_SINK, slots })));
            slots /= 2;
        }
        let bytes: Vec<u64> = ladder.iter().map(|r| r.bytes).collect();
        let policy = Controller::new(bytes, Policy::for_bytes(ladder[0].bytes));
        Ok(Memory {
            ladder,
            policy,
            sources: Sources::detect(),
            hold_to: s.hold_to,
            ctx,
            t0: Instant::now(),
            last_read: None,
            pending: None,
            events: Vec::new(),
            watch_seconds: 0.0,
            readings: 0,
        })
    }

    /// The ladder in lines for stderr.
    pub fn describe(&self, p: &Planner) -> Vec<String> {
        let pol = self.policy.policy;
        let mut out = vec![format!(
            "edge-run: memory controller: {} rungs; steps down below {} of room, back up above {}{}",
            self.ladder.len(),
            human_bytes(pol.low),
            human_bytes(pol.high),
            if self.sources.simulated.is_some() { " (the cgroup limit simulated by EDGE_RUN_MEM_LIMIT)" } else { "" }
        )];
        for (i, r) in self.ladder.iter().enumerate() {
            out.push(format!("  rung {i:>2}: {}, predicted {}", self.state(p, r), human_bytes(r.bytes)));
        }
        out
    }

    fn state(&self, p: &Planner, r: &Rung) -> String {
        let window = r.window.map(|w| format!(", window {} (sink {})", w.slots, w.sink)).unwrap_or_default();
        format!("weights {:.2} bits/weight, KV {}{window}", bits_per_weight(p, &r.weights), kv_layers_name(&r.kv))
    }

    pub fn to_json(&self, p: &Planner) -> serde_json::Value {
        let pol = self.policy.policy;
        json!({
            "low_bytes": pol.low,
            "high_bytes": pol.high,
            "pressure_percent": pol.pressure,
            "hold_tokens": pol.hold,
            "simulated_limit": self.sources.simulated.is_some(),
            "rung": self.policy.rung(),
            "readings": self.readings,
            "watch_seconds": self.watch_seconds,
            "ladder": self.ladder.iter().map(|r| json!({
                "bits_per_weight": bits_per_weight(p, &r.weights),
                "predicted_kl": r.weights.kl,
                "kv": r.kv.iter().map(|f| f.name()).collect::<Vec<_>>(),
                "window": r.window.map(|w| w.slots),
                "predicted_bytes": r.bytes,
            })).collect::<Vec<_>>(),
            "events": self.events.iter().map(Event::to_json).collect::<Vec<_>>(),
        })
    }

    /// Before token `token` runs: go on with a move in progress (one rung per token, so no
    /// token waits for more than one rung's change), or read the device's memory (at most
    /// every [`READ_EVERY`]) and start the move the policy decides. Returns the event of a move
    /// that has just completed.
    pub fn tick<'a>(&mut self, token: usize, model: &mut Model<'a>, ck: &Checkpoint<'a>, file: &ModelFile, p: &Planner) -> Result<Option<&Event>> {
        if self.pending.is_none() {
            let now = Instant::now();
            if self.last_read.is_some_and(|t| now - t < READ_EVERY) {
                return Ok(None);
            }
            self.last_read = Some(now);
            let reading = self.sources.read();
            self.readings += 1;
            let Some((source, room)) = reading.room(self.hold_to) else {
                self.watch_seconds += now.elapsed().as_secs_f64();
                return Ok(None);
            };
            let decision = self.policy.observe(token, PolicyReading { room, pressure: reading.pressure });
            self.watch_seconds += now.elapsed().as_secs_f64();
            let Some(d) = decision else { return Ok(None) };
            let source = if d.cause == edge_runtime::control::Cause::Pressure { "PSI" } else { source };
            self.pending = Some(Move { d, token, source, room, rss_before: reading.rss, at: d.from, ticks: 0, freed: 0, seconds: 0.0, longest: 0.0 });
        }
        let mut m = self.pending.take().expect("a move");
        let next = if m.d.to > m.at { m.at + 1 } else { m.at - 1 };
        let t = Instant::now();
        m.freed += self.rung(m.at, next, model, ck, file, p)?;
        let dt = t.elapsed().as_secs_f64();
        m.seconds += dt;
        m.longest = m.longest.max(dt);
        m.at = next;
        m.ticks += 1;
        if m.at != m.d.to {
            self.pending = Some(m);
            return Ok(None);
        }
        memory::trim_heap();
        let event = self.event(&m, p);
        self.events.push(event);
        Ok(self.events.last())
    }

    /// Change the model from rung `i` to its neighbour `j`; returns the file bytes released.
    #[allow(clippy::too_many_arguments)]
    fn rung<'a>(&self, i: usize, j: usize, model: &mut Model<'a>, ck: &Checkpoint<'a>, file: &ModelFile, p: &Planner) -> Result<u64> {
        let (from, to) = (&self.ladder[i], &self.ladder[j]);
        let mut freed = 0;
        if from.weights.bits != to.weights.bits {
            let released = model.set_views(ck, &to.weights.view_plan(&p.units)).map_err(|e| anyhow!("{e}"))?;
            freed = released.into_iter().map(|(offset, len)| file.bytes.release(offset, len)).sum();
        }
        for (l, (&a, &b)) in from.kv.iter().zip(&to.kv).enumerate() {
            if a != b {
                model.set_kv_layer_format(l, b).map_err(|e| anyhow!("{e}"))?;
            }
        }
        if from.window != to.window {
            // Back above the window rungs, the cache keeps a window as large as the context.
            let w = to.window.unwrap_or(KvWindow { sink: crate::cli::KvArgs::DEFAULT_SINK, slots: self.ctx });
            if to.window.is_some() || model.kv_window().is_some() {
                model.set_kv_window(w).map_err(|e| anyhow!("{e}"))?;
            }
        }
        Ok(freed)
    }

    fn event(&self, m: &Move, p: &Planner) -> Event {
        let (from, to) = (&self.ladder[m.d.from], &self.ladder[m.d.to]);
        let mut actions = Vec::new();
        if from.weights.bits != to.weights.bits {
            actions.push(format!(
                "weights {:.2} -> {:.2} bits/weight ({} of file pages released)",
                bits_per_weight(p, &from.weights),
                bits_per_weight(p, &to.weights),
                human_bytes(m.freed)
            ));
        }
        if from.kv != to.kv {
            actions.push(format!("KV {} -> {}", kv_layers_name(&from.kv), kv_layers_name(&to.kv)));
        }
        if from.window != to.window {
            match to.window {
                Some(w) => actions.push(format!("KV window {} (sink {})", w.slots, w.sink)),
                None => actions.push(format!("KV window {} (the context)", self.ctx)),
            }
        }
        Event {
            seconds: self.t0.elapsed().as_secs_f64(),
            token: m.token,
            tokens: m.ticks,
            cause: m.d.cause.name(),
            source: m.source,
            room: m.room,
            from: m.d.from,
            to: m.d.to,
            actions,
            predicted_before: from.bytes,
            predicted_after: to.bytes,
            rss_before: m.rss_before,
            rss_after: crate::stats::rss_bytes().unwrap_or(0),
            step_seconds: m.seconds,
            longest_rung_seconds: m.longest,
        }
    }
}

/// A move between rungs in progress.
struct Move {
    d: Decision,
    token: usize,
    source: &'static str,
    room: u64,
    rss_before: u64,
    /// The rung the model is on now.
    at: usize,
    /// Forward passes it has come before (one rung before each).
    ticks: usize,
    freed: u64,
    seconds: f64,
    longest: f64,
}
