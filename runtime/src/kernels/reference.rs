//! The specification of every product: plain scalar loops over the contract dequantization
//! ([`crate::blocks`]) and the activation quantization ([`super::acts`]). Slow on purpose;
//! every faster kernel is tested against these.

use super::acts::QActs;
use super::frame::{Matrix, Nested8};
use crate::blocks;
use alloc::vec;

/// Reference `out[r] = Σ_c W[r, c] · x[c]` with f32 activations, accumulated in f64 for a
/// tight comparison target.
pub fn matvec(m: &Matrix<'_>, x: &[f32], out: &mut [f32]) {
    let mut row = vec![0f32; m.cols];
    for (r, o) in out[..m.rows].iter_mut().enumerate() {
        m.dequant_row(r, &mut row);
        let mut s = 0f64;
        for (w, v) in row.iter().zip(x) {
            s += *w as f64 * *v as f64;
        }
        *o = s as f32;
    }
}

/// Reference matrix-matrix product, one [`matvec`] per token.
pub fn matmul(m: &Matrix<'_>, x: &[f32], n: usize, out: &mut [f32]) {
    for t in 0..n {
        matvec(m, &x[t * m.cols..(t + 1) * m.cols], &mut out[t * m.rows..(t + 1) * m.rows]);
    }
}

/// Integer sum of one group: `Σ_j q_k[j] · xq[j]` over the group starting at flat code index
/// `first`, where `q_k` is the view's code (the top `view_bits` of the stored code).
pub fn nested8_group_isum(w: &Nested8<'_>, first: usize, xq: &[i8]) -> i32 {
    let mut isum = 0i32;
    for (j, &x) in xq[..w.group_size].iter().enumerate() {
        isum += blocks::nested8_code(&w.planes, w.view_bits, first + j) as i32 * x as i32;
    }
    isum
}

/// The quantized-activation product of row `row` with token `t` of `acts` (block = group size):
///
/// ```text
/// Σ_g d_g · (step_g · isum_g + offset_g · sum_g)
/// ```
///
/// with `isum_g` from [`nested8_group_isum`], `(step_g, offset_g)` the view's
/// [`blocks::nested8_step_offset`], `d_g`/`sum_g` the activation block's scale and sum; the
/// float terms are added in group order, each exactly as written (no fused multiply-add).
/// Integer parts are exact in every kernel; the float sum may be reordered (tolerance in the
/// kernel tests).
pub fn nested8_row_dot(w: &Nested8<'_>, row: usize, acts: &QActs, t: usize) -> f32 {
    assert_eq!(acts.block, w.group_size, "activations quantized in blocks of the weight's group size");
    let gs = w.group_size;
    let (xq, d, sum) = (acts.q_row(t), acts.d_row(t), acts.sum_row(t));
    let mut acc = 0f32;
    for g in 0..w.row_stride / gs {
        let first = row * w.row_stride + g * gs;
        let isum = nested8_group_isum(w, first, &xq[g * gs..]);
        let (step, offset) = blocks::nested8_step_offset(w.params.get(first / gs), w.view_bits);
        acc += d[g] * (step * isum as f32 + offset * sum[g] as f32);
    }
    acc
}

/// `out[i] = `[`nested8_row_dot`]`(first + i)` for token 0 (decode).
pub fn nested8_matvec(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = nested8_row_dot(w, first + i, acts, 0);
    }
}

/// `out[t * len + i] = `[`nested8_row_dot`]`(first + i, token t)` for every token of `acts`
/// and `len = out.len() / acts.n` rows (prefill: a (tokens, rows) tile).
pub fn nested8_matmul(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    let len = out.len() / acts.n.max(1);
    for t in 0..acts.n {
        for i in 0..len {
            out[t * len + i] = nested8_row_dot(w, first + i, acts, t);
        }
    }
}

/// Quantize `x` ((n, cols)) for the reference kernels (natural order only).
pub fn quantize_acts(x: &[f32], n: usize, cols: usize, block: usize, acts: &mut QActs) {
    super::acts::quantize_reference(x, n, cols, block, acts);
}
