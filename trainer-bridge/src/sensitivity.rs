//! The per-unit sensitivity profile (`edge.sensitivity`) and the KL measurements behind it.
//!
//! A unit is one of the architecture's plan units ([`Arch::plan_units`]): a transformer layer
//! (`blk.N`, all its matrices), the token embedding (which is also the output head when the
//! embeddings are tied) and an untied output head: the keys a [`ViewPlan`] takes. For every unit and every view 2, 3,
//! 4, 5, 6 the profile holds the mean KL(P_ref || P) per token over the calibration tokens, P_ref
//! being the model with every unit at 8 bits and P the model with only that unit lowered. All
//! measurements switch views on one live model ([`Model::set_views`]).

use std::collections::{BTreeMap, HashSet};

use anyhow::{anyhow, bail, Result};
use edge_runtime::kv::{KvBits, KvFormat};
use edge_runtime::arch::{self, Arch};
use edge_runtime::blocks::is_nested8_view;
use edge_runtime::kernels;
use edge_runtime::model::{Logits, ModelOptions};
use edge_runtime::plan::ViewPlan;
use edge_runtime::{Checkpoint, Config, Model};
use serde::{Deserialize, Serialize};

use crate::threads;

/// Metadata key of the profile.
pub const SENSITIVITY_KEY: &str = "edge.sensitivity";
/// The views the profile measures.
pub const PROFILED_VIEWS: [u8; 5] = [2, 3, 4, 5, 6];

/// Log-probabilities and probabilities of reference logits, row by row.
#[derive(Debug, Clone)]
pub struct Reference {
    vocab: usize,
    logp: Vec<f32>,
    p: Vec<f32>,
}

/// `log softmax(logits)` into `out` (f64 accumulation).
fn log_softmax(logits: &[f32], out: &mut [f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = (l as f64 - lse) as f32;
    }
}

impl Reference {
    pub fn new(vocab: usize) -> Self {
        Reference { vocab, logp: Vec::new(), p: Vec::new() }
    }

    /// Append the distributions of `logits` (rows of `vocab`).
    pub fn push(&mut self, logits: &[f32]) {
        let start = self.logp.len();
        self.logp.resize(start + logits.len(), 0.0);
        for (row, out) in logits.chunks(self.vocab).zip(self.logp[start..].chunks_mut(self.vocab)) {
            log_softmax(row, out);
        }
        self.p.extend(self.logp[start..].iter().map(|&l| l.exp()));
    }

    pub fn n_rows(&self) -> usize {
        self.logp.len() / self.vocab.max(1)
    }

    /// Sum over rows `first..` of KL(P_ref || softmax(logits)) for the rows of `logits`.
    pub fn kl_sum(&self, first: usize, logits: &[f32]) -> f64 {
        let v = self.vocab;
        let mut total = 0f64;
        for (i, row) in logits.chunks(v).enumerate() {
            let r = first + i;
            let (lp, p) = (&self.logp[r * v..(r + 1) * v], &self.p[r * v..(r + 1) * v]);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&l| ((l - max) as f64).exp()).sum();
            let lse = max as f64 + sum.ln();
            let kl: f64 = p.iter().zip(lp).zip(row).map(|((&p, &lp), &l)| p as f64 * (lp as f64 - (l as f64 - lse))).sum();
            total += kl.max(0.0);
        }
        total
    }
}

/// Run every window through `model` and collect its distributions.
pub fn reference_of(model: &mut Model<'_>, windows: &[Vec<u32>]) -> Result<Reference> {
    let mut r = Reference::new(model.config.vocab_size);
    for w in windows {
        r.push(model.forward_batch(w, 0, Logits::All)?);
    }
    Ok(r)
}

/// Mean KL(P_ref || P_model) per token over `windows` (the windows `reference` was made from).
pub fn mean_kl(model: &mut Model<'_>, reference: &Reference, windows: &[Vec<u32>]) -> Result<f64> {
    let mut total = 0f64;
    let mut row = 0;
    for w in windows {
        let logits = model.forward_batch(w, 0, Logits::All)?;
        total += reference.kl_sum(row, logits);
        row += w.len();
    }
    Ok(total / row.max(1) as f64)
}

/// A model over `ck` sized for `windows`, at the views of `plan`.
pub fn model_for<'a>(ck: &Checkpoint<'a>, windows: &[Vec<u32>], plan: &ViewPlan) -> Result<Model<'a>> {
    let longest = windows.iter().map(|w| w.len()).max().unwrap_or(1).max(1);
    // The exact (f32) KV cache, so that a pack does not depend on the runtime's default.
    Ok(Model::with_plan(ck, ModelOptions { max_seq_len: longest, max_batch: longest, kv: KvFormat::uniform(KvBits::F32), kv_window: None }, plan)?)
}

/// One unit's measured KL per profiled view (2, 3, 4, 5, 6).
#[derive(Debug, Clone, PartialEq)]
pub struct UnitKl {
    pub name: String,
    pub kl: [f64; PROFILED_VIEWS.len()],
}

/// Version of the profile's JSON that [`Profile::new`] writes and [`Profile::parse`] reads.
pub const PROFILE_VERSION: u32 = 1;

/// The profile as stored in the checkpoint (`edge.sensitivity`, JSON), for the packer that
/// writes it and the runtime's tools that read it:
/// `{"version":1,"metric":"kl","reference":"8-bit view","calibration":"...","tokens":N,
///   "units":[{"name":"blk.0","kl":{"2":0.12,"3":0.031,"4":0.007,"5":0.002,"6":0.0005}}, ...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub version: u32,
    /// What the numbers are (`kl`: mean KL in nats per token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// What the KL is measured from (`8-bit view`: every unit at 8 bits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Human description of the calibration tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<String>,
    /// Tokens the KL means are over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    pub units: Vec<ProfileUnit>,
}

/// One unit of a stored profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileUnit {
    /// A view-plan key: `blk.N`, `token_embd` or `output`.
    pub name: String,
    /// View width ("2" .. "6"; "8" is the reference) -> mean KL.
    pub kl: BTreeMap<String, f64>,
}

impl ProfileUnit {
    /// The KL at `bits`, if measured (the 8-bit view is the reference: 0 when absent).
    pub fn kl_at(&self, bits: u8) -> Option<f64> {
        self.kl.get(&bits.to_string()).copied().or((bits == 8).then_some(0.0))
    }
}

impl Profile {
    /// The profile of `units`, measured on `tokens` tokens described by `calibration`. A
    /// negative KL (rounding noise of a view that changes nothing) is stored as 0.
    pub fn new(calibration: String, tokens: usize, units: &[UnitKl]) -> Self {
        Profile {
            version: PROFILE_VERSION,
            metric: Some("kl".into()),
            reference: Some("8-bit view".into()),
            calibration: Some(calibration),
            tokens: Some(tokens as u64),
            units: units
                .iter()
                .map(|u| ProfileUnit {
                    name: u.name.clone(),
                    kl: PROFILED_VIEWS.iter().zip(u.kl).map(|(b, k)| (b.to_string(), k.max(0.0))).collect(),
                })
                .collect(),
        }
    }

    /// The `edge.sensitivity` JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a profile serialises")
    }

    /// Parse and check a profile's JSON: a known version, units named once, KLs only for
    /// nested views, each finite and not below 0.
    pub fn parse(json: &str) -> Result<Profile> {
        let p: Profile = serde_json::from_str(json).map_err(|e| anyhow!("{e}"))?;
        if p.version != PROFILE_VERSION {
            bail!("version {} is not supported (this build reads version {PROFILE_VERSION})", p.version);
        }
        if p.units.is_empty() {
            bail!("it has no units");
        }
        let mut seen = HashSet::new();
        for u in &p.units {
            if !seen.insert(u.name.as_str()) {
                bail!("unit '{}' appears twice", u.name);
            }
            for (k, v) in &u.kl {
                match k.parse::<u8>() {
                    Ok(b) if is_nested8_view(b) => {}
                    _ => bail!("unit '{}' has a KL for view '{k}'; views are 2, 3, 4, 5, 6 and 8", u.name),
                }
                if !v.is_finite() || *v < -1e-9 {
                    bail!("unit '{}' has KL {v} at {k} bits; a KL is a finite number >= 0", u.name);
                }
            }
        }
        Ok(p)
    }

    /// The profile of checkpoint `ck`: `Ok(None)` when it has none, an error when it is
    /// unreadable.
    pub fn from_checkpoint(ck: &Checkpoint<'_>) -> Result<Option<Profile>> {
        let Some(s) = ck.get_str(SENSITIVITY_KEY) else {
            if ck.get(SENSITIVITY_KEY).is_some() {
                bail!("its sensitivity profile ({SENSITIVITY_KEY}) is not a string; re-pack with `edge-pack --calibrate`");
            }
            return Ok(None);
        };
        Profile::parse(s).map(Some).map_err(|e| {
            anyhow!("its sensitivity profile ({SENSITIVITY_KEY}) is unreadable: {e}; re-pack with `edge-pack --calibrate`")
        })
    }

    /// Every view some unit has a KL for, plus 8, ascending.
    pub fn views(&self) -> Vec<u8> {
        let mut v: Vec<u8> = self.units.iter().flat_map(|u| u.kl.keys().filter_map(|k| k.parse().ok())).collect();
        v.push(8);
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Measure every unit of the nested checkpoint `ck` at views 2..6 against all units at 8
/// bits, on `windows`. `progress(unit)` is called after each unit.
///
/// Activations stay f32 throughout ([`kernels::dispatch::with_float_activations`]): the profile
/// measures what the weights' views cost. With int8 activations every lowered unit would also
/// pay a floor of flipped activation roundings (about 0.003-0.005 nats/token per layer of
/// SmolLM2-135M, whatever the view), which would hide the difference between 5, 6 and 8 bits
/// and does not add up over units.
pub fn measure(ck: &Checkpoint<'_>, windows: &[Vec<u32>], progress: impl FnMut(&str)) -> Result<Vec<UnitKl>> {
    kernels::dispatch::with_float_activations(|| measure_views(ck, windows, progress))
}

fn measure_views(ck: &Checkpoint<'_>, windows: &[Vec<u32>], mut progress: impl FnMut(&str)) -> Result<Vec<UnitKl>> {
    let config = Config::from_checkpoint(ck)?;
    let arch = arch::of_checkpoint(ck)?;
    let _one_thread = threads::one_thread_if_small(arch, &config);
    let eight = ViewPlan::uniform(8);
    let mut model = model_for(ck, windows, &eight)?;
    let reference = reference_of(&mut model, windows)?;
    let mut out = Vec::new();
    for unit in arch.plan_units(&config) {
        let mut kl = [0f64; PROFILED_VIEWS.len()];
        for (k, &bits) in PROFILED_VIEWS.iter().enumerate() {
            let plan = ViewPlan { default_bits: Some(8), overrides: vec![(unit.clone(), bits)] };
            model.set_views(ck, &plan)?;
            kl[k] = mean_kl(&mut model, &reference, windows)?;
        }
        progress(&unit);
        out.push(UnitKl { name: unit, kl });
    }
    model.set_views(ck, &eight)?;
    Ok(out)
}

/// Forward-pass FLOPs the default profile may spend.
pub const PROFILE_FLOP_BUDGET: f64 = 4e12;

/// Profile tokens by default: as many (a multiple of 64) as fit the [`PROFILE_FLOP_BUDGET`]
/// over the `views x units + 1` passes, but at least one calibration sequence (`seq_len`), at
/// most `available`. SmolLM2-135M: one sequence of 256 tokens (a few minutes on two cores);
/// stories260K: all of them.
pub fn default_profile_tokens(arch: &Arch, config: &Config, seq_len: usize, available: usize) -> usize {
    let passes = (PROFILED_VIEWS.len() * arch.plan_units(config).len() + 1) as f64;
    let fit = (PROFILE_FLOP_BUDGET / (passes * threads::flops_per_token(arch, config))) as usize;
    (fit / 64 * 64).max(seq_len).min(available)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dim: usize, hidden: usize, layers: usize, heads: usize, kv: usize, vocab: usize, tied: bool) -> Config {
        Config {
            dim,
            hidden_dim: hidden,
            n_layers: layers,
            n_heads: heads,
            n_kv_heads: kv,
            head_dim: dim / heads,
            vocab_size: vocab,
            max_seq_len: 2048,
            norm_eps: 1e-5,
            rope_theta: 1e4,
            tied_embeddings: tied,
            local: edge_runtime::config::LocalLayers::NONE,
            attn_scale: None,
            rope_freq_factors: false,
        }
    }

    #[test]
    fn units_and_default_profile_tokens() {
        let smollm = config(576, 1536, 30, 9, 3, 49152, true);
        let stories = config(64, 172, 5, 8, 4, 512, true);
        assert_eq!(arch::LLAMA.plan_units(&smollm).len(), 31);
        assert_eq!(arch::LLAMA.plan_units(&config(64, 128, 2, 4, 2, 96, false)), ["blk.0", "blk.1", "token_embd", "output"]);
        // 2 x 134.5M FLOPs per token over 5 x 31 + 1 passes: 4 TFLOP hold ~95 tokens, so one sequence.
        assert!((threads::flops_per_token(&arch::LLAMA, &smollm) / 2.0 - 134_217_728.0).abs() < 1e6);
        assert_eq!(default_profile_tokens(&arch::LLAMA, &smollm, 256, 1024), 256);
        assert_eq!(default_profile_tokens(&arch::LLAMA, &stories, 256, 1024), 1024);
        assert_eq!(default_profile_tokens(&arch::LLAMA, &stories, 256, 100), 100);
    }

    #[test]
    fn kl_of_identical_and_shifted_distributions() {
        let logits = [1.0f32, 2.0, 3.0, -1.0, 0.5, 0.5, 0.5, 0.5];
        let mut r = Reference::new(4);
        r.push(&logits);
        assert_eq!(r.n_rows(), 2);
        // A constant shift of the logits is the same distribution.
        let shifted: Vec<f32> = logits.iter().map(|x| x + 7.0).collect();
        assert!(r.kl_sum(0, &shifted).abs() < 1e-6);
        let other = [3.0f32, 2.0, 1.0, -1.0];
        let kl = r.kl_sum(0, &other);
        // By hand: p = softmax(1, 2, 3, -1), q = softmax(3, 2, 1, -1).
        let sm = |v: [f64; 4]| {
            let z: f64 = v.iter().map(|x| x.exp()).sum();
            v.map(|x| x.exp() / z)
        };
        let (p, q) = (sm([1.0, 2.0, 3.0, -1.0]), sm([3.0, 2.0, 1.0, -1.0]));
        let want: f64 = (0..4).map(|i| p[i] * (p[i] / q[i]).ln()).sum();
        assert!((kl - want).abs() < 1e-5, "{kl} vs {want}");
    }

    #[test]
    fn profile_json_has_the_documented_schema() {
        let p = Profile::new("test".into(), 64, &[UnitKl { name: "blk.0".into(), kl: [0.5, 0.1, -1e-12, 0.01, 0.002] }]);
        let json = p.to_json();
        assert!(json.starts_with(r#"{"version":1,"metric":"kl","reference":"8-bit view","calibration":"test","#), "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"version":1,"metric":"kl","reference":"8-bit view","calibration":"test","tokens":64,
                "units":[{"name":"blk.0","kl":{"2":0.5,"3":0.1,"4":0.0,"5":0.01,"6":0.002}}]})
        );
        let back = Profile::parse(&json).unwrap();
        assert_eq!(back, p);
        assert_eq!((back.units[0].kl_at(3), back.units[0].kl_at(8), back.units[0].kl_at(7)), (Some(0.1), Some(0.0), None));
        assert_eq!(back.views(), [2, 3, 4, 5, 6, 8]);
        // Optional fields may be absent; everything else is checked.
        assert!(Profile::parse(r#"{"version":1,"units":[{"name":"blk.0","kl":{"4":0.1}}]}"#).is_ok());
        for (bad, why) in [
            (r#"{"version":2,"units":[{"name":"blk.0","kl":{}}]}"#, "version 2"),
            (r#"{"version":1,"units":[]}"#, "no units"),
            (r#"{"version":1,"units":[{"name":"a","kl":{}},{"name":"a","kl":{}}]}"#, "twice"),
            (r#"{"version":1,"units":[{"name":"a","kl":{"7":0.1}}]}"#, "view '7'"),
            (r#"{"version":1,"units":[{"name":"a","kl":{"4":-1}}]}"#, "finite number >= 0"),
        ] {
            let e = Profile::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
