//! The weights as the kernels read them: a [`Matrix`] borrows one tensor's stored bytes through
//! a [`WeightView`]; a nested tensor is a [`Nested8`] at one view, whose codes a SIMD table may
//! read from a form prepared at load ([`Prepared`]) instead of from its stored planes.

use alloc::format;
use alloc::sync::Arc;
use half::{bf16, f16};

use super::Kernels;
use crate::blocks::{self, ParamsRef, PlaneSpec, NESTED8_KERNEL_PLANES, NESTED8_PLANES, RUN_CODES};
use crate::error::{Error, Result};

/// How a matrix's values are stored.
#[derive(Debug, Clone)]
pub enum WeightView<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
    /// Nested 8-bit codes read at a view: only the first planes are held.
    Nested8(Nested8<'a>),
}

/// A 2-D weight, `[rows, cols]` row-major (rows = output features).
#[derive(Debug, Clone)]
pub struct Matrix<'a> {
    pub rows: usize,
    pub cols: usize,
    pub view: WeightView<'a>,
}

/// A nested tensor at one view (see [`crate::blocks`] for the layout and dequantization).
#[derive(Debug, Clone)]
pub struct Nested8<'a> {
    /// (rows, row_stride / group_size) group scales and minima.
    pub params: ParamsRef<'a>,
    /// The stored planes the view reads (`blocks::nested8_planes_for_view(view_bits)` of them);
    /// the others are empty. Plane `p` holds `NESTED8_PLANES[p].bits` bits per code, LSB first;
    /// row `r`'s bits start at code index `r * row_stride`, a whole byte in every plane.
    pub planes: [&'a [u8]; 6],
    pub group_size: usize,
    /// One of [`blocks::NESTED8_VIEWS`]: 2, 3, 4, 5, 6 or 8.
    pub view_bits: u8,
    /// Codes from one row to the next: the column count padded to whole groups.
    pub row_stride: usize,
    /// Where [`Prepared::Runs`] is kept (a 2- to 6- or 8-bit view; `None` otherwise). Read it
    /// through [`Nested8::prepared`].
    pub repacked: Option<Arc<[u8]>>,
    /// Where [`Prepared::Nibbles`] is kept (an 8-bit view; `None` otherwise). Read it through
    /// [`Nested8::prepared`].
    pub low: Option<Arc<[u8]>>,
}

/// The form a view's codes are read in by the kernels of the table that prepared it (see
/// [`Nested8::prepare`]). Every form holds the same codes as the stored planes it replaces;
/// the reference and portable kernels always read the stored planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared<'s> {
    /// The stored planes as they are ([`Nested8::planes`]).
    Planes,
    /// A 2- to 6- or 8-bit view's codes repacked into runs of 256 ([`blocks::repack_top`]),
    /// whose fields need no lane shuffles: they replace all of the view's planes.
    Runs(&'s [u8]),
    /// An 8-bit view's low nibbles `q & 15` ([`blocks::low_nibbles`]), read with stored planes
    /// 0..3 (the layout [`NESTED8_KERNEL_PLANES`]): they replace planes 3..6.
    Nibbles(&'s [u8]),
}

impl<'s> Prepared<'s> {
    /// Bytes of the form of `numel` codes of a `view_bits` view: its nibble plane (`nibbles`)
    /// or its runs.
    pub fn len_of(view_bits: u8, numel: usize, nibbles: bool) -> usize {
        if nibbles {
            numel / 2
        } else {
            numel.div_ceil(blocks::RUN_CODES) * blocks::run_bytes(view_bits)
        }
    }

    /// The bytes of a prepared form (`None` for [`Prepared::Planes`]).
    pub fn bytes(self) -> Option<&'s [u8]> {
        match self {
            Prepared::Runs(b) | Prepared::Nibbles(b) => Some(b),
            Prepared::Planes => None,
        }
    }
}

impl<'a> Nested8<'a> {
    /// The `view_bits` view of a nested tensor whose planes are `all` (the stored planes, in
    /// file order; those past the view's are not read), read from its stored planes.
    pub fn stored(params: impl Into<ParamsRef<'a>>, all: &[&'a [u8]], group_size: usize, view_bits: u8, row_stride: usize) -> Result<Self> {
        let params = params.into();
        let n = blocks::nested8_planes_for_view(view_bits).ok_or_else(|| Error::InvalidArgument {
            what: format!("no {view_bits}-bit view exists (choose 2, 3, 4, 5, 6 or 8)"),
        })?;
        // Groups of a multiple of 8 codes fill whole bytes of every plane (as the format
        // requires), which the row dequantization reads a byte at a time.
        if all.len() < n || group_size == 0 || !group_size.is_multiple_of(8) || !row_stride.is_multiple_of(group_size) {
            return Err(Error::InvalidArgument {
                what: format!("a {view_bits}-bit view needs {n} planes and whole groups of a multiple of 8 codes"),
            });
        }
        let mut planes: [&[u8]; 6] = [&[]; 6];
        planes[..n].copy_from_slice(&all[..n]);
        Ok(Nested8 { params, planes, group_size, view_bits, row_stride, repacked: None, low: None })
    }

    /// This view with the form `k`'s kernels read made now: the runs of a 2- to 6-bit view
    /// ([`Kernels::repack`]), and of an 8-bit one the nibble plane ([`Kernels::nibbles`]) or,
    /// in a table without one, its runs; for groups of a multiple of 32 (the SIMD kernels'
    /// unit); otherwise unchanged.
    pub fn prepare(self, k: &Kernels) -> Self {
        let numel = self.planes[0].len() * 4;
        let simd = self.group_size.is_multiple_of(32);
        let v = self.view_bits;
        let repacked = match (v, k.repack.filter(|_| simd)) {
            (2..=6, Some(f)) => Some(self.in_chunks(numel, Prepared::len_of(v, numel, false), |p, n| f(v, p, n))),
            (8, Some(f)) if k.nibbles.is_none() => Some(self.in_chunks(numel, Prepared::len_of(v, numel, false), |p, n| f(v, p, n))),
            _ => None,
        };
        let low = match (v, k.nibbles.filter(|_| simd)) {
            (8, Some(f)) => Some(self.in_chunks(numel, Prepared::len_of(v, numel, true), f)),
            _ => None,
        };
        Nested8 { repacked, low, ..self }
    }

    /// The stored planes' bytes of codes `lo..hi` (`lo` and `hi` multiples of 8; planes the
    /// view does not read stay empty).
    pub fn planes_between(&self, lo: usize, hi: usize) -> [&'a [u8]; 6] {
        let mut part = self.planes;
        for (p, spec) in part.iter_mut().zip(NESTED8_PLANES) {
            if !p.is_empty() {
                let b = spec.bits as usize;
                *p = &p[lo * b / 8..hi * b / 8];
            }
        }
        part
    }

    /// The form `make` computes from the planes of all `numel` codes, made a slice of whole runs
    /// at a time into one buffer of `len` bytes: both forms are laid out by codes, so a slice's
    /// form is the matching slice of the whole one (see [`Prepared::len_of`]). A large matrix
    /// then never holds its form twice (a vector, then its copy) nor a whole matrix of
    /// temporaries while it is made.
    fn in_chunks(&self, numel: usize, len: usize, make: impl Fn(&[&[u8]], usize) -> alloc::vec::Vec<u8>) -> Arc<[u8]> {
        const CHUNK: usize = 1 << 20;
        const _: () = assert!(CHUNK.is_multiple_of(blocks::RUN_CODES));
        let mut out = Arc::<[u8]>::new_uninit_slice(len);
        let dst = Arc::get_mut(&mut out).expect("just made");
        let mut written = 0;
        for lo in (0..numel).step_by(CHUNK) {
            let hi = (lo + CHUNK).min(numel);
            let made = make(&self.planes_between(lo, hi), hi - lo);
            for (d, s) in dst[written..written + made.len()].iter_mut().zip(&made) {
                d.write(*s);
            }
            written += made.len();
        }
        assert_eq!(written, len, "a prepared form's slices fill it");
        // SAFETY: every byte was written above (written == len).
        unsafe { out.assume_init() }
    }

    /// This view read from its stored planes: the prepared form dropped (every kernel computes
    /// the same outputs from it, the SIMD ones more slowly).
    pub fn unprepared(&self) -> Self {
        Nested8 { repacked: None, low: None, ..self.clone() }
    }

    /// The form the SIMD kernels read this view's codes in.
    #[inline]
    pub fn prepared(&self) -> Prepared<'_> {
        match (self.view_bits, &self.repacked, &self.low) {
            (2..=6 | 8, Some(runs), _) => Prepared::Runs(runs),
            (8, _, Some(nibbles)) => Prepared::Nibbles(nibbles),
            _ => Prepared::Planes,
        }
    }

    /// Indices of the stored planes (within 0..6) that the prepared form replaced, which the
    /// SIMD kernels no longer read: all of the view's planes for [`Prepared::Runs`], 3..6 for
    /// [`Prepared::Nibbles`], none for [`Prepared::Planes`].
    pub fn replaced_planes(&self) -> core::ops::Range<usize> {
        match self.prepared() {
            Prepared::Runs(_) => Self::replaced_by(self.view_bits, false),
            Prepared::Nibbles(_) => Self::replaced_by(self.view_bits, true),
            Prepared::Planes => 0..0,
        }
    }

    /// The stored planes a `view_bits` view's prepared form replaces: its nibble plane
    /// (`nibbles`) or its runs (see [`Nested8::replaced_planes`]).
    pub fn replaced_by(view_bits: u8, nibbles: bool) -> core::ops::Range<usize> {
        if nibbles {
            3..6
        } else {
            0..blocks::nested8_planes_for_view(view_bits).unwrap_or(0)
        }
    }
}

impl<'a> Matrix<'a> {
    /// Bytes this view reads (what must be resident to use it).
    pub fn view_bytes(&self) -> usize {
        match self.view {
            WeightView::F32(w) => w.len() * 4,
            WeightView::F16(w) => w.len() * 2,
            WeightView::Bf16(w) => w.len() * 2,
            WeightView::Nested8(Nested8 { params, planes, .. }) => {
                params.bytes().len() + planes.iter().map(|p| p.len()).sum::<usize>()
            }
        }
    }

    /// Call `f` with every byte slice this view reads.
    pub fn for_each_slice(&self, f: &mut impl FnMut(&[u8])) {
        match self.view {
            WeightView::F32(w) => f(bytemuck::cast_slice(w)),
            WeightView::F16(w) => f(bytemuck::cast_slice(w)),
            WeightView::Bf16(w) => f(bytemuck::cast_slice(w)),
            WeightView::Nested8(ref n) => {
                f(n.params.bytes());
                // A prepared form replaces the planes it was made from (see
                // [`Matrix::replaced_planes`]).
                match n.prepared() {
                    Prepared::Runs(runs) => f(runs),
                    Prepared::Nibbles(nibbles) => {
                        n.planes[..3].iter().for_each(|p| f(p));
                        f(nibbles)
                    }
                    Prepared::Planes => n.planes.iter().for_each(|p| f(p)),
                }
            }
        }
    }

    /// Indices of the stored planes (within 0..6) that this view's prepared form replaced and
    /// that the kernels no longer read (see [`Nested8::replaced_planes`]); empty for float
    /// weights and views read from their planes.
    pub fn replaced_planes(&self) -> core::ops::Range<usize> {
        match &self.view {
            WeightView::Nested8(n) => n.replaced_planes(),
            _ => 0..0,
        }
    }

    /// Dequantize row `r` into `out[..cols]`.
    pub fn dequant_row(&self, r: usize, out: &mut [f32]) {
        let out = &mut out[..self.cols];
        let start = r * self.cols;
        match self.view {
            WeightView::F32(w) => out.copy_from_slice(&w[start..start + self.cols]),
            WeightView::F16(w) => {
                use half::slice::HalfFloatSliceExt;
                w[start..start + self.cols].convert_to_f32_slice(out);
            }
            WeightView::Bf16(w) => {
                use half::slice::HalfFloatSliceExt;
                w[start..start + self.cols].convert_to_f32_slice(out);
            }
            WeightView::Nested8(ref n) => {
                // A view with a prepared form reads its codes from it, not from the planes it
                // replaced.
                let (params, gs, bits, start) = (n.params, n.group_size, n.view_bits, r * n.row_stride);
                match n.prepared() {
                    Prepared::Runs(runs) => dequant_runs_row(params, runs, gs, bits, start, out),
                    Prepared::Nibbles(nibbles) => {
                        let planes = [n.planes[0], n.planes[1], n.planes[2], nibbles];
                        dequant_nested8_row(params, &planes, &NESTED8_KERNEL_PLANES, gs, bits, start, out)
                    }
                    Prepared::Planes => dequant_nested8_row(params, &n.planes, &NESTED8_PLANES, gs, bits, start, out),
                }
            }
        }
    }
}

/// Codes a row's dequantization assembles at a time (a multiple of 8, and of [`RUN_CODES`]).
const CODES_AT_ONCE: usize = RUN_CODES;

/// `out[k] = code(start + k) as f32 · step + offset` group by group, with each group's
/// `(step, offset)` computed once: the arithmetic of [`blocks::dequant_nested8`]. `codes(i0, q)`
/// fills `q` with the codes from `i0` (a multiple of 8; `q.len()` one too, at most
/// [`CODES_AT_ONCE`]), each in the form `code` is applied to.
fn dequant_groups(
    params: ParamsRef<'_>,
    group_size: usize,
    view_bits: u8,
    start: usize,
    out: &mut [f32],
    code: impl Fn(u8) -> u8,
    mut codes: impl FnMut(usize, &mut [u8]),
) {
    let mut q = [0u8; CODES_AT_ONCE];
    // Pieces never cross a group or a multiple of CODES_AT_ONCE (a run), and start at multiples
    // of 8: `start` and group boundaries are multiples of the group size, itself one of 8.
    let mut k = 0;
    while k < out.len() {
        let i = start + k;
        let (step, offset) = blocks::nested8_step_offset(params.get(i / group_size), view_bits);
        let group_end = (i / group_size + 1) * group_size - start;
        let n = (group_end.min(out.len()) - k).min(CODES_AT_ONCE - i % CODES_AT_ONCE);
        let q = &mut q[..n.next_multiple_of(8)];
        codes(i, q);
        for (o, &c) in out[k..k + n].iter_mut().zip(q.iter()) {
            *o = code(c) as f32 * step + offset;
        }
        k += n;
    }
}

/// [`dequant_nested8_row`] of a view whose codes come from its runs ([`Prepared::Runs`]): each
/// run unpacked once ([`blocks::unpack_run`]).
fn dequant_runs_row(params: ParamsRef<'_>, runs: &[u8], group_size: usize, view_bits: u8, start: usize, out: &mut [f32]) {
    let mut run = [0u8; RUN_CODES];
    let mut held = usize::MAX;
    dequant_groups(params, group_size, view_bits, start, out, |c| c, |i0, q| {
        if i0 / RUN_CODES != held {
            held = i0 / RUN_CODES;
            blocks::unpack_run(view_bits, runs, held, &mut run);
        }
        let from = i0 % RUN_CODES;
        q.copy_from_slice(&run[from..from + q.len()]);
    });
}

/// Row dequantization of nested codes, group by group: the same arithmetic as
/// [`blocks::dequant_nested8`], with each group's `(step, offset)` computed once and the codes
/// assembled a byte of each plane at a time ([`blocks::nested8_codes_into`]). `planes` are laid
/// out as `specs` say (the stored planes, or an 8-bit view's planes 0..3 and nibbles).
fn dequant_nested8_row(
    params: ParamsRef<'_>,
    planes: &[&[u8]],
    specs: &[PlaneSpec],
    group_size: usize,
    view_bits: u8,
    start: usize,
    out: &mut [f32],
) {
    let n_planes = blocks::nested8_planes_for_view(view_bits).unwrap_or(6).min(planes.len());
    let drop = 8 - view_bits;
    dequant_groups(params, group_size, view_bits, start, out, |c| c >> drop, |i0, q| {
        blocks::nested8_codes_into(&planes[..n_planes], specs, i0, q)
    });
}
