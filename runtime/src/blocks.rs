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
//! | plane | bit positions | bits/weight | read by views      |
//! |-------|---------------|-------------|--------------------|
//! | 0     | 7..6          | 2           | 2, 3, 4, 5, 6, 8   |
//! | 1     | 5             | 1           | 3, 4, 5, 6, 8      |
//! | 2     | 4             | 1           | 4, 5, 6, 8         |
//! | 3     | 3             | 1           | 5, 6, 8            |
//! | 4     | 2             | 1           | 6, 8               |
//! | 5     | 1..0          | 2           | 8                  |
//!
//! A `k`-bit view uses the top `k` bits, `q_k = q >> (8 - k)`, and reconstructs the centre of
//! the bucket those bits name:
//! ```text
//! step   = scale * 2^(8-k)                     (exact: a power-of-two multiple)
//! offset = min + scale * (2^(8-k) - 1) / 2     (one f32 multiply, one f32 add)
//! w      = q_k * step + offset                 (one f32 multiply, one f32 add; no FMA)
//! ```
//! so the 8-bit view is `w = q * scale + min`.
//!
//! The code of a weight `x` under a group's parameters ([`nested8_quantize`]) is
//! ```text
//! q = clamp(round_half_even((x - min) / scale), 0, 255)    (f32 subtract, f32 divide; 0 if scale <= 0)
//! ```
//! (NaN codes 0). The packer's min/max codes and the Python trainer (`trainer-bridge/python`)
//! both use it; the shared test vectors (`trainer-bridge/examples/contract_vectors.rs`) pin it.
//!
//! # Group parameters
//! Every formula above reads a group's `(scale, min)` as f32 ([`Affine`]). They are stored one
//! of two ways ([`ParamsRef`]):
//! - [`GroupParams`] (`Encoding::Nested8`): an f16 pair per group, `scale.to_f32()`, `min.to_f32()`;
//! - [`SuperParams`] (`Encoding::Nested8Super`): each row's groups in super-blocks of
//!   [`SuperParams::GROUPS`] (the row's last one padded with zero codes; a block never spans two
//!   rows, so a super-block is one range of columns in every row), each holding f16 `d` and
//!   `dmin` and per group a 6-bit scale code `s` (0..=63) and a 6-bit signed minimum code `m`
//!   (-32..=31):
//!   ```text
//!   scale = f32(d) * s        min = f32(dmin) * m        (both exact in f32: 11 x 6 bits)
//!   ```
//!   so smaller groups cost no more parameter bytes (16 bytes per 8 groups: 0.5 bits per weight
//!   at groups of 32 in rows of a multiple of 256 weights, where f16 pairs cost 1.0).

use half::{bf16, f16};

/// A tensor's values as stored, before a view is chosen: what a `kernels::Matrix` borrows
/// (`Matrix::from_blocks`, which picks the view). The rows and columns travel beside it; a
/// checkpoint's `TensorInfo::blocks` gives all three.
#[derive(Debug, Clone, Copy)]
pub enum TensorBlocks<'a> {
    /// (rows, cols) values, row-major.
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
    /// Nested 8-bit codes (see the module docs).
    Nested8 {
        /// (rows, row_stride / group_size) group scales and minima.
        params: ParamsRef<'a>,
        /// The planes of [`NESTED8_PLANES`] in file order (empty where the tensor has none).
        planes: [&'a [u8]; 6],
        /// Codes per group (a row has `row_stride / group_size` groups).
        group_size: usize,
        /// Codes from one row to the next: the column count padded to whole groups.
        row_stride: usize,
    },
}

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

/// A group's `(scale, min)` as every reconstruction reads them (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    pub scale: f32,
    pub min: f32,
}

impl From<GroupParams> for Affine {
    #[inline]
    fn from(p: GroupParams) -> Self {
        Affine { scale: p.scale.to_f32(), min: p.min.to_f32() }
    }
}

/// The parameters of [`SuperParams::GROUPS`] consecutive groups of
/// `Encoding::Nested8Super` (see the module docs). Group `j`'s codes: `s_j = lo[j] & 63`;
/// `m_j + 32 = lo[j] >> 6 | (nibble j of hi) << 2`, nibble `j` being bits `4(j % 2)..` of `hi[j / 2]`.
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct SuperParams {
    pub d: f16,
    pub dmin: f16,
    pub lo: [u8; 8],
    pub hi: [u8; 4],
}

impl SuperParams {
    pub const SIZE: usize = 16;
    /// Groups per super-block.
    pub const GROUPS: usize = 8;
    /// Largest scale code.
    pub const S_MAX: u8 = 63;
    /// Range of the minimum codes.
    pub const M_MIN: i8 = -32;
    pub const M_MAX: i8 = 31;

    /// A super-block from its f16 pair and its groups' codes (`s <= 63`, `-32 <= m <= 31`).
    pub fn new(d: f16, dmin: f16, s: [u8; 8], m: [i8; 8]) -> Self {
        let mut out = SuperParams { d, dmin, lo: [0; 8], hi: [0; 4] };
        for j in 0..Self::GROUPS {
            debug_assert!(s[j] <= Self::S_MAX && (Self::M_MIN..=Self::M_MAX).contains(&m[j]));
            let u = (m[j] as i16 + 32) as u8 & 63;
            out.lo[j] = (s[j] & 63) | (u & 3) << 6;
            out.hi[j / 2] |= (u >> 2) << (4 * (j % 2));
        }
        out
    }

    /// Group `j`'s scale code.
    #[inline]
    pub fn s(&self, j: usize) -> u8 {
        self.lo[j] & 63
    }

    /// Group `j`'s minimum code.
    #[inline]
    pub fn m(&self, j: usize) -> i8 {
        ((self.lo[j] >> 6) | ((self.hi[j / 2] >> (4 * (j % 2))) & 15) << 2) as i8 - 32
    }

    /// Group `j`'s parameters.
    #[inline]
    pub fn group(&self, j: usize) -> Affine {
        Self::affine(self.d, self.dmin, self.s(j), self.m(j))
    }

    /// The parameters a group with codes `s`, `m` has under `(d, dmin)` (see the module docs).
    #[inline]
    pub fn affine(d: f16, dmin: f16, s: u8, m: i8) -> Affine {
        Affine { scale: d.to_f32() * s as f32, min: dmin.to_f32() * m as f32 }
    }

    /// Super-blocks per row of `groups_per_row` groups.
    pub const fn per_row(groups_per_row: usize) -> usize {
        groups_per_row.div_ceil(Self::GROUPS)
    }
}
const _: () = assert!(core::mem::size_of::<SuperParams>() == SuperParams::SIZE);

/// A tensor's group parameters as stored, in either layout (see the module docs).
#[derive(Debug, Clone, Copy)]
pub enum ParamsRef<'a> {
    F16(&'a [GroupParams]),
    /// [`SuperParams::per_row`] blocks per row of `groups_per_row` groups.
    Super { blocks: &'a [SuperParams], groups_per_row: usize },
}

impl<'a> ParamsRef<'a> {
    /// How many groups the stored parameters cover (a whole number of super-blocks).
    pub fn groups(&self) -> usize {
        match *self {
            ParamsRef::F16(p) => p.len(),
            ParamsRef::Super { blocks, groups_per_row } => blocks.len() / SuperParams::per_row(groups_per_row).max(1) * groups_per_row,
        }
    }

    /// Group `g`'s parameters (`g < self.groups()`).
    #[inline]
    pub fn get(&self, g: usize) -> Affine {
        match *self {
            ParamsRef::F16(p) => p[g].into(),
            ParamsRef::Super { blocks, groups_per_row: gpr } => {
                let c = g % gpr;
                blocks[g / gpr * SuperParams::per_row(gpr) + c / SuperParams::GROUPS].group(c % SuperParams::GROUPS)
            }
        }
    }

    /// The stored bytes.
    pub fn bytes(&self) -> &'a [u8] {
        match *self {
            ParamsRef::F16(p) => bytemuck::cast_slice(p),
            ParamsRef::Super { blocks, .. } => bytemuck::cast_slice(blocks),
        }
    }

    /// Whether any group's scale or minimum is not finite (f16 infinities or NaN).
    pub fn first_non_finite(&self) -> Option<usize> {
        match self {
            ParamsRef::F16(p) => p.iter().position(|p| !p.scale.is_finite() || !p.min.is_finite()),
            ParamsRef::Super { blocks, groups_per_row: gpr } => {
                let per = SuperParams::per_row(*gpr);
                blocks.iter().position(|p| !p.d.is_finite() || !p.dmin.is_finite()).map(|i| i / per * gpr + i % per * SuperParams::GROUPS)
            }
        }
    }
}

impl<'a> From<&'a [GroupParams]> for ParamsRef<'a> {
    fn from(p: &'a [GroupParams]) -> Self {
        ParamsRef::F16(p)
    }
}

impl<'a> From<&'a alloc::vec::Vec<GroupParams>> for ParamsRef<'a> {
    fn from(p: &'a alloc::vec::Vec<GroupParams>) -> Self {
        ParamsRef::F16(p)
    }
}


/// One plane of the nested codes: `bits` adjacent bit positions starting at `shift`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneSpec {
    pub bits: u8,
    pub shift: u8,
}

/// The planes of `Nested8`, most significant first (file order).
pub const NESTED8_PLANES: [PlaneSpec; 6] = [
    PlaneSpec { bits: 2, shift: 6 },
    PlaneSpec { bits: 1, shift: 5 },
    PlaneSpec { bits: 1, shift: 4 },
    PlaneSpec { bits: 1, shift: 3 },
    PlaneSpec { bits: 1, shift: 2 },
    PlaneSpec { bits: 2, shift: 0 },
];

/// Bit widths a `Nested8` tensor can be viewed at.
pub const NESTED8_VIEWS: [u8; 6] = [2, 3, 4, 5, 6, 8];

/// Whether `view_bits` is one of [`NESTED8_VIEWS`].
pub fn is_nested8_view(view_bits: u8) -> bool {
    NESTED8_VIEWS.contains(&view_bits)
}

/// How many planes (a prefix of [`NESTED8_PLANES`]) a `view_bits` view reads, or `None` if the
/// view is not one of [`NESTED8_VIEWS`].
pub fn nested8_planes_for_view(view_bits: u8) -> Option<usize> {
    match view_bits {
        2 => Some(1),
        3..=6 => Some(view_bits as usize - 1),
        8 => Some(6),
        _ => None,
    }
}

/// The planes the SIMD kernels read for the 8-bit view: planes 0..2 as stored, then the low
/// nibble (bits 3..0), assembled at load from planes 3..5 by [`low_nibbles`] (the same bytes as
/// those three planes, in one read per code pair).
pub const NESTED8_KERNEL_PLANES: [PlaneSpec; 4] = [
    PlaneSpec { bits: 2, shift: 6 },
    PlaneSpec { bits: 1, shift: 5 },
    PlaneSpec { bits: 1, shift: 4 },
    PlaneSpec { bits: 4, shift: 0 },
];

/// The low nibble `q & 15` of the first `numel` codes (a multiple of 8), two per byte, least
/// significant first (plane 3 of [`NESTED8_KERNEL_PLANES`]), from planes 3..5 of
/// [`NESTED8_PLANES`] (`planes` holds all six).
pub fn low_nibbles(planes: &[&[u8]], numel: usize) -> alloc::vec::Vec<u8> {
    assert!(planes.len() >= 6 && numel.is_multiple_of(8));
    assert!(planes.iter().zip(NESTED8_PLANES).skip(3).all(|(p, s)| p.len() * 8 >= numel * s.bits as usize));
    let mut out = alloc::vec![0u8; numel / 2];
    // Codes 8k..8k+8: byte k of each 1-bit plane, bytes 2k and 2k+1 of the 2-bit one; code j's
    // nibble is bits 4j..4j+4 of the little-endian word written.
    for (k, dst) in out.chunks_exact_mut(4).enumerate() {
        let word = SPREAD1[planes[3][k] as usize] << 3
            | SPREAD1[planes[4][k] as usize] << 2
            | SPREAD2[planes[5][2 * k] as usize]
            | SPREAD2[planes[5][2 * k + 1] as usize] << 16;
        dst.copy_from_slice(&word.to_le_bytes());
    }
    out
}

/// Bit `j` of the index moved to bit `4j` (eight 1-bit fields to nibble positions).
const SPREAD1: [u32; 256] = spread_table(1);
/// 2-bit field `j` of the index moved to bits `4j..4j+2` (four fields to nibble positions).
const SPREAD2: [u32; 256] = spread_table(2);

/// For every byte, its `8 / bits` fields of `bits` bits, field `j` moved to bit `4j`.
const fn spread_table(bits: u32) -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut j = 0;
        while j < 8 / bits {
            t[i] |= ((i as u32 >> (bits * j)) & ((1 << bits) - 1)) << (4 * j);
            j += 1;
        }
        i += 1;
    }
    t
}

/// `(step, offset)` of a `view_bits` view of a group, per the formulas above.
#[inline]
pub fn nested8_step_offset(p: impl Into<Affine>, view_bits: u8) -> (f32, f32) {
    let Affine { scale, min } = p.into();
    let drop = 8 - view_bits as u32;
    let step = scale * (1u32 << drop) as f32;
    let centre = ((1u32 << drop) - 1) as f32 * 0.5;
    (step, min + scale * centre)
}

/// The 8-bit code of weight `x` under `p`: `(x - min) / scale` rounded half to even and
/// clamped to `0..=255` (0 when the scale is not positive, or for NaN), per the module docs.
#[inline]
pub fn nested8_quantize(x: f32, p: impl Into<Affine>) -> u8 {
    let Affine { scale, min } = p.into();
    if scale > 0.0 {
        // rintf rounds half to even (core has no rounding without std); `as u8` maps NaN to 0.
        libm::rintf((x - min) / scale).clamp(0.0, 255.0) as u8
    } else {
        0
    }
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

/// The codes `i0..i0 + q.len()` (`i0` and `q.len()` multiples of 8) with the fields of the
/// planes `planes` (laid out as `specs` say) in place and the bits of planes not given zero:
/// [`nested8_code`]'s assembly before its shift, a byte of each plane at a time. Codes past a
/// plane's end get none of its bits.
pub fn nested8_codes_into(planes: &[&[u8]], specs: &[PlaneSpec], i0: usize, q: &mut [u8]) {
    assert!(i0.is_multiple_of(8) && q.len().is_multiple_of(8));
    q.fill(0);
    for (plane, spec) in planes.iter().zip(specs) {
        let bits = spec.bits as usize;
        let (lo, hi) = ((i0 * bits / 8).min(plane.len()), ((i0 + q.len()) * bits / 8).min(plane.len()));
        match bits {
            1 => spread::<1>(q, &plane[lo..hi], spec.shift),
            2 => spread::<2>(q, &plane[lo..hi], spec.shift),
            _ => spread::<4>(q, &plane[lo..hi], spec.shift),
        }
    }
}

/// Scalar reference dequantization of `out.len()` weights starting at flat index `start`
/// (in the padded layout; a multiple of `group_size`). This is the contract every kernel
/// matches.
pub fn dequant_nested8<'a>(
    params: impl Into<ParamsRef<'a>>,
    planes: &[&[u8]],
    group_size: usize,
    view_bits: u8,
    start: usize,
    out: &mut [f32],
) {
    let params = params.into();
    for (j, o) in out.iter_mut().enumerate() {
        let i = start + j;
        let (step, offset) = nested8_step_offset(params.get(i / group_size), view_bits);
        *o = nested8_code(planes, view_bits, i) as f32 * step + offset;
    }
}

/// Pack 8-bit codes into the [`NESTED8_PLANES`] (used by the packer and by tests).
pub fn pack_nested8_planes(codes: &[u8]) -> [alloc::vec::Vec<u8>; 6] {
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

/// Codes per run of a view repacked into runs ([`repack_top`]).
pub const RUN_CODES: usize = 256;

/// Subgroup of 32 codes held by dword `m` of every word of a [`repack_top`] run (the lane order
/// the x86 decode kernel works in).
pub const RUN_PI: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// Bytes of one run of 256 codes of a `view_bits`-bit copy ([`repack_top`]).
pub const fn run_bytes(view_bits: u8) -> usize {
    32 * view_bits as usize
}

/// The code of a run (< 256) that field `r` of byte `b = 4m + c` holds in [`repack_top`]'s
/// layout: `32·RUN_PI[m] + 2c + 8·(r / 2) + r mod 2`.
#[inline(always)]
fn run_code(r: usize, b: usize) -> usize {
    32 * RUN_PI[b / 4] + 2 * (b % 4) + 8 * (r / 2) + r % 2
}

/// Where code `j < 256` of a run sits in [`repack_top`]'s layout: `(field r, byte b)`, the
/// inverse of [`run_code`].
fn run_slot(j: usize) -> (usize, usize) {
    let m = RUN_PI.iter().position(|&g| g == j / 32).unwrap_or(0);
    let w = j % 32;
    (2 * (w / 8) + w % 2, 4 * m + (w % 8) / 2)
}

/// `q[i] |= field i << shift` for the `8 / BITS` fields of `BITS` bits (1, 2 or 4) in each of
/// `bytes`, least significant first.
fn spread<const BITS: usize>(q: &mut [u8], bytes: &[u8], shift: u8) {
    let mask = ((1u16 << BITS) - 1) as u8;
    for (dst, &byte) in q.chunks_exact_mut(8 / BITS).zip(bytes) {
        for (f, d) in dst.iter_mut().enumerate() {
            *d |= ((byte >> (f * BITS)) & mask) << shift;
        }
    }
}

/// The `view_bits`-bit view's codes `q >> (8 - view_bits)` (2 to 6 or 8 bits) of the first
/// `numel` codes (a multiple of 8), repacked from the view's planes for kernels that read a
/// code in one pass (`kernels::Prepared::Runs`). Codes go in runs of 256 (flat index;
/// the last run padded with zero codes), `32 · view_bits` bytes each: `view_bits` words of 32
/// bytes. Eight fields `F0..F7` of 32 codes each share them: byte `b = 4m + c` (`m < 8`,
/// `c < 4`) of field `r` is code `32·RUN_PI[m] + 8·(r / 2) + 2c + r mod 2` of the run, and
/// ```text
/// 2 bits:  A[b] = F0 | F1 << 2 | F2 << 4 | F3 << 6          B[b] = F4 | F5 << 2 | F6 << 4 | F7 << 6
/// 3 bits:  A[b] = F0 | F1 << 3 | (F6 & 3) << 6              B[b] = F2 | F3 << 3 | (F7 & 3) << 6
///          C[b] = F4 | F5 << 3 | (F6 >> 2) << 6 | (F7 >> 2) << 7
/// 4 bits:  W_i[b] = F_2i | F_2i+1 << 4   (i < 4)
/// 5 bits:  W_i[b] = F_i | (F_i+5 & 7) << 5   (i < 3)
///          W_3[b] = F3 | (F5 >> 3) << 5 | (F7 >> 3 & 1) << 7
///          W_4[b] = F4 | (F6 >> 3) << 5 | (F7 >> 4) << 7
/// 6 bits:  W_i[b] = F_i | (F_6+i%2 >> 2·(i/2) & 3) << 6   (i < 6: F6 in the top bits of W0,
///          W2, W4, low bits first; F7 in those of W1, W3, W5)
/// 8 bits:  W_i[b] = F_i   (i < 8)
/// ```
/// (each `F` at byte `b`), so each field is one to three shifts and masks of a word, and dword
/// `m` of every field lies in subgroup `RUN_PI[m]`. Same bits per code as the view's planes.
pub fn repack_top(view_bits: u8, planes: &[&[u8]], numel: usize) -> alloc::vec::Vec<u8> {
    assert!(matches!(view_bits, 2..=6 | 8) && numel.is_multiple_of(8));
    let n = nested8_planes_for_view(view_bits).unwrap_or(0);
    assert!(planes.len() >= n && planes.iter().zip(NESTED8_PLANES).take(n).all(|(p, s)| p.len() * 8 >= numel * s.bits as usize));
    let rb = run_bytes(view_bits);
    let mut out = alloc::vec![0u8; numel.div_ceil(RUN_CODES) * rb];
    for (s, run) in out.chunks_exact_mut(rb).enumerate() {
        // The run's codes in natural order (zero past `numel`), plane by plane, a byte at a time.
        let (lo, hi) = (RUN_CODES * s, (RUN_CODES * (s + 1)).min(numel));
        let mut q = [0u8; RUN_CODES];
        for (p, spec) in planes.iter().zip(NESTED8_PLANES).take(n) {
            let bytes = &p[lo * spec.bits as usize / 8..hi * spec.bits as usize / 8];
            match spec.bits {
                1 => spread::<1>(&mut q, bytes, spec.shift),
                2 => spread::<2>(&mut q, bytes, spec.shift),
                _ => spread::<4>(&mut q, bytes, spec.shift),
            }
        }
        q.iter_mut().for_each(|c| *c >>= 8 - view_bits);
        for b in 0..32 {
            let f = |r: usize| q[run_code(r, b)];
            match view_bits {
                2 => {
                    run[b] = f(0) | f(1) << 2 | f(2) << 4 | f(3) << 6;
                    run[32 + b] = f(4) | f(5) << 2 | f(6) << 4 | f(7) << 6;
                }
                3 => {
                    run[b] = f(0) | f(1) << 3 | (f(6) & 3) << 6;
                    run[32 + b] = f(2) | f(3) << 3 | (f(7) & 3) << 6;
                    run[64 + b] = f(4) | f(5) << 3 | (f(6) >> 2) << 6 | (f(7) >> 2) << 7;
                }
                4 => {
                    for i in 0..4 {
                        run[32 * i + b] = f(2 * i) | f(2 * i + 1) << 4;
                    }
                }
                5 => {
                    for i in 0..3 {
                        run[32 * i + b] = f(i) | (f(i + 5) & 7) << 5;
                    }
                    run[96 + b] = f(3) | (f(5) >> 3) << 5 | (f(7) >> 3 & 1) << 7;
                    run[128 + b] = f(4) | (f(6) >> 3) << 5 | (f(7) >> 4) << 7;
                }
                6 => {
                    for i in 0..6 {
                        run[32 * i + b] = f(i) | (f(6 + i % 2) >> (2 * (i / 2)) & 3) << 6;
                    }
                }
                _ => {
                    for i in 0..8 {
                        run[32 * i + b] = f(i);
                    }
                }
            }
        }
    }
    out
}

/// Code `i`'s view `q >> (8 - view_bits)`, read from [`repack_top`]'s copy.
pub fn top_code(view_bits: u8, buf: &[u8], i: usize) -> u8 {
    let rb = run_bytes(view_bits);
    let run = &buf[(i / RUN_CODES) * rb..][..rb];
    let (r, b) = run_slot(i % RUN_CODES);
    run_field(view_bits, run, r, b)
}

/// The 256 codes of run `s` of [`repack_top`]'s copy `buf`, in natural order: [`top_code`] of
/// codes `256·s..256·s + 256`, a run at a time.
pub fn unpack_run(view_bits: u8, buf: &[u8], s: usize, q: &mut [u8; RUN_CODES]) {
    fn fields<const V: u8>(run: &[u8], q: &mut [u8; RUN_CODES]) {
        for b in 0..32 {
            for r in 0..8 {
                q[run_code(r, b)] = run_field(V, run, r, b);
            }
        }
    }
    let rb = run_bytes(view_bits);
    let run = &buf[s * rb..][..rb];
    match view_bits {
        2 => fields::<2>(run, q),
        3 => fields::<3>(run, q),
        4 => fields::<4>(run, q),
        5 => fields::<5>(run, q),
        6 => fields::<6>(run, q),
        _ => fields::<8>(run, q),
    }
}

/// Field `r` (< 8) of byte `b` (< 32) of one run in [`repack_top`]'s layout.
#[inline(always)]
fn run_field(view_bits: u8, run: &[u8], r: usize, b: usize) -> u8 {
    match (view_bits, r) {
        (2, _) => (run[32 * (r / 4) + b] >> (2 * (r % 4))) & 3,
        (3, 0..=5) => (run[32 * (r / 2) + b] >> (3 * (r % 2))) & 7,
        (3, _) => (run[32 * (r - 6) + b] >> 6) | ((run[64 + b] >> r) & 1) << 2,
        (4, _) => (run[32 * (r / 2) + b] >> (4 * (r % 2))) & 15,
        (5, 0..=4) => run[32 * r + b] & 31,
        (5, 5 | 6) => run[32 * (r - 5) + b] >> 5 | (run[32 * (r - 2) + b] >> 5 & 3) << 3,
        (5, _) => run[64 + b] >> 5 | (run[96 + b] >> 7) << 3 | (run[128 + b] >> 7) << 4,
        (8, _) => run[32 * r + b],
        (_, 0..=5) => run[32 * r + b] & 63,
        _ => (0..3).map(|k| (run[32 * (2 * k + r - 6) + b] >> 6) << (2 * k)).fold(0, |a, x| a | x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repacked_copies_hold_the_view_codes() {
        // 4096 + 96 codes: whole runs and a padded last one.
        let codes: alloc::vec::Vec<u8> = (0..4192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let planes = pack_nested8_planes(&codes);
        let refs: alloc::vec::Vec<&[u8]> = planes.iter().map(|p| p.as_slice()).collect();
        for v in [2u8, 3, 4, 5, 6, 8] {
            let copy = repack_top(v, &refs, codes.len());
            assert_eq!(copy.len(), 17 * run_bytes(v));
            for (i, &q) in codes.iter().enumerate() {
                assert_eq!(top_code(v, &copy, i), q >> (8 - v), "view {v} code {i}");
            }
            // Only the view's planes are read.
            let n = nested8_planes_for_view(v).unwrap();
            assert_eq!(repack_top(v, &refs[..n], codes.len()), copy);
        }
        // Every (field, byte) slot of a run holds exactly one code.
        let mut seen = [false; 256];
        for j in 0..256 {
            let (r, b) = run_slot(j);
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
    fn low_nibbles_assemble_the_last_three_planes() {
        let codes: alloc::vec::Vec<u8> = (0..4192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        let planes = pack_nested8_planes(&codes);
        let refs: alloc::vec::Vec<&[u8]> = planes.iter().map(|p| p.as_slice()).collect();
        let nib = low_nibbles(&refs, codes.len());
        assert_eq!(nib.len(), codes.len() / 2);
        for (i, &q) in codes.iter().enumerate() {
            assert_eq!(plane_field(&nib, 4, i), q & 15, "code {i}");
        }
        // Every view reads a strict prefix of the planes, one more plane per wider view.
        let n: alloc::vec::Vec<usize> = NESTED8_VIEWS.iter().map(|&v| nested8_planes_for_view(v).unwrap()).collect();
        assert_eq!(n, [1, 2, 3, 4, 5, 6]);
        let bits: alloc::vec::Vec<u8> = n.iter().map(|&k| NESTED8_PLANES[..k].iter().map(|s| s.bits).sum()).collect();
        assert_eq!(bits, NESTED8_VIEWS);
        assert!(!is_nested8_view(7) && !is_nested8_view(1) && is_nested8_view(5));
    }

    #[test]
    fn codes_round_half_to_even_and_saturate() {
        let p = GroupParams { scale: f16::from_f32(0.5), min: f16::from_f32(-1.0) };
        // (x - min) / scale = 2.5, 3.5, -0.75, 300, NaN.
        assert_eq!(nested8_quantize(0.25, p), 2);
        assert_eq!(nested8_quantize(0.75, p), 4);
        assert_eq!(nested8_quantize(-1.375, p), 0);
        assert_eq!(nested8_quantize(149.0, p), 255);
        assert_eq!(nested8_quantize(f32::NAN, p), 0);
        assert_eq!(nested8_quantize(5.0, GroupParams { scale: f16::ZERO, min: f16::ZERO }), 0);
    }

    #[test]
    fn super_blocks_hold_every_code_and_decode_exactly() {
        let d = f16::from_f32(0.013);
        let dmin = f16::from_f32(-0.0071);
        for (s0, m0) in [(0u8, -32i8), (63, 31), (17, -1), (1, 0)] {
            let s: [u8; 8] = core::array::from_fn(|j| (s0 as usize + 9 * j) as u8 % 64);
            let m: [i8; 8] = core::array::from_fn(|j| ((m0 as i32 + 32 + 13 * j as i32) % 64 - 32) as i8);
            let sp = SuperParams::new(d, dmin, s, m);
            for j in 0..8 {
                assert_eq!((sp.s(j), sp.m(j)), (s[j], m[j]), "group {j}");
                let a = sp.group(j);
                // 11-bit f16 times a 6-bit code: exact in f32.
                assert_eq!(a.scale as f64, d.to_f64() * s[j] as f64);
                assert_eq!(a.min as f64, dmin.to_f64() * m[j] as f64);
            }
            // Two rows of 6 groups: one block each, the last two slots padding.
            let params = [sp, sp];
            let r = ParamsRef::Super { blocks: &params, groups_per_row: 6 };
            assert_eq!(r.groups(), 12);
            assert_eq!(r.get(9), sp.group(3));
            assert_eq!(r.bytes().len(), 32);
            // Rows of 10 groups: two blocks per row; group 10 is row 1's first.
            let r = ParamsRef::Super { blocks: &[sp, sp, sp, sp], groups_per_row: 10 };
            assert_eq!((r.groups(), r.get(10), r.get(19)), (20, sp.group(0), sp.group(1)));
        }
        let bad = [SuperParams::new(f16::INFINITY, f16::ONE, [0; 8], [0; 8])];
        assert_eq!(ParamsRef::Super { blocks: &bad, groups_per_row: 3 }.first_non_finite(), Some(0));
        let later = [SuperParams::new(f16::ONE, f16::ONE, [0; 8], [0; 8]), bad[0]];
        assert_eq!(ParamsRef::Super { blocks: &later, groups_per_row: 12 }.first_non_finite(), Some(8));
    }

    #[test]
    fn view_reconstructs_bucket_centre() {
        let p = GroupParams { scale: f16::from_f32(0.5), min: f16::from_f32(-64.0) };
        let codes = [0u8, 255, 128, 77, 8, 16, 250, 3];
        let planes = pack_nested8_planes(&codes);
        let refs: alloc::vec::Vec<&[u8]> = planes.iter().map(|p| p.as_slice()).collect();
        let mut out = [0f32; 8];
        dequant_nested8(&[p][..], &refs, 8, 8, 0, &mut out);
        for (o, &q) in out.iter().zip(&codes) {
            assert_eq!(*o, q as f32 * 0.5 - 64.0);
        }
        dequant_nested8(&[p][..], &refs, 8, 2, 0, &mut out);
        // 2-bit view of code 255 is 3: bucket [192, 255], centre 223.5.
        assert_eq!(out[1], 223.5 * 0.5 - 64.0);
        assert_eq!(out[0], 31.5 * 0.5 - 64.0);
    }
}
