//! NEON activation quantization, bit-identical to [`acts::quantize_reference`]: the block's
//! `amax` with `fmaxnm` (which, like `f32::max`, ignores NaN), `id = 127 / amax` in scalar
//! f32, `q = fcvtns(x · id)` (round half to even, as the reference) and the block sum.
//! Blocks that are partial (the row's tail) or not a multiple of 16 run the reference's
//! [`acts::quantize_block`].

use core::arch::aarch64::*;

use super::nested8::{block_aux_len, pair_aux_len};
use super::unpack::{transpose_block, BLOCK};
use crate::kernels::acts::{self, QActs};

/// One whole block of `x.len()` (a multiple of 16) values into `q`; returns `(d, sum)`.
///
/// # Safety
/// NEON present; `q.len() >= x.len()`.
#[inline(always)]
unsafe fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    debug_assert!(x.len() % 16 == 0 && q.len() >= x.len());
    let mut m = vdupq_n_f32(0.0);
    for c in x.chunks_exact(4) {
        m = vmaxnmq_f32(m, vabsq_f32(vld1q_f32(c.as_ptr())));
    }
    let amax = vmaxnmvq_f32(m);
    let (d, id) = if amax > 0.0 { (amax / 127.0, 127.0 / amax) } else { (0.0, 0.0) };
    let id = vdupq_n_f32(id);
    let mut sum = vdupq_n_s32(0);
    for (xc, qc) in x.chunks_exact(16).zip(q.chunks_exact_mut(16)) {
        let p = xc.as_ptr();
        let i0 = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(p), id));
        let i1 = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(p.add(4)), id));
        let i2 = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(p.add(8)), id));
        let i3 = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(p.add(12)), id));
        let h0 = vcombine_s16(vqmovn_s32(i0), vqmovn_s32(i1));
        let h1 = vcombine_s16(vqmovn_s32(i2), vqmovn_s32(i3));
        vst1q_s8(qc.as_mut_ptr(), vcombine_s8(vqmovn_s16(h0), vqmovn_s16(h1)));
        sum = vaddq_s32(sum, vaddq_s32(vaddq_s32(i0, i1), vaddq_s32(i2, i3)));
    }
    (d, vaddvq_s32(sum))
}

/// The contract's quantization, and in `aux` the copy in block order
/// ([`block_aux_len`] bytes) and, with `pairs`, the token-pair interleaved copy the `i8mm`
/// prefill reads ([`pair_aux_len`] bytes).
///
/// # Safety
/// NEON present.
#[inline(always)]
unsafe fn quantize_body(x: &[f32], n: usize, cols: usize, block: usize, acts: &mut QActs, pairs: bool) {
    assert!(x.len() >= n * cols);
    acts.reset(n, cols, block);
    let (blocks, pc) = (acts.blocks(), acts.padded_cols);
    for t in 0..n {
        let xr = &x[t * cols..(t + 1) * cols];
        for b in 0..blocks {
            let (lo, hi) = ((b * block).min(cols), ((b + 1) * block).min(cols));
            let q = &mut acts.q[t * pc + b * block..][..block];
            let (d, s) = if hi - lo == block && block % 16 == 0 {
                quantize_block(&xr[lo..hi], q)
            } else {
                acts::quantize_block(&xr[lo..hi], q)
            };
            acts.d[t * blocks + b] = d;
            acts.sum[t * blocks + b] = s;
        }
    }
    // aux: every token's values in block order ([`transpose_block`] per whole block of 128;
    // the tail, read in natural order from `q`, is left zero); with `pairs`, then
    // the token pairs of the `i8mm` prefill: aux[p][j] = [token 2p values 8j..8j+8, token
    // 2p+1 values 8j..8j+8] (zero past n). Rewritten on every call, so no stale copy survives.
    acts.aux.clear();
    let block_len = block_aux_len(acts);
    let pair_len = if pairs && pc % 8 == 0 { pair_aux_len(acts) } else { 0 };
    acts.aux.resize(block_len + pair_len, 0);
    for t in 0..n {
        let (src, dst) = (&acts.q[t * pc..(t + 1) * pc], &mut acts.aux[t * pc..(t + 1) * pc]);
        for (s, d) in src.chunks_exact(BLOCK).zip(dst.chunks_exact_mut(BLOCK)) {
            transpose_block(s, d);
        }
    }
    if pair_len > 0 {
        for t in 0..n {
            let (p, tp) = (t / 2, t % 2);
            let src = &acts.q[t * pc..(t + 1) * pc];
            let dst = &mut acts.aux[block_len + p * 2 * pc..][..2 * pc];
            for (j, s) in src.chunks_exact(8).enumerate() {
                dst[16 * j + 8 * tp..][..8].copy_from_slice(s);
            }
        }
    }
}

/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn neon_quantize_acts(x: &[f32], n: usize, cols: usize, block: usize, acts: &mut QActs) {
    quantize_body(x, n, cols, block, acts, false)
}

/// [`neon_quantize_acts`] plus the `i8mm` token-pair copy in `aux`.
///
/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn i8mm_quantize_acts(x: &[f32], n: usize, cols: usize, block: usize, acts: &mut QActs) {
    quantize_body(x, n, cols, block, acts, true)
}
