//! Prefill of the `avx512vnni` table (`avx512_nested8_matmul`): the micro-kernel of
//! [`super::prefill`] on 512-bit registers.
//!
//! The activations keep the layout of part B (4 codes of each of 8 tokens per 32 bytes): one
//! 512-bit register holds two token blocks side by side, so one broadcast dword of a row's codes
//! meets 16 tokens in one `vpdpbusd`, and lane `t` of the accumulator is token `t` of the pair.
//! A call computes [`ROWS`] rows × [`PAIRS`] pairs of token blocks (32 tokens); the float terms
//! per group are taken lane-wise in the reference's order, as in the 256-bit kernel, so the
//! results are bit-identical to it and to the reference. On CPUs with full-width 512-bit units
//! (Zen 5, Xeons with two FMA ports) this halves the instructions per product.

use core::arch::x86_64::*;

use super::prefill::{served_elsewhere, unpack_tile, Shape, Tile};
use super::quantize::{C_ENTRY, TOK};
use crate::kernels::acts::QActs;
use crate::kernels::frame::Nested8;

/// Rows per micro-kernel call.
const ROWS: usize = 4;
/// Pairs of token blocks (16 tokens each) per micro-kernel call.
const PAIRS: usize = 2;

/// Two 256-bit halves from `lo` and `hi` as one register.
///
/// # Safety
/// The CPU supports AVX512F; both pointers readable for 32 bytes.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn join(lo: *const u8, hi: *const u8) -> __m512i {
    // SAFETY: the caller guarantees 32 readable bytes at each pointer.
    unsafe {
        _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_loadu_si256(lo as *const __m256i)),
            _mm256_loadu_si256(hi as *const __m256i),
        )
    }
}

/// `R` rows × `P` pairs of token blocks over all groups: lane `t` of result `[p][r]` is the
/// reference row dot of row `r` and token `t` of pair `p` (its first block in lanes 0-7).
/// `codes[r]`: the row's unpacked codes (whole 8-bit codes at view 8); `so[r]`: its (step,
/// offset) per group; `xb[p]`: the pair's blocks' part B; `cb[p]`: their part C.
///
/// # Safety
/// The CPU supports the `avx512vnni` table's features; `codes[r]` readable for `gpr * g`
/// bytes, `so[r]` for `2 * gpr` floats, each `xb[p][i]` for `8 * gpr * g` bytes, each
/// `cb[p][i]` for `gpr * C_ENTRY` bytes; `g % 4 == 0`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn micro<const R: usize, const P: usize>(
    codes: [*const u8; R],
    so: [*const f32; R],
    xb: [[*const u8; 2]; P],
    cb: [[*const u8; 2]; P],
    g: usize,
    gpr: usize,
) -> [[__m512; R]; P] {
    let mut facc = [[_mm512_setzero_ps(); R]; P];
    // SAFETY (whole body): every offset stays inside the lengths the caller guarantees:
    // codes k + 4 <= gpr * g, part B at k * 8 + 32 <= 8 * gpr * g, part C at gi * 64 + 64.
    unsafe {
        for gi in 0..gpr {
            let mut isum = [[_mm512_setzero_si512(); R]; P];
            for k in (gi * g..(gi + 1) * g).step_by(4) {
                let x: [__m512i; P] = core::array::from_fn(|p| join(xb[p][0].add(k * 8), xb[p][1].add(k * 8)));
                for r in 0..R {
                    let wv = _mm512_set1_epi32((codes[r].add(k) as *const i32).read_unaligned());
                    for p in 0..P {
                        isum[p][r] = _mm512_dpbusd_epi32(isum[p][r], wv, x[p]);
                    }
                }
            }
            for p in 0..P {
                let at = gi * C_ENTRY;
                let dv = _mm512_castsi512_ps(join(cb[p][0].add(at), cb[p][1].add(at)));
                let sv = _mm512_castsi512_ps(join(cb[p][0].add(at + 32), cb[p][1].add(at + 32)));
                for r in 0..R {
                    let step = _mm512_set1_ps(*so[r].add(2 * gi));
                    let offset = _mm512_set1_ps(*so[r].add(2 * gi + 1));
                    let term = _mm512_mul_ps(
                        dv,
                        _mm512_add_ps(_mm512_mul_ps(step, _mm512_cvtepi32_ps(isum[p][r])), _mm512_mul_ps(offset, sv)),
                    );
                    facc[p][r] = _mm512_add_ps(facc[p][r], term);
                }
            }
        }
    }
    facc
}

/// Prefill: `out[t * len + i] = row (first + i) · token t`, `len = out.len() / acts.n`.
///
/// # Safety
/// The CPU supports AVX2, FMA, F16C, AVX512F, AVX512BW, AVX512VL and AVX512_VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn avx512_nested8_matmul<const V: u8>(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    // SAFETY: the caller guarantees the features.
    if unsafe { served_elsewhere::<V, true>(w, acts, first, out) } {
        return;
    }
    let Shape { n, len, lay, g, rs, gpr, blocks, tbs } = Shape::of(w, acts, out);
    // SAFETY: usable() held (served_elsewhere returned false).
    let Tile { codes, so, .. } = unsafe { unpack_tile::<V, true>(w, first, len) };
    // Token block `b`'s part B and part C; blocks past the last repeat it (computed, never
    // stored).
    let xb = |b: usize| acts.aux[lay.b_off + b.min(tbs - 1) * TOK * rs..][..TOK * rs].as_ptr();
    let cb = |b: usize| acts.aux[lay.c_off + b.min(tbs - 1) * blocks * C_ENTRY..][..blocks * C_ENTRY].as_ptr() as *const u8;
    let per_call = 2 * PAIRS;
    let mut tb = 0;
    while tb < tbs {
        let xs: [[*const u8; 2]; PAIRS] = core::array::from_fn(|p| [xb(tb + 2 * p) as *const u8, xb(tb + 2 * p + 1) as *const u8]);
        let cs: [[*const u8; 2]; PAIRS] = core::array::from_fn(|p| [cb(tb + 2 * p), cb(tb + 2 * p + 1)]);
        let mut r0 = 0;
        while r0 < len {
            let nr = ROWS.min(len - r0);
            // Rows past the tile repeat the last one (computed, never stored).
            let row_of = |j: usize| r0 + j.min(nr - 1);
            let rows_codes: [*const u8; ROWS] = core::array::from_fn(|j| codes[row_of(j) * rs..].as_ptr());
            let rows_so: [*const f32; ROWS] = core::array::from_fn(|j| so[2 * row_of(j) * gpr..].as_ptr());
            // SAFETY: the pointers cover whole rows of codes (rs = gpr * g bytes) and their
            // 2 * gpr (step, offset) floats, whole token blocks' part B (8 * rs bytes) and part
            // C (blocks * 64 bytes); usable() held, so g % 32 == 0.
            let acc = unsafe { micro::<ROWS, PAIRS>(rows_codes, rows_so, xs, cs, g, gpr) };
            let mut res = [0f32; 16];
            for (p, acc_p) in acc.iter().enumerate() {
                let t0 = (tb + 2 * p) * TOK;
                let tokens = n.saturating_sub(t0).min(2 * TOK);
                for (r, a) in acc_p.iter().enumerate().take(nr) {
                    // SAFETY: res holds 16 floats.
                    unsafe { _mm512_storeu_ps(res.as_mut_ptr(), *a) };
                    for (t, &v) in res.iter().enumerate().take(tokens) {
                        out[(t0 + t) * len + r0 + r] = v;
                    }
                }
            }
            r0 += nr;
        }
        tb += per_call;
    }
    Tile::recycle(codes, so);
}
