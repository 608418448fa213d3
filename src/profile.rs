//! Metadata that `edge-pack` writes and `edge-run` reads: the sensitivity profile
//! (`edge-pack --calibrate`) and the round-to-nearest baseline marker (`edge-pack --rtn-baseline`).

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use edge_runtime::Checkpoint;
use serde::{Deserialize, Serialize};

/// Metadata key of the sensitivity profile (a JSON string).
pub const SENSITIVITY_KEY: &str = "edge.sensitivity";
/// Metadata key of a round-to-nearest baseline checkpoint (a JSON string).
pub const BASELINE_KEY: &str = "edge.baseline";

/// Per-unit sensitivity: the mean KL (nats/token) from the 8-bit reference when only that unit
/// is lowered to a view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    pub units: Vec<ProfileUnit>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileUnit {
    /// A view-plan key: `blk.N`, `token_embd` or `output`.
    pub name: String,
    /// View width ("2", "3", "4", "5", "6"; "8" is the reference) -> mean KL.
    pub kl: BTreeMap<String, f64>,
}

impl ProfileUnit {
    /// The KL at `bits`, if measured (the 8-bit view is the reference: 0 when absent).
    pub fn kl_at(&self, bits: u8) -> Option<f64> {
        self.kl.get(&bits.to_string()).copied().or((bits == 8).then_some(0.0))
    }
}

impl Profile {
    /// Parse and check a profile's JSON.
    pub fn parse(json: &str) -> Result<Profile> {
        let p: Profile = serde_json::from_str(json).map_err(|e| anyhow!("{e}"))?;
        if p.version != 1 {
            bail!("version {} is not supported (this edge-run reads version 1)", p.version);
        }
        if p.units.is_empty() {
            bail!("it has no units");
        }
        let mut seen = std::collections::HashSet::new();
        for u in &p.units {
            if !seen.insert(u.name.as_str()) {
                bail!("unit '{}' appears twice", u.name);
            }
            for (k, v) in &u.kl {
                match k.parse::<u8>() {
                    Ok(b) if edge_runtime::blocks::is_nested8_view(b) => {}
                    _ => bail!("unit '{}' has a KL for view '{k}'; views are 2, 3, 4, 5, 6 and 8", u.name),
                }
                if !v.is_finite() || *v < -1e-9 {
                    bail!("unit '{}' has KL {v} at {k} bits; a KL is a finite number >= 0", u.name);
                }
            }
        }
        Ok(p)
    }

    /// The checkpoint's profile: `Ok(None)` when it has none, an error when it is unreadable.
    pub fn from_checkpoint(ck: &Checkpoint<'_>) -> Result<Option<Profile>> {
        let Some(s) = ck.get_str(SENSITIVITY_KEY) else {
            if ck.get(SENSITIVITY_KEY).is_some() {
                bail!("its sensitivity profile ({SENSITIVITY_KEY}) is not a string; re-pack with `edge-pack --calibrate`");
            }
            return Ok(None);
        };
        Profile::parse(s)
            .map(Some)
            .map_err(|e| anyhow!("its sensitivity profile ({SENSITIVITY_KEY}) is unreadable: {e}; re-pack with `edge-pack --calibrate`"))
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

/// What `edge-pack --rtn-baseline` records about a baseline checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub method: String,
    pub bits: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_size: Option<u32>,
    /// Bytes the weights would take stored at `bits` (what the baseline is worth, not its f16
    /// size on disk).
    pub weight_bytes: u64,
}

impl Baseline {
    pub fn from_checkpoint(ck: &Checkpoint<'_>) -> Result<Option<Baseline>> {
        let Some(s) = ck.get_str(BASELINE_KEY) else { return Ok(None) };
        serde_json::from_str(s).map(Some).map_err(|e| anyhow!("its baseline record ({BASELINE_KEY}) is unreadable: {e}"))
    }

    /// A short label: `rtn-4 g64`.
    pub fn label(&self) -> String {
        match self.group_size {
            Some(g) => format!("{}-{} g{g}", self.method, self.bits),
            None => format!("{}-{}", self.method, self.bits),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_profile() {
        let p = Profile::parse(
            r#"{"version":1,"metric":"kl","reference":"8-bit view","calibration":"sampled, 4096 tokens","tokens":4096,
               "units":[{"name":"blk.0","kl":{"2":0.12,"3":0.031,"4":0.007}},{"name":"token_embd","kl":{"2":0.5,"4":0.01}}]}"#,
        )
        .unwrap();
        assert_eq!(p.units.len(), 2);
        assert_eq!(p.units[0].kl_at(3), Some(0.031));
        assert_eq!(p.units[1].kl_at(3), None);
        assert_eq!(p.units[1].kl_at(8), Some(0.0));
        assert_eq!(p.views(), vec![2, 3, 4, 8]);
    }

    #[test]
    fn rejects_bad_profiles() {
        for (bad, what) in [
            (r#"{"version":2,"units":[{"name":"a","kl":{}}]}"#, "version 2"),
            (r#"{"version":1,"units":[]}"#, "no units"),
            (r#"{"version":1,"units":[{"name":"a","kl":{"7":1}}]}"#, "view '7'"),
            (r#"{"version":1,"units":[{"name":"a","kl":{"2":-1}}]}"#, "KL -1"),
            (r#"{"version":1,"units":[{"name":"a","kl":{}},{"name":"a","kl":{}}]}"#, "twice"),
            ("not json", "expected"),
        ] {
            let e = Profile::parse(bad).unwrap_err().to_string();
            assert!(e.contains(what), "{bad}: {e}");
        }
    }

    #[test]
    fn baseline_label() {
        let b: Baseline = serde_json::from_str(r#"{"method":"rtn","bits":4,"group_size":64,"weight_bytes":100}"#).unwrap();
        assert_eq!(b.label(), "rtn-4 g64");
        assert_eq!(b.weight_bytes, 100);
    }
}
