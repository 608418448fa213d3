//! Decode attention of one head over a cache stored in f16 or integer codes, and the read-back
//! of a head's rows ([`vector::kv_rows`]), for NEON: [`vector::head_body_stored`] with each
//! row's values read back in registers, a group of 32 at a time (4 to a register), as
//! [`crate::kv::KvRows::row_into`] defines them (f16 widened exactly by `fcvtl`; `c · d`;
//! `c · d + m`, a product then a sum, never fused), so no row is copied out and the results are
//! bit-identical to the definition. An f32 tensor beside a stored one (`k32v4`) is read in
//! place by the same code.
//!
//! Scores keep [`vector::dot`]'s eight partial sums per row (lanes 0..4 and 4..8 in two
//! registers) and add them lane 0 first, four rows at a time through a 4×4 transpose; values
//! are mixed position by position, which is `head_body_stored`'s `o + a0·v0 + a1·v1 + a2·v2 +
//! a3·v3` (left to right, each product rounded) and its `o += a·v` alike, 64 columns kept in
//! registers.

use core::arch::aarch64::*;

use crate::kernels::vector;
use crate::kv::{KvRows, KvView, RowData, KV_GROUP};

/// One group of a row in registers: register `c` holds columns `4c..4c + 4` of the group.
type Group = [float32x4_t; 8];

const _: () = assert!(KV_GROUP == 32, "a Group holds 32 values");

/// A stored row's values as f32, a group of [`KV_GROUP`] at a time.
trait LoadGroup: Copy {
    /// Columns `i..i + 32` of row `j` (columns counted from the head's first), read back as
    /// [`KvRows::row_into`] defines them.
    ///
    /// # Safety
    /// The CPU supports NEON; `j` is a stored row, `i % 32 == 0` and `i + 32 <=` the width
    /// that [`fits`] checked against the storage.
    unsafe fn group(self, j: usize, i: usize) -> Group;
}

/// f16 bits widened exactly to f32 (`fcvtl`; NaNs quieted with their payload kept, as
/// `half::f16::to_f32` does), in every lane.
///
/// # Safety
/// The CPU supports NEON.
#[inline(always)]
unsafe fn half_dup(h: u16) -> float32x4_t {
    // SAFETY: NEON, as the caller guarantees; no memory is read.
    unsafe { vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))) }
}

#[derive(Clone, Copy)]
struct F32Rows<'c> {
    v: &'c [f32],
    dim: usize,
    off: usize,
}

impl LoadGroup for F32Rows<'_> {
    #[inline(always)]
    unsafe fn group(self, j: usize, i: usize) -> Group {
        // SAFETY: the caller's contract: 32 floats from j * dim + off + i are in `v`.
        unsafe {
            let p = self.v.as_ptr().add(j * self.dim + self.off + i);
            core::array::from_fn(|c| vld1q_f32(p.add(4 * c)))
        }
    }
}

#[derive(Clone, Copy)]
struct F16Rows<'c> {
    v: &'c [u16],
    dim: usize,
    off: usize,
}

impl LoadGroup for F16Rows<'_> {
    #[inline(always)]
    unsafe fn group(self, j: usize, i: usize) -> Group {
        // SAFETY: the caller's contract: NEON, and 32 halves from j * dim + off + i are in `v`.
        unsafe {
            let p = self.v.as_ptr().add(j * self.dim + self.off + i);
            let h: [uint16x8_t; 4] = core::array::from_fn(|b| vld1q_u16(p.add(8 * b)));
            core::array::from_fn(|c| {
                let x = h[c / 2];
                if c % 2 == 0 {
                    vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(x)))
                } else {
                    vcvt_high_f32_f16(vreinterpretq_f16_u16(x))
                }
            })
        }
    }
}

#[derive(Clone, Copy)]
struct Q8Rows<'c> {
    codes: &'c [i8],
    scales: &'c [u16],
    dim: usize,
    off: usize,
}

impl LoadGroup for Q8Rows<'_> {
    #[inline(always)]
    unsafe fn group(self, j: usize, i: usize) -> Group {
        let groups = self.dim / KV_GROUP;
        // SAFETY: the caller's contract: NEON, and the group's 32 codes and its scale of row j
        // are stored.
        unsafe {
            let d = half_dup(*self.scales.get_unchecked(j * groups + (self.off + i) / KV_GROUP));
            let p = self.codes.as_ptr().add(j * self.dim + self.off + i);
            let x = [vld1q_s8(p), vld1q_s8(p.add(16))];
            // Codes widened to i32 (exact as f32), then `c · d`.
            let w: [int16x8_t; 4] = [vmovl_s8(vget_low_s8(x[0])), vmovl_high_s8(x[0]), vmovl_s8(vget_low_s8(x[1])), vmovl_high_s8(x[1])];
            core::array::from_fn(|c| {
                let h = w[c / 2];
                let c32 = if c % 2 == 0 { vmovl_s16(vget_low_s16(h)) } else { vmovl_high_s16(h) };
                vmulq_f32(vcvtq_f32_s32(c32), d)
            })
        }
    }
}

#[derive(Clone, Copy)]
struct Q4Rows<'c> {
    codes: &'c [u8],
    scales: &'c [u16],
    dim: usize,
    off: usize,
}

impl LoadGroup for Q4Rows<'_> {
    #[inline(always)]
    unsafe fn group(self, j: usize, i: usize) -> Group {
        let groups = self.dim / KV_GROUP;
        // SAFETY: the caller's contract: NEON, and the group's 16 bytes of codes and its (d, m)
        // of row j are stored (dim, off and i are multiples of 32, so the codes start on a byte).
        unsafe {
            let at = 2 * (j * groups + (self.off + i) / KV_GROUP);
            let d = half_dup(*self.scales.get_unchecked(at));
            let m = half_dup(*self.scales.get_unchecked(at + 1));
            let x = vld1q_u8(self.codes.as_ptr().add((j * self.dim + self.off + i) / 2));
            // Codes in order: the low nibble of each byte, then its high one.
            let (lo, hi) = (vandq_u8(x, vdupq_n_u8(15)), vshrq_n_u8::<4>(x));
            let (c0, c1) = (vzip1q_u8(lo, hi), vzip2q_u8(lo, hi));
            let w: [uint16x8_t; 4] = [vmovl_u8(vget_low_u8(c0)), vmovl_high_u8(c0), vmovl_u8(vget_low_u8(c1)), vmovl_high_u8(c1)];
            core::array::from_fn(|c| {
                let h = w[c / 2];
                let c32 = if c % 2 == 0 { vmovl_u16(vget_low_u16(h)) } else { vmovl_high_u16(h) };
                vaddq_f32(vmulq_f32(vcvtq_f32_u32(c32), d), m)
            })
        }
    }
}

/// Whether `rows` stores `n` rows of `hd` columns from its offset (so every
/// [`LoadGroup::group`] of them is in bounds).
fn fits(rows: &KvRows<'_>, n: usize, hd: usize) -> bool {
    let (dim, off) = (rows.dim, rows.offset);
    let groups = dim / KV_GROUP;
    let last = (n - 1) * dim + off + hd; // one past the last value read
    match rows.data {
        RowData::F32(v) => v.len() >= last,
        RowData::F16(v) => v.len() >= last,
        RowData::Q8 { codes, scales } => {
            dim % KV_GROUP == 0 && off % KV_GROUP == 0 && codes.len() >= last && scales.len() >= (n - 1) * groups + (off + hd).div_ceil(KV_GROUP)
        }
        RowData::Q4 { codes, scales } => {
            dim % KV_GROUP == 0
                && off % KV_GROUP == 0
                && codes.len() >= last.div_ceil(2)
                && scales.len() >= 2 * ((n - 1) * groups + (off + hd).div_ceil(KV_GROUP))
        }
    }
}

/// `r` as the loader of its format.
fn stored(r: KvRows<'_>) -> Stored<'_> {
    let (dim, off) = (r.dim, r.offset);
    match r.data {
        RowData::F32(v) => Stored::F32(F32Rows { v, dim, off }),
        RowData::F16(v) => Stored::F16(F16Rows { v, dim, off }),
        RowData::Q8 { codes, scales } => Stored::Q8(Q8Rows { codes, scales, dim, off }),
        RowData::Q4 { codes, scales } => Stored::Q4(Q4Rows { codes, scales, dim, off }),
    }
}

#[derive(Clone, Copy)]
enum Stored<'c> {
    F32(F32Rows<'c>),
    F16(F16Rows<'c>),
    Q8(Q8Rows<'c>),
    Q4(Q4Rows<'c>),
}

/// [`vector::head_body_stored`] for NEON (see the module). Heads whose width is not a multiple
/// of 32 run the definition; an f32 cache (keys and values) is the caller's to route to
/// [`vector::attend_head`].
///
/// # Safety
/// The CPU supports NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn neon_attend_stored_impl(q: &[f32], kv: KvView<'_>, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    let (hd, n) = (q.len(), kv.len);
    if !hd.is_multiple_of(KV_GROUP) || n == 0 || !fits(&kv.keys, n, hd) || !fits(&kv.values, n, hd) {
        return vector::head_body_stored(q, kv, scale, scores, out);
    }
    assert!(scores.len() == n && out.len() == hd);
    // SAFETY (every call below): NEON is enabled here; fits() checked that n rows of the head's
    // hd columns are stored in both tensors, and hd % 32 == 0.
    unsafe {
        match stored(kv.keys) {
            Stored::F32(k) => scores_of(q, k, n, scale, scores),
            Stored::F16(k) => scores_of(q, k, n, scale, scores),
            Stored::Q8(k) => scores_of(q, k, n, scale, scores),
            Stored::Q4(k) => scores_of(q, k, n, scale, scores),
        }
        vector::softmax(scores);
        match stored(kv.values) {
            Stored::F32(v) => mix(v, scores, out),
            Stored::F16(v) => mix(v, scores, out),
            Stored::Q8(v) => mix(v, scores, out),
            Stored::Q4(v) => mix(v, scores, out),
        }
    }
}

/// The columns of a 4×4 matrix given by its rows: lane `r` of result `k` is lane `k` of `a[r]`.
///
/// # Safety
/// The CPU supports NEON.
#[inline(always)]
unsafe fn transpose4(a: [float32x4_t; 4]) -> [float32x4_t; 4] {
    // SAFETY: NEON, as the caller guarantees; no memory is read.
    unsafe {
        let (t0, t1) = (vtrn1q_f32(a[0], a[1]), vtrn2q_f32(a[0], a[1])); // a0 b0 a2 b2, a1 b1 a3 b3
        let (t2, t3) = (vtrn1q_f32(a[2], a[3]), vtrn2q_f32(a[2], a[3])); // c0 d0 c2 d2, c1 d1 c3 d3
        let (f, g) = (|x| vreinterpretq_f64_f32(x), |x| vreinterpretq_f32_f64(x));
        [g(vtrn1q_f64(f(t0), f(t2))), g(vtrn1q_f64(f(t1), f(t3))), g(vtrn2q_f64(f(t0), f(t2))), g(vtrn2q_f64(f(t1), f(t3)))]
    }
}

/// `scores[j] = scale · dot(q, k_j)`, each exactly [`vector::dot`]: its eight partial sums
/// (lane `l` of `lo` is its lane `l`, of `hi` its lane `4 + l`), each in column order, then the
/// eight added lane 0 first (the reference starts that sum from a zero, which changes nothing:
/// a partial sum that started at +0 is never -0), four rows at a time through a transpose.
///
/// # Safety
/// As [`LoadGroup::group`] for rows `0..n` and columns `0..q.len()`; `q.len() % 32 == 0`;
/// `scores.len() >= n`.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn scores_of<K: LoadGroup>(q: &[f32], k: K, n: usize, scale: f32, scores: &mut [f32]) {
    let hd = q.len();
    let quads = n / 4 * 4;
    let sv = vdupq_n_f32(scale);
    // SAFETY (whole body): loads as the caller guarantees; q holds hd floats, scores n.
    unsafe {
        for j in (0..quads).step_by(4) {
            let mut lo = [vdupq_n_f32(0.0); 4];
            let mut hi = [vdupq_n_f32(0.0); 4];
            for i0 in (0..hd).step_by(KV_GROUP) {
                let x: Group = core::array::from_fn(|c| vld1q_f32(q.as_ptr().add(i0 + 4 * c)));
                for (r, (l, h)) in lo.iter_mut().zip(&mut hi).enumerate() {
                    let v = k.group(j + r, i0);
                    for c in (0..8).step_by(2) {
                        *l = vaddq_f32(*l, vmulq_f32(x[c], v[c]));
                        *h = vaddq_f32(*h, vmulq_f32(x[c + 1], v[c + 1]));
                    }
                }
            }
            let (tl, th) = (transpose4(lo), transpose4(hi));
            let mut sum = tl[0];
            for t in [tl[1], tl[2], tl[3], th[0], th[1], th[2], th[3]] {
                sum = vaddq_f32(sum, t);
            }
            vst1q_f32(scores.as_mut_ptr().add(j), vmulq_f32(sum, sv));
        }
        for (j, s) in scores.iter_mut().enumerate().take(n).skip(quads) {
            let (mut lo, mut hi) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
            for i0 in (0..hd).step_by(KV_GROUP) {
                let v = k.group(j, i0);
                for c in (0..8).step_by(2) {
                    lo = vaddq_f32(lo, vmulq_f32(vld1q_f32(q.as_ptr().add(i0 + 4 * c)), v[c]));
                    hi = vaddq_f32(hi, vmulq_f32(vld1q_f32(q.as_ptr().add(i0 + 4 * c + 4)), v[c + 1]));
                }
            }
            let mut lanes = [0f32; 8];
            vst1q_f32(lanes.as_mut_ptr(), lo);
            vst1q_f32(lanes.as_mut_ptr().add(4), hi);
            *s = lanes.iter().sum::<f32>() * scale;
        }
    }
}

/// `out = Σ_j scores[j] · v_j` in [`vector::head_body_stored`]'s order: `o + a·v_j` for each
/// position in turn (its four-position expression adds the same terms left to right), 64
/// columns at a time kept in registers.
///
/// # Safety
/// As [`LoadGroup::group`] for rows `0..scores.len()` and columns `0..out.len()`;
/// `out.len() % 32 == 0`.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn mix<V: LoadGroup>(v: V, scores: &[f32], out: &mut [f32]) {
    let hd = out.len();
    let mut c0 = 0;
    // SAFETY: as the caller guarantees; each block's columns lie in 0..hd.
    unsafe {
        while c0 + 2 * KV_GROUP <= hd {
            mix_block::<V, 2>(v, scores, out, c0);
            c0 += 2 * KV_GROUP;
        }
        if c0 < hd {
            mix_block::<V, 1>(v, scores, out, c0);
        }
    }
}

/// Columns `c0..c0 + 32 G` of [`mix`].
///
/// # Safety
/// As [`mix`], with `c0 + 32 G <= out.len()` and `c0 % 32 == 0`.
#[inline(always)]
unsafe fn mix_block<V: LoadGroup, const G: usize>(v: V, scores: &[f32], out: &mut [f32], c0: usize) {
    // SAFETY: NEON and the loads as the caller guarantees; out holds the block's 32 G floats.
    unsafe {
        let mut o = [[vdupq_n_f32(0.0); 8]; G];
        for (j, &s) in scores.iter().enumerate() {
            let a = vdupq_n_f32(s);
            for (g, og) in o.iter_mut().enumerate() {
                let x = v.group(j, c0 + KV_GROUP * g);
                for (oc, xc) in og.iter_mut().zip(x) {
                    *oc = vaddq_f32(*oc, vmulq_f32(a, xc));
                }
            }
        }
        for (g, og) in o.iter().enumerate() {
            for (c, oc) in og.iter().enumerate() {
                vst1q_f32(out.as_mut_ptr().add(c0 + KV_GROUP * g + 4 * c), *oc);
            }
        }
    }
}

/// [`vector::kv_rows`] for NEON: each group read back in registers as [`LoadGroup::group`]
/// does. Widths that are not a multiple of 32, and f32 rows (a copy), run the definition.
///
/// # Safety
/// The CPU supports NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn neon_kv_rows_impl(rows: KvRows<'_>, first: usize, width: usize, out: &mut [f32]) {
    let n = out.len() / width.max(1);
    if n == 0 || !width.is_multiple_of(KV_GROUP) || rows.as_f32().is_some() || !fits(&rows, first + n, width) {
        return vector::kv_rows(rows, first, width, out);
    }
    // SAFETY: NEON is enabled here; fits() checked rows 0..first + n of `width` columns; out
    // holds n * width floats.
    unsafe {
        match stored(rows) {
            Stored::F32(r) => read_back(r, first, width, out),
            Stored::F16(r) => read_back(r, first, width, out),
            Stored::Q8(r) => read_back(r, first, width, out),
            Stored::Q4(r) => read_back(r, first, width, out),
        }
    }
}

/// # Safety
/// As [`LoadGroup::group`] for rows `first..first + out.len() / width` and columns
/// `0..width`; `width % 32 == 0`.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn read_back<R: LoadGroup>(r: R, first: usize, width: usize, out: &mut [f32]) {
    for (j, row) in out.chunks_exact_mut(width).enumerate() {
        for i0 in (0..width).step_by(KV_GROUP) {
            // SAFETY: as the caller guarantees; the row holds width floats.
            unsafe {
                let x = r.group(first + j, i0);
                for (c, xc) in x.iter().enumerate() {
                    vst1q_f32(row.as_mut_ptr().add(i0 + 4 * c), *xc);
                }
            }
        }
    }
}
