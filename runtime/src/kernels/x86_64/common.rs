//! What the x86_64 kernel files share: the 256-code unit and its lane order, an 8×8 dword
//! transpose, `vpdpbusd`, group parameters in lanes, and what a kernel reads of a view (its
//! sources, with their bounds).

use core::arch::x86_64::*;

use crate::blocks::{self, GroupParams, ParamsRef, SuperParams};
use crate::kernels::frame::{Nested8, Prepared};

/// Codes per superchunk: the unit of the decode kernels and of part A's slots, and the length
/// of a run of [`Prepared::Runs`].
pub(super) const SC: usize = 256;
const _: () = assert!(SC == blocks::RUN_CODES);

/// Subgroup of the superchunk held by i32 lane `m` of every plane register (and by dword `m`
/// of every word of a run: the runs are laid out in this order).
pub(super) const PI: [usize; 8] = blocks::RUN_PI;

/// What a kernel reads of a view, by source: stored planes 0, 1 and 2 (sources 0, 1, 2), then
/// source 3, the view's prepared form. With `runs` the kernel reads [`Prepared::Runs`] instead
/// of the planes:
///
/// | view | runs | sources read (bits per code)                            |
/// |------|------|---------------------------------------------------------|
/// | 2    | no   | plane 0 (2)                                             |
/// | 3    | no   | planes 0, 1 (2, 1)                                      |
/// | 4    | no   | planes 0, 1, 2 (2, 1, 1)                                |
/// | 8    | no   | planes 0, 1, 2 (2, 1, 1), then [`Prepared::Nibbles`] (4) |
/// | 2-6  | yes  | [`Prepared::Runs`] (the view's bits)                    |
///
/// (Views 5 and 6 are read from their runs only.)
pub(super) const fn reads_source(view: u8, runs: bool, s: usize) -> bool {
    match (view, runs) {
        (_, true) => s == 3,
        (2, _) => s == 0,
        (3, _) => s <= 1,
        (4, _) => s <= 2,
        _ => true,
    }
}

/// Bits per code of source `s` (see [`reads_source`]).
pub(super) const fn source_bits(view: u8, runs: bool, s: usize) -> usize {
    if runs && s == 3 {
        view as usize
    } else {
        blocks::NESTED8_KERNEL_PLANES[s].bits as usize
    }
}

/// The sources of `w` (see [`reads_source`]): with `runs`, its [`Prepared::Runs`] alone;
/// otherwise its stored planes 0..3 and, for an 8-bit view, its [`Prepared::Nibbles`]. A
/// source the kernel does not read may be empty.
pub(super) fn sources<'s>(w: &'s Nested8<'_>, runs: bool) -> [&'s [u8]; 4] {
    match w.prepared() {
        Prepared::Runs(r) if runs => [&[], &[], &[], r],
        Prepared::Nibbles(n) => [w.planes[0], w.planes[1], w.planes[2], n],
        _ => [w.planes[0], w.planes[1], w.planes[2], &[]],
    }
}

/// Panics unless rows `first..first + rows` lie inside every source `src` of `w` that a kernel
/// of `view` (reading the runs: `runs`) reads, and inside `w.params` (so every load of the
/// kernels is in bounds).
pub(super) fn check_bounds(w: &Nested8<'_>, src: &[&[u8]; 4], view: u8, runs: bool, first: usize, rows: usize) {
    let codes = (first + rows) * w.row_stride;
    for s in (0..4).filter(|&s| reads_source(view, runs, s)) {
        if runs {
            let need = codes.div_ceil(SC) * blocks::run_bytes(view);
            assert!(src[s].len() >= need, "runs too short for the rows asked");
        } else {
            assert!(src[s].len() * 8 >= codes * source_bits(view, runs, s), "plane too short for the rows asked");
        }
    }
    assert!(w.params.groups() >= codes / w.group_size, "group params too short for the rows asked");
}

/// 8×8 transpose of i32: lane `j` of output `d` is lane `d` of input `j`.
///
/// # Safety
/// The CPU supports AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn transpose8x8(r: [__m256i; 8]) -> [__m256i; 8] {
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

/// `acc + Σ u·x` over each i32 lane's four bytes (`u` unsigned, `x` signed), without
/// saturation: AVX-512 VNNI's `vpdpbusd` on 256 bits (EVEX, needs AVX512VL). Written as `asm!`
/// so that the kernels around it keep one definition for both tables: an intrinsic would need
/// every enclosing function compiled with the AVX-512 features.
///
/// # Safety
/// The CPU supports AVX512_VNNI and AVX512VL (only the `avx512vnni` table passes `VNNI = true`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn dpbusd(acc: __m256i, u: __m256i, x: __m256i) -> __m256i {
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

/// Scales and minima of 8 groups starting at `i` (zero past the end of `params`).
///
/// # Safety
/// The CPU supports AVX2 and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn load_params8(params: ParamsRef<'_>, i: usize) -> (__m256, __m256) {
    let params = match params {
        ParamsRef::F16(p) => p,
        // SAFETY: the caller guarantees the features.
        ParamsRef::Super { blocks, groups_per_row } => return unsafe { load_super8(blocks, groups_per_row, i) },
    };
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

/// Scales and minima of groups `i..i + 8` of super-block parameters in rows of `gpr` groups,
/// exactly as [`SuperParams::group`] computes them. Callers start at a multiple of 8 within a
/// row (one block); lanes past the row's end are zero.
///
/// # Safety
/// The CPU supports AVX2 and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_super8(blocks: &[SuperParams], gpr: usize, i: usize) -> (__m256, __m256) {
    let c = i % gpr;
    if !c.is_multiple_of(SuperParams::GROUPS) {
        // Not a block's first group (no kernel asks this): lane by lane.
        let params = ParamsRef::Super { blocks, groups_per_row: gpr };
        let (mut s, mut m) = ([0f32; 8], [0f32; 8]);
        for j in 0..8.min(params.groups().saturating_sub(i)) {
            let a = params.get(i + j);
            (s[j], m[j]) = (a.scale, a.min);
        }
        // SAFETY: 8 floats each.
        return unsafe { (_mm256_loadu_ps(s.as_ptr()), _mm256_loadu_ps(m.as_ptr())) };
    }
    match blocks.get(i / gpr * SuperParams::per_row(gpr) + c / SuperParams::GROUPS) {
        // SAFETY: the caller guarantees the features.
        Some(sp) => unsafe { super8(sp) },
        None => (_mm256_setzero_ps(), _mm256_setzero_ps()),
    }
}

/// The 8 groups' scales and minima of one super-block.
///
/// # Safety
/// The CPU supports AVX2 and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn super8(sp: &SuperParams) -> (__m256, __m256) {
    // SAFETY: a SuperParams is 16 bytes: d, dmin (bytes 0..4), lo (4..12), hi (12..16).
    let v = unsafe { _mm_loadu_si128(sp as *const SuperParams as *const __m128i) };
    let lo = _mm256_cvtepu8_epi32(_mm_srli_si128::<4>(v));
    let hi = _mm256_broadcastd_epi32(_mm_srli_si128::<12>(v));
    // Lane j: nibble j of hi (bits 4j..4j + 4 of the little-endian word).
    let nib = _mm256_and_si256(_mm256_srlv_epi32(hi, _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)), _mm256_set1_epi32(15));
    let s = _mm256_and_si256(lo, _mm256_set1_epi32(63));
    let m = _mm256_sub_epi32(_mm256_or_si256(_mm256_srli_epi32::<6>(lo), _mm256_slli_epi32::<2>(nib)), _mm256_set1_epi32(32));
    // Lanes 0 and 1: d and dmin as f32 (exact widening).
    let dd = _mm_cvtph_ps(v);
    let d = _mm256_broadcastss_ps(dd);
    let dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(dd));
    (_mm256_mul_ps(_mm256_cvtepi32_ps(s), d), _mm256_mul_ps(_mm256_cvtepi32_ps(m), dmin))
}

/// Scales and minima of rows `row0..row0 + rows` of super-block parameters (rows of `gpr`
/// groups) into `scale` and `min`: row `r`'s group `g` at `r · stride + g`, `stride = 8 ·
/// SuperParams::per_row(gpr)` (the entries past a row's groups are its last block's zero padding);
/// returns `stride`. Decoding a block once serves all its groups.
///
/// # Safety
/// The CPU supports AVX2 and F16C; `scale` and `min` are writable for `rows · stride` floats.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn decode_super_rows(blocks: &[SuperParams], gpr: usize, row0: usize, rows: usize, scale: *mut f32, min: *mut f32) -> usize {
    let per = SuperParams::per_row(gpr);
    let blocks = &blocks[row0 * per..(row0 + rows) * per];
    for (i, sp) in blocks.iter().enumerate() {
        // SAFETY: the caller guarantees the features; 8 (i + 1) <= rows · stride, writable.
        unsafe {
            let (s, m) = super8(sp);
            _mm256_storeu_ps(scale.add(8 * i), s);
            _mm256_storeu_ps(min.add(8 * i), m);
        }
    }
    8 * per
}

/// Scales and minima of 8 groups given as u32 lanes `scale | min << 16`.
///
/// # Safety
/// The CPU supports AVX2 and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn params_to_f32(v: __m256i) -> (__m256, __m256) {
    // Pack to [s0..s3 m0..m3 | s4..s7 m4..m7] u16, then gather the halves.
    let s = _mm256_and_si256(v, _mm256_set1_epi32(0xFFFF));
    let m = _mm256_srli_epi32::<16>(v);
    let sm = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(s, m));
    (_mm256_cvtph_ps(_mm256_castsi256_si128(sm)), _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(sm)))
}
