//! x86_64 kernels. Each kernel is a private `#[target_feature]` function; [`plug`] installs
//! them into the dispatch table after the CPU reported the features.
//!
//! Two tables, best available wins:
//! - `avx2` (AVX2 + FMA + F16C: every x86_64 CPU since Haswell / Zen 1), complete (built on the
//!   scalar one);
//! - `avx512vnni` (adds AVX512F/BW/VL and AVX512_VNNI: Ice Lake and later Xeons, Tiger Lake,
//!   Zen 4/5): the `avx2` kernels with `vpdpbusd` for every integer sum of decode and prefill
//!   (one instruction per 32 codes where `avx2` needs `vpmaddubsw` and a widening `vpmaddwd`,
//!   no i16 flushes, whole 8-bit codes in one product at prefill), prefill on 512-bit
//!   registers.
//!
//! Both are bit-identical to [`super::reference`]: integer sums are exact and the float
//! combination per group is done lane-wise in the reference's order, without FMA. A CPU
//! without AVX-512 reports the `avx512vnni` table NOT tested (`variants`).
//!
//! One concern per file:
//! - [`tables`]: the safe entries and the two tables;
//! - [`quantize`]: activation quantization and the copies of the activations the kernels read
//!   (parts A, B and C of `acts.aux`);
//! - [`decode`]: one token against rows (matvec), from the planes, the nibble plane or the runs;
//! - [`prefill`]: many tokens against a tile of rows (matmul);
//! - [`prefill512`]: the same on 512-bit registers (the `avx512vnni` table);
//! - [`repack`]: rows unpacked to byte codes for prefill, and the runs made at load;
//! - [`runs`]: the fields of a run;
//! - [`elementwise`]: attention of one head, SwiGLU;
//! - [`attend_stored`]: attention of one head over an f16, int8 or int4 cache;
//! - [`common`]: the superchunk, its lane order, the sources a kernel reads, small helpers.

mod attend_stored;
mod common;
mod decode;
mod elementwise;
mod prefill;
mod prefill512;
mod quantize;
mod repack;
mod runs;
mod tables;

use super::frame::Kernels;
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

/// Whether this CPU runs the `avx512vnni` table: the `avx2` table's features plus AVX512F,
/// AVX512BW, AVX512VL (256-bit EVEX forms) and AVX512_VNNI (`vpdpbusd`).
pub(super) fn avx512vnni_available() -> bool {
    #[cfg(feature = "std")]
    {
        avx2_available()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(feature = "std"))]
    {
        avx2_available()
            && cfg!(all(
                target_feature = "avx512f",
                target_feature = "avx512bw",
                target_feature = "avx512vl",
                target_feature = "avx512vnni"
            ))
    }
}

/// Overwrite the entries of `k` this CPU can serve faster.
pub(crate) fn plug(k: &mut Kernels) {
    if avx512vnni_available() {
        *k = tables::TABLE_AVX512;
    } else if avx2_available() {
        *k = tables::TABLE;
    }
}

/// Every table of this architecture (`None` where the CPU lacks its features), for the tests.
pub(crate) fn variants(v: &mut Vec<(&'static str, Option<Kernels>)>) {
    v.push(("avx2", avx2_available().then_some(tables::TABLE)));
    v.push(("avx512vnni", avx512vnni_available().then_some(tables::TABLE_AVX512)));
}
