//! The view flags: which view each nested-plane tensor is read at, from `--bits`, a `--plan`
//! file, or the plan the runtime's [`Planner`] picks from the checkpoint's sensitivity profile
//! for `--target-bits` / `--weight-budget`; and the chosen views in words and JSON. Plans, their
//! keys and their costs are the runtime's (`edge_runtime::plan`, `edge_runtime::arch`): this
//! module parses flags and files and prints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use edge_runtime::arch::Arch;
use edge_runtime::plan::{self, Footprint, Planner, ViewPlan};
use edge_runtime::{Checkpoint, Config};
use serde::Deserialize;
use serde_json::json;

use crate::cli::ModelArgs;
use crate::profile::Profile;
use crate::stats::human_bytes;

/// Where a model's views came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// No view flag: every nested tensor at 8 bits.
    Default,
    /// `--bits`.
    Uniform(u8),
    /// `--plan FILE`.
    File(PathBuf),
    /// `--target-bits`.
    TargetBits(f64),
    /// `--weight-budget` (bytes).
    WeightBudget(u64),
    /// `--budget` (bytes, the whole process; see `crate::budget`).
    Budget(u64),
}

impl Source {
    fn name(&self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::Uniform(_) => "bits",
            Source::File(_) => "file",
            Source::TargetBits(_) => "target-bits",
            Source::WeightBudget(_) => "weight-budget",
            Source::Budget(_) => "budget",
        }
    }
}

/// The views chosen for a model.
#[derive(Debug, Clone)]
pub struct Selection {
    pub plan: ViewPlan,
    pub source: Source,
    /// For profile-chosen plans: each unit's bits, and the predicted KL (sum over units).
    pub units: Vec<(String, u8)>,
    pub predicted_kl: Option<f64>,
}

/// Whether `ck` has nested-plane tensors, the only ones views apply to.
pub fn has_nested(ck: &Checkpoint<'_>) -> bool {
    ck.tensors.iter().any(|t| t.encoding.is_grouped())
}

/// The encoding of a checkpoint's matrices when they are dense (`f16`, `f32`, `bf16`).
pub fn dense_encoding(ck: &Checkpoint<'_>) -> &'static str {
    ck.tensors.iter().find(|t| t.shape.len() == 2).map_or("dense", |t| t.encoding.name())
}

/// Refuse `flag` (a view flag, as typed) on checkpoint `ck` (at `path`) when it has no
/// nested-plane tensors: its weights have one width, so no view could be chosen.
pub fn require_nested(ck: &Checkpoint<'_>, path: &Path, flag: &str) -> Result<()> {
    if has_nested(ck) {
        return Ok(());
    }
    bail!(
        "{flag} needs a checkpoint with nested-plane tensors, but {} has no nested-plane tensors (its matrices are {}); pack one with `edge-pack MODEL -o MODEL-q8.edge --encoding q8`, or give edge-run the original model with --pack-encoding q8",
        path.display(),
        dense_encoding(ck)
    )
}

/// Every nested tensor at `bits` (asked for by `flag`, e.g. `--kl-base-bits`), or the default
/// views when `bits` is `None`.
pub fn select_uniform(ck: &Checkpoint<'_>, path: &Path, flag: &str, bits: Option<u8>) -> Result<Selection> {
    if let Some(b) = bits {
        require_nested(ck, path, &format!("{flag} {b}"))?;
    }
    Ok(Selection::uniform(bits))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    default: Option<toml::Value>,
    #[serde(default)]
    views: BTreeMap<String, toml::Value>,
}

fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Boolean(b) => b.to_string(),
        _ => "a table or array".into(),
    }
}

fn view_bits(v: &toml::Value) -> Option<u8> {
    v.as_integer().and_then(|b| u8::try_from(b).ok()).filter(|&b| edge_runtime::blocks::is_nested8_view(b))
}

/// Read a plan file and check its keys against the matrices of architecture `arch` at `config`.
pub fn read_plan_file(path: &Path, arch: &Arch, config: &Config) -> Result<ViewPlan> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("cannot read plan file {}: {e}", path.display()))?;
    let pf: PlanFile = toml::from_str(&text).map_err(|e| {
        anyhow!(
            "plan file {} is not a valid plan: {}; expected `default = 4` and a [views] table such as \"blk.0\" = 8",
            path.display(),
            crate::report::one_line(e.message())
        )
    })?;
    let default_bits = match &pf.default {
        None => None,
        Some(v) => Some(view_bits(v).ok_or_else(|| {
            anyhow!("plan file {}: default = {} is not a view width; choose 2, 3, 4, 5, 6 or 8", path.display(), show(v))
        })?),
    };
    let overrides = pf
        .views
        .iter()
        .map(|(k, v)| {
            let b = view_bits(v).ok_or_else(|| {
                anyhow!("plan file {}: \"{k}\" = {} is not a view width; choose 2, 3, 4, 5, 6 or 8", path.display(), show(v))
            })?;
            Ok((k.clone(), b))
        })
        .collect::<Result<Vec<_>>>()?;
    let plan = ViewPlan { default_bits, overrides };
    let names: Vec<String> = arch.matrices(config).into_iter().map(|t| t.name).collect();
    let unknown: Vec<String> = plan
        .unknown_keys(&names)
        .into_iter()
        .map(|k| {
            if k == "output" && config.tied_embeddings {
                "'output' (the output head is token_embd in this model)".to_string()
            } else {
                format!("'{k}'")
            }
        })
        .collect();
    if !unknown.is_empty() {
        bail!(
            "plan file {} names {} not in this model: {}; {}",
            path.display(),
            if unknown.len() == 1 { "a unit" } else { "units" },
            unknown.join(", "),
            arch.plan_keys_hint(config)
        );
    }
    Ok(plan)
}

/// The plan for an average of `target` bits per matrix weight, refusing targets outside what
/// the checkpoint's views can give.
pub fn for_bits(p: &Planner, target: f64) -> Result<plan::Plan> {
    let (lo, hi) = p.bits_range();
    // A hair of tolerance: 2.5 bits over a whole number of groups is exact, but the decimal
    // the user typed need not be.
    if target < lo - 1e-9 {
        bail!(
            "--target-bits {target} is below the smallest plan of this checkpoint ({lo:.3} bits/weight, every unit at its lowest view); use at least {:.2}",
            (lo * 100.0).ceil() / 100.0
        );
    }
    if target > hi + 1e-9 {
        bail!(
            "--target-bits {target} is above the largest plan of this checkpoint ({hi:.3} bits/weight, the 8-bit view); use --bits 8 for the full checkpoint"
        );
    }
    p.for_bits(target).map_err(|e| anyhow!("{e}"))
}

/// The plan whose weights (norms included) take at most `bytes`.
pub fn for_bytes(p: &Planner, bytes: u64) -> Result<plan::Plan> {
    let (lo, _) = p.bytes_range();
    if bytes < lo {
        bail!(
            "--weight-budget {} ({bytes} bytes) is below the smallest plan of this checkpoint: {} ({lo} bytes, every unit at its lowest view)",
            human_bytes(bytes),
            human_bytes(lo)
        );
    }
    p.for_bytes(bytes).map_err(|e| anyhow!("{e}"))
}

/// The runtime's form of a profile.
pub fn unit_profiles(profile: &Profile) -> Vec<plan::UnitProfile> {
    profile
        .units
        .iter()
        .map(|u| plan::UnitProfile {
            name: u.name.clone(),
            kl: plan::VIEWS.iter().filter_map(|&b| u.kl_at(b).map(|k| (b, k))).collect(),
        })
        .collect()
}

fn no_profile(path: &Path, flag: &str) -> anyhow::Error {
    anyhow!(
        "{} has no sensitivity profile: re-pack with `edge-pack --calibrate` or `--calibrate-self`, or give edge-run the original model with the default --pack-encoding q8-cal (needed by {flag}; or choose views with --bits or --plan)",
        path.display()
    )
}

/// The planner of checkpoint `ck` (at `path`): its profile's units priced at every view, or
/// `None` when it has no sensitivity profile.
pub fn profile_planner(ck: &Checkpoint<'_>, arch: &Arch, config: &Config, path: &Path) -> Result<Option<Planner>> {
    let Some(profile) = Profile::from_checkpoint(ck).map_err(|e| anyhow!("{}: {e}", path.display()))? else {
        return Ok(None);
    };
    Planner::new(ck, arch, config, &unit_profiles(&profile)).map(Some).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// The planner `flag` needs, or why there is none.
pub fn planner(ck: &Checkpoint<'_>, arch: &Arch, config: &Config, path: &Path, flag: &str) -> Result<Planner> {
    profile_planner(ck, arch, config, path)?.ok_or_else(|| no_profile(path, flag))
}

/// The views the flags of `args` choose for checkpoint `ck` (at `path`).
/// A view flag on a checkpoint without nested-plane tensors is an error (as in every command).
pub fn select(ck: &Checkpoint<'_>, arch: &Arch, config: &Config, args: &ModelArgs, path: &Path) -> Result<Selection> {
    if args.bits.is_some() {
        return select_uniform(ck, path, "--bits", args.bits);
    }
    if let Some(f) = &args.plan {
        require_nested(ck, path, "--plan")?;
        let plan = read_plan_file(f, arch, config)?;
        return Ok(Selection { plan, source: Source::File(f.clone()), units: Vec::new(), predicted_kl: None });
    }
    let (source, chosen, planner) = if let Some(t) = args.target_bits {
        require_nested(ck, path, &format!("--target-bits {t}"))?;
        let p = planner(ck, arch, config, path, "--target-bits")?;
        (Source::TargetBits(t), for_bits(&p, t)?, p)
    } else if let Some(b) = args.weight_budget {
        require_nested(ck, path, "--weight-budget")?;
        let p = planner(ck, arch, config, path, "--weight-budget")?;
        (Source::WeightBudget(b), for_bytes(&p, b)?, p)
    } else {
        return Ok(Selection { plan: ViewPlan::default(), source: Source::Default, units: Vec::new(), predicted_kl: None });
    };
    let units = planner.units.iter().zip(&chosen.bits).map(|(u, &b)| (u.name.clone(), b)).collect();
    Ok(Selection { plan: chosen.view_plan(&planner.units), source, units, predicted_kl: Some(chosen.kl) })
}

/// `blk.0-3,7` style: layer numbers collapsed into ranges, other names as they are.
pub fn compact_names(names: &[&str]) -> String {
    let mut layers: Vec<usize> = Vec::new();
    let mut others: Vec<&str> = Vec::new();
    for n in names {
        match n.strip_prefix("blk.").and_then(|r| r.parse::<usize>().ok()) {
            Some(l) => layers.push(l),
            None => others.push(n),
        }
    }
    layers.sort_unstable();
    let mut parts: Vec<String> = others.iter().map(|s| s.to_string()).collect();
    if !layers.is_empty() {
        let mut ranges: Vec<String> = Vec::new();
        let mut i = 0;
        while i < layers.len() {
            let mut j = i;
            while j + 1 < layers.len() && layers[j + 1] == layers[j] + 1 {
                j += 1;
            }
            ranges.push(if j > i { format!("{}-{}", layers[i], layers[j]) } else { layers[i].to_string() });
            i = j + 1;
        }
        parts.push(format!("blk.{}", ranges.join(",")));
    }
    parts.join(", ")
}

impl Selection {
    /// Every nested tensor at `bits` (`None`: at 8 bits, as when no view flag is given).
    pub fn uniform(bits: Option<u8>) -> Selection {
        let (plan, source) = match bits {
            Some(b) => (ViewPlan::uniform(b), Source::Uniform(b)),
            None => (ViewPlan::default(), Source::Default),
        };
        Selection { plan, source, units: Vec::new(), predicted_kl: None }
    }

    /// Whether anything other than the default was asked for.
    pub fn is_default(&self) -> bool {
        self.source == Source::Default
    }

    /// The views in a few words: `8-bit token_embd, blk.0-1 | 4-bit blk.2-29`.
    pub fn views_text(&self) -> String {
        if !self.units.is_empty() {
            let mut by_bits: BTreeMap<std::cmp::Reverse<u8>, Vec<&str>> = BTreeMap::new();
            for (n, b) in &self.units {
                by_bits.entry(std::cmp::Reverse(*b)).or_default().push(n);
            }
            return by_bits
                .iter()
                .map(|(b, names)| format!("{}-bit {}", b.0, compact_names(names)))
                .collect::<Vec<_>>()
                .join(" | ");
        }
        let mut parts = vec![format!("default {}-bit", self.plan.default_bits.unwrap_or(8))];
        parts.extend(self.plan.overrides.iter().map(|(k, b)| format!("{k} {b}-bit")));
        parts.join(", ")
    }

    /// One stderr line describing the plan and what it costs.
    pub fn describe(&self, fp: &Footprint) -> String {
        let why = match &self.source {
            Source::Default => "default".to_string(),
            Source::Uniform(b) => format!("--bits {b}"),
            Source::File(p) => format!("--plan {}", p.display()),
            Source::TargetBits(t) => format!("--target-bits {t}, from the sensitivity profile"),
            Source::WeightBudget(b) => format!("--weight-budget {}, from the sensitivity profile", human_bytes(*b)),
            Source::Budget(b) => format!("--budget {}, from the sensitivity profile", human_bytes(*b)),
        };
        let kl = self.predicted_kl.map(|k| format!(", predicted KL {k:.4}")).unwrap_or_default();
        format!(
            "edge-run: plan ({why}): {}; weights {} ({} bytes), {:.3} bits/weight, reads {} per token{kl}",
            self.views_text(),
            human_bytes(fp.weight_bytes),
            fp.weight_bytes,
            fp.bits_per_weight(),
            human_bytes(fp.decode_bytes)
        )
    }

    /// The plan as JSON, with what it costs (held and read per decoded token).
    pub fn to_json(&self, fp: &Footprint) -> serde_json::Value {
        let views: serde_json::Map<String, serde_json::Value> = if self.units.is_empty() {
            self.plan.overrides.iter().map(|(k, b)| (k.clone(), json!(b))).collect()
        } else {
            self.units.iter().map(|(k, b)| (k.clone(), json!(b))).collect()
        };
        json!({
            "source": self.source.name(),
            "file": match &self.source { Source::File(p) => Some(p.display().to_string()), _ => None },
            "target_bits": match self.source { Source::TargetBits(t) => Some(t), _ => None },
            "weight_budget": match self.source { Source::WeightBudget(b) => Some(b), _ => None },
            "default_bits": self.plan.default_bits,
            "views": views,
            "weight_bytes": fp.weight_bytes,
            "matrix_bytes": fp.matrix_bytes,
            "decode_bytes": fp.decode_bytes,
            "bits_per_weight": fp.bits_per_weight(),
            "predicted_kl": self.predicted_kl,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_layer_ranges() {
        assert_eq!(compact_names(&["blk.0", "blk.1", "blk.2", "blk.5", "token_embd", "blk.7", "blk.8"]), "token_embd, blk.0-2,5,7-8");
        assert_eq!(compact_names(&["blk.3"]), "blk.3");
        assert_eq!(compact_names(&[]), "");
    }

    #[test]
    fn sizes() {
        use crate::cli::parse_size;
        assert_eq!(parse_size("90MB"), Ok(90_000_000));
        assert_eq!(parse_size("90 mb"), Ok(90_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(1_610_612_736));
        assert_eq!(parse_size("512KiB"), Ok(524_288));
        assert_eq!(parse_size("7KB"), Ok(7000));
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("123B"), Ok(123));
        assert!(parse_size("90XB").unwrap_err().contains("unit"));
        assert!(parse_size("MB").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("-5MB").is_err());
    }
}
