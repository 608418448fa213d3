//! The seam between the forward pass and the hardware that runs it.
//!
//! [`crate::model::Model`] calls a [`Backend`] for every product, the attention and the
//! elementwise steps, and holds its weights in the backend's prepared form
//! ([`Backend::Matrix`]). A backend owns whatever it builds from the checkpoint at load (the CPU
//! backend's repacked runs and nibble planes) and says, as plain data, which stored planes of a
//! tensor it no longer reads ([`PreparedMatrix::replaced_planes`]), so that a loader can drop them
//! from memory.
//!
//! - [`cpu::Cpu`]: the kernel table of [`crate::kernels`] (scalar reference, AVX2, AVX-512,
//!   NEON), threads from [`crate::pool`].
//! - [`cuda::Cuda`]: the CUDA backend (Jetson first), behind the `cuda` feature. Without it, a stand-in of the same
//!   name that cannot be constructed ([`cuda::Cuda::new`] returns [`crate::Error::NotCompiled`]),
//!   so call sites carry no `cfg`.

pub mod cpu;
pub mod cuda;

use alloc::vec::Vec;
use core::ops::Range;

use crate::config::Config;
use crate::error::Result;
use crate::format::TensorInfo;
use crate::kv::KvView;

pub use cpu::Cpu;
pub use cuda::Cuda;

/// A matrix in a backend's form, and the stored planes that form replaced.
#[derive(Debug)]
pub struct PreparedMatrix<M> {
    pub matrix: M,
    /// Indices of the stored nested planes (0..6) the backend will not read, because a copy it
    /// made at load holds their bits; empty when it reads the planes in place.
    pub replaced_planes: Range<usize>,
}

/// A matrix being prepared a slice at a time: it owns everything it has made so far and
/// borrows only the checkpoint, so it can wait between slices (or move to another thread) while
/// the model runs on the old copy.
pub trait Preparing<M>: core::fmt::Debug + Sized {
    /// Make about `bytes` more bytes of the prepared copy (at least one unit of the backend's
    /// work); true once the matrix is complete.
    fn step(&mut self, bytes: usize) -> bool;

    /// The prepared matrix, what is left of the work done first.
    fn finish(self) -> PreparedMatrix<M>;

    /// The stored planes (indices within 0..6) the copy made so far replaces, the codes `0..n`
    /// it covers (their bytes in those planes will not be read again once the matrix is
    /// complete) and the matrix's codes. `None` while no copy is being made (or a backend does
    /// not say).
    fn replaced_so_far(&self) -> Option<(core::ops::Range<usize>, usize, usize)> {
        None
    }
}

/// A [`Preparing`] made whole at once, for a backend whose preparation does not come in slices.
#[derive(Debug)]
pub struct Ready<M>(pub PreparedMatrix<M>);

impl<M: core::fmt::Debug> Preparing<M> for Ready<M> {
    fn step(&mut self, _: usize) -> bool {
        true
    }

    fn finish(self) -> PreparedMatrix<M> {
        self.0
    }
}

/// The shapes of one layer's attention.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub n_heads: usize,
    pub head_dim: usize,
    /// Query heads per key/value head.
    pub group: usize,
    /// The query scale (`1 / sqrt(head_dim)` unless the config says otherwise).
    pub scale: f32,
    /// A sliding-window layer's reach: the token at position `p` attends to positions
    /// `p + 1 - window..=p` only. `None`: every position before it.
    pub window: Option<usize>,
}

/// Everything the forward pass asks of the hardware. Buffers a backend needs per model
/// (scratch, score blocks) are allocated once, in [`Backend::new`].
pub trait Backend: Sized + core::fmt::Debug {
    /// A weight matrix prepared for this backend's kernels.
    type Matrix<'a>: Clone + core::fmt::Debug;

    /// A backend for a model of config `c` running at most `max_batch` tokens a call over
    /// `max_seq_len` positions.
    fn new(c: &Config, max_batch: usize, max_seq_len: usize) -> Result<Self>;

    /// What runs the products (e.g. the kernel table's name, `avx512vnni`).
    fn name(&self) -> &'static str;

    /// Tensor `t` at view `bits` (`None`: 8; dense tensors have no views).
    fn prepare<'a>(&self, t: &TensorInfo<'a>, bits: Option<u8>) -> Result<PreparedMatrix<Self::Matrix<'a>>>;

    /// [`Backend::prepare`] of every job, in order; a backend may run them side by side (the
    /// CPU's does, on its threads: a live change of views then stalls decoding less).
    fn prepare_all<'a>(&self, jobs: &[(&TensorInfo<'a>, Option<u8>)]) -> Vec<Result<PreparedMatrix<Self::Matrix<'a>>>> {
        jobs.iter().map(|(t, bits)| self.prepare(t, *bits)).collect()
    }

    /// A matrix being prepared a slice at a time ([`Backend::begin_prepare`]).
    type Preparing<'a>: Preparing<Self::Matrix<'a>>;

    /// Start preparing tensor `t` at view `bits` a slice at a time ([`Preparing::step`]): the
    /// same matrix as [`Backend::prepare`] in the end, for a caller that must not stall for a
    /// whole matrix at once (the memory controller, between two tokens, while decode keeps
    /// reading the old copy). Checks the tensor now; does none of the work.
    fn begin_prepare<'a>(&self, t: &TensorInfo<'a>, bits: Option<u8>) -> Result<Self::Preparing<'a>>;

    /// [`Backend::prepare`] of a matrix the model only reads a row at a time
    /// ([`crate::arch::TensorSpec::rows_only`]): a backend may keep it as stored, without the
    /// form its products read (which would be a copy of the whole table for a few rows a token).
    fn prepare_rows<'a>(&self, t: &TensorInfo<'a>, bits: Option<u8>) -> Result<PreparedMatrix<Self::Matrix<'a>>> {
        self.prepare(t, bits)
    }

    /// [`Backend::begin_prepare`] of a matrix read a row at a time (see [`Backend::prepare_rows`]).
    fn begin_prepare_rows<'a>(&self, t: &TensorInfo<'a>, bits: Option<u8>) -> Result<Self::Preparing<'a>> {
        self.begin_prepare(t, bits)
    }

    /// Bytes of `m` as stored that its view reads.
    fn view_bytes(m: &Self::Matrix<'_>) -> usize;

    /// The view `m` is read at (`None` for dense matrices).
    fn view_bits(m: &Self::Matrix<'_>) -> Option<u8>;

    /// Row `row` of `m` as f32 (the embedding lookup).
    fn row(&self, m: &Self::Matrix<'_>, row: usize, out: &mut [f32]);

    /// `outs[i] = ms[i] · x` for one token, the matrices sharing the input `x`.
    fn matvec_shared(&mut self, ms: &[&Self::Matrix<'_>], x: &[f32], outs: &mut [&mut [f32]]);

    /// `out[t, r] = m[r, :] · x[t, :]` for `n` tokens.
    fn matmul(&mut self, m: &Self::Matrix<'_>, x: &[f32], n: usize, out: &mut [f32]);

    /// `outs[i][t, r] = ms[i][r, :] · x[t, :]` for `n` tokens, the matrices sharing the input
    /// `x` (what [`Backend::matmul`] gives for each).
    fn matmul_shared(&mut self, ms: &[&Self::Matrix<'_>], x: &[f32], n: usize, outs: &mut [&mut [f32]]);

    /// A hint: `m` is the next matrix decode multiplies.
    fn prefetch(&self, m: &Self::Matrix<'_>);

    /// Attention of one token at position `kv.len - 1` to the positions in `kv`: `q` and
    /// `out` are (n_heads * head_dim).
    fn attend_one(&mut self, s: &AttnShape, q: &[f32], kv: KvView<'_>, out: &mut [f32]);

    /// Causal attention of `n` tokens at positions `kv.len - n..kv.len`: `q` and `out` are
    /// (n, n_heads * head_dim).
    fn attend_many(&mut self, s: &AttnShape, n: usize, q: &[f32], kv: KvView<'_>, out: &mut [f32]);

    /// `out[t] = x[t] / rms(x[t]) * weight` for every token row: `x` and `out` are
    /// (n, weight.len()).
    fn rmsnorm(&self, out: &mut [f32], x: &[f32], weight: &[f32], eps: f32);

    /// RoPE in interleaved order: rotate the adjacent pairs `(2i, 2i+1)` of every head of token
    /// `t`'s rows of `q` (n, q_dim) and `k` (n, kv_dim) by the angles of row `t` of `cos` and
    /// `sin` (n, head_dim / 2).
    fn rope(&self, q: &mut [f32], k: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]);

    /// `gate = silu(gate) * up`, elementwise.
    fn swiglu(&self, gate: &mut [f32], up: &[f32]);

    /// `gate = gelu_tanh(gate) * up`, elementwise (GeGLU).
    fn geglu(&self, gate: &mut [f32], up: &[f32]);

    /// RMSNorm in place of every `weight.len()`-wide row of `x` (per-head q/k norms).
    fn rmsnorm_rows(&self, x: &mut [f32], weight: &[f32], eps: f32);

    /// `x *= s`, elementwise.
    fn scale(&self, x: &mut [f32], s: f32);

    /// `x += y`, elementwise (the residual stream).
    fn add(&self, x: &mut [f32], y: &[f32]);

    /// Bytes of the backend's own buffers.
    fn state_bytes(&self) -> usize;
}
