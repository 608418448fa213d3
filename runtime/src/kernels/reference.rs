//! The specification of every product: plain scalar loops over the contract dequantization
//! ([`crate::blocks`]). Slow on purpose; every faster kernel is tested against these.

use super::Matrix;
use alloc::vec;

/// Reference `out[r] = Σ_c W[r, c] · x[c]`, accumulated in f64 for a tight comparison target.
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
