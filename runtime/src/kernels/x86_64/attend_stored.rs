//! Decode attention of one head over a cache stored in f16 or integer codes, for AVX2:
//! [`vector::head_body_stored`] with each row's values read back in registers, 8 at a time, as
//! [`crate::kv::KvRows::row_into`] defines them (f16 widened; `c · d`; `c · d + m`, a product
//! then a sum), so no row is copied out and the results are bit-identical to the definition.

use core::arch::x86_64::*;

use super::common::transpose8x8;
use crate::kernels::vector;
use crate::kv::{KvRows, KvView, RowData, KV_GROUP};

/// A stored row's values as f32, a group of 32 at a time: the group's parameters read once,
/// then its values 8 at a time.
trait Load8: Copy {
    /// Parameters of the group holding columns `i..i + 32` of row `j`.
    type Group: Copy;

    /// # Safety
    /// As [`Load8::load8`], with `i % 32 == 0`.
    unsafe fn group(self, j: usize, i: usize) -> Self::Group;

    /// Values `i..i + 8` of row `j` (columns counted from the head's first), in group `g`.
    ///
    /// # Safety
    /// The CPU supports AVX2 and F16C; `j` is a filled row and `i + 8 <=` the head's width,
    /// which [`fits`] checked against the storage; `g` is the group of row `j` holding `i`.
    unsafe fn load8(self, g: Self::Group, j: usize, i: usize) -> __m256;
}

#[derive(Clone, Copy)]
struct F16Rows<'c> {
    v: &'c [u16],
    dim: usize,
    off: usize,
}

impl Load8 for F16Rows<'_> {
    type Group = ();

    #[inline(always)]
    unsafe fn group(self, _: usize, _: usize) {}

    #[inline(always)]
    unsafe fn load8(self, _: (), j: usize, i: usize) -> __m256 {
        // SAFETY: the caller's contract; 8 halves from j * dim + off + i are in `v`.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(self.v.as_ptr().add(j * self.dim + self.off + i) as *const __m128i)) }
    }
}

#[derive(Clone, Copy)]
struct Q8Rows<'c> {
    codes: &'c [i8],
    scales: &'c [u16],
    dim: usize,
    off: usize,
}

impl Load8 for Q8Rows<'_> {
    /// The scale `d`, in every lane.
    type Group = __m256;

    #[inline(always)]
    unsafe fn group(self, j: usize, i: usize) -> __m256 {
        let groups = self.dim / KV_GROUP;
        // SAFETY: the caller's contract: the group's scale of row j is stored.
        unsafe { _mm256_set1_ps(half_to_f32(*self.scales.get_unchecked(j * groups + (self.off + i) / KV_GROUP))) }
    }

    #[inline(always)]
    unsafe fn load8(self, d: __m256, j: usize, i: usize) -> __m256 {
        // SAFETY: the caller's contract: 8 codes of row j are stored.
        unsafe {
            let c = _mm_loadl_epi64(self.codes.as_ptr().add(j * self.dim + self.off + i) as *const __m128i);
            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c)), d)
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

impl Load8 for Q4Rows<'_> {
    /// The step `d` and minimum `m`, in every lane.
    type Group = (__m256, __m256);

    #[inline(always)]
    unsafe fn group(self, j: usize, i: usize) -> (__m256, __m256) {
        let groups = self.dim / KV_GROUP;
        // SAFETY: the caller's contract: the group's (d, m) of row j are stored.
        unsafe {
            let at = 2 * (j * groups + (self.off + i) / KV_GROUP);
            (_mm256_set1_ps(half_to_f32(*self.scales.get_unchecked(at))), _mm256_set1_ps(half_to_f32(*self.scales.get_unchecked(at + 1))))
        }
    }

    #[inline(always)]
    unsafe fn load8(self, (d, m): (__m256, __m256), j: usize, i: usize) -> __m256 {
        // SAFETY: the caller's contract: 4 bytes of codes of row j are stored (`i` is a multiple
        // of 8, so the codes start on a byte).
        unsafe {
            let word = (self.codes.as_ptr().add((j * self.dim + self.off + i) / 2) as *const u32).read_unaligned();
            let x = _mm_cvtsi32_si128(word as i32);
            let nib = _mm_set1_epi8(0x0F);
            // Codes in order: the low nibble of each byte, then its high one.
            let c = _mm_unpacklo_epi8(_mm_and_si128(x, nib), _mm_and_si128(_mm_srli_epi16(x, 4), nib));
            _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c)), d), m)
        }
    }
}

/// One f16 (bits) widened to f32 (exact).
///
/// # Safety
/// The CPU supports F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn half_to_f32(h: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

/// Whether `rows` stores `n` rows of the head's `hd` columns (so every [`Load8::load8`] of
/// them is in bounds).
fn fits(rows: &KvRows<'_>, n: usize, hd: usize) -> bool {
    let (dim, off) = (rows.dim, rows.offset);
    let groups = dim / KV_GROUP;
    let last = (n - 1) * dim + off + hd; // one past the last value read
    match rows.data {
        RowData::F32(_) => false,
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

/// [`vector::head_body_stored`] for AVX2 (see the module). Heads whose width is not a multiple
/// of 32, and f32 caches, run the definition compiled for AVX2.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn avx2_attend_stored_impl(q: &[f32], kv: KvView<'_>, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    let (hd, n) = (q.len(), kv.len);
    if !hd.is_multiple_of(KV_GROUP) || n == 0 || !fits(&kv.keys, n, hd) || !fits(&kv.values, n, hd) {
        return vector::head_body_stored(q, kv, scale, scores, out);
    }
    assert!(scores.len() == n && out.len() == hd);
    // SAFETY (every call below): the features are enabled here; fits() checked that n rows of
    // the head's hd columns are stored in both tensors, and hd % 8 == 0.
    unsafe {
        match stored(kv.keys) {
            Stored::F16(k) => scores_of(q, k, n, scale, scores),
            Stored::Q8(k) => scores_of(q, k, n, scale, scores),
            Stored::Q4(k) => scores_of(q, k, n, scale, scores),
        }
        vector::softmax(scores);
        match stored(kv.values) {
            Stored::F16(v) => mix(v, scores, out),
            Stored::Q8(v) => mix(v, scores, out),
            Stored::Q4(v) => mix(v, scores, out),
        }
    }
}

/// `r` as the loader of its format (not f32: [`fits`] refuses those).
fn stored(r: KvRows<'_>) -> Stored<'_> {
    let (dim, off) = (r.dim, r.offset);
    match r.data {
        RowData::F16(v) => Stored::F16(F16Rows { v, dim, off }),
        RowData::Q8 { codes, scales } => Stored::Q8(Q8Rows { codes, scales, dim, off }),
        RowData::Q4 { codes, scales } => Stored::Q4(Q4Rows { codes, scales, dim, off }),
        RowData::F32(_) => unreachable!("fits() refused f32 rows"),
    }
}

#[derive(Clone, Copy)]
enum Stored<'c> {
    F16(F16Rows<'c>),
    Q8(Q8Rows<'c>),
    Q4(Q4Rows<'c>),
}

/// `scores[j] = scale · dot(q, k_j)`, each exactly [`vector::dot`]: per-lane products and sums
/// in its order, then the eight lane sums added lane 0 first (an 8×8 transpose for 8 rows at a
/// time, in order for the rest), each group's parameters read once a row.
///
/// # Safety
/// As [`Load8::load8`] for rows `0..n` and columns `0..q.len()`; `q.len() % 32 == 0`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn scores_of<K: Load8>(q: &[f32], k: K, n: usize, scale: f32, scores: &mut [f32]) {
    let hd = q.len();
    let sv = _mm256_set1_ps(scale);
    let octs = n / 8 * 8;
    // SAFETY (whole body): loads as the caller guarantees; q holds hd floats; scores n.
    unsafe {
        for j in (0..octs).step_by(8) {
            let mut acc = [_mm256_setzero_ps(); 8];
            for i0 in (0..hd).step_by(KV_GROUP) {
                let x: [__m256; 4] = core::array::from_fn(|c| _mm256_loadu_ps(q.as_ptr().add(i0 + 8 * c)));
                for (p, a) in acc.iter_mut().enumerate() {
                    let g = k.group(j + p, i0);
                    for (c, xc) in x.iter().enumerate() {
                        *a = _mm256_add_ps(*a, _mm256_mul_ps(*xc, k.load8(g, j + p, i0 + 8 * c)));
                    }
                }
            }
            let t = transpose8x8(acc.map(|a| _mm256_castps_si256(a)));
            let mut sum = _mm256_castsi256_ps(t[0]);
            for tl in &t[1..] {
                sum = _mm256_add_ps(sum, _mm256_castsi256_ps(*tl));
            }
            _mm256_storeu_ps(scores.as_mut_ptr().add(j), _mm256_mul_ps(sum, sv));
        }
        for (j, s) in scores.iter_mut().enumerate().take(n).skip(octs) {
            let mut acc = _mm256_setzero_ps();
            for i0 in (0..hd).step_by(KV_GROUP) {
                let g = k.group(j, i0);
                for i in (i0..i0 + KV_GROUP).step_by(8) {
                    acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(q.as_ptr().add(i)), k.load8(g, j, i)));
                }
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
            *s = lanes.iter().sum::<f32>() * scale;
        }
    }
}

/// `out = Σ_j scores[j] · v_j` in [`vector::head_body_stored`]'s order: four positions at a
/// time (`o + a0·v0 + a1·v1 + a2·v2 + a3·v3`), then one at a time; 64 columns at a time kept in
/// registers.
///
/// # Safety
/// As [`Load8::load8`] for rows `0..scores.len()` and columns `0..out.len()`; `out.len() % 32
/// == 0`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn mix<V: Load8>(v: V, scores: &[f32], out: &mut [f32]) {
    let (hd, n) = (out.len(), scores.len());
    let quads = n / 4 * 4;
    // SAFETY (whole body): loads as the caller guarantees; out holds hd floats.
    unsafe {
        for c0 in (0..hd).step_by(64) {
            let w = (hd - c0).min(64) / 8;
            let mut o = [_mm256_setzero_ps(); 8];
            for j in (0..quads).step_by(4) {
                let a: [__m256; 4] = core::array::from_fn(|r| _mm256_set1_ps(scores[j + r]));
                for (b, ob) in o[..w].chunks_mut(4).enumerate() {
                    let i0 = c0 + KV_GROUP * b;
                    let g: [V::Group; 4] = core::array::from_fn(|r| v.group(j + r, i0));
                    for (c, oc) in ob.iter_mut().enumerate() {
                        let i = i0 + 8 * c;
                        let mut x = _mm256_add_ps(*oc, _mm256_mul_ps(a[0], v.load8(g[0], j, i)));
                        x = _mm256_add_ps(x, _mm256_mul_ps(a[1], v.load8(g[1], j + 1, i)));
                        x = _mm256_add_ps(x, _mm256_mul_ps(a[2], v.load8(g[2], j + 2, i)));
                        *oc = _mm256_add_ps(x, _mm256_mul_ps(a[3], v.load8(g[3], j + 3, i)));
                    }
                }
            }
            for (j, &s) in scores.iter().enumerate().skip(quads) {
                let a = _mm256_set1_ps(s);
                for (b, ob) in o[..w].chunks_mut(4).enumerate() {
                    let i0 = c0 + KV_GROUP * b;
                    let g = v.group(j, i0);
                    for (c, oc) in ob.iter_mut().enumerate() {
                        *oc = _mm256_add_ps(*oc, _mm256_mul_ps(a, v.load8(g, j, i0 + 8 * c)));
                    }
                }
            }
            for (c, oc) in o.iter().enumerate().take(w) {
                _mm256_storeu_ps(out.as_mut_ptr().add(c0 + 8 * c), *oc);
            }
        }
    }
}

/// [`vector::kv_rows`] for AVX2: each group read back in registers as [`Load8::load8`] does.
/// Widths that are not a multiple of 32, and f32 rows, run the definition.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn avx2_kv_rows_impl(rows: KvRows<'_>, first: usize, width: usize, out: &mut [f32]) {
    let n = out.len() / width.max(1);
    if n == 0 || !width.is_multiple_of(KV_GROUP) || !fits(&rows, first + n, width) {
        return vector::kv_rows(rows, first, width, out);
    }
    // SAFETY: the features are enabled here; fits() checked rows 0..first + n of `width`
    // columns; out holds n * width floats.
    unsafe {
        match stored(rows) {
            Stored::F16(r) => read_back(r, first, width, out),
            Stored::Q8(r) => read_back(r, first, width, out),
            Stored::Q4(r) => read_back(r, first, width, out),
        }
    }
}

/// # Safety
/// As [`Load8::load8`] for rows `first..first + out.len() / width` and columns `0..width`;
/// `width % 32 == 0`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn read_back<R: Load8>(r: R, first: usize, width: usize, out: &mut [f32]) {
    for (j, row) in out.chunks_exact_mut(width).enumerate() {
        for i0 in (0..width).step_by(KV_GROUP) {
            // SAFETY: as the caller guarantees; the row holds width floats.
            unsafe {
                let g = r.group(first + j, i0);
                for i in (i0..i0 + KV_GROUP).step_by(8) {
                    _mm256_storeu_ps(row.as_mut_ptr().add(i), r.load8(g, first + j, i));
                }
            }
        }
    }
}
