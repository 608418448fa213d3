//! Metadata that `edge-pack` writes and `edge-run` reads: the sensitivity profile
//! (`edge-pack --calibrate`) and the round-to-nearest baseline marker (`edge-pack --rtn-baseline`).

use anyhow::{anyhow, Result};
use edge_runtime::Checkpoint;
use serde::{Deserialize, Serialize};

/// The sensitivity profile is edge-pack's type (one definition of its JSON).
pub use edge_pack::sensitivity::Profile;

/// Metadata key of a round-to-nearest baseline checkpoint (a JSON string).
pub const BASELINE_KEY: &str = "edge.baseline";

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
