//! Matrix kernels over weights as they are stored (never dequantized whole at load).
//!
//! A [`Matrix`] borrows one weight tensor from the checkpoint through a [`WeightView`]. Two
//! products are defined on it:
//! - [`matvec`]: `out[r] = Σ_c W[r, c] · x[c]` (decode: one token);
//! - [`matmul`]: `out[t, r] = Σ_c W[r, c] · x[t, c]` (prefill and evaluation: many tokens).
//!
//! [`reference`] holds the plain scalar definitions that are the specification. Nested weights
//! meet activations quantized to int8 per group ([`acts`]) in integer dot products, through the
//! [`dispatch`] table (scalar reference, or the SIMD kernels of `x86_64/` and `aarch64/`).
//! Float weights (f32/f16/bf16) dequantize one row (or a tile of rows) at a time into scratch
//! and multiply with f32 arithmetic (`matrixmultiply` for tiles).

pub mod acts;
pub mod dispatch;
mod parallel;
mod portable;
pub mod reference;
pub mod vector;
#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86_64;

pub use acts::QActs;
pub use dispatch::{kernels, Kernels};
#[cfg(feature = "std")]
pub use parallel::set_threads;
pub use parallel::threads;
use parallel::{for_row_ranges, OutPtr, TASKS_PER_THREAD};

use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use half::{bf16, f16};

use crate::blocks::{self, GroupParams, PlaneSpec, NESTED8_KERNEL_PLANES, NESTED8_PLANES};
use crate::error::{Error, Result};
use crate::format::{Encoding, SegmentKind, TensorInfo};

/// How a matrix's values are stored.
#[derive(Debug, Clone)]
pub enum WeightView<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
    /// Nested 8-bit codes read at a view: only the first planes are held.
    Nested8(Nested8<'a>),
}

/// A nested tensor at one view (see [`crate::blocks`] for the layout and dequantization).
#[derive(Debug, Clone)]
pub struct Nested8<'a> {
    /// (rows, row_stride / group_size) group scales and minima.
    pub params: &'a [GroupParams],
    /// The planes the view reads (`blocks::nested8_planes_for_view(view_bits)` of them); the
    /// others are empty. Plane `p` holds `NESTED8_PLANES[p].bits` bits per code, LSB first;
    /// row `r`'s bits start at code index `r * row_stride`, a whole byte in every plane.
    /// (In the [`Nested8::kernel_form`] of an 8-bit view, slot 3 holds [`Nested8::low`].)
    pub planes: [&'a [u8]; 6],
    pub group_size: usize,
    /// One of [`blocks::NESTED8_VIEWS`]: 2, 3, 4, 5, 6 or 8.
    pub view_bits: u8,
    /// Codes from one row to the next: the column count padded to whole groups.
    pub row_stride: usize,
    /// A 2-, 3- or 4-bit view's codes repacked at load for the kernel tables that read them
    /// faster that way ([`Kernels::repack`]); `None` otherwise. Equal to what the view's
    /// planes hold, in runs of 256 codes whose fields need no lane shuffles
    /// ([`blocks::repack_top`]).
    pub repacked: Option<Arc<[u8]>>,
    /// An 8-bit view's low nibbles `q & 15` ([`blocks::low_nibbles`] of planes 3..5), built
    /// at load for the kernel tables whose 8-bit kernels read a nibble plane
    /// ([`Kernels::nibbles`]); `None` otherwise. Same bytes as the three planes it replaces.
    pub low: Option<Arc<[u8]>>,
}

impl<'a> Nested8<'a> {
    /// The `view_bits` view of a nested tensor whose planes are `all` (the stored planes, in
    /// file order; those past the view's are not read), with the copies the active kernel table
    /// reads made now (see [`Nested8::repacked`] and [`Nested8::low`]).
    pub fn new(params: &'a [GroupParams], all: &[&'a [u8]], group_size: usize, view_bits: u8, row_stride: usize) -> Result<Self> {
        let n = blocks::nested8_planes_for_view(view_bits).ok_or_else(|| Error::InvalidArgument {
            what: format!("no {view_bits}-bit view exists (choose 2, 3, 4, 5, 6 or 8)"),
        })?;
        if all.len() < n || group_size == 0 || !row_stride.is_multiple_of(group_size) {
            return Err(Error::InvalidArgument { what: format!("a {view_bits}-bit view needs {n} planes and whole groups") });
        }
        let mut planes: [&[u8]; 6] = [&[]; 6];
        planes[..n].copy_from_slice(&all[..n]);
        let numel = planes[0].len() * 4;
        let simd = group_size.is_multiple_of(32) && !dispatch::float_activations();
        let repacked = match (view_bits, kernels().repack.filter(|_| simd)) {
            (2..=4, Some(f)) => Some(Arc::from(f(view_bits, &planes, numel))),
            _ => None,
        };
        let low = match (view_bits, kernels().nibbles.filter(|_| simd)) {
            (8, Some(f)) => Some(Arc::from(f(&planes, numel))),
            _ => None,
        };
        Ok(Nested8 { params, planes, group_size, view_bits, row_stride, repacked, low })
    }

    /// What the SIMD kernels of an 8-bit view read: planes 0..2 as stored and [`Nested8::low`]
    /// in slot 3 (the layout [`NESTED8_KERNEL_PLANES`]), or `self` unchanged when it has no
    /// nibble plane. The reference and portable kernels read the stored planes instead.
    pub fn kernel_form(&self) -> Nested8<'_> {
        match (&self.low, self.view_bits) {
            (Some(low), 8) => Nested8 {
                planes: [self.planes[0], self.planes[1], self.planes[2], low, &[], &[]],
                low: None,
                repacked: None,
                ..*self
            },
            _ => self.clone(),
        }
    }
}

/// Buffers the products need, allocated once (see [`Scratch::new`]).
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    /// (threads, MATMUL_TILE_ROWS, max(cols, tokens)) dequantized weight rows or output tiles.
    pub tile: Vec<f32>,
    /// The current input's activations, quantized for nested weights.
    pub acts: QActs,
}

impl Scratch {
    /// Scratch for products over matrices of up to `cols` columns and batches of up to
    /// `tokens` tokens, split over `threads` threads.
    pub fn new(cols: usize, tokens: usize, threads: usize) -> Self {
        Scratch { tile: alloc::vec![0.0; scratch_len(cols.max(tokens), threads)], acts: QActs::default() }
    }

    pub fn bytes(&self) -> usize {
        self.tile.len() * 4 + self.acts.q.len() + self.acts.aux.len() + self.acts.d.len() * 8
    }
}

/// A 2-D weight, `[rows, cols]` row-major (rows = output features).
#[derive(Debug, Clone)]
pub struct Matrix<'a> {
    pub rows: usize,
    pub cols: usize,
    pub view: WeightView<'a>,
}

fn cast<'a, T: bytemuck::Pod>(name: &str, bytes: &'a [u8]) -> Result<&'a [T]> {
    bytemuck::try_cast_slice(bytes).map_err(|_| Error::Misaligned {
        what: format!("tensor '{name}'"),
        align: core::mem::align_of::<T>(),
    })
}

impl<'a> Matrix<'a> {
    /// Borrow a tensor as a matrix. `view_bits` picks the view of a nested tensor (8 if `None`);
    /// a 1-D tensor is a single row.
    pub fn from_tensor(t: &TensorInfo<'a>, view_bits: Option<u8>) -> Result<Self> {
        let (rows, cols) = match t.shape.as_slice() {
            [c] => (1u64, *c),
            [r, c] => (*r, *c),
            _ => return Err(Error::Corrupt { what: format!("tensor '{}' is not a matrix", t.name) }),
        };
        let (rows, cols) = (rows as usize, cols as usize);
        let values = || {
            t.segment(SegmentKind::Values)
                .map(|s| s.bytes)
                .ok_or_else(|| Error::Corrupt { what: format!("tensor '{}' has no values", t.name) })
        };
        let view = match t.encoding {
            Encoding::F32 => WeightView::F32(cast(t.name, values()?)?),
            Encoding::F16 => WeightView::F16(cast(t.name, values()?)?),
            Encoding::Bf16 => WeightView::Bf16(cast(t.name, values()?)?),
            Encoding::Nested8 => {
                let params = t
                    .segment(SegmentKind::GroupParams)
                    .ok_or_else(|| Error::Corrupt { what: format!("tensor '{}' has no group params", t.name) })?;
                let planes: Vec<&[u8]> = t.planes().map(|p| p.bytes).collect();
                let group_size = t.group_size as usize;
                let row_stride = crate::format::nested8_padded_cols(cols as u64, group_size as u64) as usize;
                let params = cast(t.name, params.bytes)?;
                WeightView::Nested8(Nested8::new(params, &planes, group_size, view_bits.unwrap_or(8), row_stride)?)
            }
        };
        Ok(Matrix { rows, cols, view })
    }

    /// Bytes this view reads (what must be resident to use it).
    pub fn view_bytes(&self) -> usize {
        match self.view {
            WeightView::F32(w) => w.len() * 4,
            WeightView::F16(w) => w.len() * 2,
            WeightView::Bf16(w) => w.len() * 2,
            WeightView::Nested8(Nested8 { params, planes, .. }) => {
                params.len() * GroupParams::SIZE + planes.iter().map(|p| p.len()).sum::<usize>()
            }
        }
    }

    /// Call `f` with every byte slice this view reads.
    pub fn for_each_slice(&self, f: &mut impl FnMut(&[u8])) {
        match self.view {
            WeightView::F32(w) => f(bytemuck::cast_slice(w)),
            WeightView::F16(w) => f(bytemuck::cast_slice(w)),
            WeightView::Bf16(w) => f(bytemuck::cast_slice(w)),
            WeightView::Nested8(Nested8 { params, planes, ref repacked, ref low, .. }) => {
                f(bytemuck::cast_slice(params));
                // A copy replaces the planes it was made from (see [`Matrix::repacked_planes`]).
                match (repacked, low) {
                    (Some(n), _) => f(n),
                    (None, Some(low)) => {
                        planes[..3].iter().for_each(|p| f(p));
                        f(low)
                    }
                    (None, None) => planes.iter().for_each(|p| f(p)),
                }
            }
        }
    }

    /// The planes a view no longer reads because a copy made at load holds their bits: all of
    /// the view's planes for [`Nested8::repacked`], planes 3..5 for [`Nested8::low`], or nothing.
    pub fn repacked_planes(&self) -> &[&'a [u8]] {
        match &self.view {
            WeightView::Nested8(n) if n.repacked.is_some() => {
                &n.planes[..blocks::nested8_planes_for_view(n.view_bits).unwrap_or(0)]
            }
            WeightView::Nested8(n) if n.low.is_some() => &n.planes[3..],
            _ => &[],
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
                // A view with a copy reads its codes from the copy, not from the planes it replaced.
                let (params, gs, bits, start) = (n.params, n.group_size, n.view_bits, r * n.row_stride);
                match (&n.repacked, &n.low) {
                    (Some(c), _) => dequant_repacked_row(params, c, gs, bits, start, out),
                    (None, Some(_)) => dequant_nested8_row(params, &n.kernel_form().planes[..4], &NESTED8_KERNEL_PLANES, gs, bits, start, out),
                    (None, None) => dequant_nested8_row(params, &n.planes, &NESTED8_PLANES, gs, bits, start, out),
                }
            }
        }
    }
}

/// [`dequant_nested8_row`] of a view whose codes come from its repacked copy
/// ([`Nested8::repacked`]).
fn dequant_repacked_row(params: &[GroupParams], copy: &[u8], group_size: usize, view_bits: u8, start: usize, out: &mut [f32]) {
    for (g, chunk) in out.chunks_mut(group_size).enumerate() {
        let first = start + g * group_size;
        let (step, offset) = blocks::nested8_step_offset(params[first / group_size], view_bits);
        for (j, o) in chunk.iter_mut().enumerate() {
            *o = blocks::top_code(view_bits, copy, first + j) as f32 * step + offset;
        }
    }
}

/// Row dequantization of nested codes, group by group: the same arithmetic as
/// [`blocks::dequant_nested8`], with each group's `(step, offset)` computed once. `planes` are
/// laid out as `specs` say (the stored planes, or an 8-bit view's kernel form).
fn dequant_nested8_row(
    params: &[GroupParams],
    planes: &[&[u8]],
    specs: &[PlaneSpec],
    group_size: usize,
    view_bits: u8,
    start: usize,
    out: &mut [f32],
) {
    let n_planes = blocks::nested8_planes_for_view(view_bits).unwrap_or(6).min(planes.len());
    let drop = 8 - view_bits;
    for (g, chunk) in out.chunks_mut(group_size).enumerate() {
        let first = start + g * group_size;
        let (step, offset) = blocks::nested8_step_offset(params[first / group_size], view_bits);
        for (j, o) in chunk.iter_mut().enumerate() {
            let i = first + j;
            let mut q = 0u8;
            for (plane, spec) in planes[..n_planes].iter().zip(specs) {
                q |= blocks::plane_field(plane, spec.bits, i) << spec.shift;
            }
            *o = (q >> drop) as f32 * step + offset;
        }
    }
}

/// f32 dot product with eight independent partial sums, so the compiler may use SIMD lanes.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, a_tail) = a.split_at(a.len() / 8 * 8);
    let (b8, b_tail) = b[..a.len()].split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in a_tail.iter().zip(b_tail) {
        s += x * y;
    }
    s
}

/// Scratch floats a product over `cols` columns needs with `threads` threads.
pub fn scratch_len(cols: usize, threads: usize) -> usize {
    threads * MATMUL_TILE_ROWS * cols
}

/// Rows of a decode product's share on one thread are a multiple of this (whole blocks for the
/// SIMD kernels).
pub const MATVEC_ALIGN: usize = 16;

/// `out[r] = W[r, :] · x` for every row. `scratch` holds at least `cols` floats.
///
/// With `std` and more than one thread ([`set_threads`]), the rows are split in multiples of
/// [`MATVEC_ALIGN`] over the persistent pool (`crate::pool`); nested weights quantize the
/// activations once, on the calling thread, then every thread runs the table's matvec kernel
/// on its rows. Every row is computed exactly as on one thread, so the result does not depend
/// on the thread count.
pub fn matvec(m: &Matrix<'_>, x: &[f32], out: &mut [f32], scratch: &mut Scratch) {
    assert!(x.len() >= m.cols && out.len() >= m.rows);
    let out_ptr = OutPtr(out.as_mut_ptr());
    // SAFETY (both closures below): `out` holds at least m.rows floats (asserted), each range
    // first..first+rows lies within 0..m.rows and belongs to one call alone, and
    // `for_row_ranges` returns only after every call has, within the borrow of `out`.
    let out_rows = |first: usize, rows: usize| unsafe { core::slice::from_raw_parts_mut(out_ptr.get().add(first), rows) };
    if let (WeightView::Nested8(w), false) = (&m.view, dispatch::float_activations()) {
        let k = kernels();
        scratch.acts.copy_order_only = reads_copy(w);
        (k.quantize_acts)(&x[..m.cols], 1, m.cols, w.group_size, &mut scratch.acts);
        let acts = &scratch.acts;
        let kernel = k.nested8_matvec[dispatch::view_index(w.view_bits)];
        return for_row_ranges(m.rows, MATVEC_ALIGN, m.cols, &mut [], 0, |first, rows, _| {
            kernel(w, acts, first, out_rows(first, rows))
        });
    }
    if scratch.tile.len() < m.cols {
        scratch.tile.resize(m.cols, 0.0);
    }
    for_row_ranges(m.rows, MATVEC_ALIGN, m.cols, &mut scratch.tile, m.cols, |first, rows, buf| {
        matvec_rows(m, x, first, out_rows(first, rows), buf)
    });
}

/// Most matrices one [`matvec_shared`] call takes.
pub const MAX_SHARED: usize = 4;

/// `outs[i] = ms[i] · x` for matrices that read the same input (q, k and v; gate and up), as
/// [`matvec`] computes each, bit for bit. When all are nested weights with one group size, the
/// activations are quantized once and every matrix's row ranges go to the threads as one job:
/// one wake-up and one wait instead of one per matrix.
pub fn matvec_shared(ms: &[&Matrix<'_>], x: &[f32], outs: &mut [&mut [f32]], scratch: &mut Scratch) {
    assert!(ms.len() == outs.len() && (1..=MAX_SHARED).contains(&ms.len()));
    // The nested views, when every matrix is one with the first one's columns and group size.
    let mut ws: [Option<&Nested8<'_>>; MAX_SHARED] = [None; MAX_SHARED];
    for (w, m) in ws.iter_mut().zip(ms) {
        if let WeightView::Nested8(n) = &m.view {
            *w = Some(n);
        }
    }
    let shared = ws[0].map(|w0| {
        ms.iter().zip(&ws).all(|(m, w)| m.cols == ms[0].cols && w.is_some_and(|w| w.group_size == w0.group_size))
    });
    if shared != Some(true) || dispatch::float_activations() {
        for (m, out) in ms.iter().zip(outs.iter_mut()) {
            matvec(m, x, out, scratch);
        }
        return;
    }
    let cols = ms[0].cols;
    let k = kernels();
    scratch.acts.copy_order_only = ws[..ms.len()].iter().all(|w| w.is_some_and(reads_copy));
    (k.quantize_acts)(&x[..cols], 1, cols, ws[0].map_or(0, |w| w.group_size), &mut scratch.acts);
    let acts = &scratch.acts;
    // Every matrix's row ranges, as [`matvec`] would split them: (matrix, first row, rows).
    let mut tasks = [(0usize, 0usize, 0usize); MAX_SHARED * MAX_TASKS];
    let mut n_tasks = 0;
    let mut ptrs = [OutPtr(core::ptr::null_mut()); MAX_SHARED];
    for (i, (m, out)) in ms.iter().zip(outs.iter_mut()).enumerate() {
        assert!(x.len() >= m.cols && out.len() >= m.rows);
        ptrs[i] = OutPtr(out.as_mut_ptr());
        let (chunk, n) = parallel::split_rows(m.rows, MATVEC_ALIGN, m.cols, (threads() * TASKS_PER_THREAD).min(MAX_TASKS));
        for j in 0..n {
            tasks[n_tasks] = (i, j * chunk, chunk.min(m.rows - j * chunk));
            n_tasks += 1;
        }
    }
    let run = |t: usize| {
        let (i, first, rows) = tasks[t];
        let Some(w) = ws[i] else { return };
        // SAFETY: `outs[i]` holds at least `ms[i].rows` floats (asserted above); the ranges of
        // one matrix are disjoint and each task runs once, before the borrows of `outs` end.
        let out = unsafe { core::slice::from_raw_parts_mut(ptrs[i].get().add(first), rows) };
        k.nested8_matvec[dispatch::view_index(w.view_bits)](w, acts, first, out)
    };
    #[cfg(feature = "std")]
    crate::pool::run(n_tasks, threads(), &run);
    #[cfg(not(feature = "std"))]
    (0..n_tasks).for_each(run);
}

/// Post the first `bytes` of each half of `m`'s codes for idle pool workers to prefetch
/// (std; the next product's weights, while the caller works alone).
pub fn prefetch_next(m: &Matrix<'_>, bytes: usize) {
    #[cfg(feature = "std")]
    if let WeightView::Nested8(n) = &m.view {
        let data: &[u8] = match &n.repacked {
            Some(c) => c,
            None => n.planes[0],
        };
        let half = data.len() / 2;
        crate::pool::prefetch([&data[..bytes.min(half)], &data[half..(half + bytes).min(data.len())]]);
    }
    #[cfg(not(feature = "std"))]
    let _ = (m, bytes);
}

/// Whether `w`'s kernels read its repacked copy (see [`QActs::copy_order_only`]).
fn reads_copy(w: &Nested8<'_>) -> bool {
    matches!(w.view_bits, 2..=4) && w.repacked.is_some()
}

/// Most ranges [`matvec_shared`] splits one matrix into.
const MAX_TASKS: usize = 64;

/// [`matvec`] over rows `first..first + out.len()`.
fn matvec_rows(m: &Matrix<'_>, x: &[f32], first: usize, out: &mut [f32], row_buf: &mut [f32]) {
    match m.view {
        WeightView::F32(w) => {
            for (i, o) in out.iter_mut().enumerate() {
                let r = first + i;
                *o = dot(&w[r * m.cols..(r + 1) * m.cols], x);
            }
        }
        _ => {
            let row = &mut row_buf[..m.cols];
            for (i, o) in out.iter_mut().enumerate() {
                m.dequant_row(first + i, row);
                *o = dot(row, x);
            }
        }
    }
}

/// Rows dequantized per tile in [`matmul`]; `tile_buf` must hold `MATMUL_TILE_ROWS * cols`.
pub const MATMUL_TILE_ROWS: usize = 64;

/// `out[t, r] = W[r, :] · x[t, :]` for `n` tokens (`x`: (n, cols), `out`: (n, rows)).
/// Float weights: dequantizes `MATMUL_TILE_ROWS` rows at a time into scratch and multiplies
/// with sgemm. Nested weights: quantizes the activations once, then each thread runs the
/// table's kernel on tiles of `MATMUL_TILE_ROWS` rows. `scratch.tile` holds at least
/// `MATMUL_TILE_ROWS * max(cols, n)` floats; [`scratch_len`]`(max(cols, n), t)` floats split the
/// rows over `t` threads.
pub fn matmul(m: &Matrix<'_>, x: &[f32], n: usize, out: &mut [f32], scratch: &mut Scratch) {
    let per_thread = MATMUL_TILE_ROWS * m.cols.max(n);
    assert!(x.len() >= n * m.cols && out.len() >= n * m.rows);
    if scratch.tile.len() < per_thread {
        scratch.tile.resize(per_thread, 0.0);
    }
    if n == 1 {
        return matvec(m, x, out, scratch);
    }
    let out_ptr = OutPtr(out.as_mut_ptr());
    if let (WeightView::Nested8(w), false) = (&m.view, dispatch::float_activations()) {
        let k = kernels();
        scratch.acts.copy_order_only = reads_copy(w);
        (k.quantize_acts)(&x[..n * m.cols], n, m.cols, w.group_size, &mut scratch.acts);
        let acts = &scratch.acts;
        let kernel = k.nested8_matmul[dispatch::view_index(w.view_bits)];
        return for_row_ranges(m.rows, MATMUL_TILE_ROWS, m.cols * n, &mut scratch.tile, per_thread, |first, rows, buf| {
            let mut r0 = first;
            while r0 < first + rows {
                let tr = MATMUL_TILE_ROWS.min(first + rows - r0);
                let tile = &mut buf[..n * tr];
                kernel(w, acts, r0, tile);
                for t in 0..n {
                    // SAFETY: out holds n*rows floats (asserted above); element (t, r0 + i) with
                    // r0 + i < first + rows <= m.rows is in bounds, and rows first..first+rows
                    // belong to this call alone, so no other thread writes them.
                    unsafe {
                        core::ptr::copy_nonoverlapping(tile.as_ptr().add(t * tr), out_ptr.get().add(t * m.rows + r0), tr);
                    }
                }
                r0 += tr;
            }
        });
    }
    for_row_ranges(m.rows, MATMUL_TILE_ROWS, m.cols * n, &mut scratch.tile, per_thread, |first, rows, buf| {
        matmul_rows(m, x, n, out_ptr, first, first + rows, buf)
    });
}

/// [`matmul`] over weight rows `r_begin..r_end`, writing only those columns of `out`.
fn matmul_rows(m: &Matrix<'_>, x: &[f32], n: usize, out: OutPtr, r_begin: usize, r_end: usize, tile_buf: &mut [f32]) {
    let mut r0 = r_begin;
    while r0 < r_end {
        let tr = MATMUL_TILE_ROWS.min(r_end - r0);
        let tile: &[f32] = match m.view {
            WeightView::F32(w) => &w[r0 * m.cols..(r0 + tr) * m.cols],
            _ => {
                for i in 0..tr {
                    m.dequant_row(r0 + i, &mut tile_buf[i * m.cols..(i + 1) * m.cols]);
                }
                &tile_buf[..tr * m.cols]
            }
        };
        // C (n x tr, row stride = rows) = X (n x cols) * tile^T (cols x tr).
        // SAFETY:
        // - `x` holds n*cols floats (asserted above), read with strides (cols, 1);
        // - `tile` holds tr*cols floats, read as its transpose with strides (1, cols);
        // - `out` holds n*rows floats (asserted in `matmul`); C's element (t, i) is
        //   out[t*rows + r0 + i] with r0 + i < r_end <= rows, so every write is in bounds, and
        //   columns r_begin..r_end belong to this call alone, so no other thread writes them.
        unsafe {
            matrixmultiply::sgemm(
                n,
                m.cols,
                tr,
                1.0,
                x.as_ptr(),
                m.cols as isize,
                1,
                tile.as_ptr(),
                1,
                m.cols as isize,
                0.0,
                out.get().add(r0),
                m.rows as isize,
                1,
            );
        }
        r0 += tr;
    }
}
