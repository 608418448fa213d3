//! The CPU backend: products through the probed kernel table ([`crate::kernels`]), attention
//! with `matrixmultiply` (prefill) or the table's one-head kernel (decode), the elementwise
//! steps of many tokens split by tokens ([`crate::kernels::tokens`]), threads from the
//! persistent pool.
//!
//! Weights are [`Matrix`]es over the checkpoint's bytes, with the copies the active table reads
//! faster made at load (repacked runs of 2-, 3- and 4-bit views, the 8-bit view's nibble plane;
//! see [`crate::kernels::Nested8`]).

mod attention;
mod prepare;

pub use prepare::Preparing;

use alloc::vec;
use alloc::vec::Vec;

use super::{AttnShape, Backend, PreparedMatrix};
use crate::config::Config;
use crate::error::Result;
use crate::format::TensorInfo;
use crate::kernels::{self, tokens, Matrix, Scratch, WeightView};
use crate::kv::KvView;

/// Bytes of each half of the next product's weights that idle pool workers prefetch in decode
/// while the caller works alone (norms, RoPE, activation quantization): enough to cover the
/// first rows the workers will read, small enough to stay in L2 (see docs/RESULTS.md).
const PF_BYTES: usize = 64 * 1024;

/// Most tokens of one block of batched attention: a score block is (ATT_ROWS, positions).
const ATT_ROWS: usize = 64;
/// Most floats of one score block (so long contexts take fewer rows per block, bounding
/// memory at ATT_BLOCK_FLOATS per thread).
const ATT_BLOCK_FLOATS: usize = 256 * 1024;

/// The CPU backend's buffers for one model.
#[derive(Debug)]
pub struct Cpu {
    /// Product buffers: (threads, MATMUL_TILE_ROWS, max(widest, batch)) tiles, quantized activations.
    scratch: Scratch,
    /// (n_heads, max_seq_len) attention scores of each head (decode).
    scores: Vec<f32>,
    /// (batch, q_dim) queries rotated into the domain of a cache that stores keys rotated.
    qrot: Vec<f32>,
    /// Score blocks of batched attention, one per thread: (att_rows, max_seq_len) each.
    att: Vec<f32>,
    /// A layer's keys then values as f32, (max_seq_len, kv_dim) each, for batched attention
    /// over a cache not stored as f32.
    kv_f32: Vec<f32>,
    /// Tokens per block of batched attention (rows of a score block).
    att_rows: usize,
    /// Floats per row of scores (max_seq_len).
    stride: usize,
}

/// Checkpoint tensor `t` as a matrix at view `bits` (`None`: 8), with the form the active
/// kernel table reads prepared now.
pub fn matrix<'a>(t: &TensorInfo<'a>, bits: Option<u8>) -> Result<Matrix<'a>> {
    let (rows, cols, stored) = t.blocks()?;
    Matrix::from_blocks(rows, cols, stored, bits)
}

/// Lengths of the CPU backend's buffers for one model, shared by [`Cpu::new`] and
/// [`Cpu::planned_state_bytes`] so the prediction cannot drift from what is allocated.
struct Sizes {
    /// Widest product input (dim, hidden or q_dim): the scratch tile's columns.
    widest: usize,
    scores: usize,
    qrot: usize,
    att: usize,
    att_rows: usize,
    kv_f32: usize,
}

impl Sizes {
    fn of(c: &Config, max_batch: usize, max_seq_len: usize) -> Sizes {
        let widest = c.dim.max(c.hidden_dim).max(c.q_dim());
        // Batched attention: one score block per thread (each runs one (head, block of tokens)
        // task at a time; at most 64, the slots `attention_batch` tracks) of `att_rows` tokens
        // by all positions, bounded at ATT_BLOCK_FLOATS; and the layer's keys and values read
        // back once per call from a cache not stored as f32.
        let att_rows = if max_batch > 1 { (ATT_BLOCK_FLOATS / max_seq_len).clamp(1, ATT_ROWS.min(max_batch)) } else { 0 };
        let att_slots = if max_batch > 1 { kernels::threads().clamp(1, 64) } else { 0 };
        Sizes {
            widest,
            scores: c.n_heads * max_seq_len,
            qrot: max_batch * c.q_dim(),
            att: att_slots * att_rows * max_seq_len,
            att_rows,
            kv_f32: if max_batch > 1 { 2 * max_seq_len * c.kv_dim() } else { 0 },
        }
    }
}

impl Cpu {
    /// The bytes [`Backend::state_bytes`] reports right after `Cpu::new(c, max_batch,
    /// max_seq_len)` at the current thread count, without allocating anything.
    pub fn planned_state_bytes(c: &Config, max_batch: usize, max_seq_len: usize) -> usize {
        let s = Sizes::of(c, max_batch, max_seq_len);
        4 * (kernels::scratch_len(s.widest.max(max_batch), kernels::threads()) + s.scores + s.qrot + s.att + s.kv_f32)
    }
}

impl Backend for Cpu {
    type Matrix<'a> = Matrix<'a>;
    type Preparing<'a> = Preparing<'a>;

    fn new(c: &Config, max_batch: usize, max_seq_len: usize) -> Result<Self> {
        let s = Sizes::of(c, max_batch, max_seq_len);
        Ok(Cpu {
            scratch: Scratch::new(s.widest, max_batch, kernels::threads()),
            scores: vec![0.0; s.scores],
            qrot: vec![0.0; s.qrot],
            att: vec![0.0; s.att],
            kv_f32: vec![0.0; s.kv_f32],
            att_rows: s.att_rows,
            stride: max_seq_len,
        })
    }

    fn name(&self) -> &'static str {
        kernels::kernels().name
    }

    fn prepare<'a>(&self, t: &TensorInfo<'a>, bits: Option<u8>) -> Result<PreparedMatrix<Matrix<'a>>> {
        let matrix = matrix(t, bits)?;
        let replaced_planes = matrix.replaced_planes();
        Ok(PreparedMatrix { matrix, replaced_planes })
    }

    #[cfg(feature = "std")]
    fn prepare_all<'a>(&self, jobs: &[(&TensorInfo<'a>, Option<u8>)]) -> Vec<Result<PreparedMatrix<Matrix<'a>>>> {
        let out: std::sync::Mutex<Vec<Option<Result<PreparedMatrix<Matrix<'a>>>>>> = std::sync::Mutex::new((0..jobs.len()).map(|_| None).collect());
        crate::pool::run(jobs.len(), kernels::threads(), &|i| {
            let r = self.prepare(jobs[i].0, jobs[i].1);
            out.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
        });
        out.into_inner().unwrap_or_else(|e| e.into_inner()).into_iter().map(|r| r.expect("the pool runs every job")).collect()
    }

    fn begin_prepare<'a>(&self, t: &TensorInfo<'a>, bits: Option<u8>) -> Result<Preparing<'a>> {
        let (rows, cols, stored) = t.blocks()?;
        Ok(Preparing::new(Matrix::stored(rows, cols, stored, bits)?))
    }

    fn prepare_rows<'a>(&self, t: &TensorInfo<'a>, bits: Option<u8>) -> Result<PreparedMatrix<Matrix<'a>>> {
        let (rows, cols, stored) = t.blocks()?;
        Ok(PreparedMatrix { matrix: Matrix::stored(rows, cols, stored, bits)?, replaced_planes: 0..0 })
    }

    fn begin_prepare_rows<'a>(&self, t: &TensorInfo<'a>, bits: Option<u8>) -> Result<Preparing<'a>> {
        let (rows, cols, stored) = t.blocks()?;
        Ok(Preparing::stored(Matrix::stored(rows, cols, stored, bits)?))
    }

    fn view_bytes(m: &Matrix<'_>) -> usize {
        m.view_bytes()
    }

    fn view_bits(m: &Matrix<'_>) -> Option<u8> {
        match &m.view {
            WeightView::Nested8(n) => Some(n.view_bits),
            _ => None,
        }
    }

    fn row(&self, m: &Matrix<'_>, row: usize, out: &mut [f32]) {
        m.dequant_row(row, out);
    }

    fn matvec_shared(&mut self, ms: &[&Matrix<'_>], x: &[f32], outs: &mut [&mut [f32]]) {
        kernels::matvec_shared(ms, x, outs, &mut self.scratch);
    }

    fn matmul(&mut self, m: &Matrix<'_>, x: &[f32], n: usize, out: &mut [f32]) {
        kernels::matmul(m, x, n, out, &mut self.scratch);
    }

    fn matmul_shared(&mut self, ms: &[&Matrix<'_>], x: &[f32], n: usize, outs: &mut [&mut [f32]]) {
        kernels::matmul_shared(ms, x, n, outs, &mut self.scratch);
    }

    fn prefetch(&self, m: &Matrix<'_>) {
        kernels::prefetch_next(m, PF_BYTES);
    }

    fn attend_one(&mut self, s: &AttnShape, q: &[f32], kv: KvView<'_>, out: &mut [f32]) {
        attention::one(s, q, kv, out, &mut self.scores, self.stride, &mut self.qrot);
    }

    fn attend_many(&mut self, s: &AttnShape, n: usize, q: &[f32], kv: KvView<'_>, out: &mut [f32]) {
        let work = attention::Work { att: &mut self.att, rows: self.att_rows, stride: self.stride, kv_f32: &mut self.kv_f32, qrot: &mut self.qrot };
        attention::many(s, n, q, kv, out, work);
    }

    fn rmsnorm(&self, out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
        tokens::rmsnorm(out, x, weight, eps);
    }

    fn rope(&self, q: &mut [f32], k: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
        tokens::rope(q, k, head_dim, cos, sin);
    }

    fn swiglu(&self, gate: &mut [f32], up: &[f32]) {
        tokens::swiglu(gate, up);
    }

    fn geglu(&self, gate: &mut [f32], up: &[f32]) {
        tokens::geglu(gate, up);
    }

    fn rmsnorm_rows(&self, x: &mut [f32], weight: &[f32], eps: f32) {
        tokens::rmsnorm_rows_in_place(x, weight, eps);
    }

    fn scale(&self, x: &mut [f32], s: f32) {
        x.iter_mut().for_each(|v| *v *= s);
    }

    fn add(&self, x: &mut [f32], y: &[f32]) {
        tokens::add(x, y);
    }

    fn state_bytes(&self) -> usize {
        self.scratch.bytes() + 4 * (self.scores.len() + self.att.len() + self.kv_f32.len() + self.qrot.len())
    }
}
