//! The one definition of every quantized layout, shared by the packer, the CPU kernels and
//! (later) the CUDA kernels. `docs/FORMAT.md` restates these formulas; this code is the contract.
//!
//! # Nested 8-bit codes (`Encoding::Nested8`)
//! Each weight has an unsigned 8-bit code `q` in a group of `group_size` weights along a row.
//! The group stores `(scale, min)` as f16. A row is stored padded to a whole number of groups
//! (`padded_cols = ceil(cols / group_size) * group_size`; padding codes are 0, never read), so
//! the weight in row `r`, column `c` has flat index `i = r * padded_cols + c`, its group is
//! `i / group_size`, and every row starts on a byte boundary of every plane. The code's bits are split into planes, most
//! significant first, each plane stored contiguously for the whole tensor:
//!
//! | plane | bit positions | bits/weight | read by views |
//! |-------|---------------|-------------|---------------|
//! | 0     | 7..6          | 2           | 2, 3, 4, 8    |
//! | 1     | 5             | 1           | 3, 4, 8       |
//! | 2     | 4             | 1           | 4, 8          |
//! | 3     | 3..0          | 4           | 8             |
//!
//! A `k`-bit view uses the top `k` bits, `q_k = q >> (8 - k)`, and reconstructs the centre of
//! the bucket those bits name:
//! ```text
//! step   = scale * 2^(8-k)                     (exact: a power-of-two multiple)
//! offset = min + scale * (2^(8-k) - 1) / 2     (one f32 multiply, one f32 add)
//! w      = q_k * step + offset                 (one f32 multiply, one f32 add; no FMA)
//! ```
//! so the 8-bit view is `w = q * scale + min`.

use half::f16;

/// Per-group quantization parameters of [`crate::format::Encoding::Nested8`].
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct GroupParams {
    pub scale: f16,
    pub min: f16,
}

impl GroupParams {
    pub const SIZE: usize = 4;
}
const _: () = assert!(core::mem::size_of::<GroupParams>() == GroupParams::SIZE);

/// One plane of the nested codes: `bits` adjacent bit positions starting at `shift`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneSpec {
    pub bits: u8,
    pub shift: u8,
}

/// The planes of `Nested8`, most significant first (file order).
pub const NESTED8_PLANES: [PlaneSpec; 4] = [
    PlaneSpec { bits: 2, shift: 6 },
    PlaneSpec { bits: 1, shift: 5 },
    PlaneSpec { bits: 1, shift: 4 },
    PlaneSpec { bits: 4, shift: 0 },
];

/// Bit widths a `Nested8` tensor can be viewed at.
pub const NESTED8_VIEWS: [u8; 4] = [2, 3, 4, 8];

/// How many planes (a prefix of [`NESTED8_PLANES`]) a `view_bits` view reads, or `None` if the
/// view is not one of [`NESTED8_VIEWS`].
pub fn nested8_planes_for_view(view_bits: u8) -> Option<usize> {
    match view_bits {
        2 => Some(1),
        3 => Some(2),
        4 => Some(3),
        8 => Some(4),
        _ => None,
    }
}

/// `(step, offset)` of a `view_bits` view of a group, per the formulas above.
#[inline]
pub fn nested8_step_offset(p: GroupParams, view_bits: u8) -> (f32, f32) {
    let drop = 8 - view_bits as u32;
    let scale = p.scale.to_f32();
    let step = scale * (1u32 << drop) as f32;
    let centre = ((1u32 << drop) - 1) as f32 * 0.5;
    (step, p.min.to_f32() + scale * centre)
}

/// Read the `bits`-wide field of weight `i` from a plane.
#[inline]
pub fn plane_field(plane: &[u8], bits: u8, i: usize) -> u8 {
    let bit = i * bits as usize;
    (plane[bit / 8] >> (bit % 8)) & ((1u16 << bits) - 1) as u8
}

/// The top `view_bits` of weight `i`'s code, assembled from the first planes.
#[inline]
pub fn nested8_code(planes: &[&[u8]], view_bits: u8, i: usize) -> u8 {
    let n = nested8_planes_for_view(view_bits).unwrap_or(0).min(planes.len());
    let mut q = 0u8;
    for (p, spec) in planes[..n].iter().zip(NESTED8_PLANES) {
        q |= plane_field(p, spec.bits, i) << spec.shift;
    }
    q >> (8 - view_bits)
}

/// Scalar reference dequantization of `out.len()` weights starting at flat index `start`
/// (in the padded layout; a multiple of `group_size`). This is the contract every kernel
/// matches.
pub fn dequant_nested8(
    params: &[GroupParams],
    planes: &[&[u8]],
    group_size: usize,
    view_bits: u8,
    start: usize,
    out: &mut [f32],
) {
    for (j, o) in out.iter_mut().enumerate() {
        let i = start + j;
        let (step, offset) = nested8_step_offset(params[i / group_size], view_bits);
        *o = nested8_code(planes, view_bits, i) as f32 * step + offset;
    }
}

/// Pack 8-bit codes into the [`NESTED8_PLANES`] (used by the packer and by tests).
pub fn pack_nested8_planes(codes: &[u8]) -> [alloc::vec::Vec<u8>; 4] {
    NESTED8_PLANES.map(|spec| {
        let mut plane = alloc::vec![0u8; codes.len() * spec.bits as usize / 8];
        let mask = ((1u16 << spec.bits) - 1) as u8;
        for (i, &q) in codes.iter().enumerate() {
            let bit = i * spec.bits as usize;
            plane[bit / 8] |= ((q >> spec.shift) & mask) << (bit % 8);
        }
        plane
    })
}

/// The 4-bit view's codes `q >> 4` of the first `numel` codes (a multiple of 8) as one plane
/// of 4 bits per code in plane 3's layout (code `i` at bits `4·(i mod 2)` of byte `i / 2`),
/// from planes 0, 1 and 2: a copy some kernels read faster than three planes (see
/// `kernels::Nested8::nibbles`). Eight codes at a time: one byte of planes 1 and 2, two of
/// plane 0, four of the result.
pub fn repack_top_nibbles(planes: [&[u8]; 3], numel: usize) -> alloc::vec::Vec<u8> {
    assert!(numel % 8 == 0 && planes[0].len() >= numel / 4 && planes[1].len() >= numel / 8 && planes[2].len() >= numel / 8);
    let mut out = alloc::vec![0u8; numel / 2];
    let p0 = planes[0][..numel / 4].chunks_exact(2);
    for (((o, p0), &b1), &b2) in out.chunks_exact_mut(4).zip(p0).zip(planes[1]).zip(planes[2]) {
        let f0 = u16::from_le_bytes([p0[0], p0[1]]); // 2-bit fields of the 8 codes
        let nib = |k: usize| (((f0 >> (2 * k)) & 3) << 2) as u8 | ((b1 >> k) & 1) << 1 | ((b2 >> k) & 1);
        for (m, o) in o.iter_mut().enumerate() {
            *o = nib(2 * m) | nib(2 * m + 1) << 4;
        }
    }
    out
}

/// Bytes of one run of 256 codes in the 3-bit copy ([`repack_top3`]).
pub const TOP3_RUN_BYTES: usize = 96;

/// Subgroup of 32 codes held by dword `m` of every word of a [`repack_top3`] run (the lane
/// order the x86 decode kernel works in).
pub const TOP3_PI: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// Where code `j < 256` of a run sits in [`repack_top3`]'s layout: `(field r, byte b)`.
/// Inverse of `j = 32·PI[m] + 8·(r / 2) + 2c + r mod 2` with `b = 4m + c`.
fn top3_slot(j: usize) -> (usize, usize) {
    let m = TOP3_PI.iter().position(|&g| g == j / 32).unwrap_or(0);
    let w = j % 32;
    (2 * (w / 8) + w % 2, 4 * m + (w % 8) / 2)
}

/// The 3-bit view's codes `q >> 5` of the first `numel` codes (a multiple of 8), repacked for
/// kernels that read three bits per code in one pass (see `kernels::Nested8::repacked`), from
/// planes 0 and 1. Codes go in runs of 256 (flat index; the last run padded with zero codes),
/// 96 bytes each: words `A`, `B`, `C` of 32 bytes. Eight 3-bit fields `F0..F7` of 32 codes
/// each share them: byte `b = 4m + c` (`m < 8`, `c < 4`) of field `r` is code
/// `32·TOP3_PI[m] + 8·(r / 2) + 2c + r mod 2` of the run, and
/// ```text
/// A[b] = F0[b] | F1[b] << 3 | (F6[b] & 3) << 6
/// B[b] = F2[b] | F3[b] << 3 | (F7[b] & 3) << 6
/// C[b] = F4[b] | F5[b] << 3 | (F6[b] >> 2) << 6 | (F7[b] >> 2) << 7
/// ```
/// so each field is one or two shifts and masks of a word, and dword `m` of every field lies in
/// subgroup `TOP3_PI[m]`. Same bits per code as planes 0 and 1 (3), in one stream.
pub fn repack_top3(planes: [&[u8]; 2], numel: usize) -> alloc::vec::Vec<u8> {
    assert!(numel % 8 == 0 && planes[0].len() >= numel / 4 && planes[1].len() >= numel / 8);
    let runs = numel.div_ceil(256);
    let mut out = alloc::vec![0u8; runs * TOP3_RUN_BYTES];
    for (s, run) in out.chunks_exact_mut(TOP3_RUN_BYTES).enumerate() {
        for j in 0..256.min(numel - 256 * s) {
            let i = 256 * s + j;
            let f = plane_field(planes[0], 2, i) << 1 | plane_field(planes[1], 1, i);
            let (r, b) = top3_slot(j);
            match r {
                0..=5 => run[32 * (r / 2) + b] |= f << (3 * (r % 2)),
                _ => {
                    run[32 * (r - 6) + b] |= (f & 3) << 6;
                    run[64 + b] |= (f >> 2) << r;
                }
            }
        }
    }
    out
}

/// Code `i`'s 3-bit view `q >> 5`, read from [`repack_top3`]'s copy.
pub fn top3_code(buf: &[u8], i: usize) -> u8 {
    let run = &buf[(i / 256) * TOP3_RUN_BYTES..][..TOP3_RUN_BYTES];
    let (r, b) = top3_slot(i % 256);
    match r {
        0..=5 => (run[32 * (r / 2) + b] >> (3 * (r % 2))) & 7,
        _ => (run[32 * (r - 6) + b] >> 6) | ((run[64 + b] >> r) & 1) << 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repacked_nibbles_are_the_4bit_codes() {
        let codes: alloc::vec::Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let planes = pack_nested8_planes(&codes);
        let nib = repack_top_nibbles([&planes[0], &planes[1], &planes[2]], codes.len());
        let refs: alloc::vec::Vec<&[u8]> = planes.iter().map(|p| p.as_slice()).collect();
        for (i, &q) in codes.iter().enumerate() {
            assert_eq!(plane_field(&nib, 4, i), q >> 4, "code {i}");
            assert_eq!(plane_field(&nib, 4, i), nested8_code(&refs, 4, i), "code {i}");
        }
    }

    #[test]
    fn repacked_top3_are_the_3bit_codes() {
        // 4096 + 96 codes: whole runs and a padded last one.
        let codes: alloc::vec::Vec<u8> = (0..4192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let planes = pack_nested8_planes(&codes);
        let t3 = repack_top3([&planes[0], &planes[1]], codes.len());
        assert_eq!(t3.len(), 17 * TOP3_RUN_BYTES);
        let refs: alloc::vec::Vec<&[u8]> = planes.iter().map(|p| p.as_slice()).collect();
        for (i, &q) in codes.iter().enumerate() {
            assert_eq!(top3_code(&t3, i), q >> 5, "code {i}");
            assert_eq!(top3_code(&t3, i), nested8_code(&refs, 3, i), "code {i}");
        }
        // Every (field, byte) slot of a run holds exactly one code.
        let mut seen = [false; 256];
        for j in 0..256 {
            let (r, b) = top3_slot(j);
            assert!(r < 8 && b < 32 && !seen[r * 32 + b]);
            seen[r * 32 + b] = true;
        }
    }

    #[test]
    fn planes_round_trip_every_view() {
        let codes: alloc::vec::Vec<u8> = (0..64u32).map(|i| (i * 37 % 256) as u8).collect();
        let planes = pack_nested8_planes(&codes);
        let refs: alloc::vec::Vec<&[u8]> = planes.iter().map(|p| p.as_slice()).collect();
        for &v in &NESTED8_VIEWS {
            for (i, &q) in codes.iter().enumerate() {
                assert_eq!(nested8_code(&refs, v, i), q >> (8 - v), "view {v} weight {i}");
            }
        }
        // A 2-bit view needs only plane 0: passing only that plane gives the same codes.
        for (i, &q) in codes.iter().enumerate() {
            assert_eq!(nested8_code(&refs[..1], 2, i), q >> 6);
        }
    }

    #[test]
    fn view_reconstructs_bucket_centre() {
        let p = GroupParams { scale: f16::from_f32(0.5), min: f16::from_f32(-64.0) };
        let codes = [0u8, 255, 128, 77, 8, 16, 250, 3];
        let planes = pack_nested8_planes(&codes);
        let refs: alloc::vec::Vec<&[u8]> = planes.iter().map(|p| p.as_slice()).collect();
        let mut out = [0f32; 8];
        dequant_nested8(&[p], &refs, 8, 8, 0, &mut out);
        for (o, &q) in out.iter().zip(&codes) {
            assert_eq!(*o, q as f32 * 0.5 - 64.0);
        }
        dequant_nested8(&[p], &refs, 8, 2, 0, &mut out);
        // 2-bit view of code 255 is 3: bucket [192, 255], centre 223.5.
        assert_eq!(out[1], 223.5 * 0.5 - 64.0);
        assert_eq!(out[0], 31.5 * 0.5 - 64.0);
    }
}
