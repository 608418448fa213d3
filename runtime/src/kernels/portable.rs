//! Portable nested-weight products: the reference arithmetic, reorganised so each row's codes
//! are unpacked once per group (plane by plane) instead of once per weight and token. The
//! results are bit-identical to [`super::reference`] (same integer sums, same float terms in
//! the same order); this is what a CPU without a SIMD table runs.

use super::acts::QActs;
use super::frame::Nested8;
use crate::blocks::{self, NESTED8_PLANES};

/// Largest group the stack buffer below holds; larger groups use the reference.
const MAX_GROUP: usize = 512;

/// Unpack the view's codes `q_k` of the `codes.len()` weights starting at flat index `first`.
#[inline]
fn unpack_codes(w: &Nested8<'_>, first: usize, codes: &mut [u8]) {
    let n_planes = blocks::nested8_planes_for_view(w.view_bits).unwrap_or(6);
    codes.fill(0);
    for (plane, spec) in w.planes[..n_planes].iter().zip(NESTED8_PLANES) {
        for (j, c) in codes.iter_mut().enumerate() {
            *c |= blocks::plane_field(plane, spec.bits, first + j) << spec.shift;
        }
    }
    let drop = 8 - w.view_bits;
    for c in codes.iter_mut() {
        *c >>= drop;
    }
}

/// Row `row` against tokens `0..out.len()` of `acts` (one output per token, stride `stride`).
#[inline]
fn row_dots(w: &Nested8<'_>, row: usize, acts: &QActs, out: &mut [f32], stride: usize) {
    let gs = w.group_size;
    let mut codes = [0u8; MAX_GROUP];
    let codes = &mut codes[..gs];
    for t in 0..acts.n {
        out[t * stride] = 0.0;
    }
    for g in 0..w.row_stride / gs {
        let first = row * w.row_stride + g * gs;
        unpack_codes(w, first, codes);
        let (step, offset) = blocks::nested8_step_offset(w.params.get(first / gs), w.view_bits);
        for t in 0..acts.n {
            let xq = &acts.q_row(t)[g * gs..(g + 1) * gs];
            let isum: i32 = codes.iter().zip(xq).map(|(&c, &x)| c as i32 * x as i32).sum();
            out[t * stride] += acts.d_row(t)[g] * (step * isum as f32 + offset * acts.sum_row(t)[g] as f32);
        }
    }
}

#[inline]
pub fn nested8_matvec(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    if w.group_size > MAX_GROUP {
        return super::reference::nested8_matvec(w, acts, first, out);
    }
    for (i, o) in out.iter_mut().enumerate() {
        row_dots(w, first + i, acts, core::slice::from_mut(o), 1);
    }
}

#[inline]
pub fn nested8_matmul(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    if w.group_size > MAX_GROUP {
        return super::reference::nested8_matmul(w, acts, first, out);
    }
    let len = out.len() / acts.n.max(1);
    for i in 0..len {
        row_dots(w, first + i, acts, &mut out[i..], len);
    }
}
