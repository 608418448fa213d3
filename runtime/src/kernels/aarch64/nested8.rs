//! Nested8 products (decode matvec, prefill matmul) for every view, in three instruction sets:
//! - `neon`: `smull`/`smlal` into 16-bit lanes (4 products of at most 63 · 127 per lane),
//!   `sadalp` into 32-bit accumulators;
//! - `dotprod`: `sdot` (4 products per 32-bit lane);
//! - `i8mm`: `smmla` on 2 weight rows x 2 tokens (prefill only), activations read from the
//!   token-pair interleaved copy in `acts.aux` that [`super::quantize`] writes.
//!
//! Whole blocks of 128 codes are read in block order (activations transposed once per call of
//! `quantize_acts`, in `aux`), the row's tail 32 codes at a time in natural order (see
//! [`super::unpack`] for both orders); prefill multiplies each rebuilt block with 4 tokens. Per group the integer sum `isum` is exact (as the reference's);
//! the float combination `d · (step · isum + offset · sum)` is then added per row and token in
//! group order with the reference's expression, so outputs are bit-identical to
//! [`reference`]. Group sizes that are not a multiple of 32 run the reference.
//!
//! `dotprod` and `i8mm` instructions are written with `asm!`: their intrinsics
//! (`vdotq_s32`, `vmmlaq_s32`) are unstable on Rust 1.96.

use core::arch::aarch64::*;
use core::arch::asm;

use super::unpack::{block_pair, load_block, unpack32, Consts, Planes, BLOCK};
use crate::blocks;
use crate::kernels::acts::QActs;
use crate::kernels::frame::{Nested8, Prepared};
use crate::kernels::reference;

/// How one architecture level multiplies 32 codes with 32 activations.
pub(super) trait Dot {
    /// `acc` plus the products of `(w_lo, w_hi)` (codes 0..16, 16..32; values 0..=63) with
    /// `(x_lo, x_hi)`, summed into the 4 lanes (which lane holds which product is free).
    ///
    /// # Safety
    /// The CPU must have the instruction set the implementation names; only called inside
    /// `#[target_feature]` kernels enabling it.
    unsafe fn dot32(acc: int32x4_t, w_lo: int8x16_t, w_hi: int8x16_t, x_lo: int8x16_t, x_hi: int8x16_t) -> int32x4_t;

    /// Accumulators of a block-order product ([`super::unpack`]: lane `b` holds code `8b + k`).
    type Block: Copy;
    /// # Safety
    /// As [`Dot::dot32`].
    unsafe fn block_zero() -> Self::Block;
    /// `acc` plus the products of two block vectors `(w0, w1)` with `(x0, x1)`.
    ///
    /// # Safety
    /// As [`Dot::dot32`].
    unsafe fn block_acc(acc: Self::Block, w0: int8x16_t, w1: int8x16_t, x0: int8x16_t, x1: int8x16_t) -> Self::Block;
    /// The sums of the block's 4 chunks of 32 codes (lane `j`: codes `32j..32j + 32`).
    ///
    /// # Safety
    /// As [`Dot::dot32`].
    unsafe fn block_chunks(acc: Self::Block) -> int32x4_t;
}

/// `smull`/`smlal` then `sadalp`: every 16-bit lane sums at most 4 products of at most 63 · 127
/// (4 · 8001 = 32004 fits in i16).
pub(super) struct NeonDot;

impl Dot for NeonDot {
    #[inline(always)]
    unsafe fn dot32(acc: int32x4_t, w_lo: int8x16_t, w_hi: int8x16_t, x_lo: int8x16_t, x_hi: int8x16_t) -> int32x4_t {
        let p = vmull_s8(vget_low_s8(w_lo), vget_low_s8(x_lo));
        let p = vmlal_high_s8(p, w_lo, x_lo);
        let p = vmlal_s8(p, vget_low_s8(w_hi), vget_low_s8(x_hi));
        let p = vmlal_high_s8(p, w_hi, x_hi);
        vpadalq_s16(acc, p)
    }

    /// Lanes 0..8 (codes of chunks 0, 1) and 8..16 (chunks 2, 3) accumulate apart.
    type Block = (int32x4_t, int32x4_t);

    #[inline(always)]
    unsafe fn block_zero() -> Self::Block {
        (vdupq_n_s32(0), vdupq_n_s32(0))
    }

    #[inline(always)]
    unsafe fn block_acc(acc: Self::Block, w0: int8x16_t, w1: int8x16_t, x0: int8x16_t, x1: int8x16_t) -> Self::Block {
        let lo = vmlal_s8(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)), vget_low_s8(w1), vget_low_s8(x1));
        let hi = vmlal_high_s8(vmull_high_s8(w0, x0), w1, x1);
        (vpadalq_s16(acc.0, lo), vpadalq_s16(acc.1, hi))
    }

    #[inline(always)]
    unsafe fn block_chunks(acc: Self::Block) -> int32x4_t {
        // acc.0 lanes: bytes 0..4, 4..8 (chunk 0), 8..12, 12..16 of the low halves (chunk 1).
        vpaddq_s32(acc.0, acc.1)
    }
}

/// `sdot`: lane `j` += the 4 products of bytes `4j..4j + 4`.
pub(super) struct SdotDot;

/// `acc += sdot(a, b)`.
///
/// # Safety
/// Only inside a `#[target_feature(enable = "dotprod")]` function of a CPU with `FEAT_DotProd`.
#[inline(always)]
unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: `sdot` reads only the three vector registers and writes `acc`; the caller runs
    // on a CPU with the dot-product extension (see above).
    unsafe {
        asm!("sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b", acc = inout(vreg) acc, a = in(vreg) a, b = in(vreg) b,
             options(pure, nomem, nostack, preserves_flags));
    }
    acc
}

impl Dot for SdotDot {
    #[inline(always)]
    unsafe fn dot32(acc: int32x4_t, w_lo: int8x16_t, w_hi: int8x16_t, x_lo: int8x16_t, x_hi: int8x16_t) -> int32x4_t {
        sdot(sdot(acc, w_lo, x_lo), w_hi, x_hi)
    }

    type Block = int32x4_t;

    #[inline(always)]
    unsafe fn block_zero() -> Self::Block {
        vdupq_n_s32(0)
    }

    #[inline(always)]
    unsafe fn block_acc(acc: Self::Block, w0: int8x16_t, w1: int8x16_t, x0: int8x16_t, x1: int8x16_t) -> Self::Block {
        sdot(sdot(acc, w0, x0), w1, x1)
    }

    #[inline(always)]
    unsafe fn block_chunks(acc: Self::Block) -> int32x4_t {
        acc
    }
}

/// `acc (2x2 i32, row-major) += a (2x8 i8) · b (2x8 i8)^T`.
///
/// # Safety
/// Only inside a `#[target_feature(enable = "i8mm")]` function of a CPU with `FEAT_I8MM`.
#[inline(always)]
unsafe fn smmla(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: `smmla` reads only the three vector registers and writes `acc`; the caller runs
    // on a CPU with the int8 matrix-multiply extension (see above).
    unsafe {
        asm!("smmla {acc:v}.4s, {a:v}.16b, {b:v}.16b", acc = inout(vreg) acc, a = in(vreg) a, b = in(vreg) b,
             options(pure, nomem, nostack, preserves_flags));
    }
    acc
}

/// Whether the fast kernels serve this call; otherwise the caller runs the reference.
/// Checks every bound the raw reads below rely on (panicking like the reference would).
fn fast_path(w: &Nested8<'_>, acts: &QActs, first: usize, rows: usize) -> bool {
    let gs = w.group_size;
    if gs == 0 || gs % 32 != 0 || w.row_stride % gs != 0 {
        return false;
    }
    assert_eq!(acts.block, gs, "activations quantized in blocks of the weight's group size");
    assert!(acts.padded_cols >= w.row_stride, "activations shorter than the weight rows");
    let blocks = acts.padded_cols / gs;
    assert!(acts.q.len() >= acts.n * acts.padded_cols && acts.d.len() >= acts.n * blocks && acts.sum.len() >= acts.n * blocks);
    // The 8-bit kernels read the nibble plane (`Prepared::Nibbles`), built at load.
    if w.view_bits == 8 && !matches!(w.prepared(), Prepared::Nibbles(_)) {
        return false;
    }
    let end = (first + rows) * w.row_stride;
    // Sources 0..n, 2 bits per code for plane 0, 4 for the nibbles (source 3 of view 8), else 1.
    let n = if w.view_bits == 8 { 4 } else { blocks::nested8_planes_for_view(w.view_bits).unwrap_or(0) };
    for (s, plane) in sources(w)[..n].iter().enumerate() {
        let bits = match (s, w.view_bits) {
            (0, _) => 2,
            (3, 8) => 4,
            _ => 1,
        };
        assert!(plane.len() * 8 >= end * bits, "plane shorter than the rows read");
    }
    assert!(w.params.groups() >= end / gs, "group params shorter than the rows read");
    true
}

/// What the kernels read, in the order of [`Planes`]: stored planes 0, 1 and 2, then the
/// 8-bit view's nibble plane ([`Prepared::Nibbles`]; the layout [`blocks::NESTED8_KERNEL_PLANES`]) or
/// stored plane 3 (views 5, 6), then stored plane 4 (view 6); empty where the view reads none.
pub(super) fn sources<'s>(w: &'s Nested8<'_>) -> [&'s [u8]; 5] {
    let third: &[u8] = match w.prepared() {
        Prepared::Nibbles(nibbles) if w.view_bits == 8 => nibbles,
        _ if matches!(w.view_bits, 5 | 6) => w.planes[3],
        _ => &[],
    };
    [w.planes[0], w.planes[1], w.planes[2], third, if w.view_bits == 6 { w.planes[4] } else { &[] }]
}

/// Pointers to [`sources`] (the caller keeps `w`, and so the nibble plane, alive while they
/// are used).
fn plane_ptrs(w: &Nested8<'_>) -> Planes {
    sources(w).map(|s| s.as_ptr())
}

/// The exact integer sum of a group from its accumulators (`top` holds `q >> 4` products for
/// the 8-bit view, `q_V` products otherwise).
///
/// # Safety
/// NEON present.
#[inline(always)]
unsafe fn group_isum<const V: u8>(top: int32x4_t, low: int32x4_t) -> int32x4_t {
    if V == 8 {
        vaddq_s32(vshlq_n_s32::<4>(top), low)
    } else {
        top
    }
}

/// The products of one block (128 codes at flat index `i`) with the transposed activations at
/// `xt`: per-chunk integer sums (lane `j`: codes `32j..32j + 32`), exact.
///
/// # Safety
/// The planes hold the block, `xt` 128 bytes; the CPU has what `D` needs.
#[inline(always)]
unsafe fn block_isums<const V: u8, D: Dot>(planes: &Planes, i: usize, xt: *const i8) -> int32x4_t {
    let blk = load_block::<V>(planes, i);
    let (mut top, mut low) = (D::block_zero(), D::block_zero());
    macro_rules! pair {
        ($p:literal) => {{
            let [(t0, l0), (t1, l1)] = block_pair::<V, $p>(&blk);
            let (x0, x1) = (vld1q_s8(xt.add(32 * $p)), vld1q_s8(xt.add(32 * $p + 16)));
            top = D::block_acc(top, t0, t1, x0, x1);
            if V == 8 {
                low = D::block_acc(low, l0, l1, x0, x1);
            }
        }};
    }
    pair!(0);
    pair!(1);
    pair!(2);
    pair!(3);
    group_isum::<V>(D::block_chunks(top), D::block_chunks(low))
}

/// The activations in block order (`aux[..n * padded_cols]`, token `t` at `t * padded_cols`,
/// from this architecture's `quantize_acts`), if present.
fn block_acts(acts: &QActs) -> Option<*const i8> {
    let len = block_aux_len(acts);
    let ok = acts.n > 0 && (acts.aux.len() == len || acts.aux.len() == len + pair_aux_len(acts));
    ok.then_some(acts.aux.as_ptr())
}

/// Decode for `V`, token 0 of `acts`, rows `first..first + out.len()`: whole blocks of 128
/// codes in block order (when `aux` has the transposed activations), the rest 32 codes at a
/// time in natural order. Chunk sums are added into the group's exact `isum`; each finished
/// group adds its float term in group order, as the reference.
///
/// # Safety
/// The CPU has what `D` needs; called only from the `#[target_feature]` kernels below.
#[inline(always)]
unsafe fn matvec_body<const V: u8, D: Dot>(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    if out.is_empty() {
        return;
    }
    if !fast_path(w, acts, first, out.len()) {
        return reference::nested8_matvec(w, acts, first, out);
    }
    let k = Consts::new::<V>();
    let planes = plane_ptrs(w);
    let gs = w.group_size;
    let (x, d, sum) = (acts.q.as_ptr(), acts.d_row(0), acts.sum_row(0));
    let xt = block_acts(acts);
    let blocks = if xt.is_some() { w.row_stride / BLOCK } else { 0 };
    for (ri, o) in out.iter_mut().enumerate() {
        let base = (first + ri) * w.row_stride;
        let g0 = base / gs;
        let mut acc = 0f32;
        let (mut isum, mut left, mut g) = (0i32, gs, 0usize);
        // Add one 32-code chunk's sum; at a group's end, its float term.
        let mut chunk = |s: i32| {
            isum += s;
            left -= 32;
            if left == 0 {
                let (step, offset) = blocks::nested8_step_offset(w.params.get(g0 + g), V);
                acc += d[g] * (step * isum as f32 + offset * sum[g] as f32);
                (isum, left, g) = (0, gs, g + 1);
            }
        };
        if let Some(xt) = xt {
            for b in 0..blocks {
                // SAFETY (bounds): `fast_path` checked the planes hold the rows and the
                // activations (and their block-order copy) hold row_stride values.
                let s = block_isums::<V, D>(&planes, base + b * BLOCK, xt.add(b * BLOCK));
                chunk(vgetq_lane_s32::<0>(s));
                chunk(vgetq_lane_s32::<1>(s));
                chunk(vgetq_lane_s32::<2>(s));
                chunk(vgetq_lane_s32::<3>(s));
            }
        }
        for c in (blocks * BLOCK..w.row_stride).step_by(32) {
            let q = unpack32::<V>(&planes, base + c, &k);
            let (x_lo, x_hi) = (vld1q_s8(x.add(c)), vld1q_s8(x.add(c + 16)));
            let top = D::dot32(vdupq_n_s32(0), q[0], q[1], x_lo, x_hi);
            let low = if V == 8 { D::dot32(vdupq_n_s32(0), q[2], q[3], x_lo, x_hi) } else { vdupq_n_s32(0) };
            chunk(vaddvq_s32(group_isum::<V>(top, low)));
        }
        *o = acc;
    }
}

/// Prefill for `V` with `TB` tokens `t0..t0 + TB` at a time: each block's (or chunk's) codes
/// are rebuilt once and multiplied with all `TB` tokens. Whole blocks of 128 codes run in block
/// order when `aux` holds the tokens' transposed copies, the rest in natural order; chunk sums
/// go into each token's exact group `isum`, finished groups add their float terms in group
/// order, as the reference.
///
/// # Safety
/// As [`matvec_body`]; `fast_path` returned true for these rows and `t0 + TB <= acts.n`.
#[inline(always)]
unsafe fn matmul_tokens<const V: u8, D: Dot, const TB: usize>(
    w: &Nested8<'_>,
    acts: &QActs,
    first: usize,
    t0: usize,
    out: &mut [f32],
    len: usize,
    k: &Consts,
) {
    let planes = plane_ptrs(w);
    let gs = w.group_size;
    let (pc, nb) = (acts.padded_cols, acts.blocks());
    let x = acts.q.as_ptr().add(t0 * pc);
    let xt = block_acts(acts).map(|p| p.add(t0 * pc));
    let n_blocks = if xt.is_some() { w.row_stride / BLOCK } else { 0 };
    let (d, sum) = (&acts.d[t0 * nb..], &acts.sum[t0 * nb..]);
    for ri in 0..len {
        let base = (first + ri) * w.row_stride;
        let g0 = base / gs;
        let mut acc = [0f32; TB];
        let (mut isum, mut left, mut g) = ([0i32; TB], gs, 0usize);
        // Add one 32-code chunk's sums (one per token); at a group's end, its float terms.
        let mut chunk = |s: [i32; TB]| {
            for t in 0..TB {
                isum[t] += s[t];
            }
            left -= 32;
            if left == 0 {
                let (step, offset) = blocks::nested8_step_offset(w.params.get(g0 + g), V);
                for t in 0..TB {
                    let b = t * nb + g;
                    acc[t] += d[b] * (step * isum[t] as f32 + offset * sum[b] as f32);
                }
                (isum, left, g) = ([0; TB], gs, g + 1);
            }
        };
        if let Some(xt) = xt {
            for bi in 0..n_blocks {
                let blk = load_block::<V>(&planes, base + bi * BLOCK);
                let mut top = [D::block_zero(); TB];
                let mut low = [D::block_zero(); TB];
                macro_rules! pair {
                    ($p:literal) => {{
                        let [(t0, l0), (t1, l1)] = block_pair::<V, $p>(&blk);
                        for t in 0..TB {
                            let xp = xt.add(t * pc + bi * BLOCK + 32 * $p);
                            let (x0, x1) = (vld1q_s8(xp), vld1q_s8(xp.add(16)));
                            top[t] = D::block_acc(top[t], t0, t1, x0, x1);
                            if V == 8 {
                                low[t] = D::block_acc(low[t], l0, l1, x0, x1);
                            }
                        }
                    }};
                }
                pair!(0);
                pair!(1);
                pair!(2);
                pair!(3);
                // (chunk, token) sums.
                let mut sums = [[0i32; TB]; 4];
                for t in 0..TB {
                    let mut lanes = [0i32; 4];
                    vst1q_s32(lanes.as_mut_ptr(), group_isum::<V>(D::block_chunks(top[t]), D::block_chunks(low[t])));
                    for (s, lane) in sums.iter_mut().zip(lanes) {
                        s[t] = lane;
                    }
                }
                for s in sums {
                    chunk(s);
                }
            }
        }
        for c in (n_blocks * BLOCK..w.row_stride).step_by(32) {
            let q = unpack32::<V>(&planes, base + c, k);
            let mut s = [0i32; TB];
            for (t, st) in s.iter_mut().enumerate() {
                let xp = x.add(t * pc + c);
                let (x_lo, x_hi) = (vld1q_s8(xp), vld1q_s8(xp.add(16)));
                let top = D::dot32(vdupq_n_s32(0), q[0], q[1], x_lo, x_hi);
                let low = if V == 8 { D::dot32(vdupq_n_s32(0), q[2], q[3], x_lo, x_hi) } else { vdupq_n_s32(0) };
                *st = vaddvq_s32(group_isum::<V>(top, low));
            }
            chunk(s);
        }
        for t in 0..TB {
            out[(t0 + t) * len + ri] = acc[t];
        }
    }
}

/// Tokens per pass of the `neon`/`dotprod` prefill (each chunk's codes serve this many).
const MATMUL_TOKENS: usize = 4;

/// Prefill: `out[t * len + i] = row (first + i) · token t`, `len = out.len() / acts.n`.
///
/// # Safety
/// As [`matvec_body`].
#[inline(always)]
unsafe fn matmul_body<const V: u8, D: Dot>(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    let n = acts.n;
    let len = out.len() / n.max(1);
    if n == 0 || len == 0 {
        return;
    }
    if !fast_path(w, acts, first, len) {
        return reference::nested8_matmul(w, acts, first, out);
    }
    let k = Consts::new::<V>();
    let mut t0 = 0;
    while t0 + MATMUL_TOKENS <= n {
        matmul_tokens::<V, D, MATMUL_TOKENS>(w, acts, first, t0, out, len, &k);
        t0 += MATMUL_TOKENS;
    }
    while t0 < n {
        matmul_tokens::<V, D, 1>(w, acts, first, t0, out, len, &k);
        t0 += 1;
    }
}

/// Bytes of `acts.aux` the `i8mm` prefill reads: token pairs (the last one padded with a zero
/// token), each `2 * padded_cols` bytes of 8-value blocks `[t0 x[8j..8j+8], t1 x[8j..8j+8]]`.
pub(super) fn pair_aux_len(acts: &QActs) -> usize {
    acts.n.div_ceil(2) * 2 * acts.padded_cols
}

/// Bytes of `acts.aux` holding the copy in block order (every token's), before the pairs.
pub(super) fn block_aux_len(acts: &QActs) -> usize {
    acts.n * acts.padded_cols
}

/// Token pairs per pass of the `i8mm` prefill (each chunk's codes serve `2 * this` tokens).
const MATMUL_PAIRS: usize = 2;

/// `i8mm` prefill of rows `first..first + len` with token pairs `p0..p0 + PB`: 2 rows x 2
/// tokens per `smmla` accumulator `[r0 t0, r0 t1, r1 t0, r1 t1]`. An odd last row is paired
/// with itself, an odd last token with the zero token of `aux`; their results are dropped.
///
/// # Safety
/// `i8mm` present; `fast_path` returned true for these rows; `aux` holds
/// [`block_aux_len`] + [`pair_aux_len`] bytes; `p0 + PB <= acts.n.div_ceil(2)`.
#[inline(always)]
unsafe fn i8mm_matmul_pairs<const V: u8, const PB: usize>(
    w: &Nested8<'_>,
    acts: &QActs,
    first: usize,
    p0: usize,
    out: &mut [f32],
    len: usize,
    k: &Consts,
) {
    let planes = plane_ptrs(w);
    let gs = w.group_size;
    let (n, pc, blocks) = (acts.n, acts.padded_cols, acts.blocks());
    let x = acts.aux.as_ptr().add(block_aux_len(acts) + p0 * 2 * pc);
    let mut ri = 0;
    while ri < len {
        let rows = [first + ri, first + (ri + 1).min(len - 1)];
        let bases = rows.map(|r| r * w.row_stride);
        // (pair, token in pair, row in pair)
        let mut acc = [[[0f32; 2]; 2]; PB];
        for g in 0..w.row_stride / gs {
            let mut top = [vdupq_n_s32(0); PB];
            let mut low = [vdupq_n_s32(0); PB];
            for c in (g * gs..(g + 1) * gs).step_by(32) {
                let q0 = unpack32::<V>(&planes, bases[0] + c, k);
                let q1 = unpack32::<V>(&planes, bases[1] + c, k);
                // 8 codes of row 0 then 8 of row 1, for codes c..c+8, c+8..16, c+16..24, c+24..32.
                let zip = |a: int8x16_t, b: int8x16_t| {
                    let (a, b) = (vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b));
                    (vreinterpretq_s8_s64(vzip1q_s64(a, b)), vreinterpretq_s8_s64(vzip2q_s64(a, b)))
                };
                let (t0, t1) = zip(q0[0], q1[0]);
                let (t2, t3) = zip(q0[1], q1[1]);
                let (l0, l1) = zip(q0[2], q1[2]);
                let (l2, l3) = zip(q0[3], q1[3]);
                for p in 0..PB {
                    let xp = x.add(p * 2 * pc + 2 * c);
                    let xs = [vld1q_s8(xp), vld1q_s8(xp.add(16)), vld1q_s8(xp.add(32)), vld1q_s8(xp.add(48))];
                    top[p] = smmla(smmla(smmla(smmla(top[p], t0, xs[0]), t1, xs[1]), t2, xs[2]), t3, xs[3]);
                    if V == 8 {
                        low[p] = smmla(smmla(smmla(smmla(low[p], l0, xs[0]), l1, xs[1]), l2, xs[2]), l3, xs[3]);
                    }
                }
            }
            let so = bases.map(|b| blocks::nested8_step_offset(w.params.get(b / gs + g), V));
            for p in 0..PB {
                let mut isum = [0i32; 4];
                vst1q_s32(isum.as_mut_ptr(), group_isum::<V>(top[p], low[p]));
                for tp in 0..2 {
                    let t = 2 * (p0 + p) + tp;
                    if t >= n {
                        continue;
                    }
                    let b = t * blocks + g;
                    let (dg, sg) = (acts.d[b], acts.sum[b] as f32);
                    for (rp, &(step, offset)) in so.iter().enumerate() {
                        acc[p][tp][rp] += dg * (step * isum[2 * rp + tp] as f32 + offset * sg);
                    }
                }
            }
        }
        for (p, acc) in acc.iter().enumerate() {
            for (tp, acc) in acc.iter().enumerate() {
                let t = 2 * (p0 + p) + tp;
                if t >= n {
                    continue;
                }
                out[t * len + ri] = acc[0];
                if ri + 1 < len {
                    out[t * len + ri + 1] = acc[1];
                }
            }
        }
        ri += 2;
    }
}

/// `i8mm` prefill; without the interleaved `aux` copy (activations quantized by another
/// table) it runs the `dotprod` prefill.
///
/// # Safety
/// `dotprod` and `i8mm` present.
#[inline(always)]
unsafe fn i8mm_matmul_body<const V: u8>(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    let n = acts.n;
    let len = out.len() / n.max(1);
    if n == 0 || len == 0 {
        return;
    }
    if acts.aux.len() != block_aux_len(acts) + pair_aux_len(acts) {
        return matmul_body::<V, SdotDot>(w, acts, first, out);
    }
    if !fast_path(w, acts, first, len) {
        return reference::nested8_matmul(w, acts, first, out);
    }
    let k = Consts::new::<V>();
    let pairs = n.div_ceil(2);
    let mut p0 = 0;
    while p0 + MATMUL_PAIRS <= pairs {
        i8mm_matmul_pairs::<V, MATMUL_PAIRS>(w, acts, first, p0, out, len, &k);
        p0 += MATMUL_PAIRS;
    }
    while p0 < pairs {
        i8mm_matmul_pairs::<V, 1>(w, acts, first, p0, out, len, &k);
        p0 += 1;
    }
}

/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn neon_nested8_matvec<const V: u8>(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    matvec_body::<V, NeonDot>(w, acts, first, out)
}

/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn neon_nested8_matmul<const V: u8>(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    matmul_body::<V, NeonDot>(w, acts, first, out)
}

/// # Safety
/// The CPU must support NEON and the dot-product extension.
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn dotprod_nested8_matvec<const V: u8>(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    matvec_body::<V, SdotDot>(w, acts, first, out)
}

/// # Safety
/// The CPU must support NEON and the dot-product extension.
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn dotprod_nested8_matmul<const V: u8>(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    matmul_body::<V, SdotDot>(w, acts, first, out)
}

/// # Safety
/// The CPU must support NEON, the dot-product and the int8 matrix-multiply extensions.
#[target_feature(enable = "neon,dotprod,i8mm")]
pub(super) unsafe fn i8mm_nested8_matmul<const V: u8>(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    i8mm_matmul_body::<V>(w, acts, first, out)
}
