//! Decode (`avx2_nested8_matvec`): one token against rows of nested codes, read in the form
//! the view was prepared in, with the activations permuted to match (part A of
//! [`super::quantize`]).
//!
//! # From the stored planes (and, at 8 bits, the nibble plane)
//! The product is linear in the planes: `q_k = Σ_p w_p · plane_p` (view 8: `64·p0 + 32·p1 +
//! 16·p2 + nibbles`), so each source is unpacked in its natural SIMD order (`(v >> s) & mask`
//! over a register) and multiplied (`maddubs`, field values ≤ 15 so it never saturates) with a
//! copy of the activations permuted to that order, which `quantize_acts` writes once per token
//! into `acts.aux` (part A). A lower view reads and computes only its planes.
//!
//! The unit is a *superchunk* of 256 codes (8 subgroups of 32, each inside one group because
//! group sizes are multiples of 32). The plane registers are rearranged (a few dword shuffles
//! per superchunk) so that i32 lane `m` of every plane covers the same subgroup `PI[m]`; the
//! planes of the high nibble (`4·p0 + 2·p1 + p2`, planes 1 and 2 merged into 2-bit fields
//! first) then add up in i16 (a lane sums at most 16 codes × 15 × 127 = 30480), the nibbles in
//! a second i16 accumulator, and one `madd` per superchunk widens to i32.
//!
//! # From the runs
//! A 2- to 6- or 8-bit view prepared as runs ([`Prepared::Runs`]) is read one run per superchunk:
//! its fields are one to three shifts and masks of a word, already in lane order `PI`, so one
//! `maddubs` covers 32 codes (the planes need two at 3 and 4 bits) and no lane is shuffled.
//! The fields meet part A's source-3 order, the only one filled when every matrix of the call
//! reads runs (`QActs::runs_order_only`). The 5- and 6-bit views are read from their runs only
//! (codes up to 63: a `maddubs` lane holds up to 2 · 63 · 127, so two of them fit in i16 at 6
//! bits, four at 5, and each accumulator is widened on its own). The 8-bit runs hold whole
//! codes, one `vpdpbusd` per word (the `avx512vnni` table reads them; without VNNI each word is
//! split into nibbles, as `maddubs` would saturate on whole codes). The runs are prefetched
//! [`PREFETCH_BYTES`] ahead. Both x86 tables prepare runs for every view; the
//! planes (and the 8-bit nibble plane) are read when a matrix comes without them.
//!
//! # Rows, groups and the float sum
//! Group sums are exact integers; each group's float term `d · (step · isum + offset · sum)` is
//! computed with separate multiplies and adds (no FMA), 8 groups of a row per register, then an
//! 8×8 transpose puts 8 rows in the lanes of one accumulator that adds the terms in group
//! order, so the result equals the reference bit for bit. Rows go in blocks of 8, whose codes
//! are contiguous in every source: the block is read as one stream of superchunks that run
//! across row ends (576 columns: 8 rows are 18 superchunks), meeting part A's slots in turn.
//! Each superchunk's sums go straight to a small buffer of group sums (groups of 32, 64 and 128
//! are folded in registers; other multiples of 32 afterwards). Groups of 8 or 16 fall back to
//! the portable kernels.
//!
//! # VNNI
//! The `avx512vnni` table runs these functions with `VNNI = true`: each `maddubs` (i16 lanes)
//! and its widening `madd` become one `vpdpbusd` (i32 lanes, [`dpbusd`]), which gives the same
//! exact integer sums, so every result stays bit-identical. Runs are read one at a time, in
//! order, as in `avx2`: reading two 256 codes apart side by side in 512 bits (one broadcast of
//! part A for both) was faster on matrices held in L2, but its access pattern (two streams,
//! jumping back at every block) defeated the stride prefetchers on matrices read from memory,
//! where it ran at half the speed (a model's decode: 4-bit tokens/s halved on Zen 5).
//!
//! Kernel parameters: `V` the view (2, 3, 4, 5, 6 or 8), `RUNS` whether it reads
//! [`Prepared::Runs`] instead of the planes (always at 5 and 6), `VNNI` as above.

use core::arch::x86_64::*;

use super::common::{
    check_bounds, decode_super_rows, dpbusd, load_params8, reads_source, source_bits, sources, transpose8x8, SC,
};
use super::quantize::{part_a_slots, Layout, PREFILL_MIN_TOKENS, SC_AUX};
use super::runs::{run_fields, MAX_RUN_WORDS};
use crate::blocks::{ParamsRef, SuperParams};
use crate::kernels::acts::QActs;
use crate::kernels::frame::{Nested8, Prepared};
use crate::kernels::portable;

/// Whether the fast kernels serve `w` with `acts` (else the portable ones do): groups of a
/// multiple of 32, activations from this table's `quantize_acts` for this matrix.
pub(super) fn usable(w: &Nested8<'_>, acts: &QActs, view: u8) -> bool {
    let form = w.prepared();
    w.group_size.is_multiple_of(32)
        && w.view_bits == view
        && acts.block == w.group_size
        && acts.padded_cols == w.row_stride
        && w.row_stride / 32 <= MAX_SUB
        && acts.n > 0
        && acts.aux.len() >= Layout::new(acts.n, acts.padded_cols, acts.block).total
        // Part A holds only the runs' order: the planes' kernels cannot run on it.
        && (acts.n >= PREFILL_MIN_TOKENS || !acts.runs_order_only || matches!(form, Prepared::Runs(_)))
        // The 8-bit kernels read the nibble plane or the runs, the 5- and 6-bit ones the runs.
        && (view != 8 || matches!(form, Prepared::Nibbles(_) | Prepared::Runs(_)))
        && (!matches!(view, 5 | 6) || matches!(form, Prepared::Runs(_)))
}

/// The 8 registers of one superchunk's sources, loaded from `p[s]` (the superchunk's bytes in
/// source `s`: 64, 32, 32 bytes, then 32 per bit of source 3; only the sources view `V` reads
/// with `RUNS` are loaded, see [`reads_source`]): plane 0 in registers 0-1, plane 1 in 2,
/// plane 2 in 3, the nibbles in 4-7; with `RUNS`, the run's words from 0 on (unread ones
/// zero).
///
/// # Safety
/// The CPU supports AVX2; the pointers of the sources read are readable for those lengths.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_superchunk<const V: u8, const RUNS: bool>(p: [*const u8; 4]) -> [__m256i; 8] {
    let mut r = [_mm256_setzero_si256(); 8];
    // SAFETY: inside the ranges the caller guarantees.
    unsafe {
        if reads_source(V, RUNS, 0) {
            r[0] = _mm256_loadu_si256(p[0] as *const __m256i);
            r[1] = _mm256_loadu_si256(p[0].add(32) as *const __m256i);
        }
        if reads_source(V, RUNS, 1) {
            r[2] = _mm256_loadu_si256(p[1] as *const __m256i);
        }
        if reads_source(V, RUNS, 2) {
            r[3] = _mm256_loadu_si256(p[2] as *const __m256i);
        }
        if reads_source(V, RUNS, 3) {
            let at = if RUNS { 0 } else { 4 };
            for (i, ri) in r[at..at + SC * source_bits(V, RUNS, 3) / 256].iter_mut().enumerate() {
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
/// from its source registers (see [`load_superchunk`]) and `a`, its part A (768 bytes).
///
/// # Safety
/// The CPU supports AVX2; `a` readable for 768 bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn superchunk<const V: u8, const RUNS: bool, const VNNI: bool>(regs: [__m256i; 8], a: *const i8) -> __m256i {
    // SAFETY (whole body): the loads read part A registers 0..24 (768 bytes).
    unsafe {
        if RUNS {
            return runs_dot::<V, VNNI>(regs, a);
        }
        // Plane 0 (2 bits/code): 64 bytes, dword j = codes 16j..16j+15; A' takes the first
        // dword of each subgroup, B' the second, both in lane order PI.
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
        _mm256_add_epi32(widen::<VNNI>(h0, h1, 16), nibbles_dot::<VNNI>(regs, a))
    }
}

/// `Σ (q & 15) · x` over one superchunk, as 8 i32 lanes (lane `m`: subgroup `PI[m]`), from the
/// nibble plane's registers (`regs[4..8]`) and part A's source-3 order.
///
/// # Safety
/// The CPU supports AVX2; `a` readable for 768 bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn nibbles_dot<const VNNI: bool>(regs: [__m256i; 8], a: *const i8) -> __m256i {
    // SAFETY (whole body): the loads read part A registers 16..24 (inside 768 bytes).
    unsafe {
        // Nibbles (4 bits/code): 4 registers of 2 subgroups each; a 4×4 dword transpose in
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

/// `Σ q_V · x` over one run of view `V`'s [`Prepared::Runs`] ([`blocks::repack_top`]), as 8 i32
/// lanes (lane `m`: subgroup `PI[m]`), from its words (`regs[..V]`) and part A's source-3 order.
///
/// # Safety
/// The CPU supports AVX2; `a` readable for 768 bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn runs_dot<const V: u8, const VNNI: bool>(regs: [__m256i; 8], a: *const i8) -> __m256i {
    let words: [__m256i; MAX_RUN_WORDS] = core::array::from_fn(|i| regs[i]);
    // SAFETY (whole body): the loads read part A registers 16..24 (inside 768 bytes).
    unsafe {
        let f = run_fields::<V>(words);
        if V == 8 {
            return runs8_dot::<VNNI>(f, a);
        }
        if V >= 5 && !VNNI {
            // Codes up to 31 (63): a maddubs lane is at most 2 · 31 · 127 (2 · 63 · 127), so an
            // i16 accumulator takes four (two) of them and is widened on its own.
            let ones = _mm256_set1_epi16(1);
            let mut l = [_mm256_setzero_si256(); 4];
            for (r, fr) in f.iter().enumerate() {
                let x = _mm256_loadu_si256(a.add((2 * SC / 32 + r) * 32) as *const __m256i);
                let k = if V == 5 { r % 2 } else { r % 4 };
                l[k] = _mm256_add_epi16(l[k], _mm256_maddubs_epi16(*fr, x));
            }
            let lo = _mm256_add_epi32(_mm256_madd_epi16(l[0], ones), _mm256_madd_epi16(l[1], ones));
            if V == 5 {
                return lo;
            }
            return _mm256_add_epi32(lo, _mm256_add_epi32(_mm256_madd_epi16(l[2], ones), _mm256_madd_epi16(l[3], ones)));
        }
        // Codes up to 15: a maddubs lane is at most 2 · 15 · 127, and eight of them fit in i16.
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

/// `Σ q · x` over one run of whole 8-bit codes (its words `f`, already the fields), as
/// [`runs_dot`] returns it.
///
/// # Safety
/// The CPU supports AVX2; `a` readable for 768 bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn runs8_dot<const VNNI: bool>(f: [__m256i; 8], a: *const i8) -> __m256i {
    let a3 = 2 * SC / 32;
    // SAFETY (whole body): the loads read part A registers 16..24 (inside 768 bytes).
    unsafe {
        if VNNI {
            // Two accumulators, so that consecutive `vpdpbusd` do not wait on each other.
            let (mut l0, mut l1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for r in (0..8).step_by(2) {
                mad!(true, l0, f[r], a, a3 + r);
                mad!(true, l1, f[r + 1], a, a3 + r + 1);
            }
            return _mm256_add_epi32(l0, l1);
        }
        // Nibbles up to 15: eight maddubs lanes of 2 · 15 · 127 fit in i16.
        let nib = _mm256_set1_epi8(0x0F);
        let (mut l0, mut l1, mut h0, mut h1) =
            (_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256());
        for r in (0..8).step_by(2) {
            mad!(false, l0, _mm256_and_si256(f[r], nib), a, a3 + r);
            mad!(false, l1, _mm256_and_si256(f[r + 1], nib), a, a3 + r + 1);
            mad!(false, h0, _mm256_and_si256(_mm256_srli_epi16::<4>(f[r]), nib), a, a3 + r);
            mad!(false, h1, _mm256_and_si256(_mm256_srli_epi16::<4>(f[r + 1]), nib), a, a3 + r + 1);
        }
        _mm256_add_epi32(widen::<false>(l0, l1, 1), widen::<false>(h0, h1, 16))
    }
}

/// [`superchunk`] of the superchunk starting at flat code `c` (a multiple of 8 codes, so a
/// whole byte in every source; with `RUNS`, a multiple of 256), read from the sources `src`
/// (see [`sources`]), with part A slot `a`.
///
/// # Safety
/// The CPU supports AVX2; the superchunk's bytes lie inside the sources read; `a` readable
/// for 768 bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn superchunk_at<const V: u8, const RUNS: bool, const VNNI: bool>(src: &[&[u8]; 4], c: usize, a: *const i8) -> __m256i {
    let mut ptr = [core::ptr::null::<u8>(); 4];
    // SAFETY: the caller guarantees the superchunk's bytes are inside the sources.
    unsafe {
        if reads_source(V, RUNS, 0) {
            ptr[0] = src[0].as_ptr().add(c / 4);
        }
        if reads_source(V, RUNS, 1) {
            ptr[1] = src[1].as_ptr().add(c / 8);
        }
        if reads_source(V, RUNS, 2) {
            ptr[2] = src[2].as_ptr().add(c / 8);
        }
        if reads_source(V, RUNS, 3) {
            ptr[3] = src[3].as_ptr().add(c * source_bits(V, RUNS, 3) / 8);
        }
        superchunk::<V, RUNS, VNNI>(load_superchunk::<V, RUNS>(ptr), a)
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

/// How far ahead of the superchunk being read (in bytes of its runs) both tables ask for the
/// runs' cache lines. On two AMD cores without VNNI a 4- or 8-bit matrix read from memory ran
/// at 65-75% of one core's bandwidth: the stride prefetchers alone did not keep enough lines in
/// flight between the products. 8 KiB ahead took those from-memory reads 15-30% faster and
/// cost about 5% in cache. On an Intel Xeon with VNNI it took a 4-bit matrix read from memory
/// 16-48% faster and left reads from cache as they were (`docs/RESULTS.md`).
const PREFETCH_BYTES: usize = 8192;

/// Most subgroup sums one decode block holds (rows of up to 8192 columns go 8 to a block,
/// longer ones fewer, up to 65536 columns; see [`usable`]). The buffer is on the stack of every
/// call: keep it small.
const MAX_SUB: usize = 2048;

/// `out[i] = ` the reference `nested8_row_dot(first + i)` for one token, given its part A
/// (`aux`), block scales `d` and sums `sum`.
///
/// Rows go in blocks of 8 whose codes are contiguous in every source, so the block is read as
/// one stream of superchunks that run across row ends: superchunk `j` of a block meets part A
/// slot `j mod slots` (see [`part_a_slots`]), and no row needs a tail of its own. Each
/// superchunk's 8 subgroup sums are stored in natural order; the sums of each group (whole
/// subgroups, never across rows) are then folded in place, and the float terms added per row
/// in group order: 8 groups of a row per register and an 8×8 transpose (lane = row), then the
/// groups past a multiple of 8 one register per group (lane = row).
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_rows_dot<const V: u8, const RUNS: bool, const VNNI: bool>(
    w: &Nested8<'_>,
    aux: &[i8],
    d: &[f32],
    sum: &[i32],
    first: usize,
    out: &mut [f32],
) {
    let g = w.group_size;
    let rs = w.row_stride;
    let gpr = rs / g;
    let per = g / 32;
    let slots = part_a_slots(rs);
    assert!(g.is_multiple_of(32) && rs.is_multiple_of(g) && rs / 32 <= MAX_SUB);
    assert!(aux.len() >= slots * SC_AUX && d.len() >= gpr && sum.len() >= gpr);
    let src = sources(w, RUNS);
    check_bounds(w, &src, V, RUNS, first, out.len());
    let drop = 8 - V as u32;
    let step_mul = _mm256_set1_ps((1u32 << drop) as f32);
    let centre = _mm256_set1_ps(((1u32 << drop) - 1) as f32 * 0.5);
    // Bytes of one superchunk in each source.
    let len = |s: usize| SC * source_bits(V, RUNS, s) / 8;
    let byte = |s: usize, code: usize| code * source_bits(V, RUNS, s) / 8;
    let block_rows = RB.min(MAX_SUB / (rs / 32));
    // The block's group sums: row r's group k at r · gpr + k (other group sizes than 32, 64
    // and 128: its subgroup sums first, folded after).
    // Not zeroed (8 KiB per call would weigh on small products): every entry read below was
    // written first in the same block (the superchunks' stores cover `nsc · 256 / g >= nr · gpr`
    // groups, or `8 · nsc >= nr · rs / 32` subgroups before the fold, after the `lead` ones).
    let mut sub = core::mem::MaybeUninit::<[i32; MAX_SUB + 16]>::uninit();
    let sp = sub.as_mut_ptr() as *mut i32;
    // Super-block parameters: a block of rows decoded once (row r's group k at r · stride + k),
    // rather than each 8 groups again for every use. Written before read, as `sub`:
    // nr · stride <= nr · (gpr + 7) <= MAX_SUB + 56.
    let supers = match w.params {
        ParamsRef::Super { blocks, .. } => Some(blocks),
        ParamsRef::F16(_) => None,
    };
    // The group parameters' bytes and bytes per row, for their prefetch: a second stream,
    // read only after the block's superchunks, whose loads otherwise miss.
    let (params_at, params_row) = match w.params {
        ParamsRef::F16(p) => (p.as_ptr() as *const u8, gpr * core::mem::size_of::<crate::blocks::GroupParams>()),
        ParamsRef::Super { blocks, .. } => (blocks.as_ptr() as *const u8, SuperParams::per_row(gpr) * SuperParams::SIZE),
    };
    let mut s_scale = core::mem::MaybeUninit::<[f32; MAX_SUB + 64]>::uninit();
    let mut s_min = core::mem::MaybeUninit::<[f32; MAX_SUB + 64]>::uninit();
    let (ssp, smp) = (s_scale.as_mut_ptr() as *mut f32, s_min.as_mut_ptr() as *mut f32);
    // Sums stored per superchunk: groups (32, 64, 128 codes) or subgroups (other sizes).
    let unit = if matches!(per, 1 | 2 | 4) { g } else { 32 };
    let full = gpr / 8 * 8;
    for rb in (0..out.len()).step_by(block_rows) {
        let nr = block_rows.min(out.len() - rb);
        let row0 = first + rb;
        let c0 = row0 * rs;
        // The stream starts at the block's first code; with `RUNS` the superchunks are the runs
        // of 256 codes, so there it starts at the run holding that code and the first `lead`
        // codes (earlier rows, whole groups) are summed but never read.
        let s0 = if RUNS { c0 / SC * SC } else { c0 };
        let lead = c0 - s0;
        // SAFETY: lead / unit < 256 / 32 = 8 entries, inside `sub`.
        let sb = unsafe { sp.add(lead / unit) };
        let nsc = (lead + nr * rs).div_ceil(SC);
        // Superchunk j starts at column (s0 + 256 j) mod rs: slot (s0 / 256 + j) mod slots when
        // s0 is a multiple of 256, slot j when it is a row start (column 0).
        let mut slot = if RUNS { (s0 / SC) % slots } else { 0 };
        let params_next = params_at.wrapping_add((row0 + nr) * params_row);
        let params_lines = (nr * params_row).div_ceil(64);
        if RUNS {
            // The runs lie inside their source to the last superchunk (`check_bounds`), so
            // this loop reads them straight, with nothing to check per superchunk.
            let run = len(3);
            let mut p = src[3].as_ptr().wrapping_add(byte(3, s0));
            for j in 0..nsc {
                let a = aux.as_ptr().wrapping_add(slot * SC_AUX);
                // The run PREFETCH_BYTES ahead: `32 · V` bytes, one request per cache line.
                // A prefetch never faults: past the end of the runs it fetches nothing of use.
                for k in 0..run.div_ceil(64) {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES + 64 * k) as *const i8);
                }
                // The next block's parameters, a line per superchunk.
                if j < params_lines {
                    _mm_prefetch::<_MM_HINT_T0>(params_next.wrapping_add(64 * j) as *const i8);
                }
                // SAFETY: run j of the block lies inside the runs (check_bounds covers the
                // block's rows, whole runs); slot < slots, inside aux; (256 / unit) · (j + 1)
                // <= 8 · nsc <= MAX_SUB + 16 sums.
                unsafe {
                    let v = superchunk::<V, true, VNNI>(load_superchunk::<V, true>([core::ptr::null(), core::ptr::null(), core::ptr::null(), p]), a);
                    store_sums(per, v, sp, j);
                }
                p = p.wrapping_add(run);
                slot = if slot + 1 == slots { 0 } else { slot + 1 };
            }
        } else {
            // The last superchunk may run past the rows asked (those lanes are never used) and, at
            // the end of the tensor, past a source's end: it is then read from a zero-padded copy.
            let end_inside = (0..4).filter(|&s| reads_source(V, RUNS, s)).all(|s| byte(s, s0 + nsc * SC) <= src[s].len());
            for j in 0..nsc {
                let c = s0 + j * SC;
                let a = aux.as_ptr().wrapping_add(slot * SC_AUX);
                let v = if j + 1 < nsc || end_inside {
                    // SAFETY: the superchunk's bytes lie inside the sources (check_bounds covers the
                    // block's rows, `end_inside` the last superchunk); slot < slots, inside aux.
                    unsafe { superchunk_at::<V, RUNS, VNNI>(&src, c, a) }
                } else {
                    let mut buf = [[0u8; SC * MAX_RUN_WORDS / 8]; 4];
                    let mut ptr = [core::ptr::null::<u8>(); 4];
                    for (s, pp) in ptr.iter_mut().enumerate().filter(|(s, _)| reads_source(V, RUNS, *s)) {
                        let bytes = src[s];
                        // c is inside the block's rows, so off < bytes.len() (check_bounds).
                        let off = byte(s, c);
                        let have = (bytes.len() - off).min(len(s));
                        buf[s][..have].copy_from_slice(&bytes[off..off + have]);
                        buf[s][have..len(s)].fill(0);
                        *pp = buf[s].as_ptr();
                    }
                    // SAFETY: each buf[s] holds len(s) bytes; slot < slots, inside aux.
                    unsafe { superchunk::<V, RUNS, VNNI>(load_superchunk::<V, RUNS>(ptr), a) }
                };
                // SAFETY: (256 / unit) · (j + 1) <= 8 · nsc <= (lead + nr · rs) / 32 + 8 <= MAX_SUB + 16.
                unsafe { store_sums(per, v, sp, j) };
                slot = if slot + 1 == slots { 0 } else { slot + 1 };
            }
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
        // SAFETY: nr · stride <= MAX_SUB + 56 floats (above).
        let stride = supers.map_or(0, |b| unsafe { decode_super_rows(b, gpr, row0, nr, ssp, smp) });
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
                    let (scale, min) = match supers {
                        // r · stride + g8 + 8 <= r · stride + gpr, decoded above.
                        Some(_) => (_mm256_loadu_ps(ssp.add(r * stride + g8)), _mm256_loadu_ps(smp.add(r * stride + g8))),
                        None => load_params8(w.params, (row0 + r) * gpr + g8),
                    };
                    _mm256_castps_si256(terms(scale, min, step_mul, centre, isum, dv, sv))
                };
            }
            for t in &transpose8x8(tv) {
                acc = _mm256_add_ps(acc, _mm256_castsi256_ps(*t));
            }
        }
        for gi in full..gpr {
            let (mut sv, mut mv) = ([0f32; RB], [0f32; RB]);
            let mut iv = [0i32; RB];
            for r in 0..nr {
                (sv[r], mv[r]) = match supers {
                    // SAFETY: r · stride + gi < (r + 1) · stride, decoded above.
                    Some(_) => unsafe { (*ssp.add(r * stride + gi), *smp.add(r * stride + gi)) },
                    None => {
                        let p = w.params.get((row0 + r) * gpr + gi);
                        (p.scale, p.min)
                    }
                };
                // SAFETY: r · gpr + gi < nr · gpr, written above.
                iv[r] = unsafe { *sb.add(r * gpr + gi) };
            }
            // SAFETY: sv, mv and iv are 8 lanes.
            acc = unsafe {
                let (scale, min) = (_mm256_loadu_ps(sv.as_ptr()), _mm256_loadu_ps(mv.as_ptr()));
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

/// Decode: `out[i] = row (first + i) · token 0`.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn avx2_nested8_matvec<const V: u8, const VNNI: bool>(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]) {
    if !usable(w, acts, V) {
        return portable::nested8_matvec(w, acts, first, out);
    }
    let lay = Layout::new(acts.n, acts.padded_cols, acts.block);
    // SAFETY: usable() held; the features are enabled here.
    unsafe { rows_dot_form::<V, VNNI>(w, &acts.aux[..lay.a_len], acts.d_row(0), acts.sum_row(0), first, out) }
}

/// [`avx2_rows_dot`] of view `V` in the form `w` was prepared in: from its runs when it has
/// them ([`Prepared::Runs`]; views 5 and 6 have nothing else, see [`usable`]), else from its
/// planes (view 8: and nibbles).
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; [`usable`] held for `w` and the activations of `aux`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn rows_dot_form<const V: u8, const VNNI: bool>(
    w: &Nested8<'_>,
    aux: &[i8],
    d: &[f32],
    sum: &[i32],
    first: usize,
    out: &mut [f32],
) {
    // SAFETY (every call): as the caller guarantees; `avx2_rows_dot` checks that the sources
    // cover the rows.
    unsafe {
        match (V, w.prepared()) {
            (2, Prepared::Runs(_)) => avx2_rows_dot::<2, true, VNNI>(w, aux, d, sum, first, out),
            (3, Prepared::Runs(_)) => avx2_rows_dot::<3, true, VNNI>(w, aux, d, sum, first, out),
            (4, Prepared::Runs(_)) => avx2_rows_dot::<4, true, VNNI>(w, aux, d, sum, first, out),
            (5, Prepared::Runs(_)) => avx2_rows_dot::<5, true, VNNI>(w, aux, d, sum, first, out),
            (6, Prepared::Runs(_)) => avx2_rows_dot::<6, true, VNNI>(w, aux, d, sum, first, out),
            (8, Prepared::Runs(_)) => avx2_rows_dot::<8, true, VNNI>(w, aux, d, sum, first, out),
            (2, _) => avx2_rows_dot::<2, false, VNNI>(w, aux, d, sum, first, out),
            (3, _) => avx2_rows_dot::<3, false, VNNI>(w, aux, d, sum, first, out),
            (4, _) => avx2_rows_dot::<4, false, VNNI>(w, aux, d, sum, first, out),
            (8, _) => avx2_rows_dot::<8, false, VNNI>(w, aux, d, sum, first, out),
            _ => unreachable!("usable(): a {V}-bit view is read from its runs"),
        }
    }
}

