//! The view planner: which view (2, 3, 4, 5, 6 or 8 bits) each part of a model is read at, so that the
//! weights fit a byte budget and the model stays as close as possible to its 8-bit reference.
//!
//! # Problem
//!
//! The model is split into *units* (the sensitivity profile's: layers `blk.N`, `token_embd`,
//! `output`). Unit `u` read at view `v` costs `bytes[u][v]` weight bytes and adds `kl[u][v]`
//! nats/token to the KL divergence from the 8-bit reference (measured by lowering that unit
//! alone, so `kl[u][8] = 0`). The planner treats these costs as additive: it picks one view per
//! unit minimising `sum kl[u][v_u]` subject to `sum bytes[u][v_u] <= budget`. That is a
//! multiple-choice knapsack. The predicted KL is that sum (interactions between units are
//! ignored; the measured KL of a plan is usually somewhat larger).
//!
//! # Method
//!
//! 1. **Pareto front.** Each unit's views are sorted by bytes; a view that costs at least as
//!    many bytes as another and is not strictly less sensitive is dropped (it can never be
//!    worth choosing). Every unit starts at its cheapest remaining view (normally 2 bits).
//!    If even that does not fit, the budget is impossible ([`PlanError::OverBudget`]).
//! 2. **Greedy by marginal sensitivity per byte** ([`greedy`]): repeatedly take, among all
//!    units and all upgrades of a unit from its current view to *any* better view (one step,
//!    2 → 3, or a jump, 2 → 4 or 3 → 8, so a curve that is flat for one step and then drops does
//!    not trap it), the upgrade with the largest KL reduction per extra byte that still fits
//!    the budget; stop when no upgrade fits.
//! 3. **Exact knapsack** ([`knapsack`]): a dynamic programme over the bytes spent above the
//!    all-cheapest plan, in units of the greatest common divisor of every upgrade's extra
//!    bytes (plane sizes share large factors, so a 30-layer model has a few hundred states).
//!    This is exact. Only when the states would exceed [`MAX_STATES`] are costs rounded up to
//!    a coarser grid (still within budget), and the greedy step then spends what the rounding
//!    left over.
//! 4. [`choose`] takes the better of 2 and 3 (lower predicted KL; on a tie, fewer bytes): the
//!    optimum `k*`. Predicted KLs within [`kl_tolerance`] of each other (2% of `k*`, at least
//!    1e-4 nats/token) are closer than the profile can tell apart, but bytes are what decoding
//!    reads per token, so it returns the plan with the fewest bytes among those predicting at
//!    most `k* + kl_tolerance(k*)`. The knapsack's table already holds, for every smaller
//!    budget, its optimum (the KL only falls as the budget grows), so that plan is the
//!    table's first entry within the tolerance: no second search. With an exact knapsack the
//!    choice is monotone: a larger budget never predicts a larger KL (its `k*` and so its
//!    bound are no larger, and the table's KL falls along it), and never chooses fewer bytes.
//!
//! `no_std`: core + alloc only.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use super::ViewPlan;

/// Most dynamic-programming states [`knapsack`] uses before it coarsens its byte grid.
pub const MAX_STATES: u64 = 1 << 16;

/// One unit read at one view: its weight bytes and predicted KL (nats/token).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewCost {
    pub bits: u8,
    pub bytes: u64,
    pub kl: f64,
}

/// A part of the model whose view is chosen as one (a ViewPlan override key).
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub name: String,
    /// The views it may be read at (any order; at least one).
    pub views: Vec<ViewCost>,
}

/// A chosen view per unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Bits of each unit, in the order of the units given.
    pub bits: Vec<u8>,
    /// Weight bytes of the units at these views.
    pub bytes: u64,
    /// Predicted KL: the sum of the units' KL at these views.
    pub kl: f64,
}

impl Plan {
    /// The plan as runtime view overrides (one per unit).
    pub fn view_plan(&self, units: &[Unit]) -> ViewPlan {
        ViewPlan {
            default_bits: None,
            overrides: units.iter().zip(&self.bits).map(|(u, &b)| (u.name.clone(), b)).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum PlanError {
    /// A unit has no views, or a view with a non-finite KL.
    BadUnit { unit: String, what: &'static str },
    /// Even the cheapest view of every unit takes more than the budget.
    OverBudget { min_bytes: u64, budget: u64 },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::BadUnit { unit, what } => write!(f, "unit '{unit}': {what}"),
            PlanError::OverBudget { min_bytes, budget } => write!(
                f,
                "a budget of {budget} bytes is below the smallest plan ({min_bytes} bytes, every unit at its lowest view)"
            ),
        }
    }
}

/// A unit's Pareto front: views by strictly increasing bytes and strictly decreasing KL.
fn front(u: &Unit) -> Result<Vec<ViewCost>, PlanError> {
    if u.views.is_empty() {
        return Err(PlanError::BadUnit { unit: u.name.clone(), what: "no views" });
    }
    if u.views.iter().any(|v| !v.kl.is_finite()) {
        return Err(PlanError::BadUnit { unit: u.name.clone(), what: "a KL that is not a finite number" });
    }
    let mut v = u.views.clone();
    v.sort_by(|a, b| a.bytes.cmp(&b.bytes).then(a.kl.total_cmp(&b.kl)));
    let mut out: Vec<ViewCost> = Vec::with_capacity(v.len());
    for c in v {
        match out.last() {
            Some(last) if c.kl >= last.kl || c.bytes == last.bytes => {}
            _ => out.push(c),
        }
    }
    Ok(out)
}

fn fronts(units: &[Unit]) -> Result<Vec<Vec<ViewCost>>, PlanError> {
    units.iter().map(front).collect()
}

/// Bytes of the cheapest plan (every unit at its cheapest view).
pub fn min_bytes(units: &[Unit]) -> u64 {
    units.iter().filter_map(|u| u.views.iter().map(|v| v.bytes).min()).sum()
}

/// Bytes of the plan that reads every unit at its least sensitive view (normally all 8-bit);
/// a larger budget gains nothing.
pub fn max_useful_bytes(units: &[Unit]) -> u64 {
    units
        .iter()
        .map(|u| match front(u) {
            Ok(f) => f.last().map_or(0, |v| v.bytes),
            Err(_) => 0,
        })
        .sum()
}

fn finish(fr: &[Vec<ViewCost>], idx: &[usize]) -> Plan {
    let mut bytes = 0;
    let mut kl = 0.0;
    let mut bits = Vec::with_capacity(idx.len());
    for (f, &i) in fr.iter().zip(idx) {
        bytes += f[i].bytes;
        kl += f[i].kl;
        bits.push(f[i].bits);
    }
    Plan { bits, bytes, kl }
}

fn start(fr: &[Vec<ViewCost>], budget: u64) -> Result<u64, PlanError> {
    let min: u64 = fr.iter().map(|f| f[0].bytes).sum();
    if min > budget {
        return Err(PlanError::OverBudget { min_bytes: min, budget });
    }
    Ok(min)
}

/// The greedy loop from the views `idx` (front indices) spending at most `budget` in all.
fn greedy_from(fr: &[Vec<ViewCost>], idx: &mut [usize], budget: u64) {
    let mut total: u64 = fr.iter().zip(idx.iter()).map(|(f, &i)| f[i].bytes).sum();
    loop {
        // (gain per byte, unit, target view)
        let mut best: Option<(f64, usize, usize)> = None;
        for (u, f) in fr.iter().enumerate() {
            let cur = f[idx[u]];
            for (j, next) in f.iter().enumerate().skip(idx[u] + 1) {
                let extra = next.bytes - cur.bytes;
                if total + extra > budget {
                    break; // the front's bytes only grow
                }
                let gain = (cur.kl - next.kl) / extra as f64;
                if best.is_none_or(|(g, _, _)| gain > g) {
                    best = Some((gain, u, j));
                }
            }
        }
        let Some((_, u, j)) = best else { break };
        total += fr[u][j].bytes - fr[u][idx[u]].bytes;
        idx[u] = j;
    }
}

/// Greedy by marginal sensitivity per byte, with multi-step jumps (see the module doc).
pub fn greedy(units: &[Unit], budget: u64) -> Result<Plan, PlanError> {
    let fr = fronts(units)?;
    start(&fr, budget)?;
    let mut idx = vec![0usize; fr.len()];
    greedy_from(&fr, &mut idx, budget);
    Ok(finish(&fr, &idx))
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `(kl, bytes)` lexicographic: is `a` better than `b`?
fn better(a: (f64, u64), b: (f64, u64)) -> bool {
    a.0 < b.0 || (a.0 == b.0 && a.1 < b.1)
}

/// The dynamic programme's table: for every grid cost `c <= cap`, the least (KL, extra bytes)
/// over plans whose upgrades cost at most `c` grid steps of `g` bytes, and each unit's choice.
struct Table {
    g: u64,
    cap: usize,
    exact: bool,
    best: Vec<(f64, u64)>,
    /// `choice[u * (cap + 1) + c]`: the front index of unit `u` in the best plan of units
    /// `0..=u` at grid cost `c`.
    choice: Vec<u8>,
}

impl Table {
    /// The table for `slack` bytes above the all-cheapest plan (see the module doc, step 3).
    fn new(fr: &[Vec<ViewCost>], slack: u64) -> Option<Table> {
        let mut g = 0u64;
        for f in fr {
            for v in &f[1..] {
                g = gcd(g, v.bytes - f[0].bytes);
            }
        }
        if g == 0 || slack < g {
            // No unit can be upgraded within the budget (or none has an upgrade).
            return None;
        }
        let mut exact = true;
        if slack / g > MAX_STATES {
            g = slack.div_ceil(MAX_STATES);
            exact = false;
        }
        let cap = (slack / g) as usize;
        let mut best = vec![(0.0f64, 0u64); cap + 1];
        let mut next = vec![(0.0f64, 0u64); cap + 1];
        let mut choice = vec![0u8; fr.len() * (cap + 1)];
        for (u, f) in fr.iter().enumerate() {
            let costs: Vec<(usize, u64, f64)> = f
                .iter()
                .map(|v| {
                    let extra = v.bytes - f[0].bytes;
                    (extra.div_ceil(g) as usize, extra, v.kl)
                })
                .collect();
            for c in 0..=cap {
                let mut b = (f64::INFINITY, u64::MAX);
                let mut bj = 0u8;
                for (j, &(cost, extra, kl)) in costs.iter().enumerate() {
                    if cost > c {
                        break;
                    }
                    let prev = best[c - cost];
                    let cand = (prev.0 + kl, prev.1 + extra);
                    if better(cand, b) {
                        b = cand;
                        bj = j as u8;
                    }
                }
                next[c] = b;
                choice[u * (cap + 1) + c] = bj;
            }
            core::mem::swap(&mut best, &mut next);
        }
        Some(Table { g, cap, exact, best, choice })
    }

    /// The front index of every unit in the best plan of grid cost at most `c`.
    fn views_at(&self, fr: &[Vec<ViewCost>], mut c: usize) -> Vec<usize> {
        let mut idx = vec![0usize; fr.len()];
        for u in (0..fr.len()).rev() {
            let j = self.choice[u * (self.cap + 1) + c] as usize;
            idx[u] = j;
            c -= (fr[u][j].bytes - fr[u][0].bytes).div_ceil(self.g) as usize;
        }
        idx
    }

    /// The least grid cost whose best plan predicts at most `kl` (the table's KL only falls
    /// as the cost grows), if any.
    fn cheapest_within(&self, kl: f64) -> Option<usize> {
        let c = self.best.partition_point(|b| b.0 > kl);
        (c <= self.cap).then_some(c)
    }
}

/// The multiple-choice knapsack by dynamic programming (exact unless the problem needs more
/// than [`MAX_STATES`] states; see the module doc). Returns the plan and whether it is exact.
pub fn knapsack(units: &[Unit], budget: u64) -> Result<(Plan, bool), PlanError> {
    let fr = fronts(units)?;
    let min = start(&fr, budget)?;
    let (plan, exact, _) = solve(&fr, budget - min, budget);
    Ok((plan, exact))
}

/// [`knapsack`] on fronts `fr` with `slack` bytes above their cheapest plan (`budget` in all),
/// with its table (`None` when nothing can be upgraded).
fn solve(fr: &[Vec<ViewCost>], slack: u64, budget: u64) -> (Plan, bool, Option<Table>) {
    let Some(t) = Table::new(fr, slack) else {
        return (finish(fr, &vec![0; fr.len()]), true, None);
    };
    let mut idx = t.views_at(fr, t.cap);
    if !t.exact {
        greedy_from(fr, &mut idx, budget);
    }
    (finish(fr, &idx), t.exact, Some(t))
}

/// Predicted KLs closer than this to the optimum's are treated as equal by [`choose`]: the
/// profile measures each unit's KL on a few hundred tokens (`edge-pack --calibrate`: 256), and
/// a plan's KL measured on wiki.test.raw (20 windows of 512, 5,100 scored tokens) has a
/// standard error of about 1.5% of its mean (docs/RESULTS.md: 7e-5 at KL 0.0044). So a
/// difference of 2% of the KL is below what either measurement resolves, and at the top of
/// the range (KL near 0) so is 1e-4 nats/token (about 1.5 standard errors there).
/// [`kl_tolerance`] is the larger of the two.
pub const KL_TOLERANCE_RELATIVE: f64 = 0.02;

/// The absolute floor of [`kl_tolerance`], nats/token (see [`KL_TOLERANCE_RELATIVE`]).
pub const KL_TOLERANCE_ABSOLUTE: f64 = 1e-4;

/// How far above an optimum predicted KL `kl` a plan is still as good to the planner (nats/token).
pub fn kl_tolerance(kl: f64) -> f64 {
    (KL_TOLERANCE_RELATIVE * kl).max(KL_TOLERANCE_ABSOLUTE)
}

/// The plan for `budget` weight bytes of the units (see the module doc, step 4): the optimum
/// predicted KL `k*` is the better of [`greedy`] and [`knapsack`]; of the plans that predict at
/// most `k* + kl_tolerance(k*)`, the one with the fewest bytes (and of those, the least KL).
/// Decoding reads every byte once per token, so fewer bytes at an indistinguishable KL is a
/// faster plan.
pub fn choose(units: &[Unit], budget: u64) -> Result<Plan, PlanError> {
    let fr = fronts(units)?;
    let min = start(&fr, budget)?;
    let mut idx = vec![0usize; fr.len()];
    greedy_from(&fr, &mut idx, budget);
    let g = finish(&fr, &idx);
    let (k, _, table) = solve(&fr, budget - min, budget);
    let best = if better((g.kl, g.bytes), (k.kl, k.bytes)) { g } else { k };
    let within = best.kl + kl_tolerance(best.kl);
    let lean = table
        .and_then(|t| t.cheapest_within(within).map(|c| finish(&fr, &t.views_at(&fr, c))))
        .filter(|p| p.kl <= within && p.bytes < best.bytes);
    Ok(lean.unwrap_or(best))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Units shaped like nested planes (bytes of 2/3/4/8 bits grow as 2.5/3.5/4.5/8.5 per
    /// weight), with random, sometimes non-convex, KL curves.
    fn random_units(r: &mut Rng, n: usize, convex: bool) -> Vec<Unit> {
        (0..n)
            .map(|i| {
                let w = 8 * (1 + r.below(20));
                let k2 = 0.05 + r.unit();
                let (k3, k4) = if convex {
                    (k2 * (0.2 + 0.3 * r.unit()), k2 * 0.05 * r.unit())
                } else {
                    // Sometimes 3 bits barely helps: a flat step, then a drop.
                    (k2 * (0.5 + 0.5 * r.unit()), k2 * 0.1 * r.unit())
                };
                let views = [2u8, 3, 4, 8]
                    .iter()
                    .zip([k2, k3, k4, 0.0])
                    .map(|(&bits, kl)| ViewCost { bits, bytes: w * (2 * bits as u64 + 1) / 2, kl })
                    .collect();
                Unit { name: format!("blk.{i}"), views }
            })
            .collect()
    }

    /// Every combination of views.
    fn brute_force(units: &[Unit], budget: u64) -> Option<(f64, u64)> {
        let mut best: Option<(f64, u64)> = None;
        let mut idx = vec![0usize; units.len()];
        loop {
            let bytes: u64 = units.iter().zip(&idx).map(|(u, &i)| u.views[i].bytes).sum();
            let kl: f64 = units.iter().zip(&idx).map(|(u, &i)| u.views[i].kl).sum();
            if bytes <= budget && best.is_none_or(|b| better((kl, bytes), b)) {
                best = Some((kl, bytes));
            }
            let mut k = 0;
            loop {
                if k == units.len() {
                    return best;
                }
                idx[k] += 1;
                if idx[k] < units[k].views.len() {
                    break;
                }
                idx[k] = 0;
                k += 1;
            }
        }
    }

    /// Every combination of views: of those within `budget` that predict at most `kl`, the
    /// fewest bytes and, of those, the least KL.
    fn brute_force_lean(units: &[Unit], budget: u64, kl: f64) -> Option<(u64, f64)> {
        let mut best: Option<(u64, f64)> = None;
        let mut idx = vec![0usize; units.len()];
        loop {
            let bytes: u64 = units.iter().zip(&idx).map(|(u, &i)| u.views[i].bytes).sum();
            let k: f64 = units.iter().zip(&idx).map(|(u, &i)| u.views[i].kl).sum();
            if bytes <= budget && k <= kl && best.is_none_or(|(b, bk)| bytes < b || (bytes == b && k < bk)) {
                best = Some((bytes, k));
            }
            let mut u = 0;
            loop {
                if u == units.len() {
                    return best;
                }
                idx[u] += 1;
                if idx[u] < units[u].views.len() {
                    break;
                }
                idx[u] = 0;
                u += 1;
            }
        }
    }

    fn check(units: &[Unit], p: &Plan, budget: u64) {
        assert!(p.bytes <= budget, "{} > {budget}", p.bytes);
        let bytes: u64 = units
            .iter()
            .zip(&p.bits)
            .map(|(u, b)| u.views.iter().find(|v| v.bits == *b).unwrap().bytes)
            .sum();
        assert_eq!(bytes, p.bytes);
    }

    #[test]
    fn respects_the_budget_and_rejects_impossible_ones() {
        let mut r = Rng(7);
        let units = random_units(&mut r, 12, false);
        let (lo, hi) = (min_bytes(&units), max_useful_bytes(&units));
        for b in [lo, lo + 1, (lo + hi) / 2, hi - 1, hi, hi * 2] {
            for p in [choose(&units, b).unwrap(), greedy(&units, b).unwrap(), knapsack(&units, b).unwrap().0] {
                check(&units, &p, b);
            }
        }
        assert_eq!(choose(&units, lo).unwrap().bits, vec![2; 12]);
        assert_eq!(knapsack(&units, hi).unwrap().0.bits, vec![8; 12]);
        assert_eq!(knapsack(&units, hi).unwrap().0.kl, 0.0);
        // At the top the optimum is 0: anything within the absolute tolerance will do.
        assert!(choose(&units, hi).unwrap().kl <= KL_TOLERANCE_ABSOLUTE);
        assert_eq!(choose(&units, lo - 1), Err(PlanError::OverBudget { min_bytes: lo, budget: lo - 1 }));
    }

    #[test]
    fn optimal_on_small_cases_against_brute_force() {
        let mut r = Rng(42);
        let mut leaner = 0;
        for case in 0..300 {
            let n = 1 + (case % 6);
            let units = random_units(&mut r, n, case % 2 == 0);
            let (lo, hi) = (min_bytes(&units), max_useful_bytes(&units));
            let budget = lo + r.below(hi - lo + 1);
            let (kl, bytes) = brute_force(&units, budget).unwrap();
            let (k, exact) = knapsack(&units, budget).unwrap();
            assert!(exact && (k.kl - kl).abs() < 1e-12, "case {case}: knapsack {} vs optimum {kl}", k.kl);
            assert!(k.bytes == bytes, "case {case}: of equal KL, the fewest bytes");
            // The choice is within the tolerance of the optimum, and no plan as good (within
            // the same bound) takes fewer bytes.
            let within = kl + kl_tolerance(kl);
            let p = choose(&units, budget).unwrap();
            check(&units, &p, budget);
            assert!(p.kl <= within + 1e-12, "case {case}: planner {} vs optimum {kl}", p.kl);
            let (lean_bytes, lean_kl) = brute_force_lean(&units, budget, within).unwrap();
            assert_eq!(p.bytes, lean_bytes, "case {case}: a plan within {within} takes fewer bytes");
            assert!((p.kl - lean_kl).abs() < 1e-12, "case {case}: {} vs {lean_kl} at {lean_bytes} bytes", p.kl);
            assert!(p.bytes <= k.bytes);
            leaner += usize::from(p.bytes < k.bytes);
            // Greedy alone is never better than the optimum, and never infeasible.
            assert!(greedy(&units, budget).unwrap().kl >= kl - 1e-12);
        }
        assert!(leaner > 0, "the tolerance never saved bytes");
    }

    #[test]
    fn greedy_jumps_over_a_flat_step() {
        // 2 -> 3 gains nothing, 2 -> 4 gains a lot: a one-step greedy would never leave 2 bits.
        let flat = Unit {
            name: "blk.0".into(),
            views: vec![
                ViewCost { bits: 2, bytes: 100, kl: 1.0 },
                ViewCost { bits: 3, bytes: 140, kl: 1.0 },
                ViewCost { bits: 4, bytes: 180, kl: 0.1 },
                ViewCost { bits: 8, bytes: 340, kl: 0.0 },
            ],
        };
        let other = Unit {
            name: "blk.1".into(),
            views: vec![ViewCost { bits: 2, bytes: 100, kl: 0.5 }, ViewCost { bits: 3, bytes: 140, kl: 0.45 }],
        };
        let units = [flat, other];
        let p = greedy(&units, 280).unwrap();
        assert_eq!(p.bits, vec![4, 2]);
        assert_eq!(choose(&units, 280).unwrap().bits, vec![4, 2]);
        let vp = p.view_plan(&units);
        assert_eq!(vp.bits_for("blk.0.ffn_up.weight"), Some(4));
        assert_eq!(vp.bits_for("blk.1.attn_q.weight"), Some(2));
    }

    #[test]
    fn monotone_in_budget() {
        let mut r = Rng(3);
        for convex in [true, false] {
            let units = random_units(&mut r, 20, convex);
            let (lo, hi) = (min_bytes(&units), max_useful_bytes(&units));
            let mut last: Option<Plan> = None;
            let step = ((hi - lo) / 400).max(1);
            let mut b = lo;
            while b <= hi + step {
                let p = choose(&units, b).unwrap();
                check(&units, &p, b);
                if let Some(l) = &last {
                    assert!(p.kl <= l.kl + 1e-12, "budget {b}: KL {} after {}", p.kl, l.kl);
                    assert!(p.bytes >= l.bytes, "budget {b}: {} bytes after {}", p.bytes, l.bytes);
                }
                last = Some(p);
                b += step;
            }
        }
    }

    #[test]
    fn coarse_grid_stays_within_budget_and_near_greedy() {
        // Coprime byte counts force a grid of ~1 byte; with huge sizes the states exceed
        // MAX_STATES, the grid coarsens, and the greedy top-up spends the rest.
        let mut r = Rng(11);
        let units: Vec<Unit> = (0..30)
            .map(|i| {
                let w = 1_000_003 + r.below(1000);
                let views = [2u8, 3, 4, 8]
                    .iter()
                    .zip([1.0 + r.unit(), 0.3 * r.unit(), 0.05 * r.unit(), 0.0])
                    .map(|(&bits, kl)| ViewCost { bits, bytes: w * bits as u64 + r.below(7), kl })
                    .collect();
                Unit { name: format!("blk.{i}"), views }
            })
            .collect();
        let (lo, hi) = (min_bytes(&units), max_useful_bytes(&units));
        for k in 1..10 {
            let budget = lo + (hi - lo) * k / 10;
            let (kp, exact) = knapsack(&units, budget).unwrap();
            assert!(!exact);
            check(&units, &kp, budget);
            let c = choose(&units, budget).unwrap();
            check(&units, &c, budget);
            let g = greedy(&units, budget).unwrap();
            let best = if g.kl < kp.kl { g } else { kp };
            assert!(c.kl <= best.kl + kl_tolerance(best.kl));
            assert!(c.bytes <= best.bytes);
        }
    }

    #[test]
    fn of_plans_within_the_noise_the_one_reading_fewer_bytes() {
        let unit = |name: &str, k4: f64, k8: f64| Unit {
            name: name.into(),
            views: vec![ViewCost { bits: 4, bytes: 100, kl: k4 }, ViewCost { bits: 8, bytes: 200, kl: k8 }],
        };
        // Both units at 8 bits predict 0.500; lowering blk.1 adds 0.005 (1%: within 2%).
        let units = [unit("blk.0", 0.9, 0.4), unit("blk.1", 0.105, 0.1)];
        let p = choose(&units, 400).unwrap();
        assert_eq!((p.bits.as_slice(), p.bytes), ([8, 4].as_slice(), 300));
        assert!((p.kl - 0.505).abs() < 1e-12);
        assert_eq!(knapsack(&units, 400).unwrap().0.bits, vec![8, 8]);
        // Adding 0.015 (3%) is beyond the noise: the optimum stays.
        let units = [unit("blk.0", 0.9, 0.4), unit("blk.1", 0.115, 0.1)];
        assert_eq!(choose(&units, 400).unwrap().bits, vec![8, 8]);
        // Near KL 0 the absolute floor (1e-4 nats/token) decides.
        let units = [unit("blk.0", 0.00007, 0.0), unit("blk.1", 0.00002, 0.0)];
        assert_eq!(choose(&units, 400).unwrap().bits, vec![4, 4]);
        // Both lowered is beyond it; of the two plans of 300 bytes within it, the lower KL.
        let units = [unit("blk.0", 0.00007, 0.0), unit("blk.1", 0.00004, 0.0)];
        assert_eq!(choose(&units, 400).unwrap().bits, vec![8, 4]);
        assert_eq!(kl_tolerance(0.5), 0.01);
        assert_eq!(kl_tolerance(0.001), KL_TOLERANCE_ABSOLUTE);
    }

    #[test]
    fn dominated_views_are_never_chosen_and_bad_units_are_reported() {
        let u = Unit {
            name: "token_embd".into(),
            views: vec![
                ViewCost { bits: 8, bytes: 400, kl: 0.0 },
                ViewCost { bits: 4, bytes: 200, kl: 0.01 },
                ViewCost { bits: 3, bytes: 150, kl: 0.02 },
                // Noisy measurement: 2 bits looks better than 3. Then 3 bits is dominated.
                ViewCost { bits: 2, bytes: 100, kl: 0.015 },
            ],
        };
        let units = [u];
        assert_eq!(choose(&units, 199).unwrap().bits, vec![2]);
        assert_eq!(choose(&units, 200).unwrap().bits, vec![4]);
        let bad = Unit { name: "x".into(), views: vec![ViewCost { bits: 2, bytes: 1, kl: f64::NAN }] };
        assert!(matches!(choose(&[bad], 10), Err(PlanError::BadUnit { .. })));
        let empty = Unit { name: "y".into(), views: vec![] };
        assert!(choose(&[empty], 10).unwrap_err().to_string().contains("'y'"));
    }
}
