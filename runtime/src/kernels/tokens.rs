//! The elementwise steps of a forward pass over `n` tokens' rows (RMSNorm, RoPE, SwiGLU, the
//! residual add, the Walsh-Hadamard rotation of heads), split by tokens (or by floats, where every float stands alone) over the pool
//! when there are enough of them to pay for a hand-off. Every row is computed by its
//! single-row definition in [`super::vector`] (SwiGLU by the table's kernel), so the results do
//! not depend on the split.

use super::dispatch::kernels;
use super::parallel::for_item_ranges;
use super::vector;

/// Floats of an elementwise split's ranges start at multiples of this: whole cache lines, so
/// two threads never write one line.
const LINE_FLOATS: usize = 16;

/// `out[t] = x[t] / rms(x[t]) * weight` for every token row: `x` and `out` are
/// (n, weight.len()).
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let dim = weight.len();
    assert!(dim > 0 && x.len() == out.len() && out.len().is_multiple_of(dim));
    for_item_ranges(out.len() / dim, 1, [out], |tokens, [out]| {
        let x = &x[tokens.start * dim..tokens.end * dim];
        for (o, x) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
            vector::rmsnorm(o, x, weight, eps);
        }
    });
}

/// RoPE of `n` tokens: rotate the adjacent pairs of every head of token `t`'s rows of `q`
/// (n, n_heads * head_dim) and `k` (n, n_kv_heads * head_dim) by the angles of row `t` of
/// `cos` and `sin` (n, head_dim / 2).
pub fn rope(q: &mut [f32], k: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    assert!(half > 0 && cos.len() == sin.len() && cos.len().is_multiple_of(half));
    let n = cos.len() / half;
    for_item_ranges(n, 1, [q, k], |tokens, [q, k]| {
        let (q_dim, kv_dim) = (q.len() / tokens.len(), k.len() / tokens.len());
        for (i, t) in tokens.enumerate() {
            let (cos, sin) = (&cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
            vector::rope(&mut q[i * q_dim..(i + 1) * q_dim], head_dim, cos, sin);
            vector::rope(&mut k[i * kv_dim..(i + 1) * kv_dim], head_dim, cos, sin);
        }
    });
}

/// `gate = silu(gate) * up`, elementwise (the table's SwiGLU kernel on each range).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    assert!(up.len() >= gate.len());
    let swiglu = kernels().swiglu;
    for_item_ranges(gate.len(), LINE_FLOATS, [gate], |floats, [gate]| swiglu(gate, &up[floats]));
}

/// `gate = gelu_tanh(gate) * up`, elementwise (the table's GeGLU kernel on each range).
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    assert!(up.len() >= gate.len());
    let geglu = kernels().geglu;
    for_item_ranges(gate.len(), LINE_FLOATS, [gate], |floats, [gate]| geglu(gate, &up[floats]));
}

/// RMSNorm in place of every `weight.len()`-wide row of `x` (the per-head q/k norms: a row is
/// one head of one token).
pub fn rmsnorm_rows_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let dim = weight.len();
    assert!(dim > 0 && x.len().is_multiple_of(dim));
    for_item_ranges(x.len() / dim, 1, [x], |_, [x]| {
        for row in x.chunks_exact_mut(dim) {
            vector::rmsnorm_in_place(row, weight, eps);
        }
    });
}

/// `x += y`, elementwise (the residual stream).
pub fn add(x: &mut [f32], y: &[f32]) {
    assert!(y.len() >= x.len());
    for_item_ranges(x.len(), LINE_FLOATS, [x], |floats, [x]| {
        for (x, y) in x.iter_mut().zip(&y[floats]) {
            *x += y;
        }
    });
}

/// [`vector::hadamard_heads`] of every `head_dim` slice of `x` (whole heads split over the
/// pool).
pub fn hadamard_heads(x: &mut [f32], head_dim: usize) {
    assert!(head_dim > 0 && x.len().is_multiple_of(head_dim));
    for_item_ranges(x.len() / head_dim, 1, [x], |_, [x]| vector::hadamard_heads(x, head_dim));
}
