//! x86_64 kernels (AVX2 + FMA, AVX-512). Each kernel is a private `#[target_feature]` function;
//! [`plug`] installs them into the dispatch table after the CPU reported the features.

use super::dispatch::Kernels;
use alloc::vec::Vec;

/// Overwrite the entries of `k` this CPU can serve faster.
pub(crate) fn plug(_k: &mut Kernels) {}

/// Every table of this architecture (`None` where the CPU lacks its features), for the tests.
pub(crate) fn variants(_v: &mut Vec<(&'static str, Option<Kernels>)>) {}
