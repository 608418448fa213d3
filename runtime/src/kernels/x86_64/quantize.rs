//! Activation quantization for the x86_64 tables: the reference contract (natural `q`, `d`,
//! `sum`, bit-identical) plus the copies of `q` the kernels read, in `acts.aux`:
//!
//! - part A (decode): each token's activations permuted, per superchunk of 256 codes, into the
//!   order in which [`super::decode`] unpacks each source's fields from a register, so the
//!   decode kernel multiplies fields with activations without shuffling either. A superchunk
//!   has three orders of 256 bytes (plane 0; planes 1 and 2; source 3, the nibble plane or the
//!   runs). The decode kernel reads a row block as one stream of superchunks that run across
//!   row ends, so part A holds one slot per starting column: `lcm(columns, 256) / 256` slots
//!   (9 for 576 columns), and no row ends in a partly used superchunk.
//! - part B (prefill): 4 codes of each of 8 tokens per 32-byte register, so that one broadcast
//!   dword of a row's codes meets 8 tokens in one product and lane `t` is token `t`.
//! - part C (prefill): the group scales and sums of 8 tokens side by side, so the float terms
//!   are lane-wise as well.
//!
//! Fewer than [`PREFILL_MIN_TOKENS`] tokens have a part A each and no part B or C (the prefill
//! then runs the decode kernel per token); more have part A for token 0 only, and parts B and C.

use core::arch::x86_64::*;

use super::common::{transpose8x8, PI, SC};
use crate::kernels::acts::{quantize_block, quantize_reference, QActs};

/// Bytes of decode-order activations per superchunk: plane 0's order, planes 1/2's order,
/// source 3's order (the nibble plane's and the runs'), 256 each.
pub(super) const SC_AUX: usize = 3 * SC;
/// From this many tokens on, `matmul` uses the prefill micro-kernel (below it, the decode
/// kernel per token).
pub(super) const PREFILL_MIN_TOKENS: usize = 4;
/// Tokens per prefill block (i32 lanes of a register).
pub(super) const TOK: usize = 8;
/// Bytes per (token block, group) in part C: 8 scales `d` then 8 sums as f32.
pub(super) const C_ENTRY: usize = 64;

/// Part A: `aux[i] = q[PERM_A[i]]` within each superchunk. Derived from the register layouts
/// of the decode kernel ([`super::decode`]):
/// - plane 0, register `reg` (A'/B'), field `k`: byte `4m + c` is code `32·PI[m] + 16·reg + 4c + k`;
/// - planes 1/2 merged, register `reg` (M/N), field `k`: code `32·PI[m] + 8c + 2k + reg`;
/// - source 3 (nibbles, runs), dword row `j`, nibble `nib`: code `32·PI[m] + 8j + 2c + nib`.
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
pub(super) fn part_a_slots(padded_cols: usize) -> usize {
    padded_cols >> padded_cols.trailing_zeros().min(SC.trailing_zeros())
}

/// Part A bytes per token.
pub(super) fn part_a_len(padded_cols: usize) -> usize {
    part_a_slots(padded_cols) * SC_AUX
}

/// Where each part of `acts.aux` lives (a function of `n`, `padded_cols` and `block` only).
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    /// Part A bytes per token.
    pub(super) a_len: usize,
    /// Tokens with a part A (all when below [`PREFILL_MIN_TOKENS`], else token 0 only).
    pub(super) a_tokens: usize,
    /// Part B: (token blocks, padded_cols / 4, 8 tokens, 4 codes).
    pub(super) b_off: usize,
    /// Part C: (token blocks, blocks, [`C_ENTRY`] bytes).
    pub(super) c_off: usize,
    pub(super) total: usize,
}

impl Layout {
    pub(super) fn new(n: usize, padded_cols: usize, block: usize) -> Self {
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
/// `PERM_A` (only the orders in `parts`: 2 alone is what the runs' kernels read). Each order
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
/// (with `runs_order_only`, only source 3's order, which the runs' kernels read: see
/// [`QActs::runs_order_only`]).
///
/// # Safety
/// The CPU supports AVX2; `out.len() == part_a_len(q.len())`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_fill_part_a(q: &[i8], out: &mut [i8], runs_order_only: bool) {
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
        unsafe { avx2_permute_superchunk(src.as_ptr(), dst.as_mut_ptr(), if runs_order_only { 2..3 } else { 0..3 }) };
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
/// plus parts A, B and C in `aux` (see the module docs and [`Layout`]).
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn avx2_quantize_acts(x: &[f32], n: usize, cols: usize, block: usize, acts: &mut QActs) {
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
            avx2_fill_part_a(&acts.q[t * pc..(t + 1) * pc], &mut acts.aux[t * lay.a_len..(t + 1) * lay.a_len], acts.runs_order_only)
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
            // Only the runs' order (source 3's, the last 256 bytes of each slot).
            let mut only = vec![1i8; part_a_len(pc)];
            // SAFETY: as above.
            unsafe { avx2_fill_part_a(&q, &mut only, true) };
            for (s, (o, w)) in only.chunks(SC_AUX).zip(want.chunks(SC_AUX)).enumerate() {
                assert_eq!(o[2 * SC..], w[2 * SC..], "padded_cols {pc} slot {s}, runs' order only");
            }
        }
    }
}
