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
//! A move to another rung changes what differs, one change before each token: a unit's view
//! (its new copy made beside decode in slices between tokens, `Model::begin_views`, then swapped
//! in, `install_views`, and the file ranges no longer read released), a layer's KV format
//! (`set_kv_layer_format`), the KV window (`set_kv_window`); freed heap is given back at once.
//!
//! With `--power`, the power loop moves on the same ladder (its rungs above the window rungs:
//! views and KV precision) through [`Memory::set_power_floor`]; the run is on the deeper of
//! the two controllers' rungs, so the memory controller's floor always wins, and this one
//! owner of the model applies every move, made the same way whoever asked for it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use edge_runtime::control::{Controller, Decision, Policy, Reading as PolicyReading};
use edge_runtime::kv::{KvBits, KvFormat, KvWindow};
use edge_runtime::model::ViewChange;
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

/// Time before a token spent making a unit's new copy (a token of SmolLM2-135M takes 4-5 ms
/// here; its embedding's copy, 10-15 MB, takes 15-30 ms, so it is made over several tokens).
const SLICE: Duration = Duration::from_micros(1500);

/// Bytes of a new copy made between two looks at the clock (about 0.1 ms of work).
const SLICE_BYTES: usize = 64 << 10;

/// File bytes released before a token (dropping a mapping's pages costs about 0.1 ms a MiB; a
/// swap of the embedding's view releases 10-30 MiB, spread over the next tokens).
const RELEASE_BYTES: u64 = 4 << 20;

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
    /// Time the decode thread spent on the move, all of it together, and the longest it kept
    /// one token waiting.
    pub step_seconds: f64,
    pub pause_seconds: f64,
    /// Of `step_seconds`, the time spent making new copies of views (in slices before tokens),
    /// and the longest swap of a unit's new copy for its old one (the old one dropped, its
    /// file ranges released).
    pub prepare_seconds: f64,
    pub swap_seconds: f64,
    /// Predicted bytes at most during the move: a unit's old and new copies are both held
    /// while the new one is made.
    pub predicted_peak: u64,
}

impl Event {
    pub fn line(&self) -> String {
        format!(
            "edge-run: memory: token {} at {:.2} s: {}: {}; RSS {} -> {} (predicted {} -> {}, {} at most); {} rungs over {} tokens, {:.1} ms in all ({:.1} ms making new views, swaps {:.1} ms at most), {:.1} ms at most before a token",
            self.token,
            self.seconds,
            match self.cause {
                "power" => "the power loop's rung".to_string(),
                c => format!("{c} ({} room {})", self.source, human_bytes(self.room)),
            },
            self.actions.join(", "),
            human_bytes(self.rss_before),
            human_bytes(self.rss_after),
            human_bytes(self.predicted_before),
            human_bytes(self.predicted_after),
            human_bytes(self.predicted_peak),
            self.from.abs_diff(self.to),
            self.tokens,
            1e3 * self.step_seconds,
            1e3 * self.prepare_seconds,
            1e3 * self.swap_seconds,
            1e3 * self.pause_seconds
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
            "predicted_peak_bytes": self.predicted_peak,
            "step_seconds": self.step_seconds,
            "pause_seconds": self.pause_seconds,
            "prepare_seconds": self.prepare_seconds,
            "swap_seconds": self.swap_seconds,
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

pub struct Memory<'a> {
    ladder: Vec<Rung>,
    /// What a rung's predicted bytes are made of (see [`Memory::bytes_of`]).
    sizes: Sizes,
    policy: Controller,
    sources: Sources,
    hold_to: Option<u64>,
    ctx: usize,
    t0: Instant,
    last_read: Option<Instant>,
    pending: Option<Move<'a>>,
    pub events: Vec<Event>,
    /// Time spent reading and deciding (not stepping), for the report.
    pub watch_seconds: f64,
    pub readings: usize,
    /// The power loop's rung (0: none asked for), and the rung the model is on.
    power_floor: usize,
    applied: usize,
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


/// What a state's predicted bytes are made of: the run's fixed bytes and buffers, the weights at
/// their plan's views, each layer's KV cache.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    other: u64,
    shape: budget::Shape,
    config: Config,
}

impl Sizes {
    fn bytes(&self, p: &Planner, weights: &Plan, kv: &[KvFormat], window: Option<KvWindow>) -> u64 {
        let n = self.config.n_layers.max(1) as u64;
        let shape = |f| budget::Shape { ctx: window.map_or(self.shape.ctx, |w| w.slots), kv: f, ..self.shape };
        let kv: u64 = kv.iter().map(|&f| budget::kv_bytes(&self.config, shape(f)) / n).sum();
        self.other + weight_bytes(p, weights) + kv
    }
}

/// Bytes of unit `i` at view `bits`.
fn unit_bytes(p: &Planner, i: usize, bits: u8) -> u64 {
    p.units[i].views.iter().find(|v| v.bits == bits).map_or(0, |v| v.bytes)
}

/// Bytes held for a while on top of the state when unit `i` changes to view `bits`: its new
/// copy (as many bytes as the view reads, or half the 8-bit view's for its nibble plane) and the
/// stored planes read to make it (the view's bytes again, in the page cache until released at
/// the swap); the old copy stays until then, counted in the state.
fn transient(p: &Planner, i: usize, bits: u8) -> u64 {
    2 * unit_bytes(p, i, bits)
}

/// One change of the model a move makes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Change {
    /// Unit `unit` to view `bits` (across several rungs at once when the move passes several).
    Unit { unit: usize, bits: u8 },
    KvLayer { layer: usize, format: KvFormat },
    Window(Option<KvWindow>),
}

impl<'a> Memory<'a> {
    pub fn new(s: Start<'_>, config: &Config) -> Result<Memory<'a>> {
        let b = s.budget;
        let ctx = b.shape.ctx;
        let sizes = Sizes { other: b.fixed + b.state_bytes, shape: b.shape, config: *config };
        let rung = |weights: Plan, kv: Vec<KvFormat>, window: Option<KvWindow>| {
            let bytes = sizes.bytes(s.planner, &weights, &kv, window);
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
            sizes,
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
            power_floor: 0,
            applied: 0,
        })
    }

    /// The rungs the power loop may move on (views and KV precision; not the windows, which
    /// cost context rather than bytes per token): their predicted bytes.
    pub fn power_ladder(&self) -> Vec<u64> {
        self.ladder.iter().take_while(|r| r.window.is_none()).map(|r| r.bytes).collect()
    }

    /// The power loop asks for rung `rung` at least; the move goes one rung per token from the
    /// next [`Memory::tick`]. The memory controller's own rung wins where it is deeper.
    pub fn set_power_floor(&mut self, rung: usize) {
        self.power_floor = rung.min(self.ladder.len() - 1);
    }

    /// Whether a move is still under way (or about to start for the power loop's rung).
    pub fn moving(&self) -> bool {
        self.pending.is_some() || self.policy.rung().max(self.power_floor) != self.applied
    }

    /// The memory controller's own rung (without the power loop's).
    pub fn memory_rung(&self) -> usize {
        self.policy.rung()
    }

    /// Rung `i` in words (weights' bits per weight, KV formats, window).
    pub fn rung_state(&self, p: &Planner, i: usize) -> String {
        self.state(p, &self.ladder[i.min(self.ladder.len() - 1)])
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

    /// Before token `token` runs: go on with a move in progress (one change, or a slice of a
    /// unit's new copy, before each token, so that no token waits long), or read the device's
    /// memory (at most every [`READ_EVERY`]) and start the move the policy decides. Returns the
    /// event of a move that has just completed.
    pub fn tick(&mut self, token: usize, model: &mut Model<'a>, ck: &Checkpoint<'a>, file: &ModelFile, p: &Planner) -> Result<Option<&Event>> {
        let want = self.policy.rung().max(self.power_floor);
        if self.pending.is_none() && want != self.applied {
            // The power loop's rung moved: the model goes to the deeper of the two.
            let d = Decision { from: self.applied, to: want, cause: edge_runtime::control::Cause::Power };
            let rss = crate::stats::rss_bytes().unwrap_or(0);
            self.pending = Some(self.start(d, token, "power", 0, rss, p));
        }
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
            // The power loop's rung holds the model at least that deep.
            let d = Decision { from: self.applied, to: d.to.max(self.power_floor), ..d };
            if d.from == d.to {
                return Ok(None);
            }
            let source = if d.cause == edge_runtime::control::Cause::Pressure { "PSI" } else { source };
            self.pending = Some(self.start(d, token, source, room, reading.rss, p));
        }
        let mut m = self.pending.take().expect("a move");
        let t = Instant::now();
        self.advance(&mut m, model, ck, file, p)?;
        let dt = t.elapsed().as_secs_f64();
        m.seconds += dt;
        m.longest = m.longest.max(dt);
        m.ticks += 1;
        if m.making.is_some() || !m.changes.is_empty() || !m.release.is_empty() {
            self.pending = Some(m);
            return Ok(None);
        }
        self.applied = m.d.to;
        memory::trim_heap();
        let to = &self.ladder[m.d.to];
        debug_assert!(m.now.weights.bits == to.weights.bits && m.now.kv == to.kv && m.now.window == to.window, "a move ends on its rung");
        let event = self.event(&m, p);
        self.events.push(event);
        Ok(self.events.last())
    }

    /// The changes from rung `d.from` to rung `d.to`, in the order they are made, and the move.
    ///
    /// A unit's change holds its old and new copies together while the new one is made (over
    /// several tokens for a large unit), which the ladder's rungs do not count. A step down is
    /// taken because memory is short, so it makes room before the large copies: the KV cache's
    /// changes first (they free memory, and hold one layer, or the window's rows, twice for one
    /// token at most), then the units smallest first, the largest (SmolLM2's embedding, a
    /// quarter of the weights) last, once the others have freed theirs. A step up (taken with
    /// room to spare) changes the largest unit first, while the state is smallest. The predicted
    /// peak is reported with the move. When the room is short of even that, the change goes
    /// ahead: the synchronous path held the same two copies (for less time), and not stepping
    /// down leaves the process over its limit.
    fn start(&self, d: Decision, token: usize, source: &'static str, room: u64, rss: u64, p: &Planner) -> Move<'a> {
        let (from, to) = (&self.ladder[d.from], &self.ladder[d.to]);
        let down = d.to > d.from;
        let mut units: Vec<Change> = (0..from.weights.bits.len())
            .filter(|&i| from.weights.bits[i] != to.weights.bits[i])
            .map(|i| Change::Unit { unit: i, bits: to.weights.bits[i] })
            .collect();
        let size = |c: &Change| match *c {
            Change::Unit { unit, bits } => transient(p, unit, bits),
            _ => 0,
        };
        units.sort_by_key(|c| if down { size(c) } else { u64::MAX - size(c) });
        // The cache's changes in the ladder's order: going down, the layers' format, then the
        // window; going up, the window first (re-laid out while the layers are still small).
        let mut cache: Vec<Change> = (0..from.kv.len())
            .filter(|&l| from.kv[l] != to.kv[l])
            .map(|l| Change::KvLayer { layer: l, format: to.kv[l] })
            .collect();
        if from.window != to.window {
            cache.insert(if down { cache.len() } else { 0 }, Change::Window(to.window));
        }
        let changes: VecDeque<Change> = if down { cache.into_iter().chain(units).collect() } else { units.into_iter().chain(cache).collect() };
        let mut state = from.clone();
        let mut peak = from.bytes.max(to.bytes);
        for c in &changes {
            peak = peak.max(state.bytes + size(c));
            self.apply(&mut state, c, p);
        }
        Move {
            d,
            token,
            source,
            room,
            rss_before: rss,
            now: from.clone(),
            changes,
            making: None,
            release: VecDeque::new(),
            ticks: 0,
            freed: 0,
            seconds: 0.0,
            longest: 0.0,
            prepare: 0.0,
            swap: 0.0,
            peak,
        }
    }

    /// State `r` after change `c` (its predicted bytes with it; the weights' predicted KL is
    /// not followed between rungs).
    fn apply(&self, r: &mut Rung, c: &Change, p: &Planner) {
        match *c {
            Change::Unit { unit, bits } => {
                r.weights.bytes = r.weights.bytes - unit_bytes(p, unit, r.weights.bits[unit]) + unit_bytes(p, unit, bits);
                r.weights.bits[unit] = bits;
            }
            Change::KvLayer { layer, format } => r.kv[layer] = format,
            Change::Window(w) => r.window = w,
        }
        r.bytes = self.sizes.bytes(p, &r.weights, &r.kv, r.window);
    }

    /// The next step of move `m`: a slice of the unit's new copy being made (swapped in once
    /// complete), or the next change.
    fn advance(&self, m: &mut Move<'a>, model: &mut Model<'a>, ck: &Checkpoint<'a>, file: &ModelFile, p: &Planner) -> Result<()> {
        // The file ranges the last swap left unread go first, a few MiB before each token.
        if !m.release.is_empty() {
            let mut budget = RELEASE_BYTES;
            while let Some((offset, len)) = m.release.pop_front() {
                // Split at a page boundary, so that no page of the range is left behind.
                let take = if len > budget { ((offset + budget) & !4095).saturating_sub(offset) } else { len };
                if take == 0 || take == len {
                    m.freed += file.bytes.release(offset, len);
                    budget = budget.saturating_sub(len);
                } else {
                    m.freed += file.bytes.release(offset, take);
                    m.release.push_front((offset + take, len - take));
                    budget = 0;
                }
                if budget == 0 {
                    break;
                }
            }
            return Ok(());
        }
        if m.making.is_none() {
            let Some(c) = m.changes.pop_front() else { return Ok(()) };
            let mut next = m.now.clone();
            self.apply(&mut next, &c, p);
            match c {
                Change::Unit { .. } => {
                    let change = model.begin_views(ck, &next.weights.view_plan(&p.units)).map_err(|e| anyhow!("{e}"))?;
                    m.making = Some(Making { change, next });
                }
                Change::KvLayer { layer, format } => {
                    // Keys before one token, values before the next: requantizing a layer's
                    // whole cache to int4 takes longer than a token (4 ms at 900 positions).
                    let was = model.kv_layer_format(layer);
                    if was.keys != format.keys && was.values != format.values {
                        let keys = KvFormat { keys: format.keys, values: was.values };
                        model.set_kv_layer_format(layer, keys).map_err(|e| anyhow!("{e}"))?;
                        m.changes.push_front(c);
                        return Ok(());
                    }
                    model.set_kv_layer_format(layer, format).map_err(|e| anyhow!("{e}"))?;
                    m.now = next;
                    return Ok(());
                }
                Change::Window(w) => {
                    // Back above the window rungs, the cache keeps a window as large as the context.
                    let w2 = w.unwrap_or(KvWindow { sink: crate::cli::KvArgs::DEFAULT_SINK, slots: self.ctx });
                    if w.is_some() || model.kv_window().is_some() {
                        model.set_kv_window(w2).map_err(|e| anyhow!("{e}"))?;
                    }
                    m.now = next;
                    return Ok(());
                }
            }
        }
        // A slice of the new copy while decode goes on reading the old one; once complete, it is
        // swapped in before the next token (before this one if the slice left time for it).
        let making = m.making.as_mut().expect("a unit's change");
        let t = Instant::now();
        let done = loop {
            if making.change.step(SLICE_BYTES) {
                break true;
            }
            if t.elapsed() >= SLICE {
                break false;
            }
        };
        m.prepare += t.elapsed().as_secs_f64();
        if done && t.elapsed() < SLICE / 2 {
            let Making { change, next } = m.making.take().expect("a unit's change");
            let t = Instant::now();
            m.release.extend(model.install_views(change));
            m.swap = m.swap.max(t.elapsed().as_secs_f64());
            m.now = next;
        }
        Ok(())
    }

    fn event(&self, m: &Move<'a>, p: &Planner) -> Event {
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
            pause_seconds: m.longest,
            prepare_seconds: m.prepare,
            swap_seconds: m.swap,
            predicted_peak: m.peak,
        }
    }
}

/// A move between rungs in progress.
struct Move<'a> {
    d: Decision,
    token: usize,
    source: &'static str,
    room: u64,
    rss_before: u64,
    /// The state the model is in (rung `d.from` at first, `d.to` at the end).
    now: Rung,
    /// The changes left, in the order they are made.
    changes: VecDeque<Change>,
    /// A unit's new view being made between tokens.
    making: Option<Making<'a>>,
    /// File ranges a swap left unread, still to release.
    release: VecDeque<(u64, u64)>,
    /// Forward passes it has come before.
    ticks: usize,
    freed: u64,
    seconds: f64,
    longest: f64,
    /// Time making new copies, and the longest swap.
    prepare: f64,
    swap: f64,
    /// Predicted bytes at most during the move.
    peak: u64,
}

/// A unit's new view being made beside decode, and the state it brings.
struct Making<'a> {
    change: ViewChange<'a, edge_runtime::backend::Cpu>,
    next: Rung,
}
