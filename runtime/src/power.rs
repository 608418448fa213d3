//! The power controller's policy: how hard the run may work to stay under a power budget. Plain
//! arithmetic on the watts and tokens per second the caller measures (a std-only meter in the
//! binary); the caller applies the levers (threads for the products, a pause after each token,
//! a rung of the memory controller's ladder of views and KV formats).
//!
//! ```text
//! plant (what the policy assumes, and learns):   W = idle + duty · active(rung, threads)
//!   duty   = compute time / (compute time + pause)        (0, 1]
//!   idle   = watts with nothing running (the caller's, e.g. measured before the run; else 0)
//!   active = watts of computing at `threads` on `rung`, learned as (W - idle) / duty
//!            (with idle unknown this over-counts active, and each decision corrects it: the
//!            iteration converges from above)
//!   J/token above idle, e(rung) = (W - idle) / tokens per second, the same whatever the duty:
//!            at the budget, tokens/s = (B - idle) / e, so a rung pays when it lowers e (from
//!            the caller's longer span where it keeps one: a trial and its verdict then wait
//!            for one). Other load on the board breaks "whatever the duty" (its watts per
//!            token grow as the duty falls): e is only compared at one duty, and a span
//!            restarts when the duty moves (see [`Span`])
//!
//! every decision: W (a moving average over the caller's window) against the budget B
//!   W > B           -> duty = (B·(1 - margin) - idle) / active    (never above the current)
//!   duty < min_duty -> one thread fewer (the products spread over fewer cores), duty refitted
//!   pace(rung)      = tokens/s at the budget on one thread, ((B·(1 - m) - idle) / e(rung), at
//!                     most the rung's full speed), as a share of the top rung's full speed on
//!                     one thread (on rung 0 the pace is the fitted duty)
//!   one thread, pace < min_duty -> a trial: step the views/KV down to a rung with
//!                     fewer bytes (as many as it would take if e went with bytes, at least
//!                     `rung_stride` of them); after `settle` decisions compare e: keep the
//!                     rung if e fell by `rung_gain`, else step back and never go below it again
//!   W < B·(1 - 2m)  -> first the rung above, if its pace is at least
//!                      min_duty·(1 + rung_hysteresis); else the duty grows by at most `step_up`
//!                      towards the duty the model says fits; at duty 1, one thread more, if the
//!                      thread count's learned watts fit
//! ```
//!
//! Lowering is immediate (one decision brings the average under the budget as soon as the
//! window has seen it); raising is rate-limited, and a rung goes down below `min_duty` but up
//! only above `min_duty·(1 + rung_hysteresis)`: that is what keeps it from oscillating. Quality
//! (the rung) comes back before speed (duty, threads) when power is left over.

use alloc::vec::Vec;

/// The levers as the caller applies them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Levers {
    pub threads: usize,
    /// Share of the time spent computing: the caller pauses `token_time · (1/duty - 1)` after
    /// each token.
    pub duty: f64,
    /// The rung of the ladder of views and KV formats (0: the run's own); the caller applies
    /// the deeper of this and any other controller's rung.
    pub rung: usize,
}

impl Levers {
    /// The pause after a token that took `token_seconds` to compute.
    pub fn pause_seconds(&self, token_seconds: f64) -> f64 {
        token_seconds * (1.0 / self.duty - 1.0)
    }
}

/// Thresholds of the policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Aim this far under the budget when lowering (a share of it).
    pub margin: f64,
    /// Largest relative raise of the duty per decision.
    pub step_up: f64,
    /// Below this duty, drop a thread instead; at one thread, below this pace, try a rung down.
    pub min_duty: f64,
    /// A rung back up only when its pace is at least `min_duty · (1 + this)`.
    pub rung_hysteresis: f64,
    /// A step down the ladder lowers the predicted bytes by at least this share.
    pub rung_stride: f64,
    /// Decisions a rung or thread count runs before its joules per token are taken as its own
    /// (the caller's window must have seen only it: window / decision period, and one more).
    pub settle: usize,
    /// A rung is kept when it lowers the joules per token above idle by at least this share.
    pub rung_gain: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { margin: 0.05, step_up: 0.15, min_duty: 0.35, rung_hysteresis: 0.5, rung_stride: 0.10, settle: 5, rung_gain: 0.03 }
    }
}

/// What the caller measured over its window while the current levers held.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub watts: f64,
    /// Tokens computed in the window, per second (0 when none).
    pub tokens_per_second: f64,
    /// Joules per token above idle over a longer span than the window, all on the current
    /// rung and thread count and about the current duty ([`Span`] keeps one), where the
    /// caller keeps one (more tokens: less noise at low speeds); else they are taken from the
    /// window's watts and tokens per second.
    pub joules_per_token: Option<f64>,
}

/// The caller's joules per token above idle over a span longer than its window, for
/// [`Sample::joules_per_token`]: fed the meter's running joules and the tokens counted, it
/// gives the span's joules per token once the span is long enough.
///
/// The span restarts when the rung or the thread count changes, and when the duty moves by
/// more than a factor [`Span::DUTY_DRIFT`] from the span's: with other load on the board the
/// watts above idle are not all the run's, and the other load's share of each token grows as
/// the duty falls (`e = other / (duty · speed) + active / speed`). A span across a large change
/// of the duty mixes two operating points, weighted by tokens, so by the faster one's: e.g.
/// seconds at full duty before other load arrives, then a duty of 20% under it, read as about
/// half the joules per token the run now pays; the rung's pace then looks twice what it is,
/// and a rung down is never tried (or, tried, is judged against joules it no longer pays).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    idle: f64,
    min_seconds: f64,
    min_tokens: usize,
    /// Since when: (seconds, joules, tokens counted, the levers then).
    start: Option<(f64, f64, usize, Levers)>,
}

impl Span {
    /// How far (a factor either way) the duty may move before the span restarts.
    pub const DUTY_DRIFT: f64 = 1.5;

    /// A span over `idle` watts at rest that counts once it covers `min_seconds` and
    /// `min_tokens` tokens.
    pub fn new(idle: f64, min_seconds: f64, min_tokens: usize) -> Span {
        Span { idle, min_seconds, min_tokens, start: None }
    }

    /// Start over at the next [`Span::observe`] (e.g. while a move of the views is under way).
    pub fn restart(&mut self) {
        self.start = None;
    }

    /// At `seconds` (any clock), the meter's running `joules` and the `tokens` counted so far,
    /// with `levers` holding now: the joules per token above idle since the span began, once
    /// it is long enough. It begins here when none is open or the levers moved (see [`Span`]).
    pub fn observe(&mut self, seconds: f64, joules: f64, tokens: usize, levers: Levers) -> Option<f64> {
        let moved = |from: &Levers| {
            from.rung != levers.rung
                || from.threads != levers.threads
                || levers.duty > from.duty * Self::DUTY_DRIFT
                || levers.duty * Self::DUTY_DRIFT < from.duty
        };
        if self.start.as_ref().is_some_and(|s| moved(&s.3)) {
            self.start = None;
        }
        let (t1, j1, n1, _) = *self.start.get_or_insert((seconds, joules, tokens, levers));
        let secs = seconds - t1;
        let n = tokens.saturating_sub(n1);
        (secs >= self.min_seconds && n >= self.min_tokens.max(1)).then(|| ((joules - j1) - self.idle * secs).max(0.0) / n as f64)
    }
}

/// Why the levers moved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
    /// Over the budget.
    Over,
    /// Under it with room to spare.
    Room,
    /// A rung down on trial: at one thread the pace is `pace`, under `min_duty`.
    RungTrial { pace: f64 },
    /// The trial's rung lowered the joules per token above idle from `before` to `after`: kept.
    RungKept { before: f64, after: f64 },
    /// The trial's rung did not lower them enough: back up, and no lower from now on.
    RungUndone { before: f64, after: f64 },
}

/// A change of the levers and why.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub levers: Levers,
    pub reason: Reason,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Trial {
    from: usize,
    before: f64,
}

/// The power controller.
#[derive(Debug, Clone)]
pub struct PowerController {
    pub budget_watts: f64,
    pub policy: Policy,
    levers: Levers,
    max_threads: usize,
    /// Predicted bytes of each rung (non-increasing); one rung when there is no ladder.
    ladder: Vec<u64>,
    /// Learned watts of computing at each (rung, threads), index rung · max_threads + threads - 1.
    active: Vec<Option<f64>>,
    /// Learned joules per token above idle of each rung (at the threads it was measured at).
    joules: Vec<Option<(usize, f64)>>,
    /// Learned tokens per second of each rung on one thread at full duty.
    speed: Vec<Option<f64>>,
    /// The rungs stepped down from, to step back up to.
    path: Vec<usize>,
    /// The deepest rung allowed (a rung that did not pay moves it up to the one above).
    deepest: usize,
    /// Another controller's rung: the run is at least this deep, whatever this one asks.
    outside: usize,
    trial: Option<Trial>,
    /// Decisions since the rung or the thread count changed.
    age: usize,
    /// The levers of the last `settle` decision periods, newest last: what the window saw.
    recent: Vec<Levers>,
    /// The caller is still applying the last rung (a move over many rungs takes a token each).
    applying: bool,
    /// The caller gives joules per token over long spans: a trial waits for one.
    spans: bool,
    idle: f64,
}

impl PowerController {
    /// A controller starting at `max_threads` and full duty, with `idle` watts for the board
    /// at rest (0 when unknown), and no ladder (see [`PowerController::with_ladder`]).
    pub fn new(budget_watts: f64, max_threads: usize, idle: f64) -> PowerController {
        let max_threads = max_threads.max(1);
        PowerController {
            budget_watts,
            policy: Policy::default(),
            levers: Levers { threads: max_threads, duty: 1.0, rung: 0 },
            max_threads,
            ladder: alloc::vec![0],
            active: alloc::vec![None; max_threads],
            joules: alloc::vec![None],
            speed: alloc::vec![None],
            path: Vec::new(),
            deepest: 0,
            outside: 0,
            trial: None,
            age: 0,
            // The window before the first decision saw the starting levers.
            recent: alloc::vec![Levers { threads: max_threads, duty: 1.0, rung: 0 }; Policy::default().settle],
            applying: false,
            spans: false,
            idle: idle.max(0.0),
        }
    }

    /// The ladder the rung lever moves on: each rung's predicted bytes (non-increasing; rung 0
    /// is the run's own state). An empty list leaves the one rung.
    pub fn with_ladder(mut self, bytes: Vec<u64>) -> PowerController {
        if bytes.is_empty() {
            return self;
        }
        debug_assert!(bytes.windows(2).all(|w| w[0] >= w[1]), "a ladder's rungs take fewer bytes going down");
        self.deepest = bytes.len() - 1;
        self.active = alloc::vec![None; bytes.len() * self.max_threads];
        self.joules = alloc::vec![None; bytes.len()];
        self.speed = alloc::vec![None; bytes.len()];
        self.ladder = bytes;
        self
    }

    pub fn levers(&self) -> Levers {
        self.levers
    }

    /// Rungs of the ladder (1 without one).
    pub fn rungs(&self) -> usize {
        self.ladder.len()
    }

    /// The deepest rung the controller may still try (rungs below one that did not pay are off).
    pub fn deepest(&self) -> usize {
        self.deepest
    }

    /// Learned joules per token above idle of rung `i`, and the threads they were measured at.
    pub fn joules_per_token(&self, i: usize) -> Option<(usize, f64)> {
        self.joules.get(i).copied().flatten()
    }

    /// Change the budget (the levers move at the next decision).
    pub fn set_budget(&mut self, watts: f64) {
        self.budget_watts = watts;
    }

    /// Another controller holds the run at least as deep as rung `rung` (the memory
    /// controller's floor wins): measurements are taken as that rung's, and this controller
    /// moves its rung only while the other is not deeper.
    pub fn set_outside_rung(&mut self, rung: usize) {
        self.outside = rung.min(self.ladder.len() - 1);
    }

    /// Whether the caller is still applying the last change of rung: until it is done, the
    /// window does not show the rung, so its `settle` decisions have not begun.
    pub fn set_applying(&mut self, applying: bool) {
        self.applying = applying;
    }

    /// The rung the run is on.
    fn at(&self) -> usize {
        self.levers.rung.max(self.outside)
    }

    /// Watts of computing at `threads` on `rung`: learned; else the nearest thread count on
    /// that rung scaled by thread count; else the nearest rung's.
    fn active_at(&self, rung: usize, threads: usize) -> Option<f64> {
        let n = self.max_threads;
        let on = |r: usize| -> Option<f64> {
            let row = &self.active[r * n..(r + 1) * n];
            let (t, a) = row.iter().enumerate().filter_map(|(i, a)| a.map(|a| (i + 1, a))).min_by_key(|(i, _)| i.abs_diff(threads))?;
            Some(a * threads as f64 / t as f64)
        };
        let mut rungs: Vec<usize> = (0..self.ladder.len()).collect();
        rungs.sort_by_key(|r| r.abs_diff(rung));
        rungs.into_iter().find_map(on)
    }

    /// The duty that brings computing at `active` watts to the budget less the margin.
    fn fit(&self, active: f64) -> f64 {
        ((self.budget_watts * (1.0 - self.policy.margin) - self.idle) / active.max(1e-9)).clamp(0.01, 1.0)
    }

    /// Rung `i`'s pace, from what was learned on one thread: tokens/s at the budget as a share
    /// of the shallowest measured rung's full speed (None before both are measured).
    pub fn pace(&self, i: usize) -> Option<f64> {
        let top = self.speed.iter().find_map(|s| *s)?;
        let (_, e) = self.joules[i].filter(|(t, _)| *t == 1)?;
        let at_budget = (self.budget_watts * (1.0 - self.policy.margin) - self.idle).max(0.0) / e.max(1e-12);
        Some(at_budget.min(self.speed[i].unwrap_or(f64::MAX)) / top)
    }

    /// The rung to try below the current one, whose pace is `pace`: as many bytes fewer as it
    /// would take to run at the middle of the hysteresis band if joules per token went with
    /// bytes (at least `rung_stride` of them, at most half).
    fn rung_below(&self, pace: f64) -> Option<usize> {
        let p = self.policy;
        let r = self.levers.rung;
        if r >= self.deepest {
            return None;
        }
        let want = p.min_duty * (1.0 + p.rung_hysteresis / 2.0);
        let share = (1.0 - pace / want).clamp(p.rung_stride, 0.5);
        let target = self.ladder[r] as f64 * (1.0 - share);
        Some((r + 1..=self.deepest).find(|&k| self.ladder[k] as f64 <= target).unwrap_or(self.deepest))
    }

    /// A decision from sample `s`, the averages over the window the caller keeps, measured
    /// while the current levers held. Returns the new levers when they change (and a rung
    /// trial's verdict, even when they do not).
    pub fn observe(&mut self, s: Sample) -> Option<Decision> {
        let p = self.policy;
        let l = self.levers;
        let at = self.at();
        let watts = s.watts;
        self.spans |= s.joules_per_token.is_some();
        self.age = if self.applying { 0 } else { self.age + 1 };
        if self.recent.len() == p.settle.max(1) {
            self.recent.remove(0);
        }
        self.recent.push(l);
        // Learn the active watts here, over the duties the window saw (its average lags the
        // levers), while the thread count and rung held over it.
        let duty = self.recent.iter().map(|r| r.duty).sum::<f64>() / self.recent.len() as f64;
        let seen = ((watts - self.idle) / duty).max(0.0);
        if self.recent.iter().all(|r| r.threads == l.threads && r.rung == l.rung) {
            let a = &mut self.active[at * self.max_threads + l.threads - 1];
            *a = Some(match *a {
                Some(old) => 0.5 * old + 0.5 * seen,
                None => seen,
            });
        }
        // And the joules per token, once the window has seen only this rung and thread count.
        if self.age >= p.settle && s.tokens_per_second > 0.0 {
            let e = (watts - self.idle).max(0.0) / s.tokens_per_second;
            self.joules[at] = Some(match (self.joules[at], s.joules_per_token) {
                (_, Some(long)) => (l.threads, long),
                (Some((t, old)), None) if t == l.threads => (t, 0.5 * old + 0.5 * e),
                _ => (l.threads, e),
            });
            if l.threads == 1 {
                let v = s.tokens_per_second / duty;
                self.speed[at] = Some(self.speed[at].map_or(v, |old| 0.5 * old + 0.5 * v));
            }
        }
        let active = self.active_at(at, l.threads).unwrap_or(seen * l.duty / duty).max(1e-9);
        let fit = self.fit(active);
        let b = self.budget_watts;
        let ladder_free = self.outside <= l.rung;
        let mut next = l;
        let mut reason = if watts > b { Reason::Over } else { Reason::Room };
        let mut verdict = None;
        // A rung on trial, once its joules per token are its own: kept, or undone.
        let evidence = !self.spans || s.joules_per_token.is_some();
        if let Some(t) = self.trial.filter(|_| self.age >= p.settle && evidence) {
            if let Some((_, after)) = self.joules[at].filter(|(th, _)| *th == l.threads) {
                self.trial = None;
                if after <= t.before * (1.0 - p.rung_gain) {
                    verdict = Some(Reason::RungKept { before: t.before, after });
                } else {
                    self.path.pop();
                    self.deepest = t.from;
                    next.rung = t.from;
                    let up = self.active_at(t.from, l.threads).unwrap_or(active);
                    next.duty = self.fit(up).min(l.duty);
                    reason = Reason::RungUndone { before: t.before, after };
                }
            }
        }
        if next.rung != l.rung {
            // Undone: nothing else this decision.
        } else if watts > b {
            // Lowering trusts the worse of the learned watts and the window's watts as if all
            // at the current duty (the average lags a duty just lowered: this over-corrects,
            // on the safe side, and the rate-limited raise takes back the excess).
            let worst = active.max((watts - self.idle).max(0.0) / l.duty);
            next.duty = self.fit(worst).min(l.duty);
            if next.duty < p.min_duty && l.threads > 1 {
                // Fewer threads at a higher duty: the same work on fewer cores.
                next.threads = l.threads - 1;
                let a1 = self.active_at(at, next.threads).unwrap_or(active * next.threads as f64 / l.threads as f64);
                next.duty = self.fit(a1);
            }
        } else if watts < b * (1.0 - 2.0 * p.margin) {
            // Quality first: the rung above, if it would run well clear of `min_duty`.
            let settled = self.trial.is_none() && self.age >= p.settle && ladder_free;
            if let Some(&up) = self.path.last().filter(|_| settled) {
                let fit_up = self.fit(self.active_at(up, l.threads).unwrap_or(active));
                if self.pace(up).unwrap_or(fit_up) >= p.min_duty * (1.0 + p.rung_hysteresis) {
                    self.path.pop();
                    next.rung = up;
                    next.duty = fit_up.min(l.duty * (1.0 + p.step_up)).min(1.0);
                }
            }
            if next.rung != l.rung {
                // Back up a rung: the duty and threads wait.
            } else if l.duty < 1.0 {
                // At most `step_up` more, relatively, or 5 points at low duties.
                next.duty = fit.min((l.duty * (1.0 + p.step_up)).max(l.duty + 0.05)).max(l.duty).min(1.0);
            } else if l.threads < self.max_threads && self.trial.is_none() {
                let up = l.threads + 1;
                let fits = self.active_at(at, up).is_none_or(|a| self.idle + a <= b * (1.0 - p.margin));
                if fits {
                    next.threads = up;
                }
            }
        }
        // One thread, and it would crawl: a rung down on trial.
        // Where the caller keeps spans, the joules a trial is judged against are one too (the
        // window's, blended over a descent of the duty, lag the joules paid now).
        let trial_ok = ladder_free && self.trial.is_none() && verdict.is_none() && self.age >= p.settle && evidence && l.threads == 1 && next.threads == 1;
        if let (true, Some(pace)) = (next.rung == l.rung && trial_ok, self.pace(at)) {
            if let (true, Some(k), Some((1, before))) = (pace < p.min_duty, self.rung_below(pace), self.joules[at]) {
                self.path.push(l.rung);
                self.trial = Some(Trial { from: l.rung, before });
                next.rung = k;
                reason = Reason::RungTrial { pace };
            }
        }
        if next.rung != l.rung || next.threads != l.threads {
            self.age = 0;
        }
        if next == l {
            return verdict.map(|reason| Decision { levers: l, reason });
        }
        self.levers = next;
        Some(Decision { levers: next, reason: verdict.filter(|_| next.rung == l.rung).unwrap_or(reason) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A documented plant: the board idles at 2 W; computing adds 1.5 W per thread at full
    /// duty, whatever the rung; a token takes 40 ms of thread-time on rung 0, spread evenly
    /// over the threads, of which the share `memory` is reading weights and KV and goes with the
    /// rung's bytes (`bytes[rung]` relative to rung 0; memory = 0: compute-bound, a rung changes
    /// nothing); `background` (a trace) adds other load's watts. The sensor's average and the
    /// tokens/s are over the last 1 s (10 samples of 100 ms); decisions every 200 ms.
    struct Plant {
        idle: f64,
        per_thread: f64,
        bytes: Vec<f64>,
        memory: f64,
        background: Vec<(f64, f64)>,
        t: f64,
        samples: Vec<(f64, f64)>,
    }

    impl Plant {
        fn new(memory: f64) -> Plant {
            // 16 rungs, 1.0 down to 0.25 of rung 0's bytes.
            let bytes = (0..16).map(|i| 1.0 - 0.05 * i as f64).collect();
            Plant { idle: 2.0, per_thread: 1.5, bytes, memory, background: Vec::new(), t: 0.0, samples: Vec::new() }
        }

        fn ladder(&self) -> Vec<u64> {
            self.bytes.iter().map(|b| (b * 1e9) as u64).collect()
        }

        /// The trace's watts at the plant's time (the last point at or before it; 0 before).
        fn background(&self) -> f64 {
            self.background.iter().take_while(|(t, _)| *t <= self.t).last().map_or(0.0, |p| p.1)
        }

        fn watts(&self, l: Levers) -> f64 {
            self.idle + self.background() + self.per_thread * l.threads as f64 * l.duty
        }

        fn tokens_per_second(&self, l: Levers) -> f64 {
            let compute = 0.040 * (1.0 - self.memory + self.memory * self.bytes[l.rung]) / l.threads as f64;
            l.duty / compute
        }

        /// Advance 100 ms at levers `l`; the averages of the last second.
        fn step(&mut self, l: Levers) -> Sample {
            self.samples.push((self.watts(l), self.tokens_per_second(l)));
            self.t += 0.1;
            let n = self.samples.len().min(10);
            let last = &self.samples[self.samples.len() - n..];
            Sample {
                watts: last.iter().map(|s| s.0).sum::<f64>() / n as f64,
                tokens_per_second: last.iter().map(|s| s.1).sum::<f64>() / n as f64,
                joules_per_token: None,
            }
        }
    }

    /// What a run looked like every 100 ms.
    #[derive(Debug, Clone, Copy)]
    struct Tick {
        t: f64,
        watts: f64,
        tokens_per_second: f64,
        levers: Levers,
    }

    /// Runs `seconds` of decisions, returning a tick every 100 ms, and the decisions taken.
    fn run(c: &mut PowerController, plant: &mut Plant, seconds: f64) -> (Vec<Tick>, Vec<Decision>) {
        let (mut out, mut decisions) = (Vec::new(), Vec::new());
        let steps = (seconds * 10.0).round() as usize;
        for i in 0..steps {
            let s = plant.step(c.levers());
            if i % 2 == 1 {
                decisions.extend(c.observe(s));
            }
            out.push(Tick { t: plant.t, watts: s.watts, tokens_per_second: s.tokens_per_second, levers: c.levers() });
        }
        (out, decisions)
    }

    fn speed_of(ts: &[Tick]) -> f64 {
        ts.iter().map(|t| t.tokens_per_second).sum::<f64>() / ts.len() as f64
    }

    /// The spread of the effort (duty x threads) over `ticks`, as a share of its largest.
    fn effort_spread(ticks: &[Tick]) -> f64 {
        let e: Vec<f64> = ticks.iter().map(|t| t.levers.duty * t.levers.threads as f64).collect();
        let (lo, hi) = e.iter().fold((f64::MAX, 0f64), |(a, b), &d| (a.min(d), b.max(d)));
        (hi - lo) / hi
    }

    #[test]
    fn a_lower_budget_is_met_within_two_seconds_and_held_without_oscillating() {
        let mut plant = Plant::new(0.9);
        // 8 W at 4 threads and full duty; the budget 5 W.
        let mut c = PowerController::new(5.0, 4, 0.0).with_ladder(plant.ladder());
        let (trace, _) = run(&mut c, &mut plant, 12.0);
        // Under the budget within 2 s (the sensor's own average lags 1 s of it).
        let first_under = trace.iter().find(|t| t.watts <= 5.0).unwrap().t;
        assert!(first_under <= 2.0, "{first_under} s: {trace:?}");
        // Held after 3 s: never over by more than 2%, and the levers settle (no oscillation:
        // the effort moves by less than 5% over the last 5 s).
        let late: Vec<Tick> = trace.iter().filter(|t| t.t >= 3.0).copied().collect();
        assert!(late.iter().all(|t| t.watts <= 5.0 * 1.02), "{late:?}");
        let last5: Vec<Tick> = late.iter().filter(|t| t.t >= 7.0).copied().collect();
        assert!(effort_spread(&last5) <= 0.05, "{last5:?}");
        // And it spends the budget: within 15% of it, not far under; with room on two threads,
        // the views stay the run's own.
        assert!(late.last().unwrap().watts >= 5.0 * 0.85, "{late:?}");
        assert_eq!(late.last().unwrap().levers.rung, 0);
    }

    #[test]
    fn speed_comes_back_when_the_budget_is_raised() {
        let mut plant = Plant::new(0.9);
        let mut c = PowerController::new(4.0, 4, 0.0).with_ladder(plant.ladder());
        let (low, _) = run(&mut c, &mut plant, 8.0);
        let slow = low.last().unwrap().tokens_per_second;
        c.set_budget(20.0);
        let (high, _) = run(&mut c, &mut plant, 10.0);
        let fast = high.last().unwrap().tokens_per_second;
        assert!(fast > 2.0 * slow, "{slow} -> {fast}");
        assert_eq!(high.last().unwrap().levers, Levers { threads: 4, duty: 1.0, rung: 0 });
    }

    #[test]
    fn a_budget_below_the_idle_floor_goes_as_low_as_it_can() {
        let mut plant = Plant::new(0.0);
        let mut c = PowerController::new(1.0, 4, 2.0);
        let (trace, _) = run(&mut c, &mut plant, 6.0);
        let l = trace.last().unwrap().levers;
        assert_eq!(l.threads, 1);
        assert!(l.duty <= 0.01 + 1e-12, "{l:?}");
    }

    #[test]
    fn the_pause_gives_the_duty() {
        let l = Levers { threads: 2, duty: 0.25, rung: 0 };
        assert!((l.pause_seconds(0.010) - 0.030).abs() < 1e-12);
        assert_eq!(Levers { threads: 2, duty: 1.0, rung: 0 }.pause_seconds(0.010), 0.0);
    }

    /// 2.4 W on a 2 W board: one thread at 19% duty on the run's own views. A memory-bound
    /// plant's lower rungs cost fewer joules per token: the controller steps down, keeps what
    /// paid, stops once the pace is back over `min_duty`, holds the budget meanwhile, and
    /// gives the quality back first when the budget is raised.
    #[test]
    fn views_step_down_when_one_thread_would_crawl_and_come_back_with_the_budget() {
        let mut plant = Plant::new(0.9);
        let mut alone = Plant::new(0.9);
        let mut c = PowerController::new(2.4, 4, 2.0).with_ladder(plant.ladder());
        let mut without = PowerController::new(2.4, 4, 2.0);
        let (trace, decisions) = run(&mut c, &mut plant, 30.0);
        let (base, _) = run(&mut without, &mut alone, 30.0);
        let last = trace.last().unwrap();
        assert!(last.levers.rung > 0 && last.levers.threads == 1, "{decisions:?}");
        // Every trial paid on this plant (kept), and the budget held from 2 s on.
        assert!(decisions.iter().any(|d| matches!(d.reason, Reason::RungKept { .. })), "{decisions:?}");
        assert!(!decisions.iter().any(|d| matches!(d.reason, Reason::RungUndone { .. })), "{decisions:?}");
        assert!(trace.iter().filter(|t| t.t >= 2.0).all(|t| t.watts <= 2.4 * 1.02), "{trace:?}");
        // Faster than duty and threads alone, at the same watts.
        let speed = |ts: &[Tick]| ts.iter().filter(|t| t.t >= 25.0).map(|t| t.tokens_per_second).sum::<f64>() / 50.0;
        assert!(speed(&trace) >= 1.5 * speed(&base), "{} vs {}", speed(&trace), speed(&base));
        std::eprintln!(
            "2.4 W: rung {} ({:.2} of the bytes), {:.1} tokens/s against {:.1} with duty and threads alone; decisions: {decisions:?}",
            last.levers.rung,
            plant.bytes[last.levers.rung],
            speed(&trace),
            speed(&base)
        );
        // No oscillation: the rung and the effort are still over the last 10 s.
        let late: Vec<Tick> = trace.iter().filter(|t| t.t >= 20.0).copied().collect();
        assert!(late.iter().all(|t| t.levers.rung == last.levers.rung), "{late:?}");
        assert!(effort_spread(&late) <= 0.05, "{late:?}");
        // The pace is back at or above min_duty, not far below the deepest rung's: the descent
        // stopped where it had to.
        let pace = c.pace(last.levers.rung).unwrap();
        assert!(pace >= c.policy.min_duty && pace < c.policy.min_duty * 1.5, "{pace}: {decisions:?}");
        // Budget raised: the views come back first, then the speed.
        c.set_budget(20.0);
        let (high, hd) = run(&mut c, &mut plant, 12.0);
        assert_eq!(high.last().unwrap().levers, Levers { threads: 4, duty: 1.0, rung: 0 }, "{decisions:?} {hd:?} {:?}", c);
        let back_at = high.iter().find(|t| t.levers.rung == 0).unwrap().t - trace.last().unwrap().t;
        let full_at = high.iter().find(|t| t.levers.threads == 4).unwrap().t - trace.last().unwrap().t;
        assert!(back_at < full_at, "{back_at} {full_at}");
    }

    #[test]
    fn a_rung_that_does_not_pay_is_undone_and_not_tried_again() {
        // Compute-bound: fewer bytes, the same joules per token.
        let mut plant = Plant::new(0.0);
        let mut c = PowerController::new(2.4, 4, 2.0).with_ladder(plant.ladder());
        let (trace, decisions) = run(&mut c, &mut plant, 20.0);
        let trials = decisions.iter().filter(|d| matches!(d.reason, Reason::RungTrial { .. })).count();
        let undone = decisions.iter().filter(|d| matches!(d.reason, Reason::RungUndone { .. })).count();
        assert_eq!((trials, undone), (1, 1), "{decisions:?}");
        assert_eq!(c.deepest(), 0);
        assert!(trace.iter().filter(|t| t.t >= 10.0).all(|t| t.levers.rung == 0), "{trace:?}");
        assert!(trace.iter().filter(|t| t.t >= 2.0).all(|t| t.watts <= 2.4 * 1.02), "{trace:?}");
    }

    /// A caller that measures joules per token over long spans: the verdict waits for one,
    /// and is taken from it (here the span says the rung paid, though the window says not).
    #[test]
    fn a_trial_waits_for_the_callers_long_span() {
        let mut plant = Plant::new(0.0);
        let mut c = PowerController::new(2.4, 4, 2.0).with_ladder(plant.ladder());
        let mut decisions = Vec::new();
        for i in 0..200 {
            let mut s = plant.step(c.levers());
            if i % 2 == 0 {
                continue;
            }
            // A long span is ready only on every fourth decision, and on the trial's rung it
            // reads 20% fewer joules than the window's.
            let e = (s.watts - 2.0) / s.tokens_per_second;
            s.joules_per_token = (i % 8 == 7).then(|| if c.levers().rung > 0 { 0.8 * e } else { e });
            decisions.extend(c.observe(s));
        }
        // The first trial's verdict: kept, on the spans' 20% (the rung's joules and the ones it
        // is judged against both from a span). A later trial from that rung to a deeper one
        // finds no gain in the spans (the plant is compute-bound) and goes back to it.
        let verdicts: Vec<&Decision> = decisions.iter().filter(|d| matches!(d.reason, Reason::RungKept { .. } | Reason::RungUndone { .. })).collect();
        let Some(Reason::RungKept { before, after }) = verdicts.first().map(|d| d.reason) else { panic!("{decisions:?}") };
        assert!((after / before - 0.8).abs() < 1e-6, "{decisions:?}");
        assert!(c.levers().rung > 0, "{decisions:?}");
    }

    /// [`run`] with a caller that keeps a [`Span`] of joules per token, as `edge-run` does (its
    /// meter's running joules and the tokens it counted; the span restarts on a change of rung
    /// or threads).
    fn run_with_spans(c: &mut PowerController, plant: &mut Plant, seconds: f64) -> (Vec<Tick>, Vec<Decision>) {
        let (mut out, mut decisions) = (Vec::new(), Vec::new());
        let mut span = Span::new(plant.idle, 1.0, 8);
        let (mut joules, mut tokens) = (0.0, 0.0);
        for i in 0..(seconds * 10.0).round() as usize {
            let l = c.levers();
            joules += 0.1 * plant.watts(l);
            tokens += 0.1 * plant.tokens_per_second(l);
            let mut s = plant.step(l);
            if i % 2 == 1 {
                s.joules_per_token = span.observe(plant.t, joules, tokens as usize, l);
                let d = c.observe(s);
                if d.is_some_and(|d| (d.levers.rung, d.levers.threads) != (l.rung, l.threads)) {
                    span.restart();
                }
                decisions.extend(d);
            }
            out.push(Tick { t: plant.t, watts: s.watts, tokens_per_second: s.tokens_per_second, levers: c.levers() });
        }
        (out, decisions)
    }

    /// `tests/cli_power.rs`'s replayed trace on a quiet host: two threads at full duty are
    /// 8 W against 6 W, one is 5 W and fits (the loop's first decisions take the run to one
    /// thread there, the window's lag over-correcting; here it starts on one), so the run holds
    /// one thread at full duty for seconds before the other load's step (4.5 W a core, about 2.9 W) takes the duty to about
    /// a quarter. The caller's span of joules per token must not reach back over the full-duty
    /// seconds (their tokens are many and cheap: the pace would read about twice what it is,
    /// and no rung would be tried): a rung down goes on trial, judged against the joules the
    /// run pays under the load, and is kept on this memory-bound plant.
    #[test]
    fn a_rung_is_tried_when_other_load_takes_one_threads_duty_down() {
        let mut plant = Plant::new(0.9);
        plant.per_thread = 3.0;
        plant.background = recorded_background().into_iter().map(|(t, w)| (t, 1.5 * w)).collect();
        let mut c = PowerController::new(6.0, 1, 2.0).with_ladder(plant.ladder());
        let (trace, decisions) = run_with_spans(&mut c, &mut plant, 14.0);
        // Before the step: one thread at full duty, the views the run's own.
        let before: Vec<&Tick> = trace.iter().filter(|t| t.t >= 3.5 && t.t < 6.0).collect();
        assert!(before.iter().all(|t| t.levers == Levers { threads: 1, duty: 1.0, rung: 0 }), "{before:?}");
        // After it: met within 2 s, a trial at a pace under min_duty, from the joules paid now
        // (one thread at the duty that fits, 2.9 W of other load: about 0.5 J/token above idle).
        let over = trace.iter().filter(|t| t.t >= 6.0 && t.watts > 6.0 * 1.02).map(|t| t.t).collect::<Vec<f64>>();
        assert!(over.last().unwrap_or(&6.0) - over.first().unwrap_or(&6.0) <= 2.0, "{trace:?}");
        let trial = decisions.iter().find(|d| matches!(d.reason, Reason::RungTrial { .. })).unwrap_or_else(|| panic!("no trial: {decisions:?}"));
        let Reason::RungTrial { pace } = trial.reason else { unreachable!() };
        assert!(pace < c.policy.min_duty, "{pace}");
        assert!(decisions.iter().any(|d| matches!(d.reason, Reason::RungKept { before, .. } if before > 0.35)), "{decisions:?}");
        assert!(!decisions.iter().any(|d| matches!(d.reason, Reason::RungUndone { .. })), "{decisions:?}");
        assert!(trace.last().unwrap().levers.rung > 0, "{decisions:?}");
    }

    #[test]
    fn another_controllers_deeper_rung_wins_and_stops_the_rung_lever() {
        let mut plant = Plant::new(0.9);
        let mut c = PowerController::new(2.4, 4, 2.0).with_ladder(plant.ladder());
        c.set_outside_rung(3);
        let (_, decisions) = run(&mut c, &mut plant, 20.0);
        assert!(decisions.iter().all(|d| d.levers.rung == 0), "{decisions:?}");
        assert!(c.joules_per_token(3).is_some() && c.joules_per_token(0).is_none());
    }

    /// The background job's CPU use recorded on the development host (a step up at 6 s, down
    /// at 16 s; `tests/data/background-step.csv`), as 3 W a core of other load on the board.
    fn recorded_background() -> Vec<(f64, f64)> {
        include_str!("../tests/data/background-step.csv")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("seconds"))
            .map(|l| {
                let (t, c) = l.split_once(',').unwrap();
                (t.parse().unwrap(), 3.0 * c.parse::<f64>().unwrap())
            })
            .collect()
    }

    /// Replays the recorded trace under a 6 W budget (2 W idle, up to 6 W of computing): the
    /// other load's step (about 2 W, noisy as recorded) is met within 2 s, the budget held
    /// after it without oscillating (the 1 s average at most 2% over; the effort's spread while
    /// the background holds steady under 25%, the background itself moving by about 20%), and
    /// the speed comes back when the load falls and when the budget is raised.
    #[test]
    fn a_replayed_trace_of_other_load_is_met_within_two_seconds() {
        let mut plant = Plant::new(0.9);
        plant.background = recorded_background();
        assert!(plant.background.len() > 200);
        let mut c = PowerController::new(6.0, 4, 2.0).with_ladder(plant.ladder());
        let (trace, _) = run(&mut c, &mut plant, 24.0);
        // Every time the average goes over the budget after the first 3 s (the step at 6 s,
        // or the trace's noise), it is back under within 2 s.
        let mut over_since: Option<f64> = None;
        for t in trace.iter().filter(|t| t.t >= 3.0) {
            if t.watts > 6.0 * 1.02 {
                let since = *over_since.get_or_insert(t.t);
                assert!(t.t - since <= 2.0, "over the budget from {since:.1} s to {:.1} s: {trace:?}", t.t);
            } else {
                over_since = None;
            }
        }
        let steady = |a: f64, b: f64| -> Vec<Tick> { trace.iter().filter(|t| t.t >= a && t.t < b).copied().collect() };
        let (before, during, after) = (steady(3.0, 6.0), steady(9.0, 14.0), steady(19.0, 24.0));
        assert!(during.iter().all(|t| t.watts <= 6.0 * 1.02), "{during:?}");
        let worst = trace.iter().filter(|t| t.t >= 6.0 && t.t < 12.0).map(|t| t.watts).fold(0.0, f64::max);
        let back = trace.iter().filter(|t| t.t >= 6.0 && t.watts > 6.0 * 1.02).map(|t| t.t).fold(0.0, f64::max);
        std::eprintln!(
            "replayed step: worst 1 s average {worst:.2} W, over the budget until {back:.1} s; effort spread {:.1}% in 9-14 s; tokens/s {:.1} / {:.1} / {:.1} before / during / after",
            100.0 * effort_spread(&during),
            speed_of(&before),
            speed_of(&during),
            speed_of(&after)
        );
        assert!(effort_spread(&during) <= 0.25, "{during:?}");
        let speed = |ts: &[Tick]| ts.iter().map(|t| t.tokens_per_second).sum::<f64>() / ts.len() as f64;
        // The step took speed; its end gave some back.
        assert!(speed(&during) < 0.8 * speed(&before), "{} {}", speed(&before), speed(&during));
        assert!(speed(&after) > 1.1 * speed(&during), "{} {}", speed(&during), speed(&after));
        // Budget raised with the load still there: full speed within 10 s.
        c.set_budget(20.0);
        let (high, _) = run(&mut c, &mut plant, 10.0);
        assert_eq!(high.last().unwrap().levers, Levers { threads: 4, duty: 1.0, rung: 0 });
    }
}
