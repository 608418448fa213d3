//! Between the stored planes and natural-order byte codes: unpacking a row's codes for the
//! prefill micro-kernel (from the planes, the nibble plane or the runs), and making the runs
//! of a 2- to 6- or 8-bit view at load (`Prepared::Runs`, [`blocks::repack_top`]).

use core::arch::x86_64::*;

use alloc::vec;

use super::common::{transpose8x8, PI, SC};
use super::runs::{run_fields, MAX_RUN_WORDS};
use crate::blocks;

/// Unpack row `row`'s low nibbles from the nibble plane (`Prepared::Nibbles`, 4 bits per code)
/// into natural-order bytes.
///
/// # Safety
/// The CPU supports AVX2; `nibbles` holds the row's `row_stride / 2` bytes; `out.len() >=
/// row_stride`, a multiple of 32.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_unpack_nibbles(nibbles: &[u8], row: usize, row_stride: usize, out: &mut [u8]) {
    assert!(out.len() >= row_stride && row_stride.is_multiple_of(32) && nibbles.len() * 2 >= (row + 1) * row_stride);
    for c in (0..row_stride).step_by(32) {
        // SAFETY: the 16 bytes of these 32 codes lie inside the row (asserted); the store
        // writes out[c..c + 32], c + 32 <= row_stride <= out.len().
        unsafe {
            let codes = nibbles32(nibbles.as_ptr().add((row * row_stride + c) / 2));
            _mm256_storeu_si256(out.as_mut_ptr().add(c) as *mut __m256i, codes);
        }
    }
}

/// The 32 low nibbles held by the 16 bytes at `p` (two codes a byte, low first), in natural
/// order, one per byte.
///
/// # Safety
/// The CPU supports AVX2; `p` readable for 16 bytes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn nibbles32(p: *const u8) -> __m256i {
    let nib = _mm_set1_epi8(0x0F);
    // SAFETY: the caller guarantees 16 readable bytes.
    let v = unsafe { _mm_loadu_si128(p as *const __m128i) };
    let l = _mm_and_si128(v, nib);
    let u = _mm_and_si128(_mm_srli_epi16::<4>(v), nib);
    _mm256_set_m128i(_mm_unpackhi_epi8(l, u), _mm_unpacklo_epi8(l, u))
}

/// Unpack codes `start..start + out.len()` of view `V`'s runs (`Prepared::Runs`) into
/// natural-order bytes (`out[i]` = code `start + i`'s view), a run of 256 at a time: its 8
/// fields, an 8×8 dword transpose (register `m` = dword `m` of every field: subgroup `PI[m]`,
/// byte `4r + c` = code `8·(r / 2) + 2c + r mod 2`), and one in-lane byte shuffle to natural
/// order.
///
/// # Safety
/// The CPU supports AVX2; `runs` holds every run that codes `start..start + out.len()` touch.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn avx2_unpack_runs<const V: u8>(runs: &[u8], start: usize, out: &mut [u8]) {
    let end = start + out.len();
    let rb = blocks::run_bytes(V);
    assert!(runs.len() >= end.div_ceil(SC) * rb);
    // Destination byte w' (of either half) takes byte 4·(2·(w' / 8) + w' mod 2) + (w' mod 8) / 2.
    let nat = _mm256_setr_epi8(
        0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15, 0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15,
    );
    let mut run = [0u8; SC];
    for s in start / SC..end.div_ceil(SC) {
        // SAFETY: run s's bytes are inside `runs` (asserted); `run` holds 8 × 32 bytes.
        unsafe {
            let p = runs.as_ptr().add(s * rb);
            let mut words = [_mm256_setzero_si256(); MAX_RUN_WORDS];
            for (i, r) in words[..rb / 32].iter_mut().enumerate() {
                *r = _mm256_loadu_si256(p.add(32 * i) as *const __m256i);
            }
            let t = transpose8x8(run_fields::<V>(words));
            for (m, v) in t.iter().enumerate() {
                _mm256_storeu_si256(run.as_mut_ptr().add(32 * PI[m]) as *mut __m256i, _mm256_shuffle_epi8(*v, nat));
            }
        }
        let (lo, hi) = ((s * SC).max(start), ((s + 1) * SC).min(end));
        out[lo - start..hi - start].copy_from_slice(&run[lo - s * SC..hi - s * SC]);
    }
}

/// The top `V` bits (view 8: the high nibble `q >> 4`) of the 32 codes from flat index `code`
/// (a multiple of 8), in natural order, one per byte.
///
/// # Safety
/// The CPU supports AVX2; `planes` are the stored planes, and those the view reads (view 8: up
/// to plane 2) hold those codes' bytes (8 of plane 0, 4 of each other).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn unpack32<const V: u8>(planes: &[&[u8]], code: usize) -> __m256i {
    // Weight of the code's bit k in the view's code (bits 7..4 at view 8):
    // view 2: 2·b7 + b6, view 3: 4·b7 + 2·b6 + b5, ..., view 6: 32·b7 + ... + b2.
    let hv = if V == 8 { 4 } else { V as u32 };
    let wt = |k: u32| (1u32 << (k + hv - 8)) as u8 as i8;
    let w0 = wt(6);
    // Byte j of the broadcast register takes source byte j / 4 (plane 0) or j / 8 (1-bit planes).
    let rep4 = _mm256_setr_epi8(
        0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7,
    );
    let rep8 = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let lo_bit = _mm256_set1_epi32(0x4010_0401);
    let hi_bit = _mm256_set1_epi32(0x8020_0802u32 as i32);
    let bit8 = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    // SAFETY: the caller guarantees these 32 codes' bytes (8 of plane 0, 4 of each 1-bit
    // plane read) are inside the planes.
    unsafe {
        let b0 = _mm256_set1_epi64x((planes[0].as_ptr().add(code / 4) as *const i64).read_unaligned());
        let r0 = _mm256_shuffle_epi8(b0, rep4);
        let f_lo = _mm256_cmpeq_epi8(_mm256_and_si256(r0, lo_bit), lo_bit);
        let f_hi = _mm256_cmpeq_epi8(_mm256_and_si256(r0, hi_bit), hi_bit);
        let mut h = _mm256_or_si256(
            _mm256_and_si256(f_lo, _mm256_set1_epi8(w0)),
            _mm256_and_si256(f_hi, _mm256_set1_epi8(2 * w0)),
        );
        // The 1-bit planes 1.. (bits 5, 4, 3, 2) the view reads.
        let one_bit = if V == 8 { 3 } else { V as usize - 1 };
        for (p, plane) in planes.iter().enumerate().take(one_bit).skip(1) {
            let b = _mm256_set1_epi32((plane.as_ptr().add(code / 8) as *const i32).read_unaligned());
            let f = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(b, rep8), bit8), bit8);
            h = _mm256_or_si256(h, _mm256_and_si256(f, _mm256_set1_epi8(wt(6 - p as u32))));
        }
        h
    }
}

/// Unpack row `row` of view `V` from its sources `src` (planes, view 8: and nibbles; see
/// [`super::common::sources`]) into natural-order byte codes: `hi` gets `q_V` (view 8: the high
/// nibble `q >> 4`), `lo` (view 8 only) the low nibble.
///
/// # Safety
/// The CPU supports AVX2; `check_bounds` held for the row; `hi.len() >= rs`, and `lo.len() >=
/// rs` for view 8.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn avx2_unpack_row<const V: u8>(src: &[&[u8]; 4], rs: usize, row: usize, hi: &mut [u8], lo: &mut [u8]) {
    // Views 5 and 6 are read from their runs only (`src` holds planes 0..3 and the nibbles).
    assert!(matches!(V, 2..=4 | 8), "a {V}-bit view is unpacked from its runs");
    assert!(hi.len() >= rs && (V != 8 || lo.len() >= rs) && rs.is_multiple_of(32));
    let base = row * rs;
    for c in (0..rs).step_by(32) {
        // SAFETY: check_bounds covers codes up to (row + 1) * rs, so the bytes of these 32
        // codes are inside the planes; the store writes hi[c..c + 32], c + 32 <= rs.
        unsafe { _mm256_storeu_si256(hi.as_mut_ptr().add(c) as *mut __m256i, unpack32::<V>(src, base + c)) };
    }
    if V == 8 {
        // SAFETY: check_bounds covers the row in the nibble plane; lo holds rs bytes (asserted).
        unsafe { avx2_unpack_nibbles(src[3], row, rs, lo) };
    }
}

/// [`blocks::repack_top`] of view `V` (2 to 6, or 8): each whole run's codes unpacked from the
/// planes ([`unpack32`]; view 8: the high nibbles so, the low ones from [`blocks::low_nibbles`]),
/// each subgroup's bytes put in field order by one in-lane shuffle (the inverse of
/// [`avx2_unpack_runs`]'s), an 8×8 dword transpose to the fields, and the fields shifted and
/// or-ed into the run's words. A last partial run is the definition's.
///
/// # Safety
/// The CPU supports AVX2; the view's planes hold `numel` codes.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn avx2_repack_top<const V: u8>(planes: &[&[u8]], numel: usize) -> alloc::vec::Vec<u8> {
    let n = blocks::nested8_planes_for_view(V).unwrap_or(0);
    assert!(numel.is_multiple_of(8) && planes.len() >= n);
    assert!(planes.iter().zip(blocks::NESTED8_PLANES).take(n).all(|(p, s)| p.len() * 8 >= numel * s.bits as usize));
    let rb = blocks::run_bytes(V);
    let whole = numel / SC;
    let mut out = vec![0u8; numel.div_ceil(SC) * rb];
    let low = if V == 8 { blocks::low_nibbles(planes, whole * SC) } else { vec![] };
    // Source byte of field order position i (of either half): the inverse of the unpack's shuffle.
    let to_fields = _mm256_setr_epi8(
        0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15, 0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15,
    );
    for s in 0..whole {
        // SAFETY: run s is whole, so its codes are inside the planes (asserted) and, at view 8,
        // in `low` (whole runs' nibbles), and its rb bytes inside `out`.
        unsafe {
            let mut regs = [_mm256_setzero_si256(); 8];
            for (m, r) in regs.iter_mut().enumerate() {
                let code = s * SC + 32 * PI[m];
                let mut q = unpack32::<V>(planes, code);
                if V == 8 {
                    // High nibbles up to 15: the 16-bit shift moves no bit across a byte.
                    q = _mm256_or_si256(_mm256_slli_epi16::<4>(q), nibbles32(low.as_ptr().add(code / 2)));
                }
                *r = _mm256_shuffle_epi8(q, to_fields);
            }
            let f = transpose8x8(regs);
            let sl = |v: __m256i, k: i32| match k {
                2 => _mm256_slli_epi16::<2>(v),
                3 => _mm256_slli_epi16::<3>(v),
                4 => _mm256_slli_epi16::<4>(v),
                5 => _mm256_slli_epi16::<5>(v),
                6 => _mm256_slli_epi16::<6>(v),
                _ => _mm256_slli_epi16::<7>(v),
            };
            let or = |a: __m256i, b: __m256i| _mm256_or_si256(a, b);
            // Bits `mask` of `v` shifted left by `k` (they stay inside their byte).
            let part = |v: __m256i, mask: i8, k: i32| sl(_mm256_and_si256(v, _mm256_set1_epi8(mask)), k);
            let words: [__m256i; MAX_RUN_WORDS] = match V {
                2 => [or(or(f[0], sl(f[1], 2)), or(sl(f[2], 4), sl(f[3], 6))), or(or(f[4], sl(f[5], 2)), or(sl(f[6], 4), sl(f[7], 6))), f[0], f[0], f[0], f[0], f[0], f[0]],
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
                        f[0],
                        f[0],
                        f[0],
                        f[0],
                    ]
                }
                4 => [or(f[0], sl(f[1], 4)), or(f[2], sl(f[3], 4)), or(f[4], sl(f[5], 4)), or(f[6], sl(f[7], 4)), f[0], f[0], f[0], f[0]],
                5 => [
                    or(f[0], part(f[5], 7, 5)),
                    or(f[1], part(f[6], 7, 5)),
                    or(f[2], part(f[7], 7, 5)),
                    or(or(f[3], part(f[5], 0x18, 2)), part(f[7], 8, 4)),
                    or(or(f[4], part(f[6], 0x18, 2)), part(f[7], 0x10, 3)),
                    f[0],
                    f[0],
                    f[0],
                ],
                // Whole bytes: the fields are the words.
                8 => f,
                _ => [
                    or(f[0], part(f[6], 3, 6)),
                    or(f[1], part(f[7], 3, 6)),
                    or(f[2], part(f[6], 12, 4)),
                    or(f[3], part(f[7], 12, 4)),
                    or(f[4], part(f[6], 48, 2)),
                    or(f[5], part(f[7], 48, 2)),
                    f[0],
                    f[0],
                ],
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
