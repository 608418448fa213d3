//! Matrix kernels over weights as they are stored (never dequantized whole at load).
//!
//! A [`Matrix`] borrows one weight tensor from the checkpoint through a [`WeightView`]. Two
//! products are defined on it:
//! - [`matvec`]: `out[r] = Σ_c W[r, c] · x[c]` (decode: one token);
//! - [`matmul`]: `out[t, r] = Σ_c W[r, c] · x[t, c]` (prefill and evaluation: many tokens).
//!
//! [`reference`](mod@reference) holds the plain scalar definitions that are the specification.
//! Nested weights meet activations quantized to int8 per group ([`acts`]) in integer dot
//! products, through the [`dispatch`] table (scalar reference, or the SIMD kernels of `x86_64/` and `aarch64/`).
//! Float weights (f32/f16/bf16) dequantize one row (or a tile of rows) at a time into scratch
//! and multiply with f32 arithmetic (`matrixmultiply` for tiles).
//!
//! [`frame`] holds the types the table and its kernels share; this module adds what needs the
//! chosen table: loading a view with the form its kernels read ([`Nested8::new`]) and the
//! products, split over threads.

pub mod acts;
pub mod dispatch;
pub mod frame;
mod parallel;
mod portable;
pub mod reference;
pub mod tokens;
pub mod vector;
#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86_64;

pub use acts::QActs;
pub use dispatch::kernels;
pub use frame::{Kernels, Matrix, Nested8, Prepared, WeightView};
#[cfg(feature = "std")]
pub use parallel::set_threads;
pub use parallel::threads;
use parallel::{for_row_ranges, OutPtr, TASKS_PER_THREAD};
pub use vector::dot;

use alloc::format;
use alloc::vec::Vec;

use crate::blocks::{self, ParamsRef, TensorBlocks};
use crate::error::{Error, Result};

impl<'a> Nested8<'a> {
    /// The `view_bits` view of a nested tensor whose planes are `all` (the stored planes, in
    /// file order; those past the view's are not read), with the form the active kernel table
    /// reads made now (see [`Nested8::for_active_table`]).
    pub fn new(params: impl Into<ParamsRef<'a>>, all: &[&'a [u8]], group_size: usize, view_bits: u8, row_stride: usize) -> Result<Self> {
        Ok(Nested8::stored(params, all, group_size, view_bits, row_stride)?.for_active_table())
    }

    /// This view with the form the active kernel table reads ([`Nested8::prepare`] with
    /// [`kernels`]), or as it is while nested weights meet f32 activations
    /// ([`dispatch::float_activations`]).
    pub fn for_active_table(self) -> Self {
        if dispatch::float_activations() {
            self
        } else {
            self.prepare(&kernels())
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

impl<'a> Matrix<'a> {
    /// Borrow a tensor's `stored` blocks as a `rows` × `cols` matrix. `view_bits` picks the view
    /// of nested codes (8 if `None`; ignored for float weights), whose form for the active
    /// kernel table is made now ([`Nested8::for_active_table`]). Errors when the view does not
    /// exist or the blocks are too short for the shape.
    pub fn from_blocks(rows: usize, cols: usize, stored: TensorBlocks<'a>, view_bits: Option<u8>) -> Result<Self> {
        let mut m = Self::stored(rows, cols, stored, view_bits)?;
        if let WeightView::Nested8(n) = m.view {
            m.view = WeightView::Nested8(n.for_active_table());
        }
        Ok(m)
    }

    /// [`Matrix::from_blocks`] read from its stored planes, its prepared form not made (a caller
    /// that makes it a slice at a time: `backend::cpu::Preparing`).
    pub fn stored(rows: usize, cols: usize, stored: TensorBlocks<'a>, view_bits: Option<u8>) -> Result<Self> {
        let too_large = || Error::InvalidArgument { what: format!("a {rows} x {cols} matrix is too large") };
        let numel = rows.checked_mul(cols).ok_or_else(too_large)?;
        let short = |what: &str, have: usize, need: usize| Error::InvalidArgument {
            what: format!("{what} holds {have} values, a {rows} x {cols} matrix needs {need}"),
        };
        let view = match stored {
            TensorBlocks::F32(w) if w.len() < numel => return Err(short("f32 data", w.len(), numel)),
            TensorBlocks::F16(w) if w.len() < numel => return Err(short("f16 data", w.len(), numel)),
            TensorBlocks::Bf16(w) if w.len() < numel => return Err(short("bf16 data", w.len(), numel)),
            TensorBlocks::F32(w) => WeightView::F32(w),
            TensorBlocks::F16(w) => WeightView::F16(w),
            TensorBlocks::Bf16(w) => WeightView::Bf16(w),
            TensorBlocks::Nested8 { params, planes, group_size, row_stride } => {
                let w = Nested8::stored(params, &planes, group_size, view_bits.unwrap_or(8), row_stride)?;
                if row_stride < cols {
                    return Err(Error::InvalidArgument { what: format!("rows of {row_stride} codes are shorter than {cols} columns") });
                }
                let codes = rows.checked_mul(row_stride).ok_or_else(too_large)?;
                if params.groups() < codes / group_size {
                    return Err(short("group params", params.groups(), codes / group_size));
                }
                let n = blocks::nested8_planes_for_view(w.view_bits).unwrap_or(0);
                for (p, (plane, spec)) in w.planes.iter().zip(blocks::NESTED8_PLANES).take(n).enumerate() {
                    let need = codes.saturating_mul(spec.bits as usize) / 8;
                    if plane.len() < need {
                        return Err(Error::InvalidArgument {
                            what: format!("plane {p} holds {} bytes, a {}-bit view of {rows} rows of {row_stride} codes needs {need}", plane.len(), w.view_bits),
                        });
                    }
                }
                WeightView::Nested8(w)
            }
        };
        Ok(Matrix { rows, cols, view })
    }
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
        scratch.acts.runs_order_only = reads_runs(w);
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
    let Some(ws) = shared_nested(ms) else {
        for (m, out) in ms.iter().zip(outs.iter_mut()) {
            matvec(m, x, out, scratch);
        }
        return;
    };
    let cols = ms[0].cols;
    let k = kernels();
    scratch.acts.runs_order_only = ws[..ms.len()].iter().all(|w| reads_runs(w));
    (k.quantize_acts)(&x[..cols], 1, cols, ws[0].group_size, &mut scratch.acts);
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
        let w = ws[i];
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
        let data: &[u8] = match n.prepared() {
            Prepared::Runs(runs) => runs,
            _ => n.planes[0],
        };
        let half = data.len() / 2;
        crate::pool::prefetch([&data[..bytes.min(half)], &data[half..(half + bytes).min(data.len())]]);
    }
    #[cfg(not(feature = "std"))]
    let _ = (m, bytes);
}

/// Whether `w`'s kernels read its runs (see [`QActs::runs_order_only`]).
fn reads_runs(w: &Nested8<'_>) -> bool {
    matches!(w.prepared(), Prepared::Runs(_))
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
/// with sgemm. Nested weights: quantizes the activations once, then the threads claim tiles of
/// `MATMUL_TILE_ROWS` rows one at a time and run the table's kernel on each (see
/// `nested_matmul`). `scratch.tile` holds at least
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
    if let (WeightView::Nested8(w), false) = (&m.view, dispatch::float_activations()) {
        let k = kernels();
        scratch.acts.runs_order_only = reads_runs(w);
        (k.quantize_acts)(&x[..n * m.cols], n, m.cols, w.group_size, &mut scratch.acts);
        let product = NestedProduct { w, rows: m.rows, out: OutPtr(out.as_mut_ptr()) };
        return nested_matmul(&[product], &scratch.acts, m.cols, &mut scratch.tile);
    }
    let out_ptr = OutPtr(out.as_mut_ptr());
    for_row_ranges(m.rows, MATMUL_TILE_ROWS, m.cols * n, &mut scratch.tile, per_thread, |first, rows, buf| {
        matmul_rows(m, x, n, out_ptr, first, first + rows, buf)
    });
}

/// `outs[i] = ms[i] · x` for `n` tokens of matrices that read the same input (q, k and v; gate
/// and up), as [`matmul`] computes each, bit for bit. When all are nested weights with one
/// group size, the activations are quantized once and every matrix's tiles go to the threads
/// as one job; otherwise each matrix is its own [`matmul`].
pub fn matmul_shared(ms: &[&Matrix<'_>], x: &[f32], n: usize, outs: &mut [&mut [f32]], scratch: &mut Scratch) {
    assert!(ms.len() == outs.len() && (1..=MAX_SHARED).contains(&ms.len()));
    if n == 1 {
        return matvec_shared(ms, x, outs, scratch);
    }
    let Some(ws) = shared_nested(ms) else {
        for (m, out) in ms.iter().zip(outs.iter_mut()) {
            matmul(m, x, n, out, scratch);
        }
        return;
    };
    let cols = ms[0].cols;
    let per_thread = MATMUL_TILE_ROWS * cols.max(n);
    if scratch.tile.len() < per_thread {
        scratch.tile.resize(per_thread, 0.0);
    }
    for (m, out) in ms.iter().zip(outs.iter()) {
        assert!(x.len() >= n * cols && out.len() >= n * m.rows);
    }
    let products: [NestedProduct<'_, '_>; MAX_SHARED] = core::array::from_fn(|i| {
        let i = i.min(ms.len() - 1); // slots past the matrices repeat the last; never read
        NestedProduct { w: ws[i], rows: ms[i].rows, out: OutPtr(outs[i].as_mut_ptr()) }
    });
    scratch.acts.runs_order_only = ws[..ms.len()].iter().all(|w| reads_runs(w));
    (kernels().quantize_acts)(&x[..n * cols], n, cols, ws[0].group_size, &mut scratch.acts);
    nested_matmul(&products[..ms.len()], &scratch.acts, cols, &mut scratch.tile);
}

/// The nested views of `ms` when every matrix is one, with the first one's columns and group
/// size, and nested weights meet int8 activations (slots past `ms.len()` repeat the first);
/// `None` otherwise.
fn shared_nested<'m, 'a>(ms: &[&'m Matrix<'a>]) -> Option<[&'m Nested8<'a>; MAX_SHARED]> {
    if dispatch::float_activations() {
        return None;
    }
    let nested = |m: &'m Matrix<'a>| match &m.view {
        WeightView::Nested8(w) => Some(w),
        _ => None,
    };
    let w0 = nested(ms[0])?;
    let mut ws = [w0; MAX_SHARED];
    for (w, m) in ws.iter_mut().zip(ms) {
        *w = nested(m).filter(|w| w.group_size == w0.group_size && m.cols == ms[0].cols)?;
    }
    Some(ws)
}

/// One product of [`nested_matmul`]: a nested matrix of `rows` rows and where its (n, rows)
/// output starts.
#[derive(Clone, Copy)]
struct NestedProduct<'m, 'a> {
    w: &'m Nested8<'a>,
    rows: usize,
    out: OutPtr,
}

/// `out = w · acts` for every product, activations already quantized (`acts.n` tokens of
/// `cols` values). The work is the products' tiles of [`MATMUL_TILE_ROWS`] rows (rows
/// `64 j..64 (j + 1)`, cut at the end of the matrix): up to [`threads`] threads, each with its
/// own `MATMUL_TILE_ROWS * max(cols, n)` floats of `tile`, claim them one at a time, so the
/// threads stay busy until the last tile of the last product and a thread that starts late
/// leaves its share to the others. Every tile is the one [`matmul`] runs alone, whatever the
/// thread count, so the results are too.
fn nested_matmul(products: &[NestedProduct<'_, '_>], acts: &QActs, cols: usize, tile: &mut [f32]) {
    let n = acts.n;
    let per_thread = MATMUL_TILE_ROWS * cols.max(n);
    let kernels = kernels();
    // Product i owns tiles first_tile[i]..first_tile[i + 1] of the job.
    let mut first_tile = [0usize; MAX_SHARED + 1];
    for (i, p) in products.iter().enumerate() {
        first_tile[i + 1] = first_tile[i] + p.rows.div_ceil(MATMUL_TILE_ROWS);
    }
    let tiles = first_tile[products.len()];
    let run_tile = |j: usize, buf: &mut [f32]| {
        let i = (0..products.len()).find(|&i| j < first_tile[i + 1]).unwrap_or(0);
        let p = &products[i];
        let r0 = (j - first_tile[i]) * MATMUL_TILE_ROWS;
        let tr = MATMUL_TILE_ROWS.min(p.rows - r0);
        let tile = &mut buf[..n * tr];
        kernels.nested8_matmul[dispatch::view_index(p.w.view_bits)](p.w, acts, r0, tile);
        for t in 0..n {
            // SAFETY: the product's output holds n * rows floats (asserted by the callers);
            // element (t, r0 + i) with r0 + i < rows is in bounds, and each tile is run once,
            // so no other call writes rows r0..r0 + tr.
            unsafe {
                core::ptr::copy_nonoverlapping(tile.as_ptr().add(t * tr), p.out.get().add(t * p.rows + r0), tr);
            }
        }
    };
    let rows: usize = products.iter().map(|p| p.rows).sum();
    let most = threads().min(tile.len() / per_thread);
    let (_, n_threads) = parallel::split_rows(rows, MATMUL_TILE_ROWS, cols * n, most);
    if n_threads <= 1 {
        return (0..tiles).for_each(|j| run_tile(j, tile));
    }
    #[cfg(feature = "std")]
    {
        let next = core::sync::atomic::AtomicUsize::new(0);
        let base = OutPtr(tile.as_mut_ptr());
        crate::pool::run(n_threads, n_threads, &|slot| {
            // SAFETY: `slot < n_threads <= tile.len() / per_thread`, so the slice is in bounds;
            // the pool runs each slot once, so the slices are disjoint, and `run` returns only
            // after every call has, within the borrow of `tile`.
            let buf = unsafe { core::slice::from_raw_parts_mut(base.get().add(slot * per_thread), per_thread) };
            loop {
                let j = next.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
                if j >= tiles {
                    return;
                }
                run_tile(j, buf);
            }
        });
    }
    #[cfg(not(feature = "std"))]
    (0..tiles).for_each(|j| run_tile(j, tile));
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
