//! The x86_64 tables and their entries: each entry is a safe function that calls one
//! `#[target_feature]` kernel and exists only in [`TABLE`] or [`TABLE_AVX512`], which
//! `plug`/`variants` hand out only after the CPU reported the features.
//!
//! | entry              | `avx2`                               | `avx512vnni`                  |
//! |--------------------|--------------------------------------|-------------------------------|
//! | `quantize_acts`    | [`avx2_quantize_acts`] (parts A-C)   | same                          |
//! | matvec, views 2-4  | decode from the runs or the planes   | same with `vpdpbusd`          |
//! | matvec, views 5, 6 | decode from the runs                 | same with `vpdpbusd`          |
//! | matvec, view 8     | from the runs, each code as 2 nibbles | from the runs, `vpdpbusd`    |
//! | matmul, every view | prefill micro-kernel                 | [`super::prefill512`]: 512-bit |
//! | `repack`           | [`avx2_repack_top`] (2-6)            | same, and 8                   |
//! | `nibbles`          | none (view 8 reads runs)             | same                          |
//! | `attend_head`, `swiglu` | [`super::elementwise`]; f16/int8/int4 caches: [`super::attend_stored`] | same |
//! | `softmax_rows`     | [`super::elementwise`], for AVX2     | for AVX-512                   |
//!
//! Where a kernel cannot serve a view (groups not a multiple of 32, a view without the form
//! its kernels read), it runs the portable one, compiled for AVX2.

use super::decode::avx2_nested8_matvec;
use super::attend_stored::{avx2_attend_stored_impl, avx2_kv_rows_impl};
use super::elementwise::{avx2_attend_head_impl, avx2_geglu_impl, avx2_softmax_rows_impl, avx2_swiglu_impl, avx512_softmax_rows_impl};
use super::prefill::avx2_nested8_matmul;
use super::prefill512::avx512_nested8_matmul;
use super::quantize::avx2_quantize_acts;
use super::repack::avx2_repack_top;
use crate::blocks;
use crate::kernels::acts::QActs;
use crate::kernels::frame::{Kernels, Nested8};

/// Decode of the `avx512vnni` table: the AVX2 kernel with `vpdpbusd` for its integer sums.
///
/// # Safety
/// The CPU supports AVX2, FMA, F16C, AVX512F, AVX512BW, AVX512VL and AVX512_VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn avx512_nested8_matvec<const V: u8>(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    // SAFETY: the caller guarantees the features, VNNI's among them.
    unsafe { avx2_nested8_matvec::<V, true>(w, acts, first, out) }
}

/// Decode of the `avx2` table.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_matvec<const V: u8>(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    // SAFETY: as the caller guarantees; VNNI off.
    unsafe { avx2_nested8_matvec::<V, false>(w, acts, first, out) }
}

/// Prefill of the `avx2` table.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_matmul<const V: u8>(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    // SAFETY: as the caller guarantees; VNNI off.
    unsafe { avx2_nested8_matmul::<V>(w, acts, first, out) }
}

/// Safe table entries: each calls one `#[target_feature]` kernel and exists only in [`TABLE`]
/// (or [`TABLE_AVX512`]), which `plug`/`variants` hand out only after the CPU reported AVX2,
/// FMA and F16C (and the AVX-512 features).
macro_rules! entries {
    ($kernel:ident: $($name:ident = $v:literal),+) => {$(
        fn $name(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
            // SAFETY: private, reachable only through TABLE (TABLE_AVX512), which is installed
            // only after the CPU reported avx2, fma and f16c (and avx512f, avx512bw, avx512vl,
            // avx512vnni) (x86_64::plug / variants).
            unsafe { $kernel::<$v>(w, acts, first, out) }
        }
    )+};
}

entries!(avx2_matvec: avx2_matvec_v2 = 2, avx2_matvec_v3 = 3, avx2_matvec_v4 = 4, avx2_matvec_v5 = 5, avx2_matvec_v6 = 6, avx2_matvec_v8 = 8);
entries!(avx2_matmul: avx2_matmul_v2 = 2, avx2_matmul_v3 = 3, avx2_matmul_v4 = 4, avx2_matmul_v5 = 5, avx2_matmul_v6 = 6, avx2_matmul_v8 = 8);
entries!(avx512_nested8_matvec:
    avx512_matvec_v2 = 2, avx512_matvec_v3 = 3, avx512_matvec_v4 = 4, avx512_matvec_v5 = 5, avx512_matvec_v6 = 6, avx512_matvec_v8 = 8);
entries!(avx512_nested8_matmul:
    avx512_matmul_v2 = 2, avx512_matmul_v3 = 3, avx512_matmul_v4 = 4, avx512_matmul_v5 = 5, avx512_matmul_v6 = 6, avx512_matmul_v8 = 8);

fn avx2_repack(view_bits: u8, planes: &[&[u8]], numel: usize) -> alloc::vec::Vec<u8> {
    // SAFETY: private, reachable only through TABLE, installed only after the CPU reported
    // avx2, fma and f16c; the function checks the planes' lengths itself.
    unsafe {
        match view_bits {
            2 => avx2_repack_top::<2>(planes, numel),
            3 => avx2_repack_top::<3>(planes, numel),
            4 => avx2_repack_top::<4>(planes, numel),
            5 => avx2_repack_top::<5>(planes, numel),
            6 => avx2_repack_top::<6>(planes, numel),
            8 => avx2_repack_top::<8>(planes, numel),
            _ => blocks::repack_top(view_bits, planes, numel),
        }
    }
}

fn avx2_quantize(x: &[f32], n: usize, cols: usize, block: usize, acts: &mut QActs) {
    // SAFETY: private, reachable only through TABLE, installed only after the CPU reported
    // avx2, fma and f16c.
    unsafe { avx2_quantize_acts(x, n, cols, block, acts) }
}

fn avx2_attend_head(q: &[f32], kv: crate::kv::KvView<'_>, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    // SAFETY: private, reachable only through TABLE, installed only after the CPU reported
    // avx2, fma and f16c.
    unsafe {
        match (kv.keys.as_f32(), kv.values.as_f32()) {
            (Some(k), Some(v)) => avx2_attend_head_impl(q, k, v, kv.keys.dim, scale, &mut scores[..kv.len], out),
            _ => avx2_attend_stored_impl(q, kv, scale, &mut scores[..kv.len], out),
        }
    }
}

fn avx2_swiglu(gate: &mut [f32], up: &[f32]) {
    // SAFETY: private, reachable only through TABLE, installed only after the CPU reported
    // avx2, fma and f16c.
    unsafe { avx2_swiglu_impl(gate, up) }
}

fn avx2_geglu(gate: &mut [f32], up: &[f32]) {
    // SAFETY: private, reachable only through TABLE, installed only after the CPU reported
    // avx2, fma and f16c.
    unsafe { avx2_geglu_impl(gate, up) }
}

fn avx2_kv_rows(rows: crate::kv::KvRows<'_>, first: usize, width: usize, out: &mut [f32]) {
    // SAFETY: private, reachable only through TABLE (and TABLE_AVX512), installed only after
    // the CPU reported avx2, fma and f16c.
    unsafe { avx2_kv_rows_impl(rows, first, width, out) }
}

fn avx2_softmax_rows(s: &mut [f32], width: usize, first: usize) {
    // SAFETY: private, reachable only through TABLE, installed only after the CPU reported
    // avx2, fma and f16c.
    unsafe { avx2_softmax_rows_impl(s, width, first) }
}

fn avx512_softmax_rows(s: &mut [f32], width: usize, first: usize) {
    // SAFETY: private, reachable only through TABLE_AVX512, installed only after the CPU
    // reported the AVX-512 features (avx512f among them).
    unsafe { avx512_softmax_rows_impl(s, width, first) }
}

/// The AVX2 table (install only after probing the CPU). Every view from 2 to 8 bits reads
/// runs: at 8 bits one stream of whole codes instead of planes 0-2 and a nibble plane (four
/// streams) decoded 1.4-1.6x faster in cache and, with the runs prefetched, 15-30% faster from
/// memory (`docs/RESULTS.md`).
pub(super) const TABLE: Kernels = Kernels {
    name: "avx2",
    quantize_acts: avx2_quantize,
    nested8_matvec: [avx2_matvec_v2, avx2_matvec_v3, avx2_matvec_v4, avx2_matvec_v5, avx2_matvec_v6, avx2_matvec_v8],
    nested8_matmul: [avx2_matmul_v2, avx2_matmul_v3, avx2_matmul_v4, avx2_matmul_v5, avx2_matmul_v6, avx2_matmul_v8],
    repack: Some(avx2_repack),
    nibbles: None,
    attend_head: avx2_attend_head,
    swiglu: avx2_swiglu,
    geglu: avx2_geglu,
    softmax_rows: avx2_softmax_rows,
    kv_rows: avx2_kv_rows,
};

/// The AVX-512 VNNI table (install only after probing the CPU): the AVX2 table with
/// `vpdpbusd` (256-bit, EVEX) for the integer sums of decode, and the 512-bit prefill. Its
/// 8-bit view reads whole codes from runs (one `vpdpbusd` per 32 codes), as the AVX2 table
/// does with two `maddubs` per 32 codes (one per nibble: whole codes would saturate it).
pub(super) const TABLE_AVX512: Kernels = Kernels {
    name: "avx512vnni",
    nested8_matvec: [avx512_matvec_v2, avx512_matvec_v3, avx512_matvec_v4, avx512_matvec_v5, avx512_matvec_v6, avx512_matvec_v8],
    nested8_matmul: [avx512_matmul_v2, avx512_matmul_v3, avx512_matmul_v4, avx512_matmul_v5, avx512_matmul_v6, avx512_matmul_v8],
    softmax_rows: avx512_softmax_rows,
    ..TABLE
};
