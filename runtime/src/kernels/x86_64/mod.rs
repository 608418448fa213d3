//! x86_64 kernels (AVX2 + FMA + F16C). Each kernel is a private `#[target_feature]` function;
//! [`plug`] installs them into the dispatch table after the CPU reported the features.
//!
//! One table, `avx2` (every x86_64 CPU since Haswell / Zen 1), complete (built on the scalar
//! one). Its outputs are bit-identical to [`super::reference`]: integer sums are exact and the
//! float combination per group is done lane-wise in the reference's order, without FMA (see
//! [`avx2`]). AVX-512 / VNNI is not written: the development machine lacks it, so it could not
//! be tested; `variants` reports nothing for it.

mod avx2;

use super::dispatch::Kernels;
use alloc::vec::Vec;

/// Whether this CPU runs the `avx2` table: AVX2 (integer kernels), FMA (part of the contract
/// name; the kernels do not fuse, to stay bit-identical) and F16C (group parameters).
pub(super) fn avx2_available() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(all(target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))
    }
}

/// Overwrite the entries of `k` this CPU can serve faster.
pub(crate) fn plug(k: &mut Kernels) {
    if avx2_available() {
        *k = avx2::TABLE;
    }
}

/// Every table of this architecture (`None` where the CPU lacks its features), for the tests.
pub(crate) fn variants(v: &mut Vec<(&'static str, Option<Kernels>)>) {
    v.push(("avx2", avx2_available().then_some(avx2::TABLE)));
}
