//! aarch64 kernels (NEON, dotprod, i8mm). Each kernel is a private `#[target_feature]`
//! function; [`plug`] installs them into the dispatch table after the CPU reported the features.
//!
//! Three tables, each complete (built on the scalar one):
//! - `neon`: every aarch64 Linux CPU (Raspberry Pi 4's Cortex-A72);
//! - `neon+dotprod`: `sdot` (Raspberry Pi 5's Cortex-A76, Jetson Orin's Cortex-A78AE);
//! - `neon+i8mm`: the `dotprod` decode plus an `smmla` prefill (Armv8.6 cores, e.g.
//!   Cortex-A710/X2, Graviton 3, Apple M2).
//!
//! All of them give outputs bit-identical to [`super::reference`] (see [`nested8`]). Decode
//! attention over an f16, int8 or int4 cache (`attend_head`) and the read-back of a cache's rows
//! (`kv_rows`) are [`attend_stored`]'s in all three, bit-identical to [`super::vector`]'s
//! definitions; attention over an f32 cache, `swiglu` and `softmax_rows` are `vector`'s code
//! (NEON is the baseline, so it is compiled for NEON already).

mod attend_stored;
mod nested8;
mod quantize;
#[cfg(test)]
mod tests;
mod unpack;

use super::acts::QActs;
use super::frame::{Kernels, Nested8};
use alloc::vec::Vec;
use attend_stored::{neon_attend_stored_impl, neon_kv_rows_impl};
use nested8::*;
use quantize::*;

/// Safe table entries: each calls one `#[target_feature]` kernel and exists only in the tables
/// below, which [`plug`] and [`variants`] hand out only after the CPU reported `$feature`.
macro_rules! entries {
    ($feature:literal, $kernel:ident: $($name:ident = $v:literal),+) => {$(
        fn $name(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
            // SAFETY: this function is private and reachable only through a table that
            // `plug`/`variants` return after the CPU reported the features $kernel needs
            // ($feature).
            unsafe { $kernel::<$v>(w, acts, first, out) }
        }
    )+};
}

entries!("neon", neon_nested8_matvec:
    neon_matvec_v2 = 2, neon_matvec_v3 = 3, neon_matvec_v4 = 4, neon_matvec_v5 = 5, neon_matvec_v6 = 6, neon_matvec_v8 = 8);
entries!("neon", neon_nested8_matmul:
    neon_matmul_v2 = 2, neon_matmul_v3 = 3, neon_matmul_v4 = 4, neon_matmul_v5 = 5, neon_matmul_v6 = 6, neon_matmul_v8 = 8);
entries!("dotprod", dotprod_nested8_matvec:
    dotprod_matvec_v2 = 2, dotprod_matvec_v3 = 3, dotprod_matvec_v4 = 4, dotprod_matvec_v5 = 5, dotprod_matvec_v6 = 6,
    dotprod_matvec_v8 = 8);
entries!("dotprod", dotprod_nested8_matmul:
    dotprod_matmul_v2 = 2, dotprod_matmul_v3 = 3, dotprod_matmul_v4 = 4, dotprod_matmul_v5 = 5, dotprod_matmul_v6 = 6,
    dotprod_matmul_v8 = 8);
entries!("dotprod and i8mm", i8mm_nested8_matmul:
    i8mm_matmul_v2 = 2, i8mm_matmul_v3 = 3, i8mm_matmul_v4 = 4, i8mm_matmul_v5 = 5, i8mm_matmul_v6 = 6, i8mm_matmul_v8 = 8);

fn neon_quantize(x: &[f32], n: usize, cols: usize, block: usize, acts: &mut QActs) {
    // SAFETY: reachable only through the tables below, handed out after the CPU reported NEON.
    unsafe { neon_quantize_acts(x, n, cols, block, acts) }
}

fn i8mm_quantize(x: &[f32], n: usize, cols: usize, block: usize, acts: &mut QActs) {
    // SAFETY: as `neon_quantize` (this kernel needs NEON only).
    unsafe { i8mm_quantize_acts(x, n, cols, block, acts) }
}

fn neon_attend_head(q: &[f32], kv: crate::kv::KvView<'_>, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    if kv.keys.as_f32().is_some() && kv.values.as_f32().is_some() {
        return super::vector::attend_head(q, kv, scale, scores, out);
    }
    // SAFETY: reachable only through the tables below, handed out after the CPU reported NEON.
    unsafe { neon_attend_stored_impl(q, kv, scale, &mut scores[..kv.len], out) }
}

fn neon_kv_rows(rows: crate::kv::KvRows<'_>, first: usize, width: usize, out: &mut [f32]) {
    // SAFETY: reachable only through the tables below, handed out after the CPU reported NEON.
    unsafe { neon_kv_rows_impl(rows, first, width, out) }
}

const NEON: Kernels = Kernels {
    name: "neon",
    quantize_acts: neon_quantize,
    nested8_matvec: [neon_matvec_v2, neon_matvec_v3, neon_matvec_v4, neon_matvec_v5, neon_matvec_v6, neon_matvec_v8],
    nested8_matmul: [neon_matmul_v2, neon_matmul_v3, neon_matmul_v4, neon_matmul_v5, neon_matmul_v6, neon_matmul_v8],
    repack: None,
    nibbles: Some(crate::blocks::low_nibbles),
    attend_head: neon_attend_head,
    swiglu: super::vector::swiglu,
    geglu: super::vector::geglu,
    softmax_rows: super::vector::softmax_rows,
    kv_rows: neon_kv_rows,
};

const DOTPROD: Kernels = Kernels {
    name: "neon+dotprod",
    quantize_acts: neon_quantize,
    nested8_matvec: [dotprod_matvec_v2, dotprod_matvec_v3, dotprod_matvec_v4, dotprod_matvec_v5, dotprod_matvec_v6, dotprod_matvec_v8],
    nested8_matmul: [dotprod_matmul_v2, dotprod_matmul_v3, dotprod_matmul_v4, dotprod_matmul_v5, dotprod_matmul_v6, dotprod_matmul_v8],
    repack: None,
    nibbles: Some(crate::blocks::low_nibbles),
    attend_head: neon_attend_head,
    swiglu: super::vector::swiglu,
    geglu: super::vector::geglu,
    softmax_rows: super::vector::softmax_rows,
    kv_rows: neon_kv_rows,
};

const I8MM: Kernels = Kernels {
    name: "neon+i8mm",
    quantize_acts: i8mm_quantize,
    nested8_matvec: DOTPROD.nested8_matvec,
    nested8_matmul: [i8mm_matmul_v2, i8mm_matmul_v3, i8mm_matmul_v4, i8mm_matmul_v5, i8mm_matmul_v6, i8mm_matmul_v8],
    repack: None,
    nibbles: Some(crate::blocks::low_nibbles),
    attend_head: neon_attend_head,
    swiglu: super::vector::swiglu,
    geglu: super::vector::geglu,
    softmax_rows: super::vector::softmax_rows,
    kv_rows: neon_kv_rows,
};

/// What this CPU has: with `std` probed at run time, without it the compile-time features.
struct Features {
    neon: bool,
    dotprod: bool,
    i8mm: bool,
}

fn features() -> Features {
    #[cfg(feature = "std")]
    {
        Features {
            neon: std::arch::is_aarch64_feature_detected!("neon"),
            dotprod: std::arch::is_aarch64_feature_detected!("dotprod"),
            i8mm: std::arch::is_aarch64_feature_detected!("i8mm"),
        }
    }
    #[cfg(not(feature = "std"))]
    {
        Features {
            neon: cfg!(target_feature = "neon"),
            dotprod: cfg!(target_feature = "dotprod"),
            i8mm: cfg!(target_feature = "i8mm"),
        }
    }
}

/// The tables of this architecture in order of preference (worst first), `None` where the CPU
/// lacks a feature.
fn tables() -> [(&'static str, Option<Kernels>); 3] {
    let f = features();
    [
        (NEON.name, f.neon.then_some(NEON)),
        (DOTPROD.name, (f.neon && f.dotprod).then_some(DOTPROD)),
        (I8MM.name, (f.neon && f.dotprod && f.i8mm).then_some(I8MM)),
    ]
}

/// Overwrite the entries of `k` this CPU can serve faster.
pub(crate) fn plug(k: &mut Kernels) {
    if let Some(best) = tables().into_iter().filter_map(|(_, t)| t).next_back() {
        *k = best;
    }
}

/// Every table of this architecture (`None` where the CPU lacks its features), for the tests.
pub(crate) fn variants(v: &mut Vec<(&'static str, Option<Kernels>)>) {
    v.extend(tables());
}
