//! The power controller's policy: how hard the run may work to stay under a power budget. Plain
//! arithmetic on the watts the caller measures (a std-only meter in the binary); the caller
//! applies the levers (threads for the products, a pause after each token).
//!
//! ```text
//! plant (what the policy assumes, and learns):   W = idle + duty · active(threads)
//!   duty   = compute time / (compute time + pause)        (0, 1]
//!   idle   = watts with nothing running (the caller's, e.g. measured before the run; else 0)
//!   active = watts of computing at `threads`, learned as (W - idle) / duty per thread count
//!            (with idle unknown this over-counts active, and each decision corrects it: the
//!            iteration converges from above)
//!
//! every decision: W (a moving average over `window`) against the budget B
//!   W > B           -> duty = (B·(1 - margin) - idle) / active    (never above the current)
//!   W < B·(1 - 2m)  -> duty grows by at most `step_up`, towards the duty the model says fits
//!   duty < min_duty -> one thread fewer (the products spread over fewer cores), duty back to 1
//!   duty = 1, room  -> one thread more, if the thread count's learned watts fit
//! ```
//!
//! Lowering is immediate (one decision brings the average under the budget as soon as the
//! window has seen it); raising is rate-limited, which is what keeps it from oscillating.

use alloc::vec::Vec;

/// The levers as the caller applies them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Levers {
    pub threads: usize,
    /// Share of the time spent computing: the caller pauses `token_time · (1/duty - 1)` after
    /// each token.
    pub duty: f64,
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
    /// Below this duty, drop a thread instead.
    pub min_duty: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { margin: 0.05, step_up: 0.15, min_duty: 0.35 }
    }
}

/// The power controller.
#[derive(Debug, Clone)]
pub struct PowerController {
    pub budget_watts: f64,
    pub policy: Policy,
    levers: Levers,
    max_threads: usize,
    /// Learned watts of computing at each thread count (index = threads - 1).
    active: Vec<Option<f64>>,
    idle: f64,
}

impl PowerController {
    /// A controller starting at `max_threads` and full duty, with `idle` watts for the board
    /// at rest (0 when unknown).
    pub fn new(budget_watts: f64, max_threads: usize, idle: f64) -> PowerController {
        let max_threads = max_threads.max(1);
        PowerController {
            budget_watts,
            policy: Policy::default(),
            levers: Levers { threads: max_threads, duty: 1.0 },
            max_threads,
            active: alloc::vec![None; max_threads],
            idle: idle.max(0.0),
        }
    }

    pub fn levers(&self) -> Levers {
        self.levers
    }

    /// Watts of computing at `threads`, learned, or the nearest known scaled by thread count.
    fn active_at(&self, threads: usize) -> Option<f64> {
        if let Some(a) = self.active[threads - 1] {
            return Some(a);
        }
        let (t, a) = self.active.iter().enumerate().filter_map(|(i, a)| a.map(|a| (i + 1, a))).min_by_key(|(i, _)| i.abs_diff(threads))?;
        Some(a * threads as f64 / t as f64)
    }

    /// Change the budget (the levers move at the next decision).
    pub fn set_budget(&mut self, watts: f64) {
        self.budget_watts = watts;
    }

    /// A decision from `watts`, the average over the window the caller keeps, measured while
    /// the current levers held. Returns the new levers when they change.
    pub fn observe(&mut self, watts: f64) -> Option<Levers> {
        let p = self.policy;
        let l = self.levers;
        // Learn the active watts at this thread count (smoothed: the average lags).
        let seen = ((watts - self.idle) / l.duty).max(0.0);
        let a = &mut self.active[l.threads - 1];
        *a = Some(match *a {
            Some(old) => 0.5 * old + 0.5 * seen,
            None => seen,
        });
        let active = self.active_at(l.threads).unwrap_or(seen).max(1e-9);
        let b = self.budget_watts;
        let mut next = l;
        if watts > b {
            let fit = ((b * (1.0 - p.margin) - self.idle) / active).clamp(0.01, 1.0);
            next.duty = fit.min(l.duty);
            if next.duty < p.min_duty && l.threads > 1 {
                // Fewer threads at a higher duty: the same work on fewer cores.
                next.threads = l.threads - 1;
                let a1 = self.active_at(next.threads).unwrap_or(active * next.threads as f64 / l.threads as f64).max(1e-9);
                next.duty = ((b * (1.0 - p.margin) - self.idle) / a1).clamp(0.01, 1.0);
            }
        } else if watts < b * (1.0 - 2.0 * p.margin) {
            let fit = ((b * (1.0 - p.margin) - self.idle) / active).clamp(0.01, 1.0);
            if l.duty < 1.0 {
                next.duty = fit.min(l.duty * (1.0 + p.step_up)).max(l.duty).min(1.0);
            } else if l.threads < self.max_threads {
                let up = l.threads + 1;
                let fits = self.active_at(up).is_none_or(|a| self.idle + a <= b * (1.0 - p.margin));
                if fits {
                    next.threads = up;
                }
            }
        }
        if next == l {
            return None;
        }
        self.levers = next;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A documented plant: the board idles at 2 W; computing adds 1.5 W per thread at full
    /// duty; the sensor's average is over the last 1 s (10 samples of 100 ms); decisions every
    /// 250 ms. Tokens take 10 ms at 4 threads (40 ms of thread-time each, spread evenly).
    struct Plant {
        idle: f64,
        per_thread: f64,
        samples: Vec<f64>,
    }

    impl Plant {
        fn watts(&self, l: Levers) -> f64 {
            self.idle + self.per_thread * l.threads as f64 * l.duty
        }

        /// Advance 100 ms at levers `l`; the average of the last second.
        fn step(&mut self, l: Levers) -> f64 {
            self.samples.push(self.watts(l));
            let n = self.samples.len().min(10);
            self.samples[self.samples.len() - n..].iter().sum::<f64>() / n as f64
        }
    }

    fn tokens_per_second(l: Levers) -> f64 {
        // 40 ms of thread-time per token, perfectly parallel, then the pause.
        let compute = 0.040 / l.threads as f64;
        1.0 / (compute / l.duty)
    }

    /// Runs `seconds` of decisions, returning (time, average watts, levers) every 100 ms.
    fn run(c: &mut PowerController, plant: &mut Plant, seconds: f64) -> Vec<(f64, f64, Levers)> {
        let mut out = Vec::new();
        let steps = (seconds * 10.0) as usize;
        for i in 0..steps {
            let avg = plant.step(c.levers());
            if i % 2 == 1 {
                c.observe(avg);
            }
            out.push((i as f64 / 10.0, avg, c.levers()));
        }
        out
    }

    #[test]
    fn a_lower_budget_is_met_within_two_seconds_and_held_without_oscillating() {
        let mut plant = Plant { idle: 2.0, per_thread: 1.5, samples: Vec::new() };
        // 8 W at 4 threads and full duty; the budget 5 W.
        let mut c = PowerController::new(5.0, 4, 0.0);
        let trace = run(&mut c, &mut plant, 12.0);
        // Under the budget within 2 s (the sensor's own average lags 1 s of it).
        let first_under = trace.iter().find(|t| t.1 <= 5.0).unwrap().0;
        assert!(first_under <= 2.0, "{first_under} s: {trace:?}");
        // Held after 3 s: never over by more than 2%, and the levers settle (no oscillation:
        // the duty moves by less than 5% over the last 5 s).
        let late: Vec<_> = trace.iter().filter(|t| t.0 >= 3.0).collect();
        assert!(late.iter().all(|t| t.1 <= 5.0 * 1.02), "{late:?}");
        let duties: Vec<f64> = late.iter().filter(|t| t.0 >= 7.0).map(|t| t.2.duty * t.2.threads as f64).collect();
        let (lo, hi) = duties.iter().fold((f64::MAX, 0f64), |(a, b), &d| (a.min(d), b.max(d)));
        assert!(hi - lo <= 0.05 * hi, "{duties:?}");
        // And it spends the budget: within 15% of it, not far under.
        assert!(late.last().unwrap().1 >= 5.0 * 0.85, "{late:?}");
    }

    #[test]
    fn speed_comes_back_when_the_budget_is_raised() {
        let mut plant = Plant { idle: 2.0, per_thread: 1.5, samples: Vec::new() };
        let mut c = PowerController::new(4.0, 4, 0.0);
        let low = run(&mut c, &mut plant, 8.0);
        let slow = tokens_per_second(low.last().unwrap().2);
        c.set_budget(20.0);
        let high = run(&mut c, &mut plant, 10.0);
        let fast = tokens_per_second(high.last().unwrap().2);
        assert!(fast > 2.0 * slow, "{slow} -> {fast}");
        assert_eq!(high.last().unwrap().2, Levers { threads: 4, duty: 1.0 });
    }

    #[test]
    fn a_budget_below_the_idle_floor_goes_as_low_as_it_can() {
        let mut plant = Plant { idle: 2.0, per_thread: 1.5, samples: Vec::new() };
        let mut c = PowerController::new(1.0, 4, 2.0);
        let trace = run(&mut c, &mut plant, 6.0);
        let l = trace.last().unwrap().2;
        assert_eq!(l.threads, 1);
        assert!(l.duty <= 0.01 + 1e-12, "{l:?}");
    }

    #[test]
    fn the_pause_gives_the_duty() {
        let l = Levers { threads: 2, duty: 0.25 };
        assert!((l.pause_seconds(0.010) - 0.030).abs() < 1e-12);
        assert_eq!(Levers { threads: 2, duty: 1.0 }.pause_seconds(0.010), 0.0);
    }
}
