//! Plans: which view (2, 3, 4, 5, 6 or 8 bits) each matrix of a model is read at, what a plan
//! costs in bytes, and the plan the sensitivity profile picks for a budget.
//!
//! - [`ViewPlan`]: the choice itself, as keys (`blk.3`, `ffn_up`, `blk.3.ffn_up.weight`) and bits.
//! - [`cost`]: the bytes of every view of every tensor, from its shape, group size and view
//!   alone (no kernel is built), and a plan's [`Footprint`].
//! - [`Planner`]: the profile's units priced at every view; [`Planner::for_bytes`] and
//!   [`Planner::for_bits`] pick a plan by [`knapsack`]: the fewest bytes whose predicted KL is
//!   within [`kl_tolerance`] of the least the budget allows. A controller can call them while
//!   a model runs and apply the result with [`crate::Model::set_views`].
//!
//! `no_std`: core + alloc only.

pub mod cost;
pub mod knapsack;
mod planner;

use alloc::string::String;
use alloc::vec::Vec;

pub use cost::{view_bytes, Footprint};
pub use knapsack::{
    choose, greedy, kl_tolerance, max_useful_bytes, min_bytes, Plan, PlanError, Unit, ViewCost, KL_TOLERANCE_ABSOLUTE,
    KL_TOLERANCE_RELATIVE, MAX_STATES,
};
pub use planner::{Planner, UnitProfile};

/// The views a nested-plane tensor has, in bits.
pub const VIEWS: [u8; 6] = crate::blocks::NESTED8_VIEWS;

/// Which view (bit width) each nested-plane tensor is read at. Keys of `overrides` are a
/// tensor name (`blk.3.ffn_up.weight`), a layer prefix (`blk.3`) or a tensor kind shared by all
/// layers (`ffn_up`); the most specific match wins (name, then layer, then kind).
/// Dense tensors (f16, f32) ignore views.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ViewPlan {
    /// Bits of every tensor without an override; `None` = 8.
    pub default_bits: Option<u8>,
    pub overrides: Vec<(String, u8)>,
}

impl ViewPlan {
    pub fn uniform(bits: u8) -> Self {
        ViewPlan { default_bits: Some(bits), overrides: Vec::new() }
    }

    /// The view of tensor `name`, or `None` for the encoding's default.
    pub fn bits_for(&self, name: &str) -> Option<u8> {
        let find = |key: &str| self.overrides.iter().rev().find(|(k, _)| k == key).map(|(_, b)| *b);
        let (stem, layer, kind) = split_name(name);
        find(name)
            .or_else(|| find(stem))
            .or_else(|| layer.and_then(find))
            .or_else(|| find(kind))
            .or(self.default_bits)
    }

    /// The keys of this plan that name no tensor among `names` (a model's matrices).
    pub fn unknown_keys<'k, S: AsRef<str>>(&'k self, names: &[S]) -> Vec<&'k str> {
        self.overrides
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !names.iter().any(|n| key_matches(k, n.as_ref())))
            .collect()
    }
}

/// `(stem, layer, kind)` of a tensor name: `blk.3.ffn_up.weight` -> (`blk.3.ffn_up`,
/// `Some("blk.3")`, `ffn_up`); `token_embd.weight` -> (`token_embd`, `None`, `token_embd`).
fn split_name(name: &str) -> (&str, Option<&str>, &str) {
    let stem = name.strip_suffix(".weight").unwrap_or(name);
    match stem.rsplit_once('.') {
        Some((l, k)) if l.starts_with("blk.") => (stem, Some(l), k),
        _ => (stem, None, stem),
    }
}

/// Whether plan key `key` names tensor `name` (by name, stem, layer or kind).
pub fn key_matches(key: &str, name: &str) -> bool {
    let (stem, layer, kind) = split_name(name);
    key == name || key == stem || layer == Some(key) || key == kind
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn keys_match_by_name_layer_and_kind() {
        assert!(key_matches("blk.3", "blk.3.ffn_up.weight"));
        assert!(!key_matches("blk.3", "blk.30.ffn_up.weight"));
        assert!(key_matches("ffn_up", "blk.30.ffn_up.weight"));
        assert!(key_matches("token_embd", "token_embd.weight"));
        assert!(key_matches("blk.3.ffn_up.weight", "blk.3.ffn_up.weight"));
        assert!(key_matches("blk.3.ffn_up", "blk.3.ffn_up.weight"));
        assert!(!key_matches("output", "token_embd.weight"));
    }

    #[test]
    fn most_specific_key_wins() {
        let p = ViewPlan {
            default_bits: Some(4),
            overrides: vec![("ffn_up".into(), 2), ("blk.1".into(), 3), ("blk.1.ffn_up.weight".into(), 8)],
        };
        assert_eq!(p.bits_for("blk.0.ffn_up.weight"), Some(2));
        assert_eq!(p.bits_for("blk.1.ffn_up.weight"), Some(8));
        assert_eq!(p.bits_for("blk.1.attn_q.weight"), Some(3));
        assert_eq!(p.bits_for("token_embd.weight"), Some(4));
        assert_eq!(p.unknown_keys(&["blk.0.attn_q.weight", "blk.1.ffn_up.weight"]), Vec::<&str>::new());
        assert_eq!(p.unknown_keys(&["blk.0.attn_q.weight"]), ["ffn_up", "blk.1", "blk.1.ffn_up.weight"]);
    }
}
