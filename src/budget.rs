//! `--budget SIZE`: one memory budget for the whole process, planned before the model is built.
//!
//! ```text
//! budget = fixed (process + tokenizer at startup, measured, + margin)
//!        + run-time state (activations, logits = batch × vocab × 4, RoPE tables, backend buffers)
//!        + KV cache (ctx × n_layers × bytes per position of the format)
//!        + load transient (the largest nested tensor's planes, resident while its views are
//!          prepared, before they are released)
//!        + weights (the profile's plan for the bytes left: `Planner::for_bytes`)
//! ```
//!
//! The context, prefill batch and KV format start where generate starts without a budget (the
//! user's --ctx or 2048, the --batch-size, f16 or the user's --kv-bits); while the weights'
//! smallest plan does not fit in what is left, they are lowered in a fixed order: the KV
//! format to int8, then int4; the batch, halved to 1; then (without a user --ctx) the
//! context, halved down to [`MIN_CTX`]. Where f16 KV fits but leaves the weights below their
//! top views, int8 KV is taken instead (it loses less than a view step). Everything here is
//! arithmetic on the inputs.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use edge_runtime::arch::Arch;
use edge_runtime::kv::{KvBits, KvFormat, KV_GROUP};
use edge_runtime::model::{Model, ModelOptions};
use edge_runtime::plan::{Plan, Planner};
use edge_runtime::{Checkpoint, Config};
use serde_json::json;

use crate::stats::{self, human_bytes};
use crate::session::kv_format_name as kv_name;
use crate::views::{self, Selection, Source};

/// The smallest context a budget lowers to by itself.
pub const MIN_CTX: usize = 256;

/// Added to the measured startup memory, for what grows during the run (allocator slack, the
/// sampler, quantized activations, output strings, and about 5 MiB of peak that the memory
/// controller's readings add, measured on SmolLM2 and not yet explained).
pub const MARGIN: u64 = 24 << 20;

/// What a budget is planned from.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub budget: u64,
    /// Memory the process holds before the model (measured), margin included.
    pub fixed: u64,
    /// Bytes resident only while the model is built: the largest nested tensor's stored planes.
    pub load: u64,
    pub config: &'a Config,
    /// The weights' smallest plan and the largest useful one (`Planner::bytes_range`).
    pub weight_range: (u64, u64),
    /// The user's --ctx (capped at the model's), or `None` for the default.
    pub ctx: Option<usize>,
    /// The user's --kv-bits, or `None` to choose.
    pub kv: Option<KvFormat>,
    /// The prefill batch to start from (--batch-size).
    pub batch: usize,
    /// The context without --ctx (capped at the model's).
    pub default_ctx: usize,
    /// The weights' predicted KL at the best plan within a number of bytes (the profile's
    /// knapsack), so KV formats can be traded against weight views.
    pub weights_kl: &'a dyn Fn(u64) -> f64,
}

/// Predicted KL of a KV cache format against the f16 cache: SmolLM2-135M's, measured with f32
/// activations over 20 windows of 512 (docs/RESULTS.md, the KV cache section). Checkpoints do
/// not profile their cache yet, so these stand in for every model.
pub fn kv_kl(f: KvFormat) -> f64 {
    let part = |b: KvBits| match b.bits() {
        32 | 16 => 0.0,
        8 => 0.00008,
        _ => 0.0167,
    };
    // Keys and values each carry about half of a uniform format's loss (int8: 0.00016,
    // int4: 0.0334; k8v4 measured 0.0053, below this sum's 0.0168: an upper estimate).
    part(f.keys) + part(f.values)
}

/// The shape of one run and what it costs besides its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub ctx: usize,
    pub batch: usize,
    pub kv: KvFormat,
}

/// A budget's plan: the run's shape and the bytes each part may take.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub budget: u64,
    pub fixed: u64,
    pub load: u64,
    pub shape: Shape,
    pub kv_bytes: u64,
    pub state_bytes: u64,
    /// Bytes left for the weights (give to `Planner::for_bytes`).
    pub weight_allowance: u64,
    /// What was lowered from the starting shape, and why.
    pub lowered: Vec<String>,
}

/// What a command asks of a budget.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    /// The whole process's bytes.
    pub bytes: u64,
    /// The user's --ctx (capped at the model's), or `None` to choose.
    pub ctx: Option<usize>,
    /// The user's --kv-bits, or `None` to choose.
    pub kv: Option<KvFormat>,
    /// The prefill batch to start from.
    pub batch: usize,
    /// The context to start from without --ctx.
    pub default_ctx: usize,
}

/// A budget's plan with the views it gives the weights, and what it was planned from (the
/// memory controller plans its steps down from the same planner).
pub struct Chosen {
    pub selection: Selection,
    pub budget: Budget,
    pub planner: Planner,
    pub weights: Plan,
    /// Milliseconds the plan took (profile pricing, the shape ladder and the knapsack).
    pub plan_ms: f64,
}

/// Plan checkpoint `ck` (at `path`) for `req`, after everything the process holds before the
/// model (the tokenizer included) is resident: the resident set now, plus [`MARGIN`], is the
/// plan's fixed part. `flag` names the option in errors.
pub fn select(ck: &Checkpoint<'_>, arch: &Arch, config: &Config, path: &Path, flag: &str, req: Request) -> Result<Chosen> {
    let t = std::time::Instant::now();
    views::require_nested(ck, path, flag)?;
    let planner = views::planner(ck, arch, config, path, flag)?;
    // The heap is not trimmed first: what an auto-pack freed is reused by the model's buffers,
    // and a trimmed resident set under-counts the process by the pages it takes back (6 MB).
    let rss = stats::rss_bytes().ok_or_else(|| anyhow!("{flag} needs the resident memory of this process (/proc/self/status), not available here"))?;
    let inputs = Inputs {
        budget: req.bytes,
        fixed: rss + MARGIN,
        load: ck
            .tensors
            .iter()
            .filter(|t| t.encoding.is_grouped())
            .map(|t| t.segments.iter().map(|s| s.bytes.len() as u64).sum::<u64>())
            .max()
            .unwrap_or(0),
        config,
        weight_range: planner.bytes_range(),
        ctx: req.ctx.map(|c| c.min(config.max_seq_len)),
        kv: req.kv,
        batch: req.batch,
        default_ctx: req.default_ctx.min(config.max_seq_len),
        weights_kl: &|b| planner.for_bytes(b).map_or(f64::INFINITY, |p| p.kl),
    };
    let budget = plan(&inputs)?;
    let weights = planner.for_bytes(budget.weight_allowance).map_err(|e| anyhow!("{e}"))?;
    let units = planner.units.iter().zip(&weights.bits).map(|(u, &bits)| (u.name.clone(), bits)).collect();
    let selection = Selection {
        plan: weights.view_plan(&planner.units),
        source: Source::Budget(req.bytes),
        units,
        predicted_kl: Some(weights.kl),
    };
    let plan_ms = 1e3 * t.elapsed().as_secs_f64();
    Ok(Chosen { selection, budget, planner, weights, plan_ms })
}

/// KV cache bytes of `shape` for config `c`.
pub fn kv_bytes(c: &Config, shape: Shape) -> u64 {
    (shape.ctx * c.n_layers * shape.kv.bytes_per_position(c.kv_dim())) as u64
}

/// Run-time state bytes other than the KV cache (see [`Model::planned_state_bytes`]).
pub fn state_bytes(c: &Config, shape: Shape) -> u64 {
    let opts = ModelOptions { max_seq_len: shape.ctx, max_batch: shape.batch, kv: shape.kv, kv_window: None };
    Model::planned_state_bytes(c, opts).map_or(u64::MAX, |b| b as u64)
}

/// Everything but the weights, for `shape`.
fn cost(inp: &Inputs<'_>, shape: Shape) -> u64 {
    inp.fixed.saturating_add(inp.load).saturating_add(kv_bytes(inp.config, shape)).saturating_add(state_bytes(inp.config, shape))
}

fn fits(inp: &Inputs<'_>, shape: Shape) -> bool {
    cost(inp, shape).saturating_add(inp.weight_range.0) <= inp.budget
}

/// Whether the cache can keep integer codes for `c` (a head must be a power of two and a
/// whole number of groups, as `Model` checks).
pub fn integer_kv(c: &Config) -> bool {
    c.head_dim.is_multiple_of(KV_GROUP) && c.head_dim.is_power_of_two()
}


/// The largest `x` in `lo..=hi` with `ok(x)`, for `ok` true up to some point and false after
/// (`None` if not even `lo`).
fn largest(lo: usize, hi: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
    if lo > hi || !ok(lo) {
        return None;
    }
    let (mut a, mut b) = (lo, hi);
    while a < b {
        let m = a + (b - a).div_ceil(2);
        if ok(m) {
            a = m;
        } else {
            b = m - 1;
        }
    }
    Some(a)
}

/// The plan for `inp`, or a one-line error: the smallest run when the budget is below it, or
/// the largest context that fits when a user --ctx does not.
///
/// ```text
/// floor   = the smallest KV format, batch 1, the user's ctx or MIN_CTX: the smallest run
/// surplus = budget - (floor + the weights' smallest plan)
/// context, then batch: the largest whose bytes above the floor's take at most surplus / 2
/// KV format: the one (of f16, int8, int4, or the user's) that fits with the least predicted
///            KL of the cache and of the weights at the bytes left to them
/// ```
///
/// The shape never takes more than half of what the budget adds, so more memory never gives
/// the weights less (a context that jumped 512 -> 2048 would); the shape is whole (the starting
/// context and batch) once the surplus is twice its cost.
pub fn plan(inp: &Inputs<'_>) -> Result<Budget> {
    let c = inp.config;
    let ctx0 = inp.ctx.unwrap_or(inp.default_ctx);
    let start = Shape { ctx: ctx0, batch: inp.batch.min(ctx0).max(1), kv: inp.kv.unwrap_or_default() };
    let formats: Vec<KvFormat> = match inp.kv {
        Some(f) => vec![f],
        None if integer_kv(c) => vec![start.kv, KvFormat::uniform(KvBits::Q8), KvFormat::uniform(KvBits::Q4)],
        None => vec![start.kv],
    };
    let small = *formats.last().expect("at least one format");
    let min_ctx = inp.ctx.unwrap_or(MIN_CTX.min(ctx0));
    let floor = Shape { ctx: min_ctx, batch: 1, kv: small };
    if !fits(inp, floor) {
        if inp.ctx.is_some() {
            if let Some(ctx) = largest(1, min_ctx - 1, |x| fits(inp, Shape { ctx: x, ..floor })) {
                bail!(
                    "--ctx {min_ctx} does not fit in --budget {} ({} bytes) even with KV {} and batch 1; the largest context that fits is --ctx {ctx}",
                    human_bytes(inp.budget),
                    inp.budget,
                    kv_name(small),
                );
            }
        }
        let floor = Shape { ctx: min_ctx.min(MIN_CTX), ..floor };
        let min = cost(inp, floor).saturating_add(inp.weight_range.0);
        bail!(
            "--budget {} ({} bytes) is below the smallest run of this model: {} ({min} bytes: weights at their lowest views {}, KV {} at ctx {}, run-time state at batch 1, {} while loading and {} fixed)",
            human_bytes(inp.budget),
            inp.budget,
            human_bytes(min),
            human_bytes(inp.weight_range.0),
            kv_name(small),
            floor.ctx,
            human_bytes(inp.load),
            human_bytes(inp.fixed)
        );
    }
    let base = cost(inp, floor);
    let spend = (inp.budget - base - inp.weight_range.0) / 2;
    let within = |s: Shape| cost(inp, s) - base <= spend;
    let ctx = largest(min_ctx, ctx0, |x| within(Shape { ctx: x, ..floor })).expect("the floor is within");
    let batch = largest(1, start.batch.min(ctx), |b| within(Shape { ctx, batch: b, kv: small })).expect("batch 1 is within");
    // The KV format with the least predicted KL, weights included (the first of equals: the
    // larger format).
    let allowance_of = |s: Shape| (inp.budget - cost(inp, s)).min(inp.weight_range.1);
    let total_kl = |s: Shape| (inp.weights_kl)(allowance_of(s)) + kv_kl(s.kv);
    let shape = formats
        .iter()
        .map(|&kv| Shape { ctx, batch, kv })
        .filter(|&s| fits(inp, s))
        .fold(None, |best: Option<Shape>, s| match best {
            Some(b) if total_kl(b) <= total_kl(s) => Some(b),
            _ => Some(s),
        })
        .expect("the smallest format fits");
    let kv = kv_bytes(c, shape);
    let state = state_bytes(c, shape);
    let allowance = allowance_of(shape);
    let mut lowered = Vec::new();
    let half = format!(
        "the shape takes at most half of the {} above the smallest run ({}), the weights the rest",
        human_bytes(inp.budget - base - inp.weight_range.0),
        human_bytes(base + inp.weight_range.0)
    );
    if shape.kv != start.kv {
        let at = Shape { kv: start.kv, ..shape };
        let why = if fits(inp, at) {
            format!("predicted KL {:.4} (weights and cache) against {:.4}", total_kl(shape), total_kl(at))
        } else {
            format!("KV {} at this context leaves no room for the weights' smallest plan", kv_name(start.kv))
        };
        lowered.push(format!("KV cache {} -> {}: {why}", kv_name(start.kv), kv_name(shape.kv)));
    }
    if shape.ctx != start.ctx {
        lowered.push(format!("context {} -> {}: {half}", start.ctx, shape.ctx));
    }
    if shape.batch != start.batch {
        lowered.push(format!("prefill batch {} -> {}: logits take batch x vocab x 4 bytes; {half}", start.batch, shape.batch));
    }
    Ok(Budget {
        budget: inp.budget,
        fixed: inp.fixed,
        load: inp.load,
        shape,
        kv_bytes: kv,
        state_bytes: state,
        weight_allowance: allowance,
        lowered,
    })
}

impl Budget {
    /// The plan in lines for stderr, given the weights' bytes, bits per weight and predicted
    /// KL as chosen.
    pub fn describe(&self, weight_bytes: u64, bits_per_weight: f64, kl: Option<f64>) -> Vec<String> {
        let total = self.total(weight_bytes);
        let kl = kl.map(|k| format!(", predicted KL {k:.4}")).unwrap_or_default();
        let mut lines = vec![
            format!("edge-run: budget {} ({} bytes):", human_bytes(self.budget), self.budget),
            format!("  weights  {:>10}  {bits_per_weight:.3} bits/weight{kl}", human_bytes(weight_bytes)),
            format!(
                "  KV cache {:>10}  {}, ctx {}",
                human_bytes(self.kv_bytes),
                kv_name(self.shape.kv),
                self.shape.ctx
            ),
            format!("  state    {:>10}  activations, logits and buffers at prefill batch {}", human_bytes(self.state_bytes), self.shape.batch),
            format!("  loading  {:>10}  the largest tensor's planes while its views are prepared", human_bytes(self.load)),
            format!("  fixed    {:>10}  process and tokenizer at startup (measured) + {} margin", human_bytes(self.fixed), human_bytes(MARGIN)),
            format!("  total    {:>10}  of {} ({:.0}%)", human_bytes(total), human_bytes(self.budget), 100.0 * total as f64 / self.budget as f64),
        ];
        lines.extend(self.lowered.iter().map(|l| format!("  lowered: {l}")));
        lines
    }

    pub fn total(&self, weight_bytes: u64) -> u64 {
        self.fixed + self.load + self.state_bytes + self.kv_bytes + weight_bytes
    }

    pub fn to_json(&self, weight_bytes: u64) -> serde_json::Value {
        json!({
            "budget_bytes": self.budget,
            "fixed_bytes": self.fixed,
            "load_bytes": self.load,
            "margin_bytes": MARGIN,
            "weight_bytes": weight_bytes,
            "weight_allowance_bytes": self.weight_allowance,
            "kv_bytes": self.kv_bytes,
            "kv": kv_name(self.shape.kv),
            "kv_kl": kv_kl(self.shape.kv),
            "ctx": self.shape.ctx,
            "batch": self.shape.batch,
            "state_bytes": self.state_bytes,
            "total_bytes": self.total(weight_bytes),
            "lowered": self.lowered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M's shape.
    fn smollm() -> Config {
        Config {
            dim: 576,
            hidden_dim: 1536,
            n_layers: 30,
            n_heads: 9,
            n_kv_heads: 3,
            head_dim: 64,
            vocab_size: 49152,
            max_seq_len: 8192,
            norm_eps: 1e-5,
            rope_theta: 100000.0,
            tied_embeddings: true,
            local: edge_runtime::config::LocalLayers::NONE,
            attn_scale: None,
            rope_freq_factors: false,
        }
    }

    const MIB: u64 = 1 << 20;

    fn inputs(c: &Config, budget: u64, ctx: Option<usize>, kv: Option<KvFormat>) -> Inputs<'_> {
        // Weights lose 0.05 of KL per MiB below their top plan.
        let kl: &'static dyn Fn(u64) -> f64 = &|b| 0.05 * (140 * MIB).saturating_sub(b) as f64 / MIB as f64;
        Inputs { budget, fixed: 30 * MIB, load: 10 * MIB, config: c, weight_range: (60 * MIB, 140 * MIB), ctx, kv, batch: 64, default_ctx: 2048, weights_kl: kl }
    }

    #[test]
    fn a_large_budget_lowers_nothing_and_caps_the_weights() {
        let c = smollm();
        let b = plan(&inputs(&c, 1 << 30, None, None)).unwrap();
        assert_eq!(b.shape, Shape { ctx: 2048, batch: 64, kv: KvFormat::default() });
        assert!(b.lowered.is_empty());
        assert_eq!(b.weight_allowance, 140 * MIB);
        assert_eq!(b.kv_bytes, 2048 * 30 * 2 * 2 * 192);
    }

    #[test]
    fn less_memory_never_lowers_the_predicted_kl_nor_gives_a_larger_shape() {
        let c = smollm();
        let mut last: Option<Budget> = None;
        // Steps of 8 MiB: a step of the batch changes the state by up to 3.4 MiB here (batch 1
        // to 2), and the shape takes at most half of what a step adds.
        for mib in (105..=265).rev().step_by(8) {
            let b = plan(&inputs(&c, mib * MIB, None, None)).unwrap();
            assert!(b.total(b.weight_allowance) <= b.budget);
            assert!(b.weight_allowance >= 60 * MIB);
            if let Some(l) = &last {
                assert!(b.shape.ctx <= l.shape.ctx && b.shape.batch <= l.shape.batch, "{:?} after {:?}", b.shape, l.shape);
                // Predicted KL, weights and cache together, never falls with less memory (the
                // weights alone may get more where the cache is lowered instead).
                let kl = |x: &Budget| (inputs(&c, 0, None, None).weights_kl)(x.weight_allowance) + kv_kl(x.shape.kv);
                assert!(kl(&b) >= kl(l) - 1e-12, "{mib} MiB: KL {} after {}: {b:?} after {l:?}", kl(&b), kl(l));
            }
            last = Some(b);
        }
        let small = last.unwrap();
        assert_eq!(small.shape.kv, KvFormat::uniform(KvBits::Q4));
        assert!(small.shape.batch < 64 && small.shape.ctx < 2048);
        assert_eq!(small.lowered.len(), 3, "{:?}", small.lowered);
        assert!(small.lowered[0].starts_with("KV cache f16 -> int4"));
    }

    #[test]
    fn below_the_smallest_run_names_it() {
        let c = smollm();
        let e = plan(&inputs(&c, 90 * MIB, None, None)).unwrap_err().to_string();
        assert!(e.contains("below the smallest run of this model"), "{e}");
        assert!(!e.contains('\n'));
        // The named minimum fits, one byte less does not.
        let min: u64 = e.split(" bytes: ").next().unwrap().rsplit('(').next().unwrap().parse().unwrap();
        assert!(plan(&inputs(&c, min, None, None)).is_ok());
        assert!(plan(&inputs(&c, min - 1, None, None)).is_err());
    }

    #[test]
    fn a_user_ctx_that_does_not_fit_names_the_largest_that_does() {
        let c = smollm();
        let e = plan(&inputs(&c, 110 * MIB, Some(8192), None)).unwrap_err().to_string();
        assert!(e.contains("the largest context that fits is --ctx "), "{e}");
        let largest: usize = e.rsplit("--ctx ").next().unwrap().parse().unwrap();
        let b = plan(&inputs(&c, 110 * MIB, Some(largest), None)).unwrap();
        assert_eq!(b.shape.ctx, largest);
        assert!(plan(&inputs(&c, 110 * MIB, Some(largest + 1), None)).is_err());
    }

    #[test]
    fn a_user_kv_format_is_kept() {
        let c = smollm();
        let f16 = Some(KvFormat::default());
        let b = plan(&inputs(&c, 110 * MIB, None, f16)).unwrap();
        assert_eq!(b.shape.kv, KvFormat::default());
        assert!(b.lowered.iter().all(|l| !l.starts_with("KV")));
    }
}
