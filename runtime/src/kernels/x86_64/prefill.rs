//! Prefill (`avx2_nested8_matmul`): many tokens against a tile of rows, codes unpacked once,
//! tokens in lanes.
//!
//! With at least [`PREFILL_MIN_TOKENS`] tokens, the rows of the tile are unpacked once into
//! natural-order byte codes ([`super::repack`]; view 8: high and low nibble separately, so
//! `maddubs` never saturates; views 5 and 6 whole, up to 63, widened from i16 more often), and
//! an int8 micro-kernel computes 4 rows (view 8: 2) × 16 tokens:
//! the activations are stored token-interleaved (part B of [`super::quantize`]: 4 codes of each
//! of 8 tokens per 32-byte register), one broadcast dword of a row's codes meets 8 tokens in
//! one `maddubs` (two blocks of 8 per broadcast), and lane `t` of the accumulator is token `t`,
//! so no horizontal sums are needed. Group scales and sums of the 8 tokens are stored side by
//! side (part C) so the float terms are lane-wise as well, in the reference's order. Fewer
//! tokens run the decode kernel once per token (part A for each). The unpacked tile (rows ×
//! padded columns bytes, twice for view 8) is allocated per call.
//!
//! The `avx512vnni` table runs its own micro-kernel ([`super::prefill512`]) on the tiles and
//! fallbacks of this file ([`unpack_tile`], [`served_elsewhere`]).

use core::arch::x86_64::*;

use alloc::vec::Vec;

use super::common::{check_bounds, load_params8, sources};
use super::decode::{rows_dot_form, usable};
use super::quantize::{Layout, C_ENTRY, PREFILL_MIN_TOKENS, TOK};
use super::repack::{avx2_unpack_row, avx2_unpack_runs};
use crate::kernels::acts::QActs;
use crate::kernels::frame::{Nested8, Prepared};
use crate::kernels::portable;

/// `R` rows × `B` blocks of 8 tokens over all groups: lane `t` of result `[b][r]` is the
/// reference row dot of row `r` and token `t` of block `b`. `hi[r]`/`lo[r]`: the row's
/// unpacked codes; `so[r]`: its (step, offset) per group; `xb[b]`: the token block's part B;
/// `cb[b]`: its part C. Each broadcast dword of codes meets `B` activation registers.
///
/// # Safety
/// The CPU supports AVX2; `hi[r]` (and `lo[r]` for view 8) readable for `gpr * g` bytes,
/// `so[r]` for `2 * gpr` floats, `xb[b]` for `8 * gpr * g` bytes, `cb[b]` for `gpr * C_ENTRY`
/// bytes; `g % 4 == 0`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn micro<const V: u8, const R: usize, const B: usize>(
    hi: [*const u8; R],
    lo: [*const u8; R],
    so: [*const f32; R],
    xb: [*const i8; B],
    cb: [*const u8; B],
    g: usize,
    gpr: usize,
) -> [[__m256; R]; B] {
    // Dword steps an i16 lane may take before widening: each adds ≤ 2 · max_code · 127.
    let flush = match V {
        2 => 32, // 2·3·127·32 = 24384
        3 => 16, // 2·7·127·16 = 28448
        5 => 4,  // 2·31·127·4 = 31496
        6 => 2,  // 2·63·127·2 = 32004
        _ => 8,  // 2·15·127·8 = 30480
    };
    let steps = g / 4;
    let ones = _mm256_set1_epi16(1);
    let sixteen = _mm256_set1_epi16(16);
    let mut facc = [[_mm256_setzero_ps(); R]; B];
    // SAFETY (whole body): every offset stays inside the lengths the caller guarantees:
    // codes k < gpr * g, part B at k * 8 + 32 <= 8 * gpr * g, part C at gi * 64 + 64.
    unsafe {
        for gi in 0..gpr {
            let mut isum = [[_mm256_setzero_si256(); R]; B];
            let mut s = 0;
            while s < steps {
                let e = steps.min(s.saturating_add(flush));
                let mut h16 = [[_mm256_setzero_si256(); R]; B];
                let mut l16 = [[_mm256_setzero_si256(); R]; B];
                for st in s..e {
                    let k = gi * g + st * 4;
                    let mut x = [_mm256_setzero_si256(); B];
                    for (xv, p) in x.iter_mut().zip(xb) {
                        *xv = _mm256_loadu_si256(p.add(k * 8) as *const __m256i);
                    }
                    for r in 0..R {
                        let wv = _mm256_set1_epi32((hi[r].add(k) as *const i32).read_unaligned());
                        for b in 0..B {
                            h16[b][r] = _mm256_add_epi16(h16[b][r], _mm256_maddubs_epi16(wv, x[b]));
                        }
                        if V == 8 {
                            let lv = _mm256_set1_epi32((lo[r].add(k) as *const i32).read_unaligned());
                            for b in 0..B {
                                l16[b][r] = _mm256_add_epi16(l16[b][r], _mm256_maddubs_epi16(lv, x[b]));
                            }
                        }
                    }
                }
                for b in 0..B {
                    for r in 0..R {
                        let wide = if V == 8 {
                            _mm256_add_epi32(_mm256_madd_epi16(h16[b][r], sixteen), _mm256_madd_epi16(l16[b][r], ones))
                        } else {
                            _mm256_madd_epi16(h16[b][r], ones)
                        };
                        isum[b][r] = _mm256_add_epi32(isum[b][r], wide);
                    }
                }
                s = e;
            }
            for b in 0..B {
                let dv = _mm256_loadu_ps(cb[b].add(gi * C_ENTRY) as *const f32);
                let sv = _mm256_loadu_ps(cb[b].add(gi * C_ENTRY + 32) as *const f32);
                for r in 0..R {
                    let step = _mm256_set1_ps(*so[r].add(2 * gi));
                    let offset = _mm256_set1_ps(*so[r].add(2 * gi + 1));
                    let term = _mm256_mul_ps(
                        dv,
                        _mm256_add_ps(_mm256_mul_ps(step, _mm256_cvtepi32_ps(isum[b][r])), _mm256_mul_ps(offset, sv)),
                    );
                    facc[b][r] = _mm256_add_ps(facc[b][r], term);
                }
            }
        }
    }
    facc
}

/// Rows per micro-kernel call for view `V` (view 8 keeps two i16 accumulators per row).
const fn rows_per_micro(v: u8) -> usize {
    if v == 8 {
        2
    } else {
        4
    }
}

/// The cases a prefill micro-kernel does not serve, run here: a matrix or activations the
/// kernels cannot read (the portable kernel), or fewer than [`PREFILL_MIN_TOKENS`] tokens (the
/// decode kernel once per token). Returns whether it ran them.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C (and AVX-512 VNNI with `VNNI`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn served_elsewhere<const V: u8, const VNNI: bool>(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) -> bool {
    if !usable(w, acts, V) {
        portable::nested8_matmul(w, acts, first, out);
        return true;
    }
    let n = acts.n;
    if n >= PREFILL_MIN_TOKENS {
        return false;
    }
    let len = out.len() / n;
    let a_len = Layout::new(n, acts.padded_cols, acts.block).a_len;
    for t in 0..n {
        let aux = &acts.aux[t * a_len..(t + 1) * a_len];
        // SAFETY: usable() held (part A exists for every token below the threshold).
        unsafe { rows_dot_form::<V, VNNI>(w, aux, acts.d_row(t), acts.sum_row(t), first, &mut out[t * len..(t + 1) * len]) };
    }
    true
}

/// What a prefill kernel computes over: `n` tokens against `len` rows of `gpr` groups of `g`
/// codes (`rs` a row), the activations' layout `lay` with `blocks` groups a token and `tbs`
/// blocks of [`TOK`] tokens.
pub(super) struct Shape {
    pub(super) n: usize,
    pub(super) len: usize,
    pub(super) lay: Layout,
    pub(super) g: usize,
    pub(super) rs: usize,
    pub(super) gpr: usize,
    pub(super) blocks: usize,
    pub(super) tbs: usize,
}

impl Shape {
    pub(super) fn of(w: &Nested8<'_>, acts: &QActs, out: &[f32]) -> Shape {
        let n = acts.n;
        let (g, rs) = (w.group_size, w.row_stride);
        let lay = Layout::new(n, acts.padded_cols, acts.block);
        Shape { n, len: out.len() / n, lay, g, rs, gpr: rs / g, blocks: acts.blocks(), tbs: n.div_ceil(TOK) }
    }
}

/// Rows `first..first + len` of a matrix unpacked for the micro-kernels: byte codes, row after
/// row (`row_stride` bytes each; view 8 without VNNI: the high nibbles of every row, then the
/// low ones from `lo_base`), and (step, offset) per row and group (`2 * gpr` floats a row).
pub(super) struct Tile {
    pub(super) codes: Vec<u8>,
    pub(super) lo_base: usize,
    pub(super) so: Vec<f32>,
}

/// Most bytes of tile buffers a thread keeps between calls ([`Tile::recycle`]).
#[cfg(feature = "std")]
const KEEP_BYTES: usize = 8 << 20;

#[cfg(feature = "std")]
std::thread_local! {
    /// A thread's tile buffers from its last prefill call, reused by the next: allocated per
    /// call, a tile of a megabyte or more may come as a fresh mapping each time, whose pages
    /// fault in over the whole tile on every call.
    static BUFFERS: core::cell::Cell<(Vec<u8>, Vec<f32>)> = const { core::cell::Cell::new((Vec::new(), Vec::new())) };
}

impl Tile {
    /// Buffers of `codes` bytes and `so` floats, this thread's kept ones where it has them.
    /// What a kept buffer held is left in it (zeroing a tile on every call costs as much as
    /// a small product): [`unpack_tile`] writes every value it reads.
    fn buffers(codes: usize, so: usize) -> (Vec<u8>, Vec<f32>) {
        #[cfg(feature = "std")]
        let (mut c, mut s) = BUFFERS.with(|b| b.take());
        #[cfg(not(feature = "std"))]
        let (mut c, mut s) = (Vec::new(), Vec::new());
        c.resize(codes, 0);
        s.resize(so, 0.0);
        (c, s)
    }

    /// Hand a tile's buffers back for this thread's next call (unless they are large).
    pub(super) fn recycle(codes: Vec<u8>, so: Vec<f32>) {
        #[cfg(feature = "std")]
        if codes.capacity() + 4 * so.capacity() <= KEEP_BYTES {
            BUFFERS.with(|b| b.set((codes, so)));
        }
        #[cfg(not(feature = "std"))]
        let _ = (codes, so);
    }
}

/// Unpack rows `first..first + len` of `w` (see [`Tile`]): from the runs when the view has
/// them, else from the planes (view 8: and the nibbles). The tile is allocated per call.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; `usable(w, acts, V)` held.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn unpack_tile<const V: u8, const VNNI: bool>(w: &Nested8<'_>, first: usize, len: usize) -> Tile {
    let runs = matches!((V, w.prepared()), (2..=6 | 8, Prepared::Runs(_)));
    let src = sources(w, runs);
    check_bounds(w, &src, V, runs, first, len);
    let g = w.group_size;
    let rs = w.row_stride;
    let gpr = rs / g;
    let parts = if V == 8 && !VNNI { 2 } else { 1 };
    let drop = 8 - V as u32;
    let step_mul = _mm256_set1_ps((1u32 << drop) as f32);
    let centre = _mm256_set1_ps(((1u32 << drop) - 1) as f32 * 0.5);
    // View 8 unpacks both nibbles; with VNNI they are merged into whole codes below.
    let (mut codes, mut so) = Tile::buffers(if V == 8 { 2 } else { 1 } * len * rs, 2 * len * gpr);
    {
        let (hi, lo) = codes.split_at_mut(len * rs);
        if runs {
            // SAFETY: check_bounds held for the runs of rows first..first + len.
            unsafe { avx2_unpack_runs::<V>(src[3], first * rs, hi) };
        }
        for r in 0..len {
            let lo_r = if V == 8 { &mut lo[r * rs..(r + 1) * rs] } else { &mut [][..] };
            let hi_r = &mut hi[r * rs..(r + 1) * rs];
            if !runs {
                // SAFETY: check_bounds held for rows first..first + len; the slices hold rs bytes.
                unsafe { avx2_unpack_row::<V>(&src, rs, first + r, hi_r, lo_r) };
            }
            if V == 8 && VNNI && !runs {
                // Whole codes `16 · hi + lo` (up to 255): vpdpbusd takes unsigned bytes and does
                // not saturate, so one product serves both nibbles.
                for (h, l) in hi_r.iter_mut().zip(lo_r.iter()) {
                    *h = (*h << 4) | *l;
                }
            } else if V == 8 && !VNNI && runs {
                // The runs hold whole codes: split them into the nibbles the maddubs kernel takes.
                for (h, l) in hi_r.iter_mut().zip(lo_r.iter_mut()) {
                    *l = *h & 15;
                    *h >>= 4;
                }
            }
            // (step, offset) as blocks::nested8_step_offset computes them, 8 groups at a time.
            for gi in (0..gpr).step_by(8) {
                let mut pair = [0f32; 16];
                // SAFETY: F16C is enabled here; pair holds 16 floats.
                unsafe {
                    let (scale, min) = load_params8(w.params, (first + r) * gpr + gi);
                    let step = _mm256_mul_ps(scale, step_mul);
                    let offset = _mm256_add_ps(min, _mm256_mul_ps(scale, centre));
                    let lo = _mm256_unpacklo_ps(step, offset);
                    let hi = _mm256_unpackhi_ps(step, offset);
                    _mm256_storeu_ps(pair.as_mut_ptr(), _mm256_permute2f128_ps::<0x20>(lo, hi));
                    _mm256_storeu_ps(pair.as_mut_ptr().add(8), _mm256_permute2f128_ps::<0x31>(lo, hi));
                }
                let k = 2 * 8.min(gpr - gi);
                so[2 * (r * gpr + gi)..2 * (r * gpr + gi) + k].copy_from_slice(&pair[..k]);
            }
        }
    }
    codes.truncate(parts * len * rs);
    Tile { codes, lo_base: if parts == 2 { len * rs } else { 0 }, so }
}

/// Prefill: `out[t * len + i] = row (first + i) · token t`, `len = out.len() / acts.n`.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn avx2_nested8_matmul<const V: u8>(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    // SAFETY: the caller guarantees the features.
    if unsafe { served_elsewhere::<V, false>(w, acts, first, out) } {
        return;
    }
    let Shape { n, len, lay, g, rs, gpr, blocks, tbs } = Shape::of(w, acts, out);
    // SAFETY: usable() held (served_elsewhere returned false).
    let Tile { codes, lo_base, so } = unsafe { unpack_tile::<V, false>(w, first, len) };
    let rows = rows_per_micro(V);
    let mut tb = 0;
    while tb < tbs {
        // Two token blocks per call while two remain.
        let nb = if tb + 1 < tbs { 2 } else { 1 };
        let xb = |b: usize| acts.aux[lay.b_off + (tb + b) * TOK * rs..lay.b_off + (tb + b + 1) * TOK * rs].as_ptr();
        let cb = |b: usize| {
            acts.aux[lay.c_off + (tb + b) * blocks * C_ENTRY..lay.c_off + (tb + b + 1) * blocks * C_ENTRY].as_ptr() as *const u8
        };
        let mut r0 = 0;
        while r0 < len {
            let nr = rows.min(len - r0);
            // Rows past the tile repeat the last one (computed, never stored).
            let row_of = |j: usize| r0 + j.min(nr - 1);
            let hi_p = |j: usize| codes[row_of(j) * rs..].as_ptr();
            let lo_p = |j: usize| codes[lo_base + row_of(j) * rs..].as_ptr();
            let so_p = |j: usize| so[2 * row_of(j) * gpr..].as_ptr();
            let mut res = [[[0f32; TOK]; 4]; 2];
            macro_rules! run {
                ($r:literal, $b:literal) => {{
                    let hi: [*const u8; $r] = core::array::from_fn(hi_p);
                    let lo: [*const u8; $r] = core::array::from_fn(lo_p);
                    let so: [*const f32; $r] = core::array::from_fn(so_p);
                    // SAFETY: the pointers cover whole rows of codes (rs = gpr * g bytes), their
                    // 2 * gpr (step, offset) floats, the token blocks' part B (8 * rs bytes) and
                    // part C (blocks * 64 bytes); g % 32 == 0.
                    let acc = unsafe { micro::<V, $r, $b>(hi, lo, so, core::array::from_fn(xb), core::array::from_fn(cb), g, gpr) };
                    for (b, acc_b) in acc.iter().enumerate() {
                        for (r, a) in acc_b.iter().enumerate() {
                            // SAFETY: res[b][r] holds 8 floats.
                            unsafe { _mm256_storeu_ps(res[b][r].as_mut_ptr(), *a) };
                        }
                    }
                }};
            }
            match (rows, nb) {
                (4, 2) => run!(4, 2),
                (4, _) => run!(4, 1),
                (_, 2) => run!(2, 2),
                _ => run!(2, 1),
            }
            for (b, res_b) in res.iter().enumerate().take(nb) {
                let tokens = TOK.min(n - (tb + b) * TOK);
                for (r, res_r) in res_b.iter().enumerate().take(nr) {
                    for (t, &v) in res_r.iter().enumerate().take(tokens) {
                        out[((tb + b) * TOK + t) * len + r0 + r] = v;
                    }
                }
            }
            r0 += nr;
        }
        tb += nb;
    }
    Tile::recycle(codes, so);
}
