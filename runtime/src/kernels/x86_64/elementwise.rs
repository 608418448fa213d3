//! The f32 elementwise kernels of the x86_64 tables, bit-identical to their definitions in
//! [`vector`]: decode attention of one head and SwiGLU.

use core::arch::x86_64::*;

use super::common::transpose8x8;
use crate::kernels::vector;

/// [`vector::head_body`] for AVX2: scores of 8 positions at a time, each exactly
/// [`vector::dot`] (per-lane products and sums in its order, then an 8×8 transpose so that
/// the eight lane sums of all 8 positions add up in one register, lane 0 first); the rest (other
/// positions, softmax, the weighted sum of values) is the definition's code compiled for AVX2.
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn avx2_attend_head_impl(q: &[f32], keys: &[f32], values: &[f32], stride: usize, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    vector::head_check(q, keys, values, stride, scores, out);
    let hd = q.len();
    let n8 = hd / 8 * 8;
    let octs = scores.len() / 8 * 8;
    let sv = _mm256_set1_ps(scale);
    for j in (0..octs).step_by(8) {
        let rows: [&[f32]; 8] = core::array::from_fn(|p| &keys[(j + p) * stride..][..hd]);
        let mut acc = [_mm256_setzero_ps(); 8];
        for i in (0..n8).step_by(8) {
            // SAFETY: i + 8 <= n8 <= hd = the length of q and of every row (head_check).
            unsafe {
                let x = _mm256_loadu_ps(q.as_ptr().add(i));
                for (a, r) in acc.iter_mut().zip(&rows) {
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(x, _mm256_loadu_ps(r.as_ptr().add(i))));
                }
            }
        }
        let t = transpose8x8(acc.map(|a| _mm256_castps_si256(a)));
        let mut sum = _mm256_castsi256_ps(t[0]);
        for tl in &t[1..] {
            sum = _mm256_add_ps(sum, _mm256_castsi256_ps(*tl));
        }
        let mut d = [0f32; 8];
        // SAFETY: d is 8 floats.
        unsafe { _mm256_storeu_ps(d.as_mut_ptr(), sum) };
        for (p, dp) in d.iter_mut().enumerate() {
            for (x, y) in q[n8..].iter().zip(&rows[p][n8..]) {
                *dp += x * y;
            }
        }
        // SAFETY: as above, for the scaled sums (j + 8 <= octs <= scores.len()).
        unsafe { _mm256_storeu_ps(scores.as_mut_ptr().add(j), _mm256_mul_ps(_mm256_loadu_ps(d.as_ptr()), sv)) };
    }
    vector::head_scores(q, keys, stride, scale, octs, scores);
    vector::head_mix(values, stride, scores, out);
}

/// [`vector::swiglu`] compiled for AVX2 (eight lanes; the same operations in the same order, so
/// bit-identical).
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn avx2_swiglu_impl(gate: &mut [f32], up: &[f32]) {
    vector::swiglu(gate, up)
}

/// [`vector::geglu`] compiled for AVX2 (eight lanes; the same operations in the same order, so
/// bit-identical).
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn avx2_geglu_impl(gate: &mut [f32], up: &[f32]) {
    vector::geglu(gate, up)
}

/// [`vector::softmax_rows`] compiled for AVX2 (the same operations in the same order: Rust
/// fuses no multiply-add and [`vector::softmax`] writes its lanes out, so bit-identical).
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn avx2_softmax_rows_impl(s: &mut [f32], width: usize, first: usize) {
    vector::softmax_rows(s, width, first)
}

/// [`vector::softmax_rows`] compiled for AVX-512 (bit-identical, as the AVX2 one).
///
/// # Safety
/// The CPU supports AVX-512F.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
pub(super) unsafe fn avx512_softmax_rows_impl(s: &mut [f32], width: usize, first: usize) {
    vector::softmax_rows(s, width, first)
}
