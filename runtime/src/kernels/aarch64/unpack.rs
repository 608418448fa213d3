//! Rebuilding a view's codes from the bit planes, 32 codes at a time, in natural order, so the
//! activations are read as [`super::super::acts`] stores them.
//!
//! The sources ([`Planes`]) are stored planes 0, 1 and 2, then source 3: the 8-bit view's
//! nibble plane (the view's `Prepared::Nibbles`) or, for the 5- and 6-bit views, stored plane
//! 3, then source 4: stored plane 4 (6-bit view). For a chunk of 32 codes starting at flat code
//! index `i` (a multiple of 32) they hold 8 bytes (plane 0, 2 bits/code), 4 bytes (each 1-bit
//! plane) and 16 bytes (the nibbles, 4 bits/code). Every lane of the two output vectors (codes
//! 0..16 and 16..32 of the chunk) is rebuilt with table lookups and per-lane shifts:
//! - plane 0: `tbl` spreads byte `L / 4` to lane `L`, `ushl` by `pos - 2 (L % 4)` moves the
//!   field to its place in the view code, a mask keeps it;
//! - 1-bit planes (1 to 4): `tbl` spreads byte `L / 8` to lane `L`, `cmtst` with `1 << (L % 8)`
//!   gives 0 or -1, which is masked (or, at bit 0, subtracted) into the code;
//! - nibbles: low nibbles are the even codes, high nibbles the odd ones, `zip` interleaves them.
//!
//! Views of up to 6 bits produce `q_k` (0..=63) directly. The 8-bit view produces its top
//! nibble (`q >> 4`, the 4-bit view's code) and its low nibble (`q & 15`, source 3)
//! separately, because `sdot`/`smull` multiply signed bytes:
//! `q · x = 16 (q >> 4) · x + (q & 15) · x`.
//!
//! These helpers are `#[inline(always)]` so they compile inside the `#[target_feature]`
//! kernels of [`super::nested8`] that call them.

use core::arch::aarch64::*;

/// Position of plane 0's field in a view's code (the 8-bit view builds its top nibble).
const fn plane0_pos(view_bits: u8) -> i8 {
    match view_bits {
        2..=6 => view_bits as i8 - 2,
        _ => 2,
    }
}

/// Constant vectors of the unpacking, built once per kernel call.
#[derive(Clone, Copy)]
pub(super) struct Consts {
    /// `tbl` indices of plane 0: lane `L` of codes 0..16 reads byte `L / 4`, of codes 16..32
    /// byte `4 + L / 4`.
    p0_idx_lo: uint8x16_t,
    p0_idx_hi: uint8x16_t,
    /// Per-lane shift bringing field `L % 4` (at bit `2 (L % 4)`) to the view's position.
    p0_shift: int8x16_t,
    /// The two bits of plane 0 in the view code.
    p0_mask: uint8x16_t,
    /// `tbl` indices of a 1-bit plane: lane `L` reads byte `L / 8` (codes 0..16), `2 + L / 8`
    /// (codes 16..32).
    bit_idx_lo: uint8x16_t,
    bit_idx_hi: uint8x16_t,
    /// `1 << (L % 8)`.
    bit_sel: uint8x16_t,
    nibble: uint8x16_t,
}

impl Consts {
    /// # Safety
    /// The CPU must support NEON (every kernel calling this is `#[target_feature(enable = "neon")]`).
    #[inline(always)]
    pub(super) unsafe fn new<const V: u8>() -> Consts {
        let pos = plane0_pos(V);
        let mut p0_idx_lo = [0u8; 16];
        let mut p0_idx_hi = [0u8; 16];
        let mut p0_shift = [0i8; 16];
        let mut bit_idx_lo = [0u8; 16];
        let mut bit_idx_hi = [0u8; 16];
        let mut bit_sel = [0u8; 16];
        for l in 0..16 {
            p0_idx_lo[l] = (l / 4) as u8;
            p0_idx_hi[l] = (4 + l / 4) as u8;
            p0_shift[l] = pos - 2 * (l % 4) as i8;
            bit_idx_lo[l] = (l / 8) as u8;
            bit_idx_hi[l] = (2 + l / 8) as u8;
            bit_sel[l] = 1 << (l % 8);
        }
        Consts {
            p0_idx_lo: vld1q_u8(p0_idx_lo.as_ptr()),
            p0_idx_hi: vld1q_u8(p0_idx_hi.as_ptr()),
            p0_shift: vld1q_s8(p0_shift.as_ptr()),
            p0_mask: vdupq_n_u8(3 << pos),
            bit_idx_lo: vld1q_u8(bit_idx_lo.as_ptr()),
            bit_idx_hi: vld1q_u8(bit_idx_hi.as_ptr()),
            bit_sel: vld1q_u8(bit_sel.as_ptr()),
            nibble: vdupq_n_u8(0x0f),
        }
    }
}

/// Raw starts of what a kernel reads: stored planes 0, 1 and 2, then the 8-bit view's nibble
/// plane or stored plane 3 (views 5, 6), then stored plane 4 (view 6)
/// ([`super::nested8::sources`]; bounds checked by the kernel before any read).
pub(super) type Planes = [*const u8; 5];

/// Merge a 1-bit plane into the codes at bit `POS` (0 to 4).
///
/// # Safety
/// `plane.add(i / 8)` must be readable for 4 bytes; NEON present.
#[inline(always)]
unsafe fn merge_bit_plane<const POS: u8>(
    plane: *const u8,
    i: usize,
    k: &Consts,
    lo: uint8x16_t,
    hi: uint8x16_t,
) -> (uint8x16_t, uint8x16_t) {
    let bytes = vreinterpretq_u8_u32(vdupq_n_u32((plane.add(i / 8) as *const u32).read_unaligned()));
    let set_lo = vtstq_u8(vqtbl1q_u8(bytes, k.bit_idx_lo), k.bit_sel);
    let set_hi = vtstq_u8(vqtbl1q_u8(bytes, k.bit_idx_hi), k.bit_sel);
    if POS == 0 {
        // `set` is 0 or 0xff (-1), and bit 0 of the code is still clear: subtracting adds 1.
        (vsubq_u8(lo, set_lo), vsubq_u8(hi, set_hi))
    } else {
        let bit = vdupq_n_u8(1 << POS);
        (vorrq_u8(lo, vandq_u8(set_lo, bit)), vorrq_u8(hi, vandq_u8(set_hi, bit)))
    }
}

/// The view codes of the 32-code chunk at flat code index `i` (a multiple of 32), natural
/// order: `[top_lo, top_hi, low_lo, low_hi]` where `lo` is codes 0..16 and `hi` codes 16..32
/// of the chunk. For `V` < 8, `top` is `q_V` (0..=63) and `low` is zero; for `V` = 8, `top` is
/// `q >> 4` and `low` is `q & 15`.
///
/// # Safety
/// The sources view `V` reads must be readable for the chunk's bytes (`i / 4 .. i / 4 + 8`,
/// `i / 8 .. i / 8 + 4`, nibbles `i / 2 .. i / 2 + 16`); NEON present.
#[inline(always)]
pub(super) unsafe fn unpack32<const V: u8>(planes: &Planes, i: usize, k: &Consts) -> [int8x16_t; 4] {
    // Plane 0: 8 bytes, 4 codes each.
    let p0 = vld1_u8(planes[0].add(i / 4));
    let p0 = vcombine_u8(p0, p0);
    let mut lo = vandq_u8(vshlq_u8(vqtbl1q_u8(p0, k.p0_idx_lo), k.p0_shift), k.p0_mask);
    let mut hi = vandq_u8(vshlq_u8(vqtbl1q_u8(p0, k.p0_idx_hi), k.p0_shift), k.p0_mask);
    match V {
        3 => (lo, hi) = merge_bit_plane::<0>(planes[1], i, k, lo, hi),
        4 | 8 => {
            (lo, hi) = merge_bit_plane::<1>(planes[1], i, k, lo, hi);
            (lo, hi) = merge_bit_plane::<0>(planes[2], i, k, lo, hi);
        }
        5 => {
            (lo, hi) = merge_bit_plane::<2>(planes[1], i, k, lo, hi);
            (lo, hi) = merge_bit_plane::<1>(planes[2], i, k, lo, hi);
            (lo, hi) = merge_bit_plane::<0>(planes[3], i, k, lo, hi);
        }
        6 => {
            (lo, hi) = merge_bit_plane::<3>(planes[1], i, k, lo, hi);
            (lo, hi) = merge_bit_plane::<2>(planes[2], i, k, lo, hi);
            (lo, hi) = merge_bit_plane::<1>(planes[3], i, k, lo, hi);
            (lo, hi) = merge_bit_plane::<0>(planes[4], i, k, lo, hi);
        }
        _ => {}
    }
    let (mut low_lo, mut low_hi) = (vdupq_n_u8(0), vdupq_n_u8(0));
    if V == 8 {
        // Plane 3: 16 bytes, the even code in the low nibble, the odd one in the high nibble.
        let p3 = vld1q_u8(planes[3].add(i / 2));
        let even = vandq_u8(p3, k.nibble);
        let odd = vshrq_n_u8::<4>(p3);
        low_lo = vzip1q_u8(even, odd);
        low_hi = vzip2q_u8(even, odd);
    }
    [
        vreinterpretq_s8_u8(lo),
        vreinterpretq_s8_u8(hi),
        vreinterpretq_s8_u8(low_lo),
        vreinterpretq_s8_u8(low_hi),
    ]
}

// ---------------------------------------------------------------------------------------------
// Block order: 128 codes at a time, each plane unpacked in the order its bits lie in the
// register. Byte `b` (0..16) of a 1-bit plane's 16 bytes holds codes `8b..8b + 8`, so
// `(plane >> k) & 1` is code `8b + k` in lane `b`; plane 0's 32 bytes, de-interleaved into even
// and odd bytes (`uzp`), give the same order with fields `k % 4`, and source 3's 64 bytes
// loaded 4-way de-interleaved (`ld4`) give it in the low and high nibbles. So vector `k`
// (0..8) of the block holds codes `8b + k` for every plane, and the activations are read in
// that order from a transposed copy ([`transpose_block`]). `sdot` lane `j` then sums bytes
// `4j..4j + 4`, codes `32j..32j + 32`: one 32-code chunk per lane, so group sums (groups of 32
// codes or more) stay separable.
// ---------------------------------------------------------------------------------------------

/// Codes per block of the block order.
pub(super) const BLOCK: usize = 128;

/// Position `8b + k` of a block goes to `16k + b` in the transposed activations: vector `k`
/// gathers bytes `8b + k` with two 64-byte table lookups (`tbl` gives 0 out of range).
///
/// # Safety
/// NEON present.
#[inline(always)]
pub(super) unsafe fn transpose_block(src: &[i8], dst: &mut [i8]) {
    assert!(src.len() >= BLOCK && dst.len() >= BLOCK);
    let p = src.as_ptr() as *const u8;
    let (lo, hi) = (vld1q_u8_x4(p), vld1q_u8_x4(p.add(64)));
    let sixty_four = vdupq_n_u8(64);
    let mut idx = {
        let mut i = [0u8; 16];
        for (b, v) in i.iter_mut().enumerate() {
            *v = 8 * b as u8;
        }
        vld1q_u8(i.as_ptr())
    };
    for k in 0..8 {
        // Lanes 0..8 read `lo` (the `hi` index wraps past 63), lanes 8..16 read `hi`.
        let v = vorrq_u8(vqtbl4q_u8(lo, idx), vqtbl4q_u8(hi, vsubq_u8(idx, sixty_four)));
        vst1q_u8(dst.as_mut_ptr().add(16 * k) as *mut u8, v);
        idx = vaddq_u8(idx, vdupq_n_u8(1));
    }
}

/// The planes of one 128-code block, loaded (the planes a view does not read are zero).
#[derive(Clone, Copy)]
pub(super) struct Block {
    /// Plane 0's even and odd bytes: lane `b` holds codes `8b..8b + 4` and `8b + 4..8b + 8`.
    even: uint8x16_t,
    odd: uint8x16_t,
    /// The 1-bit planes 1 to 4 (stored planes 3 and 4 for views 5 and 6 only).
    p1: uint8x16_t,
    p2: uint8x16_t,
    b3: uint8x16_t,
    b4: uint8x16_t,
    /// The nibbles (view 8), bytes `4b + j` in `p3.j`: codes `8b + 2j` (low nibble) and
    /// `8b + 2j + 1`.
    p3: uint8x16x4_t,
}

/// Load the block at flat code index `i` (a multiple of 128).
///
/// # Safety
/// The view's sources must be readable for the block's bytes (`i / 4 .. + 32`, `i / 8 .. + 16`,
/// nibbles `i / 2 .. + 64`); NEON present.
#[inline(always)]
pub(super) unsafe fn load_block<const V: u8>(planes: &Planes, i: usize) -> Block {
    let zero = vdupq_n_u8(0);
    let (a, b) = (vld1q_u8(planes[0].add(i / 4)), vld1q_u8(planes[0].add(i / 4 + 16)));
    Block {
        even: vuzp1q_u8(a, b),
        odd: vuzp2q_u8(a, b),
        p1: if V >= 3 { vld1q_u8(planes[1].add(i / 8)) } else { zero },
        p2: if V >= 4 { vld1q_u8(planes[2].add(i / 8)) } else { zero },
        b3: if matches!(V, 5 | 6) { vld1q_u8(planes[3].add(i / 8)) } else { zero },
        b4: if V == 6 { vld1q_u8(planes[4].add(i / 8)) } else { zero },
        p3: if V == 8 { vld4q_u8(planes[3].add(i / 2)) } else { uint8x16x4_t(zero, zero, zero, zero) },
    }
}

/// `v >> N`, with `N = 0` allowed.
macro_rules! shr {
    ($v:expr, 0) => {
        $v
    };
    ($v:expr, $n:literal) => {
        vshrq_n_u8::<$n>($v)
    };
}

/// Vector `K` of a block: `[top, low]` codes `8b + K` in lane `b`, as in [`unpack32`] (`top`
/// is `q_V`, or `q >> 4` for the 8-bit view; `low` is `q & 15` for the 8-bit view).
macro_rules! block_codes {
    ($V:ident, $blk:expr, $k:tt, $half:ident, $field:tt, $nib:tt, $nib_hi:tt) => {{
        let blk = &$blk;
        let a = shr!(blk.$half, $field);
        // `sli::<n>(x, y)` = `y << n | x & (2^n - 1)`: each plane's bit k slides in below.
        let top = match $V {
            2 => vandq_u8(a, vdupq_n_u8(3)),
            3 => vandq_u8(vsliq_n_u8::<1>(shr!(blk.p1, $k), a), vdupq_n_u8(7)),
            5 => {
                let b = vsliq_n_u8::<2>(vsliq_n_u8::<1>(shr!(blk.b3, $k), shr!(blk.p2, $k)), shr!(blk.p1, $k));
                vandq_u8(vsliq_n_u8::<3>(b, a), vdupq_n_u8(31))
            }
            6 => {
                let b = vsliq_n_u8::<2>(vsliq_n_u8::<1>(shr!(blk.b4, $k), shr!(blk.b3, $k)), shr!(blk.p2, $k));
                vandq_u8(vsliq_n_u8::<4>(vsliq_n_u8::<3>(b, shr!(blk.p1, $k)), a), vdupq_n_u8(63))
            }
            _ => vandq_u8(vsliq_n_u8::<2>(vsliq_n_u8::<1>(shr!(blk.p2, $k), shr!(blk.p1, $k)), a), vdupq_n_u8(15)),
        };
        let low = if $V == 8 {
            if $nib_hi {
                vshrq_n_u8::<4>(blk.p3.$nib)
            } else {
                vandq_u8(blk.p3.$nib, vdupq_n_u8(15))
            }
        } else {
            vdupq_n_u8(0)
        };
        (vreinterpretq_s8_u8(top), vreinterpretq_s8_u8(low))
    }};
}

/// Vectors `2P` and `2P + 1` of a block: `((top_2P, low_2P), (top_2P+1, low_2P+1))`.
///
/// # Safety
/// NEON present.
#[inline(always)]
pub(super) unsafe fn block_pair<const V: u8, const P: usize>(blk: &Block) -> [(int8x16_t, int8x16_t); 2] {
    match P {
        0 => [block_codes!(V, blk, 0, even, 0, 0, false), block_codes!(V, blk, 1, even, 2, 0, true)],
        1 => [block_codes!(V, blk, 2, even, 4, 1, false), block_codes!(V, blk, 3, even, 6, 1, true)],
        2 => [block_codes!(V, blk, 4, odd, 0, 2, false), block_codes!(V, blk, 5, odd, 2, 2, true)],
        _ => [block_codes!(V, blk, 6, odd, 4, 3, false), block_codes!(V, blk, 7, odd, 6, 3, true)],
    }
}
