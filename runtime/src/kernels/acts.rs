//! Activations quantized to int8 for integer dot products with nested weights.
//!
//! The contract (every architecture computes exactly these numbers): a token's activation row
//! `x` (`cols` values, the matrix's column count) is cut into blocks of `block` values, where
//! `block` is the weight's group size, so one weight group meets one activation block. For
//! each block, with `amax = max |x_j|`:
//!
//! ```text
//! d    = amax / 127                      (f32; 0 when amax = 0)
//! id   = 127 / amax                      (f32; 0 when amax = 0)
//! q_j  = round_half_even(x_j * id)       (i8, in -127..=127)
//! sum  = Σ_j q_j                         (i32)
//! ```
//!
//! A block past the end of `x` (the weight row is padded to whole groups) is zero. Rounding is
//! half-to-even because that is what `cvtps2dq` (x86) and `fcvtns` (aarch64) do, so vector code
//! quantizes bit-identically to [`quantize_reference`].

use alloc::vec::Vec;

/// `n` tokens' activations quantized per block of `block` values.
///
/// `q` is in natural order; an architecture's kernels may additionally keep a copy in the order
/// they read best in `aux` (filled by the same table's `quantize_acts`), so no kernel permutes
/// per row. Buffers only grow, so steady-state decoding allocates nothing.
#[derive(Debug, Default, Clone)]
pub struct QActs {
    /// Tokens held.
    pub n: usize,
    /// Values per token, padded to whole blocks (`blocks * block`).
    pub padded_cols: usize,
    /// Values per block (the weight's group size).
    pub block: usize,
    /// (n, padded_cols) quantized values, natural order.
    pub q: Vec<i8>,
    /// (n, padded_cols / block) block scales `d`.
    pub d: Vec<f32>,
    /// (n, padded_cols / block) block sums `Σ q`.
    pub sum: Vec<i32>,
    /// Architecture-private copy of `q` in another order (see the kernels that fill it).
    pub aux: Vec<i8>,
    /// Set by the caller before quantizing when every matrix these activations will meet reads
    /// its codes from runs (`Prepared::Runs` of `kernels::frame`): a table may then fill only
    /// the part of `aux` that its runs' kernels use (and must serve other views without it).
    pub runs_order_only: bool,
}

impl QActs {
    /// Blocks per token.
    pub fn blocks(&self) -> usize {
        self.padded_cols / self.block.max(1)
    }

    /// Token `t`'s quantized values (padded_cols).
    pub fn q_row(&self, t: usize) -> &[i8] {
        &self.q[t * self.padded_cols..(t + 1) * self.padded_cols]
    }

    /// Token `t`'s block scales and sums.
    pub fn d_row(&self, t: usize) -> &[f32] {
        let b = self.blocks();
        &self.d[t * b..(t + 1) * b]
    }

    pub fn sum_row(&self, t: usize) -> &[i32] {
        let b = self.blocks();
        &self.sum[t * b..(t + 1) * b]
    }

    /// Size the buffers for `n` tokens of `cols` values in blocks of `block` (grow only).
    pub fn reset(&mut self, n: usize, cols: usize, block: usize) {
        assert!(block > 0);
        self.n = n;
        self.block = block;
        self.padded_cols = cols.div_ceil(block) * block;
        let blocks = self.padded_cols / block;
        self.q.resize(n * self.padded_cols, 0);
        self.d.resize(n * blocks, 0.0);
        self.sum.resize(n * blocks, 0);
    }
}

/// Round half to even for |v| < 2^22 (all quantized values are within ±127.5): adding and
/// subtracting 1.5·2^23 leaves the nearest integer under IEEE round-to-nearest-even.
#[inline]
pub fn round_half_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (v + MAGIC) - MAGIC
}

/// Quantize one block (`x.len() <= q.len()`; the rest of `q` is zero). Returns `(d, sum)`.
#[inline]
pub fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (d, id) = if amax > 0.0 { (amax / 127.0, 127.0 / amax) } else { (0.0, 0.0) };
    let mut sum = 0i32;
    for (j, qj) in q.iter_mut().enumerate() {
        let v = if j < x.len() { round_half_even(x[j] * id) as i8 } else { 0 };
        *qj = v;
        sum += v as i32;
    }
    (d, sum)
}

/// The reference quantization: `x` is (n, cols) row-major.
pub fn quantize_reference(x: &[f32], n: usize, cols: usize, block: usize, acts: &mut QActs) {
    acts.reset(n, cols, block);
    let blocks = acts.blocks();
    for t in 0..n {
        let xr = &x[t * cols..(t + 1) * cols];
        for b in 0..blocks {
            let lo = (b * block).min(cols);
            let hi = ((b + 1) * block).min(cols);
            let q = &mut acts.q[t * acts.padded_cols + b * block..][..block];
            let (d, s) = quantize_block(&xr[lo..hi], q);
            acts.d[t * blocks + b] = d;
            acts.sum[t * blocks + b] = s;
        }
    }
}
