//! AVX2 kernels for nested 8-bit weights, bit-identical to [`super::super::reference`].
//!
//! The same functions make the `avx512vnni` table ([`TABLE_AVX512`]): their `VNNI` const
//! parameter swaps each `maddubs` (i16 lanes) and its widening `madd` for one `vpdpbusd` (i32
//! lanes; [`dpbusd`]), which gives the same exact integer sums, so every result stays
//! bit-identical.
//!
//! # Decode (`avx2_nested8_matvec`): planes as they are stored, activations permuted
//! The product is linear in the planes: `q_k = Σ_p w_p · plane_p` (view 8: `64·p0 + 32·p1 +
//! 16·p2 + p3`), so each plane is unpacked in its natural SIMD order (`(v >> s) & mask` over a
//! register) and multiplied (`maddubs`, plane values ≤ 15 so it never saturates) with a copy of
//! the activations permuted to that order, which [`avx2_quantize_acts`] writes once per token
//! into `acts.aux` ("part A"). A lower view reads and computes only its planes.
//!
//! The unit is a *superchunk* of 256 codes (8 subgroups of 32, each inside one group because
//! group sizes are multiples of 32). The plane registers are rearranged (a few dword shuffles
//! per superchunk) so that i32 lane `m` of every plane covers the same subgroup `PI[m]`; the
//! planes of the high nibble (`4·p0 + 2·p1 + p2`, planes 1 and 2 merged into 2-bit fields
//! first) then add up in i16 (a lane sums at most 16 codes × 15 × 127 = 30480), plane 3 in a
//! second i16 accumulator, and one `madd` per superchunk widens to i32. Group sums are exact
//! integers; each group's float term `d · (step · isum + offset · sum)` is computed with
//! separate multiplies and adds (no FMA), 8 groups of a row per register, then an 8×8 transpose
//! puts 8 rows in the lanes of one accumulator that adds the terms in group order, so the
//! result equals the reference bit for bit. Rows go in blocks of 8, whose codes are contiguous
//! in every plane: the block is read as one stream of superchunks that run across row ends
//! (576 columns: 8 rows are 18 superchunks), and part A holds one slot per starting column
//! (`lcm(columns, 256) / 256` slots: 9 for 576), so no row ends in a partly used superchunk.
//! Each superchunk's sums go straight to a small buffer of group sums (groups of 32, 64 and 128
//! are folded in registers; other multiples of 32 afterwards). Groups of 8 or 16 fall back to
//! the reference.
//!
//! # Prefill (`avx2_nested8_matmul`): codes unpacked once, tokens in lanes
//! With at least [`PREFILL_MIN_TOKENS`] tokens, the rows of the tile are unpacked once into
//! natural-order byte codes (view 8: high and low nibble separately, so `maddubs` never
//! saturates), and an int8 micro-kernel computes 4 rows (view 8: 2) × 16 tokens: the
//! activations are stored token-interleaved (`aux` "part B": 4 codes of each of 8 tokens per
//! 32-byte register), one broadcast dword of a row's codes meets 8 tokens in one `maddubs` (two
//! blocks of 8 per broadcast), and lane `t` of the accumulator is token `t`, so no horizontal
//! sums are needed. Group scales and sums of the 8 tokens are stored side by side ("part C") so
//! the float terms are lane-wise as well, again in the reference's order. Fewer tokens run the
//! decode kernel once per token (part A for each). The unpacked tile (rows × padded columns
//! bytes, twice for view 8) is allocated per call; decode allocates nothing.

use core::arch::x86_64::*;

use alloc::vec;

use super::super::acts::{quantize_block, quantize_reference, QActs};
use super::super::dispatch::{Kernels, Nested8MatmulFn, Nested8MatvecFn};
use super::super::{reference, vector, Nested8};
use crate::blocks::{self, GroupParams};

/// Pseudo-views of the decode functions below: the 2-, 3- and 4-bit views read from their
/// [`blocks::repack_top`] copies (held in `planes[3]` of the view handed to them) instead of
/// their planes: one `maddubs` per 32 codes (the planes need two at 3 and 4 bits), fields in
/// part A's order as they are stored, so no lane shuffles.
const V2T: u8 = 18;
const V3T: u8 = 19;
const V4T: u8 = 20;

/// The pseudo-view reading the copy of view `v`.
const fn copy_view(v: u8) -> u8 {
    v + 16
}

/// Whether `v` is one of the pseudo-views that read a copy.
const fn reads_copy(v: u8) -> bool {
    matches!(v, V2T | V3T | V4T)
}

/// The view a (pseudo-)view computes.
const fn view_bits(v: u8) -> u8 {
    if reads_copy(v) {
        v - 16
    } else {
        v
    }
}

/// Bits per code of what (pseudo-)view `v` reads in plane slot `p`.
const fn plane_bits(v: u8, p: usize) -> usize {
    if reads_copy(v) && p == 3 {
        view_bits(v) as usize
    } else {
        blocks::NESTED8_KERNEL_PLANES[p].bits as usize
    }
}

/// Whether (pseudo-)view `v` reads plane `p`.
const fn reads_plane(v: u8, p: usize) -> bool {
    match v {
        V2T | V3T | V4T => p == 3,
        2 => p == 0,
        3 => p <= 1,
        4 => p <= 2,
        _ => true,
    }
}

/// Codes per decode superchunk.
const SC: usize = 256;
/// Bytes of decode-order activations per superchunk: plane 0 order, planes 1/2 order, plane 3
/// order, 256 each.
const SC_AUX: usize = 3 * SC;
/// From this many tokens on, `matmul` uses the prefill micro-kernel (below it, the decode
/// kernel per token).
const PREFILL_MIN_TOKENS: usize = 4;
/// Tokens per prefill block (i32 lanes of a register).
const TOK: usize = 8;
/// Bytes per (token block, group) in part C: 8 scales `d` then 8 sums as f32.
const C_ENTRY: usize = 64;

/// Subgroup of the superchunk held by i32 lane `m` of every plane register.
const PI: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// Part A: `aux[i] = q[PERM_A[i]]` within each superchunk. Derived from the register layouts
/// in [`superchunk`]:
/// - plane 0, register `reg` (A'/B'), field `k`: byte `4m + c` is code `32·PI[m] + 16·reg + 4c + k`;
/// - planes 1/2 merged, register `reg` (M/N), field `k`: code `32·PI[m] + 8c + 2k + reg`;
/// - plane 3, dword row `j`, nibble `nib`: code `32·PI[m] + 8j + 2c + nib`.
#[cfg(test)]
const PERM_A: [u8; SC_AUX] = perm_a();

#[cfg(test)]
const fn perm_a() -> [u8; SC_AUX] {
    let mut p = [0u8; SC_AUX];
    let mut m = 0;
    while m < 8 {
        let base = 32 * PI[m];
        let mut c = 0;
        while c < 4 {
            let mut k = 0;
            while k < 4 {
                let mut reg = 0;
                while reg < 2 {
                    p[(reg * 4 + k) * 32 + 4 * m + c] = (base + 16 * reg + 4 * c + k) as u8;
                    p[SC + (reg * 4 + k) * 32 + 4 * m + c] = (base + 8 * c + 2 * k + reg) as u8;
                    p[2 * SC + (k * 2 + reg) * 32 + 4 * m + c] = (base + 8 * k + 2 * c + reg) as u8;
                    reg += 1;
                }
                k += 1;
            }
            c += 1;
        }
        m += 1;
    }
    p
}

/// Part A slots per token: `lcm(padded_cols, 256) / 256`. A decode block reads its rows'
/// codes as one stream of superchunks that cross row ends, so superchunk `j` of a row (or of a
/// run of rows) starts at column `256 · j mod padded_cols`; slot `j` holds the activations of
/// columns `(256 · j + i) mod padded_cols`, `i < 256`, and the slots repeat after the last.
/// (576 columns: 9 slots, one per superchunk of 4 rows; 1536: 6.)
fn part_a_slots(padded_cols: usize) -> usize {
    padded_cols >> padded_cols.trailing_zeros().min(SC.trailing_zeros())
}

/// Part A bytes per token.
fn part_a_len(padded_cols: usize) -> usize {
    part_a_slots(padded_cols) * SC_AUX
}

/// Where each part of `acts.aux` lives (a function of `n`, `padded_cols` and `block` only).
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Part A bytes per token.
    a_len: usize,
    /// Tokens with a part A (all when below [`PREFILL_MIN_TOKENS`], else token 0 only).
    a_tokens: usize,
    /// Part B: (token blocks, padded_cols / 4, 8 tokens, 4 codes).
    b_off: usize,
    /// Part C: (token blocks, blocks, [`C_ENTRY`] bytes).
    c_off: usize,
    total: usize,
}

impl Layout {
    fn new(n: usize, padded_cols: usize, block: usize) -> Self {
        let a_len = part_a_len(padded_cols);
        let prefill = n >= PREFILL_MIN_TOKENS;
        let a_tokens = if prefill { 1 } else { n };
        let tbs = if prefill { n.div_ceil(TOK) } else { 0 };
        let b_off = a_tokens * a_len;
        let c_off = b_off + tbs * TOK * padded_cols;
        let total = c_off + tbs * (padded_cols / block.max(1)) * C_ENTRY;
        Layout { a_len, a_tokens, b_off, c_off, total }
    }
}

/// Whether the fast kernels serve `w` with `acts` (else the reference does): groups of a
/// multiple of 32, activations from this table's `quantize_acts` for this matrix.
fn usable(w: &Nested8<'_>, acts: &QActs, view: u8) -> bool {
    w.group_size.is_multiple_of(32)
        && w.view_bits == view
        && acts.block == w.group_size
        && acts.padded_cols == w.row_stride
        && w.row_stride / 32 <= MAX_SUB
        && acts.n > 0
        && acts.aux.len() >= Layout::new(acts.n, acts.padded_cols, acts.block).total
        // Part A holds only the copies' order: the planes' kernels cannot run on it.
        && (acts.n >= PREFILL_MIN_TOKENS || !acts.copy_order_only || (matches!(view, 2..=4) && w.repacked.is_some()))
        // The 8-bit kernels read the nibble plane (`Nested8::kernel_form`).
        && (view != 8 || w.low.is_some())
}

/// Panics unless rows `first..first + rows` lie inside every plane the view reads and inside
/// `params` (so every load below is in bounds).
fn check_bounds(w: &Nested8<'_>, first: usize, rows: usize) {
    let codes = (first + rows) * w.row_stride;
    let n_planes = blocks::nested8_planes_for_view(w.view_bits).unwrap_or(6).min(4);
    for (p, spec) in w.planes[..n_planes].iter().zip(blocks::NESTED8_KERNEL_PLANES) {
        assert!(p.len() * 8 >= codes * spec.bits as usize, "plane too short for the rows asked");
    }
    assert!(w.params.len() >= codes / w.group_size, "group params too short for the rows asked");
}

// ---------------------------------------------------------------------------------------------
// Activation quantization
// ---------------------------------------------------------------------------------------------

/// Quantize one full block of `x.len()` values (a multiple of 32) into `q`; returns `(d, sum)`,
/// bit-identical to [`quantize_block`]: the same `amax` (max is exact in any order), the same
/// scalar `d` and `id`, and `cvtps2dq` rounds half to even like the reference.
///
/// # Safety
/// The CPU supports AVX2; `q.len() >= x.len()`, `x.len() % 32 == 0`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_quantize_block(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    debug_assert!(x.len().is_multiple_of(32) && q.len() >= x.len());
    let xp = x.as_ptr();
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for i in (0..x.len()).step_by(8) {
        // SAFETY: i + 8 <= x.len().
        let a = _mm256_andnot_ps(sign, unsafe { _mm256_loadu_ps(xp.add(i)) });
        // maxps returns its second operand when one is NaN: NaNs are skipped, as f32::max does.
        m = _mm256_max_ps(a, m);
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps::<1>(m2, m2)));
    let (d, id) = if amax > 0.0 { (amax / 127.0, 127.0 / amax) } else { (0.0, 0.0) };
    let idv = _mm256_set1_ps(id);
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let mut s32 = _mm256_setzero_si256();
    for i in (0..x.len()).step_by(32) {
        // SAFETY: i + 32 <= x.len() <= q.len().
        unsafe {
            let a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xp.add(i)), idv));
            let b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xp.add(i + 8)), idv));
            let c = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xp.add(i + 16)), idv));
            let e = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xp.add(i + 24)), idv));
            s32 = _mm256_add_epi32(s32, _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, e)));
            // packs interleave 128-bit lanes: dwords come out as a0 b0 c0 e0 a1 b1 c1 e1.
            let p = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, e));
            _mm256_storeu_si256(q.as_mut_ptr().add(i) as *mut __m256i, _mm256_permutevar8x32_epi32(p, order));
        }
    }
    (d, hsum_epi32(s32))
}

/// Sum of the eight i32 lanes.
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// 8×8 transpose of i32: lane `j` of output `d` is lane `d` of input `j`.
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn transpose8x8(r: [__m256i; 8]) -> [__m256i; 8] {
    let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
    let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
    let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
    let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
    let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    let u0 = _mm256_unpacklo_epi64(t0, t2);
    let u1 = _mm256_unpackhi_epi64(t0, t2);
    let u2 = _mm256_unpacklo_epi64(t1, t3);
    let u3 = _mm256_unpackhi_epi64(t1, t3);
    let u4 = _mm256_unpacklo_epi64(t4, t6);
    let u5 = _mm256_unpackhi_epi64(t4, t6);
    let u6 = _mm256_unpacklo_epi64(t5, t7);
    let u7 = _mm256_unpackhi_epi64(t5, t7);
    [
        _mm256_permute2x128_si256::<0x20>(u0, u4),
        _mm256_permute2x128_si256::<0x20>(u1, u5),
        _mm256_permute2x128_si256::<0x20>(u2, u6),
        _mm256_permute2x128_si256::<0x20>(u3, u7),
        _mm256_permute2x128_si256::<0x31>(u0, u4),
        _mm256_permute2x128_si256::<0x31>(u1, u5),
        _mm256_permute2x128_si256::<0x31>(u2, u6),
        _mm256_permute2x128_si256::<0x31>(u3, u7),
    ]
}

/// In-lane byte shuffles that gather, for each part-A order, the 4 bytes one dword of a
/// subgroup contributes (see [`avx2_permute_superchunk`]); 0x80 zeroes.
const IDX_P0: [u8; 32] = idx_p0();
const IDX_P3: [u8; 32] = idx_p3();
const IDX_P12: [[u8; 32]; 2] = idx_p12();

/// Plane 0: dword `4·reg + k` (reg = 128-bit half) takes subgroup bytes `16·reg + 4c + k`.
const fn idx_p0() -> [u8; 32] {
    let mut p = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        let (k, c) = ((i % 16) / 4, i % 4);
        p[i] = (4 * c + k) as u8;
        i += 1;
    }
    p
}

/// Plane 3: dword `2j + nib` takes subgroup bytes `8j + 2c + nib` (j = 0, 1 low half; 2, 3 high).
const fn idx_p3() -> [u8; 32] {
    let mut p = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        let (dd, c) = ((i % 16) / 4, i % 4);
        p[i] = (8 * (dd / 2) + 2 * c + dd % 2) as u8;
        i += 1;
    }
    p
}

/// Planes 1/2: dword `4·reg + k` takes subgroup bytes `8c + 2k + reg`, which span both halves:
/// `[0]` applies to the subgroup, `[1]` to it with halves swapped, the results are or-ed.
const fn idx_p12() -> [[u8; 32]; 2] {
    let mut p = [[0x80u8; 32]; 2];
    let mut i = 0;
    while i < 32 {
        let (reg, k, c) = (i / 16, (i % 16) / 4, i % 4);
        let from_low_half = c < 2;
        let at = (8 * (c % 2) + 2 * k + reg) as u8;
        // Output half `reg` reads its own half of the subgroup when that is where the byte is
        // (low half: c < 2 and reg 0; high half: c >= 2 and reg 1), else the swapped copy.
        if from_low_half == (reg == 0) {
            p[0][i] = at;
        } else {
            p[1][i] = at;
        }
        i += 1;
    }
    p
}

/// Part A of one superchunk: `src` 256 codes → `dst` 768 bytes in the three orders of
/// [`PERM_A`] (only the orders in `parts`: 2 alone is what the copies' kernels read). Each order
/// is an in-lane byte shuffle of every subgroup followed by an 8×8 dword transpose (lane `m` of
/// output register `d` = dword `d` of subgroup `PI[m]`).
///
/// # Safety
/// The CPU supports AVX2; `src` readable for 256 bytes, `dst` writable for 768.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_permute_superchunk(src: *const i8, dst: *mut i8, parts: core::ops::Range<usize>) {
    // SAFETY (whole body): loads at src + 32·l (l < 8), stores at dst + 256·part + 32·d
    // (part < 3, d < 8), inside the ranges the caller guarantees; the index tables are 32 bytes.
    unsafe {
        let mut y = [_mm256_setzero_si256(); 8];
        for (l, yl) in y.iter_mut().enumerate() {
            *yl = _mm256_loadu_si256(src.add(32 * l) as *const __m256i);
        }
        let i0 = _mm256_loadu_si256(IDX_P0.as_ptr() as *const __m256i);
        let i3 = _mm256_loadu_si256(IDX_P3.as_ptr() as *const __m256i);
        let ia = _mm256_loadu_si256(IDX_P12[0].as_ptr() as *const __m256i);
        let ib = _mm256_loadu_si256(IDX_P12[1].as_ptr() as *const __m256i);
        for part in parts {
            let mut t = [_mm256_setzero_si256(); 8];
            for (m, tm) in t.iter_mut().enumerate() {
                let yl = y[PI[m]];
                *tm = match part {
                    0 => _mm256_shuffle_epi8(yl, i0),
                    1 => _mm256_or_si256(
                        _mm256_shuffle_epi8(yl, ia),
                        _mm256_shuffle_epi8(_mm256_permute2x128_si256::<0x01>(yl, yl), ib),
                    ),
                    _ => _mm256_shuffle_epi8(yl, i3),
                };
            }
            let o = transpose8x8(t);
            for (dd, od) in o.iter().enumerate() {
                _mm256_storeu_si256(dst.add(part * SC + 32 * dd) as *mut __m256i, *od);
            }
        }
    }
}

/// Part A of one token: the `q` of `padded_cols` values (a multiple of 32), repeated, in
/// slots of 256 (see [`part_a_slots`]), each slot permuted by [`avx2_permute_superchunk`]
/// (with `copy_order_only`, only plane 3's order: see [`QActs::copy_order_only`]).
///
/// # Safety
/// The CPU supports AVX2; `out.len() == part_a_len(q.len())`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_fill_part_a(q: &[i8], out: &mut [i8], copy_order_only: bool) {
    let pc = q.len();
    assert!(out.len() == part_a_len(pc));
    let mut chunk = [0i8; SC];
    for (s, dst) in out.chunks_exact_mut(SC_AUX).enumerate() {
        let start = s * SC % pc;
        let src = if start + SC <= pc {
            &q[start..start + SC]
        } else {
            // The slot wraps past the row's end: the rest of the row, then the row again.
            let head = pc - start;
            chunk[..head].copy_from_slice(&q[start..]);
            let mut k = head;
            while k < SC {
                let n = (SC - k).min(pc);
                chunk[k..k + n].copy_from_slice(&q[..n]);
                k += n;
            }
            &chunk[..]
        };
        // SAFETY: src is 256 bytes, dst 768 (chunks_exact_mut).
        unsafe { avx2_permute_superchunk(src.as_ptr(), dst.as_mut_ptr(), if copy_order_only { 2..3 } else { 0..3 }) };
    }
}

/// Scalar statement of part A, kept as the specification of the SIMD permutation.
#[cfg(test)]
fn fill_part_a_scalar(q: &[i8], out: &mut [i8]) {
    let pc = q.len();
    for (s, dst) in out.chunks_exact_mut(SC_AUX).enumerate() {
        for (d, &i) in dst.iter_mut().zip(PERM_A.iter()) {
            *d = q[(s * SC + i as usize) % pc];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_part_a_matches_permutation() {
        if !super::super::avx2_available() {
            eprintln!("!!!!!!!! avx2 not available on this CPU: part A permutation NOT tested !!!!!!!!");
            return;
        }
        for pc in [32usize, 64, 224, 256, 576, 1536, 1600] {
            let q: Vec<i8> = (0..pc).map(|i| (i * 7 % 251) as i8).collect();
            let mut want = vec![0i8; part_a_len(pc)];
            let mut got = vec![1i8; part_a_len(pc)];
            fill_part_a_scalar(&q, &mut want);
            // SAFETY: AVX2 reported above; got has part_a_len(pc) bytes.
            unsafe { avx2_fill_part_a(&q, &mut got, false) };
            assert_eq!(got, want, "padded_cols {pc}");
            // Only the copies' order (plane 3's, the last 256 bytes of each slot).
            let mut only = vec![1i8; part_a_len(pc)];
            // SAFETY: as above.
            unsafe { avx2_fill_part_a(&q, &mut only, true) };
            for (s, (o, w)) in only.chunks(SC_AUX).zip(want.chunks(SC_AUX)).enumerate() {
                assert_eq!(o[2 * SC..], w[2 * SC..], "padded_cols {pc} slot {s}, copies' order only");
            }
        }
    }
}

/// Part B of token block `tb`: 4 codes of each of 8 tokens per 32 bytes (tokens past `n` zero).
///
/// # Safety
/// The CPU supports AVX2; `q` holds `n * padded_cols` values, `padded_cols % 32 == 0`,
/// `out.len() == TOK * padded_cols`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_fill_part_b(q: &[i8], n: usize, padded_cols: usize, tb: usize, out: &mut [i8]) {
    assert!(out.len() == TOK * padded_cols && q.len() >= n * padded_cols && padded_cols.is_multiple_of(32));
    for k0 in (0..padded_cols).step_by(32) {
        let mut r = [_mm256_setzero_si256(); 8];
        for (j, rj) in r.iter_mut().enumerate() {
            let t = tb * TOK + j;
            if t < n {
                // SAFETY: t < n and k0 + 32 <= padded_cols, so the 32 bytes lie inside q.
                *rj = unsafe { _mm256_loadu_si256(q.as_ptr().add(t * padded_cols + k0) as *const __m256i) };
            }
        }
        let o = transpose8x8(r);
        for (d, od) in o.iter().enumerate() {
            // SAFETY: (k0 / 4 + d) * 32 + 32 <= padded_cols * 8 = out.len().
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().add((k0 / 4 + d) * 32) as *mut __m256i, *od) };
        }
    }
}

/// `quantize_acts` of the table: the reference contract (natural `q`, `d`, `sum`, bit-identical)
/// plus the permuted copies in `aux` (see the module docs and [`Layout`]).
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_quantize_acts(x: &[f32], n: usize, cols: usize, block: usize, acts: &mut QActs) {
    if !block.is_multiple_of(32) {
        // Kernels fall back to the reference for such groups; no aux needed.
        return quantize_reference(x, n, cols, block, acts);
    }
    assert!(x.len() >= n * cols);
    acts.reset(n, cols, block);
    let blocks = acts.blocks();
    let pc = acts.padded_cols;
    for t in 0..n {
        let xr = &x[t * cols..(t + 1) * cols];
        for b in 0..blocks {
            let lo = b * block;
            let q = &mut acts.q[t * pc + lo..t * pc + lo + block];
            let (d, s) = if lo + block <= cols {
                // SAFETY: AVX2 is enabled here; the block is whole (block % 32 == 0).
                unsafe { avx2_quantize_block(&xr[lo..lo + block], q) }
            } else {
                quantize_block(&xr[lo.min(cols)..cols], q)
            };
            acts.d[t * blocks + b] = d;
            acts.sum[t * blocks + b] = s;
        }
    }
    let lay = Layout::new(n, pc, block);
    if acts.aux.len() < lay.total {
        acts.aux.resize(lay.total, 0);
    }
    for t in 0..lay.a_tokens {
        // SAFETY: AVX2 is enabled here; the slice is part_a_len(pc) bytes.
        unsafe {
            avx2_fill_part_a(&acts.q[t * pc..(t + 1) * pc], &mut acts.aux[t * lay.a_len..(t + 1) * lay.a_len], acts.copy_order_only)
        };
    }
    if n >= PREFILL_MIN_TOKENS {
        for tb in 0..n.div_ceil(TOK) {
            let out = &mut acts.aux[lay.b_off + tb * TOK * pc..lay.b_off + (tb + 1) * TOK * pc];
            // SAFETY: AVX2 is enabled here; q holds n * pc values, pc % 32 == 0.
            unsafe { avx2_fill_part_b(&acts.q, n, pc, tb, out) };
            for g in 0..blocks {
                let e = lay.c_off + (tb * blocks + g) * C_ENTRY;
                for j in 0..TOK {
                    let t = tb * TOK + j;
                    let (d, s) = if t < n { (acts.d[t * blocks + g], acts.sum[t * blocks + g] as f32) } else { (0.0, 0.0) };
                    let dst = &mut acts.aux[e + 4 * j..e + 4 * j + 4];
                    dst.copy_from_slice(&bytemuck::cast::<f32, [i8; 4]>(d));
                    let dst = &mut acts.aux[e + 32 + 4 * j..e + 32 + 4 * j + 4];
                    dst.copy_from_slice(&bytemuck::cast::<f32, [i8; 4]>(s));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decode
// ---------------------------------------------------------------------------------------------

/// The 8 registers of one superchunk's planes, loaded from `p[i]` (the superchunk's bytes in
/// plane `i`: 64, 32, 32, 128 bytes; only the planes of view `V` are read): plane 0 in
/// registers 0-1, plane 1 in 2, plane 2 in 3, plane 3 in 4-7 (unread ones zero).
///
/// # Safety
/// The CPU supports AVX2; the pointers of the view's planes are readable for those lengths.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_superchunk<const V: u8>(p: [*const u8; 4]) -> [__m256i; 8] {
    let mut r = [_mm256_setzero_si256(); 8];
    // SAFETY: inside the ranges the caller guarantees.
    unsafe {
        if reads_plane(V, 0) {
            r[0] = _mm256_loadu_si256(p[0] as *const __m256i);
            r[1] = _mm256_loadu_si256(p[0].add(32) as *const __m256i);
        }
        if reads_plane(V, 1) {
            r[2] = _mm256_loadu_si256(p[1] as *const __m256i);
        }
        if reads_plane(V, 2) {
            r[3] = _mm256_loadu_si256(p[2] as *const __m256i);
        }
        if reads_plane(V, 3) {
            for (i, ri) in r[4..4 + SC * plane_bits(V, 3) / 256].iter_mut().enumerate() {
                *ri = _mm256_loadu_si256(p[3].add(32 * i) as *const __m256i);
            }
        }
    }
    r
}

/// `$acc += ` the products of `$u`'s unsigned bytes with register `$r` of part A at `$a`:
/// without VNNI `maddubs` into i16 lanes (pairs of bytes), with VNNI `vpdpbusd` into i32 lanes
/// (fours of bytes; [`widen`] makes both i32 sums of the same four bytes).
macro_rules! mad {
    ($vnni:expr, $acc:ident, $u:expr, $a:ident, $r:expr) => {{
        let x = _mm256_loadu_si256($a.add($r * 32) as *const __m256i);
        $acc = if $vnni { dpbusd($acc, $u, x) } else { _mm256_add_epi16($acc, _mm256_maddubs_epi16($u, x)) }
    }};
}

/// `acc + Σ u·x` over each i32 lane's four bytes (`u` unsigned, `x` signed), without
/// saturation: AVX-512 VNNI's `vpdpbusd` on 256 bits (EVEX, needs AVX512VL). Written as `asm!`
/// so that the kernels around it keep one definition for both tables: an intrinsic would need
/// every enclosing function compiled with the AVX-512 features.
///
/// # Safety
/// The CPU supports AVX512_VNNI and AVX512VL (only the `avx512vnni` table passes `VNNI = true`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dpbusd(acc: __m256i, u: __m256i, x: __m256i) -> __m256i {
    let mut acc = acc;
    // SAFETY: the caller guarantees the CPU has the instruction; it touches registers only.
    unsafe {
        core::arch::asm!(
            "vpdpbusd {acc}, {u}, {x}",
            acc = inout(ymm_reg) acc,
            u = in(ymm_reg) u,
            x = in(ymm_reg) x,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// i32 lane sums of what [`mad!`] accumulated into `h0` and `h1`, times `mul` (1 or 16).
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn widen<const VNNI: bool>(h0: __m256i, h1: __m256i, mul: i16) -> __m256i {
    if VNNI {
        let s = _mm256_add_epi32(h0, h1);
        if mul == 16 { _mm256_slli_epi32::<4>(s) } else { s }
    } else {
        _mm256_madd_epi16(_mm256_add_epi16(h0, h1), _mm256_set1_epi16(mul))
    }
}

/// `Σ q_V · x` over one superchunk of one row, as 8 i32 lanes (lane `m`: subgroup `PI[m]`),
/// from its plane registers (see [`load_superchunk`]) and `a`, its part A (768 bytes).
///
/// # Safety
/// The CPU supports AVX2; `a` readable for 768 bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn superchunk<const V: u8, const VNNI: bool>(regs: [__m256i; 8], a: *const i8) -> __m256i {
    // SAFETY (whole body): the loads read part A registers 0..24 (768 bytes).
    unsafe {
        // Plane 0 (2 bits/code): 64 bytes, dword j = codes 16j..16j+15; A' takes the first
        // dword of each subgroup, B' the second, both in lane order PI.
        if reads_copy(V) {
            return copy_dot::<V, VNNI>(regs, a);
        }
        let spread = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let a0 = _mm256_permutevar8x32_epi32(regs[0], spread);
        let b0 = _mm256_permutevar8x32_epi32(regs[1], spread);
        let ra = _mm256_unpacklo_epi64(a0, b0);
        let rb = _mm256_unpackhi_epi64(a0, b0);
        let mut h0 = _mm256_setzero_si256();
        let mut h1 = _mm256_setzero_si256();
        // Plane 0 enters with weight 1 (view 2), 2 (view 3) or 4 (views 4, 8): the field is
        // shifted to sit under the mask 3, 6 or 12.
        if V == 2 {
            let m = _mm256_set1_epi8(3);
            mad!(VNNI, h0, _mm256_and_si256(ra, m), a, 0);
            mad!(VNNI, h1, _mm256_and_si256(_mm256_srli_epi16::<2>(ra), m), a, 1);
            mad!(VNNI, h0, _mm256_and_si256(_mm256_srli_epi16::<4>(ra), m), a, 2);
            mad!(VNNI, h1, _mm256_and_si256(_mm256_srli_epi16::<6>(ra), m), a, 3);
            mad!(VNNI, h0, _mm256_and_si256(rb, m), a, 4);
            mad!(VNNI, h1, _mm256_and_si256(_mm256_srli_epi16::<2>(rb), m), a, 5);
            mad!(VNNI, h0, _mm256_and_si256(_mm256_srli_epi16::<4>(rb), m), a, 6);
            mad!(VNNI, h1, _mm256_and_si256(_mm256_srli_epi16::<6>(rb), m), a, 7);
        } else if V == 3 {
            let m = _mm256_set1_epi8(6);
            mad!(VNNI, h0, _mm256_and_si256(_mm256_slli_epi16::<1>(ra), m), a, 0);
            mad!(VNNI, h1, _mm256_and_si256(_mm256_srli_epi16::<1>(ra), m), a, 1);
            mad!(VNNI, h0, _mm256_and_si256(_mm256_srli_epi16::<3>(ra), m), a, 2);
            mad!(VNNI, h1, _mm256_and_si256(_mm256_srli_epi16::<5>(ra), m), a, 3);
            mad!(VNNI, h0, _mm256_and_si256(_mm256_slli_epi16::<1>(rb), m), a, 4);
            mad!(VNNI, h1, _mm256_and_si256(_mm256_srli_epi16::<1>(rb), m), a, 5);
            mad!(VNNI, h0, _mm256_and_si256(_mm256_srli_epi16::<3>(rb), m), a, 6);
            mad!(VNNI, h1, _mm256_and_si256(_mm256_srli_epi16::<5>(rb), m), a, 7);
        } else {
            let m = _mm256_set1_epi8(12);
            mad!(VNNI, h0, _mm256_and_si256(_mm256_slli_epi16::<2>(ra), m), a, 0);
            mad!(VNNI, h1, _mm256_and_si256(ra, m), a, 1);
            mad!(VNNI, h0, _mm256_and_si256(_mm256_srli_epi16::<2>(ra), m), a, 2);
            mad!(VNNI, h1, _mm256_and_si256(_mm256_srli_epi16::<4>(ra), m), a, 3);
            mad!(VNNI, h0, _mm256_and_si256(_mm256_slli_epi16::<2>(rb), m), a, 4);
            mad!(VNNI, h1, _mm256_and_si256(rb, m), a, 5);
            mad!(VNNI, h0, _mm256_and_si256(_mm256_srli_epi16::<2>(rb), m), a, 6);
            mad!(VNNI, h1, _mm256_and_si256(_mm256_srli_epi16::<4>(rb), m), a, 7);
        }
        if V >= 3 {
            // Planes 1 and 2 (1 bit/code): dword l = subgroup l; reorder to lanes PI.
            let to_pi = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
            let q1 = _mm256_permutevar8x32_epi32(regs[2], to_pi);
            let one = _mm256_set1_epi8(1);
            let a12 = SC;
            if V == 3 {
                // Bit b = 2k + reg of byte 4m + c is code 32·PI[m] + 8c + b: register reg*4 + k.
                mad!(VNNI, h0, _mm256_and_si256(q1, one), a, a12 / 32);
                mad!(VNNI, h1, _mm256_and_si256(_mm256_srli_epi16::<2>(q1), one), a, a12 / 32 + 1);
                mad!(VNNI, h0, _mm256_and_si256(_mm256_srli_epi16::<4>(q1), one), a, a12 / 32 + 2);
                mad!(VNNI, h1, _mm256_and_si256(_mm256_srli_epi16::<6>(q1), one), a, a12 / 32 + 3);
                mad!(VNNI, h0, _mm256_and_si256(_mm256_srli_epi16::<1>(q1), one), a, a12 / 32 + 4);
                mad!(VNNI, h1, _mm256_and_si256(_mm256_srli_epi16::<3>(q1), one), a, a12 / 32 + 5);
                mad!(VNNI, h0, _mm256_and_si256(_mm256_srli_epi16::<5>(q1), one), a, a12 / 32 + 6);
                mad!(VNNI, h1, _mm256_and_si256(_mm256_srli_epi16::<7>(q1), one), a, a12 / 32 + 7);
            } else {
                // Merge into 2-bit fields 2·p1 + p2: M holds even bits (codes 8b + 2k),
                // N odd bits (codes 8b + 2k + 1).
                let q2 = _mm256_permutevar8x32_epi32(regs[3], to_pi);
                let odd = _mm256_set1_epi8(0xAAu8 as i8);
                let even = _mm256_set1_epi8(0x55);
                let mm = _mm256_or_si256(
                    _mm256_and_si256(_mm256_slli_epi16::<1>(q1), odd),
                    _mm256_and_si256(q2, even),
                );
                let nn = _mm256_or_si256(
                    _mm256_and_si256(q1, odd),
                    _mm256_and_si256(_mm256_srli_epi16::<1>(q2), even),
                );
                let m = _mm256_set1_epi8(3);
                mad!(VNNI, h0, _mm256_and_si256(mm, m), a, a12 / 32);
                mad!(VNNI, h1, _mm256_and_si256(_mm256_srli_epi16::<2>(mm), m), a, a12 / 32 + 1);
                mad!(VNNI, h0, _mm256_and_si256(_mm256_srli_epi16::<4>(mm), m), a, a12 / 32 + 2);
                mad!(VNNI, h1, _mm256_and_si256(_mm256_srli_epi16::<6>(mm), m), a, a12 / 32 + 3);
                mad!(VNNI, h0, _mm256_and_si256(nn, m), a, a12 / 32 + 4);
                mad!(VNNI, h1, _mm256_and_si256(_mm256_srli_epi16::<2>(nn), m), a, a12 / 32 + 5);
                mad!(VNNI, h0, _mm256_and_si256(_mm256_srli_epi16::<4>(nn), m), a, a12 / 32 + 6);
                mad!(VNNI, h1, _mm256_and_si256(_mm256_srli_epi16::<6>(nn), m), a, a12 / 32 + 7);
            }
        }
        if V != 8 {
            return widen::<VNNI>(h0, h1, 1);
        }
        _mm256_add_epi32(widen::<VNNI>(h0, h1, 16), plane3_dot::<VNNI>(regs, a))
    }
}

/// `Σ p3 · x` over one superchunk, as 8 i32 lanes (lane `m`: subgroup `PI[m]`), from plane 3's
/// registers (`regs[4..8]`) and part A's plane-3 order.
///
/// # Safety
/// The CPU supports AVX2; `a` readable for 768 bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn plane3_dot<const VNNI: bool>(regs: [__m256i; 8], a: *const i8) -> __m256i {
    // SAFETY (whole body): the loads read part A registers 16..24 (inside 768 bytes).
    unsafe {
        // Plane 3 (4 bits/code): 4 registers of 2 subgroups each; a 4×4 dword transpose in
        // each 128-bit half gives T_j, lane m = dword j of subgroup PI[m].
        let [r0, r1, r2, r3] = [regs[4], regs[5], regs[6], regs[7]];
        let t0 = _mm256_unpacklo_epi32(r0, r1);
        let t1 = _mm256_unpackhi_epi32(r0, r1);
        let t2 = _mm256_unpacklo_epi32(r2, r3);
        let t3 = _mm256_unpackhi_epi32(r2, r3);
        let tj = [
            _mm256_unpacklo_epi64(t0, t2),
            _mm256_unpackhi_epi64(t0, t2),
            _mm256_unpacklo_epi64(t1, t3),
            _mm256_unpackhi_epi64(t1, t3),
        ];
        let nib = _mm256_set1_epi8(0x0F);
        let mut l0 = _mm256_setzero_si256();
        let mut l1 = _mm256_setzero_si256();
        let a3 = 2 * SC / 32;
        mad!(VNNI, l0, _mm256_and_si256(tj[0], nib), a, a3);
        mad!(VNNI, l1, _mm256_and_si256(_mm256_srli_epi16::<4>(tj[0]), nib), a, a3 + 1);
        mad!(VNNI, l0, _mm256_and_si256(tj[1], nib), a, a3 + 2);
        mad!(VNNI, l1, _mm256_and_si256(_mm256_srli_epi16::<4>(tj[1]), nib), a, a3 + 3);
        mad!(VNNI, l0, _mm256_and_si256(tj[2], nib), a, a3 + 4);
        mad!(VNNI, l1, _mm256_and_si256(_mm256_srli_epi16::<4>(tj[2]), nib), a, a3 + 5);
        mad!(VNNI, l0, _mm256_and_si256(tj[3], nib), a, a3 + 6);
        mad!(VNNI, l1, _mm256_and_si256(_mm256_srli_epi16::<4>(tj[3]), nib), a, a3 + 7);
        widen::<VNNI>(l0, l1, 1)
    }
}

/// The 8 fields of a [`blocks::repack_top`] run of `$bits` (2, 3 or 4) bits per code from its
/// words `$a..$d`, with the given vector operations (one definition for [`copy_fields`] on 256
/// bits and [`copy_fields512`] on two runs side by side).
macro_rules! run_fields {
    ($bits:expr, [$a:ident, $b:ident, $c:ident, $d:ident], $and:ident, $or:ident, $srli:ident, $set1:ident) => {
        match $bits {
            2 => {
                let m = $set1(3);
                [
                    $and($a, m),
                    $and($srli::<2>($a), m),
                    $and($srli::<4>($a), m),
                    $and($srli::<6>($a), m),
                    $and($b, m),
                    $and($srli::<2>($b), m),
                    $and($srli::<4>($b), m),
                    $and($srli::<6>($b), m),
                ]
            }
            3 => {
                let (m7, m3, m4) = ($set1(7), $set1(3), $set1(4));
                [
                    $and($a, m7),
                    $and($srli::<3>($a), m7),
                    $and($b, m7),
                    $and($srli::<3>($b), m7),
                    $and($c, m7),
                    $and($srli::<3>($c), m7),
                    $or($and($srli::<6>($a), m3), $and($srli::<4>($c), m4)),
                    $or($and($srli::<6>($b), m3), $and($srli::<5>($c), m4)),
                ]
            }
            _ => {
                let m = $set1(15);
                [
                    $and($a, m),
                    $and($srli::<4>($a), m),
                    $and($b, m),
                    $and($srli::<4>($b), m),
                    $and($c, m),
                    $and($srli::<4>($c), m),
                    $and($d, m),
                    $and($srli::<4>($d), m),
                ]
            }
        }
    };
}

/// The 8 fields of a [`blocks::repack_top`] run of (pseudo-)view `V` (2, 3 or 4 bits) from its
/// words (`regs[4..4 + bits]`): byte `4m + c` of field `r` is code
/// `32·PI[m] + 8·(r / 2) + 2c + r mod 2`, part A's plane-3 order (register `r`). 16-bit shifts
/// move bits across bytes, but each mask keeps only bits of the byte's own.
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn copy_fields<const V: u8>(regs: [__m256i; 8]) -> [__m256i; 8] {
    let [_, _, _, _, a, b, c, d] = regs;
    run_fields!(view_bits(V), [a, b, c, d], _mm256_and_si256, _mm256_or_si256, _mm256_srli_epi16, _mm256_set1_epi8)
}

/// `Σ q · x` over one [`blocks::repack_top`] run of (pseudo-)view `V`, as 8 i32 lanes (lane
/// `m`: subgroup `PI[m]`), from its words (`regs[4..]`) and part A's plane-3 order.
///
/// # Safety
/// The CPU supports AVX2; `a` readable for 768 bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn copy_dot<const V: u8, const VNNI: bool>(regs: [__m256i; 8], a: *const i8) -> __m256i {
    // SAFETY (whole body): the loads read part A registers 16..24 (inside 768 bytes). Codes
    // are at most 15, so a maddubs lane is at most 2 · 15 · 128 and four of them fit in i16.
    unsafe {
        let f = copy_fields::<V>(regs);
        let mut l0 = _mm256_setzero_si256();
        let mut l1 = _mm256_setzero_si256();
        let a3 = 2 * SC / 32;
        mad!(VNNI, l0, f[0], a, a3);
        mad!(VNNI, l1, f[1], a, a3 + 1);
        mad!(VNNI, l0, f[2], a, a3 + 2);
        mad!(VNNI, l1, f[3], a, a3 + 3);
        mad!(VNNI, l0, f[4], a, a3 + 4);
        mad!(VNNI, l1, f[5], a, a3 + 5);
        mad!(VNNI, l0, f[6], a, a3 + 6);
        mad!(VNNI, l1, f[7], a, a3 + 7);
        widen::<VNNI>(l0, l1, 1)
    }
}

/// Scales and minima of 8 groups starting at `i` (zero past the end of `params`).
///
/// # Safety
/// The CPU supports AVX2 and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_params8(params: &[GroupParams], i: usize) -> (__m256, __m256) {
    let v = if i + 8 <= params.len() {
        // SAFETY: 8 params (32 bytes) from i lie inside the slice.
        unsafe { _mm256_loadu_si256(params.as_ptr().add(i) as *const __m256i) }
    } else {
        let mut buf = [<GroupParams as bytemuck::Zeroable>::zeroed(); 8];
        let have = params.len().saturating_sub(i).min(8);
        buf[..have].copy_from_slice(&params[i..i + have]);
        // SAFETY: buf is 32 bytes.
        unsafe { _mm256_loadu_si256(buf.as_ptr() as *const __m256i) }
    };
    // SAFETY: F16C is enabled here.
    unsafe { params_to_f32(v) }
}

/// Scales and minima of 8 groups given as u32 lanes `scale | min << 16`.
///
/// # Safety
/// The CPU supports AVX2 and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn params_to_f32(v: __m256i) -> (__m256, __m256) {
    // Pack to [s0..s3 m0..m3 | s4..s7 m4..m7] u16, then gather the halves.
    let s = _mm256_and_si256(v, _mm256_set1_epi32(0xFFFF));
    let m = _mm256_srli_epi32::<16>(v);
    let sm = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(s, m));
    (_mm256_cvtph_ps(_mm256_castsi256_si128(sm)), _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(sm)))
}

/// [`superchunk`] of the superchunk starting at flat code `c` (a multiple of 8 codes, so a
/// whole byte in every plane), with part A slot `a`.
///
/// # Safety
/// The CPU supports AVX2; the superchunk's bytes lie inside the view's planes; `a` readable
/// for 768 bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn superchunk_at<const V: u8, const VNNI: bool>(w: &Nested8<'_>, c: usize, a: *const i8) -> __m256i {
    let mut ptr = [core::ptr::null::<u8>(); 4];
    // SAFETY: the caller guarantees the superchunk's bytes are inside the planes.
    unsafe {
        if reads_plane(V, 0) {
            ptr[0] = w.planes[0].as_ptr().add(c / 4);
        }
        if reads_plane(V, 1) {
            ptr[1] = w.planes[1].as_ptr().add(c / 8);
        }
        if reads_plane(V, 2) {
            ptr[2] = w.planes[2].as_ptr().add(c / 8);
        }
        if reads_plane(V, 3) {
            ptr[3] = w.planes[3].as_ptr().add(c * plane_bits(V, 3) / 8);
        }
        superchunk::<V, VNNI>(load_superchunk::<V>(ptr), a)
    }
}

/// `d · (step · isum + offset · sum)` lane-wise, with `step = scale · step_mul` and `offset =
/// min + scale · centre`: each product and sum computed separately, as the reference does
/// (no FMA).
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn terms(scale: __m256, min: __m256, step_mul: __m256, centre: __m256, isum: __m256i, d: __m256, sum: __m256) -> __m256 {
    let step = _mm256_mul_ps(scale, step_mul);
    let offset = _mm256_add_ps(min, _mm256_mul_ps(scale, centre));
    _mm256_mul_ps(d, _mm256_add_ps(_mm256_mul_ps(step, _mm256_cvtepi32_ps(isum)), _mm256_mul_ps(offset, sum)))
}

/// Rows per decode block: lane `r` of the accumulator is row `r` of the block.
const RB: usize = 8;

/// Most subgroup sums one decode block holds (rows of up to 8192 columns go 8 to a block,
/// longer ones fewer, up to 65536 columns; see [`usable`]). The buffer is zeroed every call:
/// keep it small.
const MAX_SUB: usize = 2048;

/// `out[i] = ` the reference `nested8_row_dot(first + i)` for one token, given its part A
/// (`aux`), block scales `d` and sums `sum`.
///
/// Rows go in blocks of 8 whose codes are contiguous in every plane, so the block is read as
/// one stream of superchunks that run across row ends: superchunk `j` of a block meets part A
/// slot `j mod slots` (see [`part_a_len`]), and no row needs a tail of its own. Each
/// superchunk's 8 subgroup sums are stored in natural order; the sums of each group (whole
/// subgroups, never across rows) are then folded in place, and the float terms added per row
/// in group order: 8 groups of a row per register and an 8×8 transpose (lane = row), then the
/// groups past a multiple of 8 one register per group (lane = row).
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_rows_dot<const V: u8, const VNNI: bool>(w: &Nested8<'_>, aux: &[i8], d: &[f32], sum: &[i32], first: usize, out: &mut [f32]) {
    let g = w.group_size;
    let rs = w.row_stride;
    let gpr = rs / g;
    let per = g / 32;
    let slots = part_a_slots(rs);
    assert!(g.is_multiple_of(32) && rs.is_multiple_of(g) && rs / 32 <= MAX_SUB);
    assert!(aux.len() >= slots * SC_AUX && d.len() >= gpr && sum.len() >= gpr);
    check_bounds(w, first, out.len());
    let drop = 8 - view_bits(V) as u32;
    let step_mul = _mm256_set1_ps((1u32 << drop) as f32);
    let centre = _mm256_set1_ps(((1u32 << drop) - 1) as f32 * 0.5);
    // Bytes of one superchunk in each plane.
    let len = |p: usize| SC * plane_bits(V, p) / 8;
    let byte = |p: usize, code: usize| code * plane_bits(V, p) / 8;
    let block_rows = RB.min(MAX_SUB / (rs / 32));
    // The block's group sums: row r's group k at r · gpr + k (other group sizes than 32, 64
    // and 128: its subgroup sums first, folded after).
    // Not zeroed (8 KiB per call showed in profiles): every entry read below was written
    // first in the same block (the superchunks' stores cover `nsc · 256 / g >= nr · gpr` groups,
    // or `8 · nsc >= nr · rs / 32` subgroups before the fold, after the `lead` ones).
    let mut sub = core::mem::MaybeUninit::<[i32; MAX_SUB + 16]>::uninit();
    let sp = sub.as_mut_ptr() as *mut i32;
    // Sums stored per superchunk: groups (32, 64, 128 codes) or subgroups (other sizes).
    let unit = if matches!(per, 1 | 2 | 4) { g } else { 32 };
    let full = gpr / 8 * 8;
    for rb in (0..out.len()).step_by(block_rows) {
        let nr = block_rows.min(out.len() - rb);
        let row0 = first + rb;
        let c0 = row0 * rs;
        // The stream starts at the block's first code; a 3-bit copy's superchunks are its runs
        // of 256 codes, so there it starts at the run holding that code and the first `lead`
        // codes (earlier rows, whole groups) are summed but never read.
        let s0 = if reads_copy(V) { c0 / SC * SC } else { c0 };
        let lead = c0 - s0;
        // SAFETY: lead / unit < 256 / 32 = 8 entries, inside `sub`.
        let sb = unsafe { sp.add(lead / unit) };
        let nsc = (lead + nr * rs).div_ceil(SC);
        // The last superchunk may run past the rows asked (those lanes are never used) and, at
        // the end of the tensor, past a plane's end: it is then read from a zero-padded copy.
        let end_inside = (0..4).filter(|&p| reads_plane(V, p)).all(|p| byte(p, s0 + nsc * SC) <= w.planes[p].len());
        // Superchunk j starts at column (s0 + 256 j) mod rs: slot (s0 / 256 + j) mod slots when
        // s0 is a multiple of 256, slot j when it is a row start (column 0).
        let mut slot = if reads_copy(V) { (s0 / SC) % slots } else { 0 };
        if VNNI && reads_copy(V) && end_inside {
            // SAFETY: VNNI = true only in the avx512vnni table (the CPU has its features); the
            // stream's superchunks lie inside the copy (check_bounds, end_inside), the slots
            // inside aux, the sums inside `sub` (as below).
            unsafe { avx512_copy_stream::<V>(w, s0, nsc, slot, slots, aux, per, sp) };
        }
        for j in (0..nsc).filter(|_| !(VNNI && reads_copy(V) && end_inside)) {
            let c = s0 + j * SC;
            let a = aux.as_ptr().wrapping_add(slot * SC_AUX);
            let v = if j + 1 < nsc || end_inside {
                // SAFETY: the superchunk's bytes lie inside the planes (check_bounds covers the
                // block's rows, `end_inside` the last superchunk); slot < slots, inside aux.
                unsafe { superchunk_at::<V, VNNI>(w, c, a) }
            } else {
                let mut buf = [[0u8; SC / 2]; 4];
                let mut ptr = [core::ptr::null::<u8>(); 4];
                for (p, pp) in ptr.iter_mut().enumerate().filter(|(p, _)| reads_plane(V, *p)) {
                    let plane = w.planes[p];
                    // c is inside the block's rows, so off < plane.len() (check_bounds).
                    let off = byte(p, c);
                    let have = (plane.len() - off).min(len(p));
                    buf[p][..have].copy_from_slice(&plane[off..off + have]);
                    buf[p][have..len(p)].fill(0);
                    *pp = buf[p].as_ptr();
                }
                // SAFETY: each buf[p] holds LEN[p] bytes; slot < slots, inside aux.
                unsafe { superchunk::<V, VNNI>(load_superchunk::<V>(ptr), a) }
            };
            // SAFETY: (256 / unit) · (j + 1) <= 8 · nsc <= (lead + nr · rs) / 32 + 8 <= MAX_SUB + 16.
            unsafe { store_sums(per, v, sp, j) };
            slot = if slot + 1 == slots { 0 } else { slot + 1 };
        }
        // Other group sizes: the subgroup sums are stored in order; fold them in place (group k
        // reads subgroups k · per.., at or after k, never one already overwritten).
        if !matches!(per, 1 | 2 | 4) {
            for k in 0..nr * gpr {
                // SAFETY: lead / 32 + (k + 1) · per <= (lead + nr · rs) / 32 <= 8 · nsc entries,
                // all written above.
                unsafe { *sb.add(k) = (0..per).map(|i| *sb.add(k * per + i)).sum() };
            }
        }
        // Lane r of `acc` sums row row0 + r's group terms in group order.
        let mut acc = _mm256_setzero_ps();
        for g8 in (0..full).step_by(8) {
            // The token's block scales and sums of these 8 groups (the same for every row).
            let (dv, sv) = (&d[g8..g8 + 8], &sum[g8..g8 + 8]);
            // SAFETY: 8 values each.
            let (dv, sv) = unsafe {
                (_mm256_loadu_ps(dv.as_ptr()), _mm256_cvtepi32_ps(_mm256_loadu_si256(sv.as_ptr() as *const __m256i)))
            };
            let mut tv = [_mm256_setzero_si256(); RB];
            for (r, t) in tv.iter_mut().enumerate().take(nr) {
                // SAFETY: r · gpr + g8 + 8 <= nr · gpr, written above; F16C is enabled here.
                *t = unsafe {
                    let isum = _mm256_loadu_si256(sb.add(r * gpr + g8) as *const __m256i);
                    let (scale, min) = load_params8(w.params, (row0 + r) * gpr + g8);
                    _mm256_castps_si256(terms(scale, min, step_mul, centre, isum, dv, sv))
                };
            }
            for t in &transpose8x8(tv) {
                acc = _mm256_add_ps(acc, _mm256_castsi256_ps(*t));
            }
        }
        for gi in full..gpr {
            let mut pv = [0u32; RB];
            let mut iv = [0i32; RB];
            for r in 0..nr {
                pv[r] = bytemuck::cast(w.params[(row0 + r) * gpr + gi]);
                // SAFETY: r · gpr + gi < nr · gpr, written above.
                iv[r] = unsafe { *sb.add(r * gpr + gi) };
            }
            // SAFETY: pv and iv are 8 lanes; F16C is enabled here.
            acc = unsafe {
                let (scale, min) = params_to_f32(_mm256_loadu_si256(pv.as_ptr() as *const __m256i));
                let isum = _mm256_loadu_si256(iv.as_ptr() as *const __m256i);
                _mm256_add_ps(acc, terms(scale, min, step_mul, centre, isum, _mm256_set1_ps(d[gi]), _mm256_set1_ps(sum[gi] as f32)))
            };
        }
        if nr == RB {
            // SAFETY: rb + 8 <= out.len() (nr = 8 rows of it remain).
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(rb), acc) };
        } else {
            let mut accv = [0f32; RB];
            // SAFETY: accv is 8 floats.
            unsafe { _mm256_storeu_ps(accv.as_mut_ptr(), acc) };
            out[rb..rb + nr].copy_from_slice(&accv[..nr]);
        }
    }
}

/// Store superchunk `j`'s subgroup sums `v` (lane `m`: subgroup `PI[m]`) into the decode
/// block's sums at `sp`: as group sums for groups of 64 (`per` = 2) and 128 (4) codes, else as
/// the 8 subgroup sums in natural order.
///
/// # Safety
/// The CPU supports AVX2; `sp` writable for `8 · (j + 1)` entries.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn store_sums(per: usize, v: __m256i, sp: *mut i32, j: usize) {
    // Lanes m and m + 4 of `v` are subgroups 2i and 2i + 1 of the superchunk ([`PI`]), so
    // adding its halves gives the sums of 64-code groups in order.
    let fold = |v: __m256i| _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    // SAFETY: inside the entries the caller guarantees.
    unsafe {
        match per {
            2 => _mm_storeu_si128(sp.add(4 * j) as *mut __m128i, fold(v)),
            4 => {
                let s = fold(v);
                _mm_storel_epi64(sp.add(2 * j) as *mut __m128i, _mm_hadd_epi32(s, s));
            }
            _ => _mm256_storeu_si256(
                sp.add(8 * j) as *mut __m256i,
                _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)),
            ),
        }
    }
}

/// The superchunk stream of one decode block of a repacked view (pseudo-view `V`), 512 bits
/// at a time: superchunks `j` and `j + slots` meet the same part A slot, so one zmm holds a run
/// of each (words side by side), the activations are one broadcast register per field, and one
/// `vpdpbusd` covers 64 codes. The integer sums equal [`copy_dot`]'s lane for lane; superchunks
/// without a partner take the 256-bit path. `slot0` is superchunk 0's slot.
///
/// # Safety
/// The CPU supports AVX2, FMA, F16C, AVX512F, AVX512BW, AVX512VL and AVX512_VNNI; the `nsc`
/// superchunks from code `s0` (a multiple of 256) lie inside the copy (`w.planes[3]`); `aux`
/// holds `slots` part A slots; `sp` is writable for `8 · nsc` entries.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn avx512_copy_stream<const V: u8>(
    w: &Nested8<'_>,
    s0: usize,
    nsc: usize,
    slot0: usize,
    slots: usize,
    aux: &[i8],
    per: usize,
    sp: *mut i32,
) {
    let rb = blocks::run_bytes(view_bits(V));
    let words = rb / 32;
    let mut base = 0;
    while base < nsc {
        let span = (2 * slots).min(nsc - base);
        let pairs = span.saturating_sub(slots);
        for k in 0..slots.min(span) {
            let j = base + k;
            let slot = (slot0 + k) % slots;
            // SAFETY (block): runs s0 / 256 + j (and + slots) are inside the copy, slot < slots
            // inside aux, and the stores inside sp's 8 · nsc entries (the caller guarantees).
            unsafe {
                let a = aux.as_ptr().add(slot * SC_AUX);
                if k < pairs {
                    let lo = w.planes[3].as_ptr().add((s0 / SC + j) * rb);
                    let hi = lo.add(slots * rb);
                    let mut regs = [_mm512_setzero_si512(); 4];
                    for (i, r) in regs.iter_mut().enumerate().take(words) {
                        let l = _mm256_loadu_si256(lo.add(32 * i) as *const __m256i);
                        let h = _mm256_loadu_si256(hi.add(32 * i) as *const __m256i);
                        *r = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(l), h);
                    }
                    let f = copy_fields512::<V>(regs);
                    let mut l0 = _mm512_setzero_si512();
                    let mut l1 = _mm512_setzero_si512();
                    for (r, fr) in f.iter().enumerate() {
                        let x = _mm512_broadcast_i64x4(_mm256_loadu_si256(a.add(2 * SC + 32 * r) as *const __m256i));
                        if r % 2 == 0 {
                            l0 = _mm512_dpbusd_epi32(l0, *fr, x);
                        } else {
                            l1 = _mm512_dpbusd_epi32(l1, *fr, x);
                        }
                    }
                    let v = _mm512_add_epi32(l0, l1);
                    store_sums(per, _mm512_castsi512_si256(v), sp, j);
                    store_sums(per, _mm512_extracti64x4_epi64::<1>(v), sp, j + slots);
                } else {
                    store_sums(per, superchunk_at::<V, true>(w, s0 + j * SC, a), sp, j);
                }
            }
        }
        base += 2 * slots;
    }
}

/// [`copy_fields`] on two runs side by side (words `regs[..bits]`, run `j` in the low 256 bits).
///
/// # Safety
/// The CPU supports AVX512F and AVX512BW.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn copy_fields512<const V: u8>(regs: [__m512i; 4]) -> [__m512i; 8] {
    let [a, b, c, d] = regs;
    run_fields!(view_bits(V), [a, b, c, d], _mm512_and_si512, _mm512_or_si512, _mm512_srli_epi16, _mm512_set1_epi8)
}

/// Decode: `out[i] = row (first + i) · token 0`.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_nested8_matvec<const V: u8, const VNNI: bool>(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    if !usable(w, acts, V) {
        return reference::nested8_matvec(w, acts, first, out);
    }
    let kf;
    let w = if V == 8 {
        kf = w.kernel_form();
        &kf
    } else {
        w
    };
    let lay = Layout::new(acts.n, acts.padded_cols, acts.block);
    // SAFETY: usable() held; the features are enabled here.
    unsafe { rows_dot_view::<V, VNNI>(w, &acts.aux[..lay.a_len], acts.d_row(0), acts.sum_row(0), first, out) }
}

/// [`avx2_rows_dot`] of view `V`, reading the view's repacked copy when it has one.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; [`usable`] held for `w` and the activations of `aux`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_dot_view<const V: u8, const VNNI: bool>(w: &Nested8<'_>, aux: &[i8], d: &[f32], sum: &[i32], first: usize, out: &mut [f32]) {
    if let (2..=4, Some(copy)) = (V, w.repacked.as_deref()) {
        let need = ((first + out.len()) * w.row_stride).div_ceil(SC) * blocks::run_bytes(V);
        assert!(copy.len() >= need, "repacked copy too short for the rows asked");
        // The same view with its copy as plane 3 (the planes kept for check_bounds).
        let sub = Nested8 { planes: [w.planes[0], w.planes[1], w.planes[2], copy, &[], &[]], repacked: None, ..w.clone() };
        // SAFETY: as the caller guarantees; the copy covers the rows (asserted).
        return unsafe {
            match V {
                2 => avx2_rows_dot::<{ copy_view(2) }, VNNI>(&sub, aux, d, sum, first, out),
                3 => avx2_rows_dot::<{ copy_view(3) }, VNNI>(&sub, aux, d, sum, first, out),
                _ => avx2_rows_dot::<{ copy_view(4) }, VNNI>(&sub, aux, d, sum, first, out),
            }
        };
    }
    // SAFETY: as the caller guarantees.
    unsafe { avx2_rows_dot::<V, VNNI>(w, aux, d, sum, first, out) }
}

/// Unpack row `row`'s codes from plane 3 (4 bits per code) into natural-order bytes.
///
/// # Safety
/// The CPU supports AVX2; `plane` holds the row's `row_stride / 2` bytes; `out.len() >=
/// row_stride`, a multiple of 32.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_unpack_nibbles(plane: &[u8], row: usize, row_stride: usize, out: &mut [u8]) {
    assert!(out.len() >= row_stride && row_stride.is_multiple_of(32) && plane.len() * 2 >= (row + 1) * row_stride);
    let nib = _mm_set1_epi8(0x0F);
    for c in (0..row_stride).step_by(32) {
        // SAFETY: 16 bytes at (row·row_stride + c) / 2 lie inside the row (asserted); the store
        // writes out[c..c + 32], c + 32 <= row_stride <= out.len().
        unsafe {
            let v = _mm_loadu_si128(plane.as_ptr().add((row * row_stride + c) / 2) as *const __m128i);
            let l = _mm_and_si128(v, nib);
            let u = _mm_and_si128(_mm_srli_epi16::<4>(v), nib);
            let codes = _mm256_set_m128i(_mm_unpackhi_epi8(l, u), _mm_unpacklo_epi8(l, u));
            _mm256_storeu_si256(out.as_mut_ptr().add(c) as *mut __m256i, codes);
        }
    }
}

/// Unpack codes `start..start + out.len()` of a [`blocks::repack_top`] copy of (pseudo-)view `V`
/// into natural-order bytes (`out[i]` = code `start + i`'s view), a run of 256 at a time: its 8
/// fields, an 8×8 dword transpose (register `m` = dword `m` of every field: subgroup `PI[m]`,
/// byte `4r + c` = code `8·(r / 2) + 2c + r mod 2`), and one in-lane byte shuffle to natural order.
///
/// # Safety
/// The CPU supports AVX2; `copy` holds every run that codes `start..start + out.len()` touch.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_unpack_copy<const V: u8>(copy: &[u8], start: usize, out: &mut [u8]) {
    let end = start + out.len();
    let rb = blocks::run_bytes(view_bits(V));
    assert!(copy.len() >= end.div_ceil(SC) * rb);
    // Destination byte w' (of either half) takes byte 4·(2·(w' / 8) + w' mod 2) + (w' mod 8) / 2.
    let nat = _mm256_setr_epi8(
        0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15, 0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15,
    );
    let mut run = [0u8; SC];
    for s in start / SC..end.div_ceil(SC) {
        // SAFETY: run s's bytes are inside the copy (asserted); `run` holds 8 × 32 bytes.
        unsafe {
            let p = copy.as_ptr().add(s * rb);
            let mut regs = [_mm256_setzero_si256(); 8];
            for (i, r) in regs[4..4 + rb / 32].iter_mut().enumerate() {
                *r = _mm256_loadu_si256(p.add(32 * i) as *const __m256i);
            }
            let t = transpose8x8(copy_fields::<V>(regs));
            for (m, v) in t.iter().enumerate() {
                _mm256_storeu_si256(run.as_mut_ptr().add(32 * PI[m]) as *mut __m256i, _mm256_shuffle_epi8(*v, nat));
            }
        }
        let (lo, hi) = ((s * SC).max(start), ((s + 1) * SC).min(end));
        out[lo - start..hi - start].copy_from_slice(&run[lo - s * SC..hi - s * SC]);
    }
}

// ---------------------------------------------------------------------------------------------
// Prefill
// ---------------------------------------------------------------------------------------------

/// The top `V` bits (view 8: the high nibble `q >> 4`; views 2, 3, 4 only as named) of the 32
/// codes from flat index `code` (a multiple of 8), in natural order, one per byte.
///
/// # Safety
/// The CPU supports AVX2; planes 0..n(V) (up to plane 2) hold those codes' bytes (8 of plane 0,
/// 4 of planes 1 and 2).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn unpack32<const V: u8>(planes: &[&[u8]], code: usize) -> __m256i {
    // Weights of each plane in the high part: view 2: p0; view 3: 2·p0 + p1; 4/8: 4·p0 + 2·p1 + p2.
    let w0: i8 = match V {
        2 => 1,
        3 => 2,
        _ => 4,
    };
    let w1: i8 = if V == 3 { 1 } else { 2 };
    // Byte j of the broadcast register takes source byte j / 4 (plane 0) or j / 8 (planes 1/2).
    let rep4 = _mm256_setr_epi8(
        0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7,
    );
    let rep8 = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let lo_bit = _mm256_set1_epi32(0x4010_0401);
    let hi_bit = _mm256_set1_epi32(0x8020_0802u32 as i32);
    let bit8 = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    // SAFETY: the caller guarantees the 8/4/4 bytes of these 32 codes are inside the planes.
    unsafe {
        let b0 = _mm256_set1_epi64x((planes[0].as_ptr().add(code / 4) as *const i64).read_unaligned());
        let r0 = _mm256_shuffle_epi8(b0, rep4);
        let f_lo = _mm256_cmpeq_epi8(_mm256_and_si256(r0, lo_bit), lo_bit);
        let f_hi = _mm256_cmpeq_epi8(_mm256_and_si256(r0, hi_bit), hi_bit);
        let mut h = _mm256_or_si256(
            _mm256_and_si256(f_lo, _mm256_set1_epi8(w0)),
            _mm256_and_si256(f_hi, _mm256_set1_epi8(2 * w0)),
        );
        if V >= 3 {
            let b1 = _mm256_set1_epi32((planes[1].as_ptr().add(code / 8) as *const i32).read_unaligned());
            let f1 = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(b1, rep8), bit8), bit8);
            h = _mm256_or_si256(h, _mm256_and_si256(f1, _mm256_set1_epi8(w1)));
        }
        if V >= 4 {
            let b2 = _mm256_set1_epi32((planes[2].as_ptr().add(code / 8) as *const i32).read_unaligned());
            let f2 = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(b2, rep8), bit8), bit8);
            h = _mm256_or_si256(h, _mm256_and_si256(f2, _mm256_set1_epi8(1)));
        }
        h
    }
}

/// Unpack row `row` of view `V` into natural-order byte codes: `hi` gets `q_V` (view 8: the
/// high nibble `q >> 4`), `lo` (view 8 only) the low nibble.
///
/// # Safety
/// The CPU supports AVX2; `check_bounds` held for the row; `hi.len() >= row_stride`, and
/// `lo.len() >= row_stride` for view 8.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_unpack_row<const V: u8>(w: &Nested8<'_>, row: usize, hi: &mut [u8], lo: &mut [u8]) {
    let rs = w.row_stride;
    assert!(hi.len() >= rs && (V != 8 || lo.len() >= rs) && rs.is_multiple_of(32));
    let base = row * rs;
    for c in (0..rs).step_by(32) {
        // SAFETY: check_bounds covers codes up to (row + 1) * rs, so the bytes of these 32
        // codes are inside the planes; the store writes hi[c..c + 32], c + 32 <= rs.
        unsafe { _mm256_storeu_si256(hi.as_mut_ptr().add(c) as *mut __m256i, unpack32::<V>(&w.planes, base + c)) };
    }
    if V == 8 {
        // SAFETY: check_bounds covers the row in plane 3; lo holds rs bytes (asserted).
        unsafe { avx2_unpack_nibbles(w.planes[3], row, rs, lo) };
    }
}

/// [`blocks::repack_top`] of view `V` (2, 3 or 4): each whole run's codes unpacked from the
/// planes ([`unpack32`]), each subgroup's bytes put in field order by one in-lane shuffle (the
/// inverse of [`avx2_unpack_copy`]'s), an 8×8 dword transpose to the fields, and the fields
/// shifted and or-ed into the run's words. A last partial run is the definition's.
///
/// # Safety
/// The CPU supports AVX2; the view's planes hold `numel` codes.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_repack_top<const V: u8>(planes: &[&[u8]], numel: usize) -> alloc::vec::Vec<u8> {
    let n = blocks::nested8_planes_for_view(V).unwrap_or(0);
    assert!(numel.is_multiple_of(8) && planes.len() >= n);
    assert!(planes.iter().zip(blocks::NESTED8_PLANES).take(n).all(|(p, s)| p.len() * 8 >= numel * s.bits as usize));
    let rb = blocks::run_bytes(V);
    let whole = numel / SC;
    let mut out = vec![0u8; numel.div_ceil(SC) * rb];
    // Source byte of field order position i (of either half): the inverse of the unpack's shuffle.
    let to_fields = _mm256_setr_epi8(
        0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15, 0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15,
    );
    for s in 0..whole {
        // SAFETY: run s is whole, so its codes are inside the planes (asserted) and its rb bytes
        // inside `out`.
        unsafe {
            let mut regs = [_mm256_setzero_si256(); 8];
            for (m, r) in regs.iter_mut().enumerate() {
                *r = _mm256_shuffle_epi8(unpack32::<V>(planes, s * SC + 32 * PI[m]), to_fields);
            }
            let f = transpose8x8(regs);
            let sl = |v: __m256i, k: i32| match k {
                2 => _mm256_slli_epi16::<2>(v),
                3 => _mm256_slli_epi16::<3>(v),
                4 => _mm256_slli_epi16::<4>(v),
                6 => _mm256_slli_epi16::<6>(v),
                _ => _mm256_slli_epi16::<7>(v),
            };
            let or = |a: __m256i, b: __m256i| _mm256_or_si256(a, b);
            let words: [__m256i; 4] = match V {
                2 => [or(or(f[0], sl(f[1], 2)), or(sl(f[2], 4), sl(f[3], 6))), or(or(f[4], sl(f[5], 2)), or(sl(f[6], 4), sl(f[7], 6))), f[0], f[0]],
                3 => {
                    let (m3, m4) = (_mm256_set1_epi8(3), _mm256_set1_epi8(4));
                    // (F >> 2) << 6 = (F & 4) << 4, and << 5 for the top bit of F7.
                    let top6 = _mm256_slli_epi16::<4>(_mm256_and_si256(f[6], m4));
                    let top7 = _mm256_slli_epi16::<5>(_mm256_and_si256(f[7], m4));
                    [
                        or(or(f[0], sl(f[1], 3)), sl(_mm256_and_si256(f[6], m3), 6)),
                        or(or(f[2], sl(f[3], 3)), sl(_mm256_and_si256(f[7], m3), 6)),
                        or(or(f[4], sl(f[5], 3)), or(top6, top7)),
                        f[0],
                    ]
                }
                _ => [or(f[0], sl(f[1], 4)), or(f[2], sl(f[3], 4)), or(f[4], sl(f[5], 4)), or(f[6], sl(f[7], 4))],
            };
            for (i, wv) in words.iter().enumerate().take(rb / 32) {
                _mm256_storeu_si256(out.as_mut_ptr().add(s * rb + 32 * i) as *mut __m256i, *wv);
            }
        }
    }
    if whole * SC < numel {
        // The partial last run: the definition on the codes from that run on.
        let lo = whole * SC;
        let tail: alloc::vec::Vec<&[u8]> =
            planes.iter().zip(blocks::NESTED8_PLANES).take(n).map(|(p, sp)| &p[lo * sp.bits as usize / 8..]).collect();
        out[whole * rb..].copy_from_slice(&blocks::repack_top(V, &tail, numel - lo));
    }
    out
}

fn avx2_repack(view_bits: u8, planes: &[&[u8]], numel: usize) -> alloc::vec::Vec<u8> {
    // SAFETY: private, reachable only through TABLE, installed only after the CPU reported
    // avx2, fma and f16c; the function checks the planes' lengths itself.
    unsafe {
        match view_bits {
            2 => avx2_repack_top::<2>(planes, numel),
            3 => avx2_repack_top::<3>(planes, numel),
            4 => avx2_repack_top::<4>(planes, numel),
            _ => blocks::repack_top(view_bits, planes, numel),
        }
    }
}

/// `R` rows × `B` blocks of 8 tokens over all groups: lane `t` of result `[b][r]` is the
/// reference row dot of row `r` and token `t` of block `b`. `hi[r]`/`lo[r]`: the row's
/// unpacked codes; `so[r]`: its (step, offset) per group; `xb[b]`: the token block's part B;
/// `cb[b]`: its part C. Each broadcast dword of codes meets `B` activation registers.
///
/// # Safety
/// The CPU supports AVX2; `hi[r]` (and `lo[r]` for view 8) readable for `gpr * g` bytes,
/// `so[r]` for `2 * gpr` floats, `xb[b]` for `8 * gpr * g` bytes, `cb[b]` for `gpr * C_ENTRY`
/// bytes; `g % 4 == 0`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn micro<const V: u8, const R: usize, const B: usize, const VNNI: bool>(
    hi: [*const u8; R],
    lo: [*const u8; R],
    so: [*const f32; R],
    xb: [*const i8; B],
    cb: [*const u8; B],
    g: usize,
    gpr: usize,
) -> [[__m256; R]; B] {
    // Dword steps an i16 lane may take before widening: each adds ≤ 2 · max_code · 127. With
    // VNNI the products go straight to i32 (`hi` then holds whole 8-bit codes at view 8).
    let flush = match V {
        _ if VNNI => usize::MAX,
        2 => 32, // 2·3·127·32 = 24384
        3 => 16, // 2·7·127·16 = 28448
        _ => 8,  // 2·15·127·8 = 30480
    };
    let steps = g / 4;
    let ones = _mm256_set1_epi16(1);
    let sixteen = _mm256_set1_epi16(16);
    let mut facc = [[_mm256_setzero_ps(); R]; B];
    // SAFETY (whole body): every offset stays inside the lengths the caller guarantees:
    // codes k < gpr * g, part B at k * 8 + 32 <= 8 * gpr * g, part C at gi * 64 + 64.
    unsafe {
        for gi in 0..gpr {
            let mut isum = [[_mm256_setzero_si256(); R]; B];
            let mut s = 0;
            while s < steps {
                let e = steps.min(s.saturating_add(flush));
                if VNNI {
                    for st in s..e {
                        let k = gi * g + st * 4;
                        let mut x = [_mm256_setzero_si256(); B];
                        for (xv, p) in x.iter_mut().zip(xb) {
                            *xv = _mm256_loadu_si256(p.add(k * 8) as *const __m256i);
                        }
                        for r in 0..R {
                            let wv = _mm256_set1_epi32((hi[r].add(k) as *const i32).read_unaligned());
                            for b in 0..B {
                                isum[b][r] = dpbusd(isum[b][r], wv, x[b]);
                            }
                        }
                    }
                    s = e;
                    continue;
                }
                let mut h16 = [[_mm256_setzero_si256(); R]; B];
                let mut l16 = [[_mm256_setzero_si256(); R]; B];
                for st in s..e {
                    let k = gi * g + st * 4;
                    let mut x = [_mm256_setzero_si256(); B];
                    for (xv, p) in x.iter_mut().zip(xb) {
                        *xv = _mm256_loadu_si256(p.add(k * 8) as *const __m256i);
                    }
                    for r in 0..R {
                        let wv = _mm256_set1_epi32((hi[r].add(k) as *const i32).read_unaligned());
                        for b in 0..B {
                            h16[b][r] = _mm256_add_epi16(h16[b][r], _mm256_maddubs_epi16(wv, x[b]));
                        }
                        if V == 8 {
                            let lv = _mm256_set1_epi32((lo[r].add(k) as *const i32).read_unaligned());
                            for b in 0..B {
                                l16[b][r] = _mm256_add_epi16(l16[b][r], _mm256_maddubs_epi16(lv, x[b]));
                            }
                        }
                    }
                }
                for b in 0..B {
                    for r in 0..R {
                        let wide = if V == 8 {
                            _mm256_add_epi32(_mm256_madd_epi16(h16[b][r], sixteen), _mm256_madd_epi16(l16[b][r], ones))
                        } else {
                            _mm256_madd_epi16(h16[b][r], ones)
                        };
                        isum[b][r] = _mm256_add_epi32(isum[b][r], wide);
                    }
                }
                s = e;
            }
            for b in 0..B {
                let dv = _mm256_loadu_ps(cb[b].add(gi * C_ENTRY) as *const f32);
                let sv = _mm256_loadu_ps(cb[b].add(gi * C_ENTRY + 32) as *const f32);
                for r in 0..R {
                    let step = _mm256_set1_ps(*so[r].add(2 * gi));
                    let offset = _mm256_set1_ps(*so[r].add(2 * gi + 1));
                    let term = _mm256_mul_ps(
                        dv,
                        _mm256_add_ps(_mm256_mul_ps(step, _mm256_cvtepi32_ps(isum[b][r])), _mm256_mul_ps(offset, sv)),
                    );
                    facc[b][r] = _mm256_add_ps(facc[b][r], term);
                }
            }
        }
    }
    facc
}

/// Rows per micro-kernel call for view `V` (view 8 without VNNI keeps two i16 accumulators per
/// row).
const fn rows_per_micro(v: u8, vnni: bool) -> usize {
    if v == 8 && !vnni {
        2
    } else {
        4
    }
}

/// Prefill: `out[t * len + i] = row (first + i) · token t`, `len = out.len() / acts.n`.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_nested8_matmul<const V: u8, const VNNI: bool>(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    if !usable(w, acts, V) {
        return reference::nested8_matmul(w, acts, first, out);
    }
    let kf;
    let w = if V == 8 {
        kf = w.kernel_form();
        &kf
    } else {
        w
    };
    let n = acts.n;
    let len = out.len() / n;
    let lay = Layout::new(n, acts.padded_cols, acts.block);
    if n < PREFILL_MIN_TOKENS {
        for t in 0..n {
            let aux = &acts.aux[t * lay.a_len..(t + 1) * lay.a_len];
            // SAFETY: usable() held (part A exists for every token below the threshold).
            unsafe { rows_dot_view::<V, VNNI>(w, aux, acts.d_row(t), acts.sum_row(t), first, &mut out[t * len..(t + 1) * len]) };
        }
        return;
    }
    check_bounds(w, first, len);
    let g = w.group_size;
    let rs = w.row_stride;
    let gpr = rs / g;
    let parts = if V == 8 { 2 } else { 1 };
    let drop = 8 - V as u32;
    let step_mul = _mm256_set1_ps((1u32 << drop) as f32);
    let centre = _mm256_set1_ps(((1u32 << drop) - 1) as f32 * 0.5);
    // Unpacked codes of the tile's rows (hi then lo), and (step, offset) per row and group.
    let mut codes = vec![0u8; parts * len * rs];
    let mut so = vec![0f32; 2 * len * gpr];
    {
        let (hi, lo) = codes.split_at_mut(len * rs);
        if let (2..=4, Some(copy)) = (V, w.repacked.as_deref()) {
            // SAFETY: the copy holds every row of the tensor (Matrix::from_tensor), so every
            // run of rows first..first + len (check_bounds held for them).
            unsafe { avx2_unpack_copy::<V>(copy, first * rs, hi) };
        }
        for r in 0..len {
            let lo_r = if V == 8 { &mut lo[r * rs..(r + 1) * rs] } else { &mut [][..] };
            let hi_r = &mut hi[r * rs..(r + 1) * rs];
            match (V, w.repacked.as_deref()) {
                // SAFETY: the nibbles hold every row of the tensor (Matrix::from_tensor).
                (2..=4, Some(_)) => {} // unpacked above
                // SAFETY: check_bounds held for rows first..first + len; the slices hold rs bytes.
                _ => unsafe { avx2_unpack_row::<V>(w, first + r, hi_r, lo_r) },
            }
            if V == 8 && VNNI {
                // Whole codes `16 · hi + lo` (up to 255): vpdpbusd takes unsigned bytes and does
                // not saturate, so one product serves both nibbles.
                for (h, l) in hi_r.iter_mut().zip(lo_r.iter()) {
                    *h = (*h << 4) | *l;
                }
            }
            // (step, offset) as blocks::nested8_step_offset computes them, 8 groups at a time.
            for gi in (0..gpr).step_by(8) {
                let mut pair = [0f32; 16];
                // SAFETY: F16C is enabled here; pair holds 16 floats.
                unsafe {
                    let (scale, min) = load_params8(w.params, (first + r) * gpr + gi);
                    let step = _mm256_mul_ps(scale, step_mul);
                    let offset = _mm256_add_ps(min, _mm256_mul_ps(scale, centre));
                    let lo = _mm256_unpacklo_ps(step, offset);
                    let hi = _mm256_unpackhi_ps(step, offset);
                    _mm256_storeu_ps(pair.as_mut_ptr(), _mm256_permute2f128_ps::<0x20>(lo, hi));
                    _mm256_storeu_ps(pair.as_mut_ptr().add(8), _mm256_permute2f128_ps::<0x31>(lo, hi));
                }
                let k = 2 * 8.min(gpr - gi);
                so[2 * (r * gpr + gi)..2 * (r * gpr + gi) + k].copy_from_slice(&pair[..k]);
            }
        }
    }
    let blocks = acts.blocks();
    let rows = rows_per_micro(V, VNNI);
    let lo_base = if V == 8 { len * rs } else { 0 };
    let tbs = n.div_ceil(TOK);
    let mut tb = 0;
    while tb < tbs {
        // Two token blocks per call while two remain.
        let nb = if tb + 1 < tbs { 2 } else { 1 };
        let xb = |b: usize| acts.aux[lay.b_off + (tb + b) * TOK * rs..lay.b_off + (tb + b + 1) * TOK * rs].as_ptr();
        let cb = |b: usize| {
            acts.aux[lay.c_off + (tb + b) * blocks * C_ENTRY..lay.c_off + (tb + b + 1) * blocks * C_ENTRY].as_ptr() as *const u8
        };
        let mut r0 = 0;
        while r0 < len {
            let nr = rows.min(len - r0);
            // Rows past the tile repeat the last one (computed, never stored).
            let row_of = |j: usize| r0 + j.min(nr - 1);
            let hi_p = |j: usize| codes[row_of(j) * rs..].as_ptr();
            let lo_p = |j: usize| codes[lo_base + row_of(j) * rs..].as_ptr();
            let so_p = |j: usize| so[2 * row_of(j) * gpr..].as_ptr();
            let mut res = [[[0f32; TOK]; 4]; 2];
            macro_rules! run {
                ($r:literal, $b:literal) => {{
                    let hi: [*const u8; $r] = core::array::from_fn(hi_p);
                    let lo: [*const u8; $r] = core::array::from_fn(lo_p);
                    let so: [*const f32; $r] = core::array::from_fn(so_p);
                    // SAFETY: the pointers cover whole rows of codes (rs = gpr * g bytes), their
                    // 2 * gpr (step, offset) floats, the token blocks' part B (8 * rs bytes) and
                    // part C (blocks * 64 bytes); g % 32 == 0.
                    let acc = unsafe { micro::<V, $r, $b, VNNI>(hi, lo, so, core::array::from_fn(xb), core::array::from_fn(cb), g, gpr) };
                    for (b, acc_b) in acc.iter().enumerate() {
                        for (r, a) in acc_b.iter().enumerate() {
                            // SAFETY: res[b][r] holds 8 floats.
                            unsafe { _mm256_storeu_ps(res[b][r].as_mut_ptr(), *a) };
                        }
                    }
                }};
            }
            match (rows, nb) {
                (4, 2) => run!(4, 2),
                (4, _) => run!(4, 1),
                (_, 2) => run!(2, 2),
                _ => run!(2, 1),
            }
            for (b, res_b) in res.iter().enumerate().take(nb) {
                let tokens = TOK.min(n - (tb + b) * TOK);
                for (r, res_r) in res_b.iter().enumerate().take(nr) {
                    for (t, &v) in res_r.iter().enumerate().take(tokens) {
                        out[((tb + b) * TOK + t) * len + r0 + r] = v;
                    }
                }
            }
            r0 += nr;
        }
        tb += nb;
    }
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

/// Decode of the `avx512vnni` table: the AVX2 kernel with `vpdpbusd` for its integer sums.
///
/// # Safety
/// The CPU supports AVX2, FMA, F16C, AVX512F, AVX512BW, AVX512VL and AVX512_VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn avx512_nested8_matvec<const V: u8>(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    // SAFETY: the caller guarantees the features, VNNI's among them.
    unsafe { avx2_nested8_matvec::<V, true>(w, acts, first, out) }
}

/// Prefill of the `avx512vnni` table: the AVX2 kernel with `vpdpbusd` for its integer sums
/// (view 8: one product of whole 8-bit codes instead of two of nibbles, and 4 rows per call).
///
/// # Safety
/// As [`avx512_nested8_matvec`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn avx512_nested8_matmul<const V: u8>(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    // SAFETY: the caller guarantees the features, VNNI's among them.
    unsafe { avx2_nested8_matmul::<V, true>(w, acts, first, out) }
}

/// Decode of the `avx2` table.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_matvec<const V: u8>(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    // SAFETY: as the caller guarantees; VNNI off.
    unsafe { avx2_nested8_matvec::<V, false>(w, acts, first, out) }
}

/// Prefill of the `avx2` table.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_matmul<const V: u8>(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    // SAFETY: as the caller guarantees; VNNI off.
    unsafe { avx2_nested8_matmul::<V, false>(w, acts, first, out) }
}

/// Safe table entries: each calls one `#[target_feature]` kernel and exists only in [`TABLE`]
/// (or [`TABLE_AVX512`]), which `plug`/`variants` hand out only after the CPU reported AVX2,
/// FMA and F16C (and the AVX-512 features).
macro_rules! entries {
    ($kernel:ident: $($name:ident = $v:literal),+) => {$(
        fn $name(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
            // SAFETY: private, reachable only through TABLE (TABLE_AVX512), which is installed
            // only after the CPU reported avx2, fma and f16c (and avx512f, avx512bw, avx512vl,
            // avx512vnni) (x86_64::plug / variants).
            unsafe { $kernel::<$v>(w, acts, first, out) }
        }
    )+};
}

// The 5- and 6-bit views have no SIMD kernels yet: the tables run the portable ones for them
// (compiled for AVX2, `avx2_portable_matvec`).
entries!(avx2_matvec: avx2_matvec_v2 = 2, avx2_matvec_v3 = 3, avx2_matvec_v4 = 4, avx2_matvec_v8 = 8);
entries!(avx2_matmul: avx2_matmul_v2 = 2, avx2_matmul_v3 = 3, avx2_matmul_v4 = 4, avx2_matmul_v8 = 8);
entries!(avx512_nested8_matvec: avx512_matvec_v2 = 2, avx512_matvec_v3 = 3, avx512_matvec_v4 = 4, avx512_matvec_v8 = 8);
entries!(avx512_nested8_matmul: avx512_matmul_v2 = 2, avx512_matmul_v3 = 3, avx512_matmul_v4 = 4, avx512_matmul_v8 = 8);

fn avx2_quantize(x: &[f32], n: usize, cols: usize, block: usize, acts: &mut QActs) {
    // SAFETY: private, reachable only through TABLE, installed only after the CPU reported
    // avx2, fma and f16c.
    unsafe { avx2_quantize_acts(x, n, cols, block, acts) }
}

/// [`vector::head_body`] for AVX2: scores of 8 positions at a time, each exactly
/// [`super::super::dot`] (per-lane products and sums in its order, then an 8×8 transpose so that
/// the eight lane sums of all 8 positions add up in one register, lane 0 first); the rest (other
/// positions, softmax, the weighted sum of values) is the definition's code compiled for AVX2.
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_attend_head_impl(q: &[f32], keys: &[f32], values: &[f32], stride: usize, scale: f32, scores: &mut [f32], out: &mut [f32]) {
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

fn avx2_attend_head(q: &[f32], keys: &[f32], values: &[f32], stride: usize, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    // SAFETY: private, reachable only through TABLE, installed only after the CPU reported
    // avx2, fma and f16c.
    unsafe { avx2_attend_head_impl(q, keys, values, stride, scale, scores, out) }
}

/// [`vector::swiglu`] compiled for AVX2 (eight lanes; the same operations in the same order, so
/// bit-identical).
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_swiglu_impl(gate: &mut [f32], up: &[f32]) {
    vector::swiglu(gate, up)
}

fn avx2_swiglu(gate: &mut [f32], up: &[f32]) {
    // SAFETY: private, reachable only through TABLE, installed only after the CPU reported
    // avx2, fma and f16c.
    unsafe { avx2_swiglu_impl(gate, up) }
}

/// The portable kernels (the 5- and 6-bit views, which have no SIMD kernels yet) compiled for
/// AVX2: the same code, so bit-identical, with wider auto-vectorized integer dot products.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_portable_matvec(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    super::super::portable::nested8_matvec(w, acts, first, out)
}

/// As [`avx2_portable_matvec`], for prefill.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_portable_matmul(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    super::super::portable::nested8_matmul(w, acts, first, out)
}

fn portable_matvec(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    // SAFETY: private, reachable only through TABLE (TABLE_AVX512), installed only after the
    // CPU reported avx2, fma and f16c.
    unsafe { avx2_portable_matvec(w, acts, first, out) }
}

fn portable_matmul(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    // SAFETY: as `portable_matvec`.
    unsafe { avx2_portable_matmul(w, acts, first, out) }
}

const PORTABLE_MATVEC: Nested8MatvecFn = portable_matvec;
const PORTABLE_MATMUL: Nested8MatmulFn = portable_matmul;

/// The AVX2 table (install only after probing the CPU).
pub(super) const TABLE: Kernels = Kernels {
    name: "avx2",
    quantize_acts: avx2_quantize,
    nested8_matvec: [avx2_matvec_v2, avx2_matvec_v3, avx2_matvec_v4, PORTABLE_MATVEC, PORTABLE_MATVEC, avx2_matvec_v8],
    nested8_matmul: [avx2_matmul_v2, avx2_matmul_v3, avx2_matmul_v4, PORTABLE_MATMUL, PORTABLE_MATMUL, avx2_matmul_v8],
    repack: Some(avx2_repack),
    nibbles: Some(blocks::low_nibbles),
    attend_head: avx2_attend_head,
    swiglu: avx2_swiglu,
};

/// The AVX-512 VNNI table (install only after probing the CPU): the AVX2 table with
/// `vpdpbusd` (256-bit, EVEX) for the integer sums of decode and prefill.
pub(super) const TABLE_AVX512: Kernels = Kernels {
    name: "avx512vnni",
    nested8_matvec: [avx512_matvec_v2, avx512_matvec_v3, avx512_matvec_v4, PORTABLE_MATVEC, PORTABLE_MATVEC, avx512_matvec_v8],
    nested8_matmul: [avx512_matmul_v2, avx512_matmul_v3, avx512_matmul_v4, PORTABLE_MATMUL, PORTABLE_MATMUL, avx512_matmul_v8],
    ..TABLE
};
