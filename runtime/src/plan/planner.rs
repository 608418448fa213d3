//! The sensitivity profile's units priced at every view, and the plan they pick for a budget.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::cost::{tensor_view_bytes, Footprint};
use super::knapsack::{self, Plan, PlanError, Unit, ViewCost};
use super::{key_matches, ViewPlan, VIEWS};
use crate::arch::Arch;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::format::Checkpoint;

/// One unit of a sensitivity profile: a plan key (`blk.N`, `token_embd`, `output`) and the KL
/// (nats/token) measured with only that unit lowered to each view.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitProfile {
    pub name: String,
    /// `(bits, kl)`; the 8-bit view, the reference, is 0 when absent.
    pub kl: Vec<(u8, f64)>,
}

impl UnitProfile {
    fn kl_at(&self, bits: u8) -> Option<f64> {
        self.kl.iter().find(|(b, _)| *b == bits).map(|(_, k)| *k).or((bits == 8).then_some(0.0))
    }
}

/// The profile's units with their bytes at every view, and what lies outside them.
#[derive(Debug, Clone, PartialEq)]
pub struct Planner {
    pub units: Vec<Unit>,
    /// Weight bytes outside the units: norms, and matrices no unit covers (read at 8 bits).
    pub fixed_bytes: u64,
    /// Matrix bytes outside the units.
    pub fixed_matrix_bytes: u64,
    pub matrix_weights: u64,
}

fn profile_error(what: String) -> Error {
    Error::InvalidArgument { what }
}

impl Planner {
    /// Price every unit of `profile` at every view it has a KL for.
    pub fn new(ck: &Checkpoint<'_>, arch: &Arch, config: &Config, profile: &[UnitProfile]) -> Result<Planner> {
        let at8 = Footprint::of(ck, arch, config, &ViewPlan::default())?;
        let names: Vec<String> = arch.matrices(config).into_iter().map(|t| t.name).collect();
        let mut members: Vec<Vec<&str>> = vec![Vec::new(); profile.len()];
        let mut fixed_matrix_bytes = 0u64;
        for n in &names {
            let owners: Vec<usize> =
                profile.iter().enumerate().filter(|(_, u)| key_matches(&u.name, n)).map(|(i, _)| i).collect();
            match owners.as_slice() {
                [] => fixed_matrix_bytes += tensor_view_bytes(ck, n, None)?,
                [i] => members[*i].push(n),
                [a, b, ..] => {
                    return Err(profile_error(alloc::format!(
                        "the sensitivity profile's units '{}' and '{}' both cover {n}; re-pack with `edge-pack --calibrate`",
                        profile[*a].name,
                        profile[*b].name
                    )))
                }
            }
        }
        let mut units = Vec::with_capacity(profile.len());
        for (pu, tensors) in profile.iter().zip(&members) {
            if tensors.is_empty() {
                return Err(profile_error(alloc::format!(
                    "the sensitivity profile's unit '{}' names no tensor of this model; re-pack with `edge-pack --calibrate`",
                    pu.name
                )));
            }
            let mut views = Vec::new();
            for bits in VIEWS {
                let Some(kl) = pu.kl_at(bits) else { continue };
                let mut bytes = 0u64;
                for n in tensors {
                    bytes += tensor_view_bytes(ck, n, Some(bits))?;
                }
                views.push(ViewCost { bits, bytes, kl: kl.max(0.0) });
            }
            units.push(Unit { name: pu.name.clone(), views });
        }
        let fixed_bytes = at8.weight_bytes - at8.matrix_bytes + fixed_matrix_bytes;
        Ok(Planner { units, fixed_bytes, fixed_matrix_bytes, matrix_weights: at8.matrix_weights })
    }

    fn bits(&self, matrix_bytes: u64) -> f64 {
        8.0 * matrix_bytes as f64 / self.matrix_weights.max(1) as f64
    }

    /// Smallest and largest useful average bits per matrix weight.
    pub fn bits_range(&self) -> (f64, f64) {
        (
            self.bits(knapsack::min_bytes(&self.units) + self.fixed_matrix_bytes),
            self.bits(knapsack::max_useful_bytes(&self.units) + self.fixed_matrix_bytes),
        )
    }

    /// Smallest and largest useful weight bytes (norms included).
    pub fn bytes_range(&self) -> (u64, u64) {
        (knapsack::min_bytes(&self.units) + self.fixed_bytes, knapsack::max_useful_bytes(&self.units) + self.fixed_bytes)
    }

    /// The plan for an average of `target` bits per matrix weight (a target below the smallest
    /// plan gets the smallest plan: check [`Planner::bits_range`] first to refuse it).
    pub fn for_bits(&self, target: f64) -> core::result::Result<Plan, PlanError> {
        let budget = libm::floor(target * self.matrix_weights as f64 / 8.0 + 1e-6) as u64;
        let budget = budget.saturating_sub(self.fixed_matrix_bytes).max(knapsack::min_bytes(&self.units));
        knapsack::choose(&self.units, budget)
    }

    /// The plan whose weights (norms included) take at most `bytes`; a budget above the
    /// 8-bit view's size reads everything at 8 bits.
    pub fn for_bytes(&self, bytes: u64) -> core::result::Result<Plan, PlanError> {
        let (lo, _) = self.bytes_range();
        if bytes < lo {
            return Err(PlanError::OverBudget { min_bytes: lo, budget: bytes });
        }
        knapsack::choose(&self.units, bytes - self.fixed_bytes)
    }
}
