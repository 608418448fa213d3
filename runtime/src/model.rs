//! The Llama forward pass, top to bottom, in the order the math happens (after llama2.c).
//!
//! Weights are borrowed from the checkpoint bytes (an mmap or an aligned buffer) as stored;
//! every run-time buffer is allocated once in [`Model::new`], sized for `max_batch` tokens and
//! `max_seq_len` positions. Nothing is allocated per token.
//!
//! Canonical tensor names (GGUF's) and shapes (`[out, in]`, row-major):
//! `token_embd.weight` (vocab, dim), `output_norm.weight` (dim), `output.weight` (vocab, dim;
//! absent when tied), and per layer `blk.{l}.`: `attn_norm.weight` (dim), `attn_q.weight`
//! (n_heads*head_dim, dim), `attn_k.weight` / `attn_v.weight` (kv_dim, dim),
//! `attn_output.weight` (dim, n_heads*head_dim), `ffn_norm.weight` (dim), `ffn_gate.weight` /
//! `ffn_up.weight` (hidden, dim), `ffn_down.weight` (dim, hidden). The rows of q and k are in
//! interleaved RoPE order: each head rotates adjacent pairs `(2i, 2i+1)`.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::format::{Checkpoint, Encoding, TensorInfo};
use crate::kernels::vector::sum_lanes;
pub use crate::kernels::vector::{exp_fast, softmax, softmax_reference};
use crate::kernels::{self, Matrix};

/// One transformer block's weights.
#[derive(Debug, Clone)]
pub struct Layer<'a> {
    pub attn_norm: &'a [f32], // (dim)
    pub wq: Matrix<'a>,       // (q_dim, dim)
    pub wk: Matrix<'a>,       // (kv_dim, dim)
    pub wv: Matrix<'a>,       // (kv_dim, dim)
    pub wo: Matrix<'a>,       // (dim, q_dim)
    pub ffn_norm: &'a [f32],  // (dim)
    pub w_gate: Matrix<'a>,   // (hidden, dim)
    pub w_up: Matrix<'a>,     // (hidden, dim)
    pub w_down: Matrix<'a>,   // (dim, hidden)
}

/// All weights, borrowed from the checkpoint.
#[derive(Debug, Clone)]
pub struct Weights<'a> {
    pub token_embd: Matrix<'a>, // (vocab, dim)
    pub layers: Vec<Layer<'a>>,
    pub output_norm: &'a [f32], // (dim)
    pub output: Matrix<'a>,     // (vocab, dim); the embedding itself when tied
    /// The output head is the token embedding.
    pub tied: bool,
}

/// Which view (bit width) each nested-plane tensor is read at. Keys of `overrides` are a
/// tensor name (`blk.3.ffn_up.weight`), a layer prefix (`blk.3`) or a tensor kind shared by all
/// layers (`ffn_up`); the most specific match wins (name, then layer, then kind).
/// Dense tensors (f16, f32) ignore views.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ViewPlan {
    /// Bits of every tensor without an override; `None` = 8.
    pub default_bits: Option<u8>,
    pub overrides: Vec<(String, u8)>,
}

impl ViewPlan {
    pub fn uniform(bits: u8) -> Self {
        ViewPlan { default_bits: Some(bits), overrides: Vec::new() }
    }

    /// The view of tensor `name`, or `None` for the encoding's default.
    pub fn bits_for(&self, name: &str) -> Option<u8> {
        let stem = name.strip_suffix(".weight").unwrap_or(name);
        let (layer, kind) = match stem.rsplit_once('.') {
            Some((l, k)) if l.starts_with("blk.") => (Some(l), k),
            _ => (None, stem),
        };
        let find = |key: &str| self.overrides.iter().rev().find(|(k, _)| k == key).map(|(_, b)| *b);
        find(name)
            .or_else(|| find(stem))
            .or_else(|| layer.and_then(find))
            .or_else(|| find(kind))
            .or(self.default_bits)
    }
}

/// Options fixed when a model is instantiated.
#[derive(Debug, Clone, Copy)]
pub struct ModelOptions {
    /// Positions the KV cache holds (capped at the model's trained context). 0 = the model's.
    pub max_seq_len: usize,
    /// Most tokens one [`Model::forward_batch`] call processes.
    pub max_batch: usize,
    /// View (bits) of every nested-plane tensor; `None` = 8.
    pub view_bits: Option<u8>,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions { max_seq_len: 2048, max_batch: 64, view_bits: None }
    }
}

/// Run-time buffers, allocated once.
#[derive(Debug)]
struct RunState {
    x: Vec<f32>,         // (batch, dim) residual stream
    xb: Vec<f32>,        // (batch, dim) normed input of a sub-block
    q: Vec<f32>,         // (batch, q_dim)
    k: Vec<f32>,         // (batch, kv_dim)
    v: Vec<f32>,         // (batch, kv_dim)
    att_out: Vec<f32>,   // (batch, q_dim) attention output before wo
    proj: Vec<f32>,      // (batch, dim) output of wo / w_down
    hb: Vec<f32>,        // (batch, hidden) gate, then silu(gate) * up
    hb2: Vec<f32>,       // (batch, hidden) up
    scores: Vec<f32>,    // (n_heads, max_seq_len) attention scores of each head (decode)
    att: Vec<f32>,       // (att_slots, att_rows, max_seq_len) score blocks of batched attention, one per thread
    logits: Vec<f32>,    // (batch, vocab)
    key_cache: Vec<f32>, // (layer, max_seq_len, kv_dim)
    value_cache: Vec<f32>, // (layer, max_seq_len, kv_dim)
    rope_cos: Vec<f32>,  // (max_seq_len, head_dim/2)
    rope_sin: Vec<f32>,  // (max_seq_len, head_dim/2)
    scratch: kernels::Scratch, // product buffers: (threads, MATMUL_TILE_ROWS, max(widest, batch)) tiles, quantized activations
}

/// A model ready to run: config, borrowed weights and preallocated state.
#[derive(Debug)]
pub struct Model<'a> {
    pub config: Config,
    pub weights: Weights<'a>,
    pub max_seq_len: usize,
    pub max_batch: usize,
    /// Tokens per block of batched attention (rows of a score block in `RunState::att`).
    att_rows: usize,
    state: RunState,
}

fn require<'c, 'a>(ck: &'c Checkpoint<'a>, name: &str) -> Result<&'c TensorInfo<'a>> {
    ck.tensor(name).ok_or_else(|| Error::MissingTensor { name: name.into() })
}

fn check_shape(t: &TensorInfo<'_>, expected: &[usize]) -> Result<()> {
    let exp: Vec<u64> = expected.iter().map(|&d| d as u64).collect();
    if t.shape != exp {
        return Err(Error::ShapeMismatch { name: t.name.into(), expected: exp, found: t.shape.clone() });
    }
    Ok(())
}

fn matrix<'a>(ck: &Checkpoint<'a>, name: &str, rows: usize, cols: usize, plan: &ViewPlan) -> Result<Matrix<'a>> {
    let t = require(ck, name)?;
    check_shape(t, &[rows, cols])?;
    Matrix::from_tensor(t, plan.bits_for(name))
}

fn norm<'a>(ck: &Checkpoint<'a>, name: &str, dim: usize) -> Result<&'a [f32]> {
    let t = require(ck, name)?;
    check_shape(t, &[dim])?;
    if t.encoding != Encoding::F32 {
        return Err(Error::Corrupt { what: format!("norm '{name}' must be f32, is {}", t.encoding.name()) });
    }
    match Matrix::from_tensor(t, None)?.view {
        kernels::WeightView::F32(w) => Ok(w),
        _ => Err(Error::Corrupt { what: format!("norm '{name}' must be f32") }),
    }
}

/// `s`'s (offset, length) inside `file`, if it is a non-empty part of it (a view's copies on
/// the heap are not).
fn file_range(file: &[u8], s: &[u8]) -> Option<(u64, u64)> {
    let (base, at) = (file.as_ptr() as usize, s.as_ptr() as usize);
    (!s.is_empty() && at >= base && at + s.len() <= base + file.len()).then(|| ((at - base) as u64, s.len() as u64))
}

impl<'a> Weights<'a> {
    /// Borrow every weight at the views `plan` picks, checking names and shapes against the
    /// config.
    pub fn from_checkpoint(ck: &Checkpoint<'a>, c: &Config, plan: &ViewPlan) -> Result<Self> {
        Self::from_checkpoint_releasing(ck, c, plan, &|_, _| {})
    }

    /// [`Weights::from_checkpoint`], calling `release` with each repacked tensor's unread
    /// plane ranges (see [`Model::with_plan_releasing`]).
    pub fn from_checkpoint_releasing(ck: &Checkpoint<'a>, c: &Config, plan: &ViewPlan, release: &dyn Fn(u64, u64)) -> Result<Self> {
        Self::build(ck, c, plan, release, None)
    }

    /// The weights at `plan`'s views; a matrix of `reuse` already at its planned view is kept
    /// as it is (a repacked copy is not made again).
    fn build(ck: &Checkpoint<'a>, c: &Config, plan: &ViewPlan, release: &dyn Fn(u64, u64), reuse: Option<&Weights<'a>>) -> Result<Self> {
        let old: Vec<(String, &Matrix<'a>)> = reuse.map(|w| w.matrices()).unwrap_or_default();
        let get = |name: &str, rows: usize, cols: usize| -> Result<Matrix<'a>> {
            let same = |m: &Matrix<'a>| match &m.view {
                kernels::WeightView::Nested8(n) => n.view_bits == plan.bits_for(name).unwrap_or(8),
                _ => true,
            };
            if let Some((_, m)) = old.iter().find(|(n, m)| n == name && same(m)) {
                return Ok((*m).clone());
            }
            let m = matrix(ck, name, rows, cols, plan)?;
            for (o, l) in m.repacked_planes().iter().filter_map(|p| file_range(ck.bytes(), p)) {
                release(o, l);
            }
            Ok(m)
        };
        let token_embd = get("token_embd.weight", c.vocab_size, c.dim)?;
        let mut layers = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let n = |s: &str| -> String { format!("blk.{l}.{s}.weight") };
            layers.push(Layer {
                attn_norm: norm(ck, &n("attn_norm"), c.dim)?,
                wq: get(&n("attn_q"), c.q_dim(), c.dim)?,
                wk: get(&n("attn_k"), c.kv_dim(), c.dim)?,
                wv: get(&n("attn_v"), c.kv_dim(), c.dim)?,
                wo: get(&n("attn_output"), c.dim, c.q_dim())?,
                ffn_norm: norm(ck, &n("ffn_norm"), c.dim)?,
                w_gate: get(&n("ffn_gate"), c.hidden_dim, c.dim)?,
                w_up: get(&n("ffn_up"), c.hidden_dim, c.dim)?,
                w_down: get(&n("ffn_down"), c.dim, c.hidden_dim)?,
            });
        }
        let output_norm = norm(ck, "output_norm.weight", c.dim)?;
        let output = if c.tied_embeddings {
            token_embd.clone()
        } else {
            get("output.weight", c.vocab_size, c.dim)?
        };
        Ok(Weights { token_embd, layers, output_norm, output, tied: c.tied_embeddings })
    }

    /// Every matrix with its canonical name, in file order of the model.
    pub fn matrices(&self) -> Vec<(String, &Matrix<'a>)> {
        let mut v = vec![(String::from("token_embd.weight"), &self.token_embd)];
        for (l, x) in self.layers.iter().enumerate() {
            for (kind, m) in [
                ("attn_q", &x.wq),
                ("attn_k", &x.wk),
                ("attn_v", &x.wv),
                ("attn_output", &x.wo),
                ("ffn_gate", &x.w_gate),
                ("ffn_up", &x.w_up),
                ("ffn_down", &x.w_down),
            ] {
                v.push((format!("blk.{l}.{kind}.weight"), m));
            }
        }
        if !self.tied {
            v.push((String::from("output.weight"), &self.output));
        }
        v
    }

    /// (file offset, length) of every byte range the current views read, `file` being the
    /// bytes the weights borrow from.
    pub fn read_ranges(&self, file: &[u8]) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for (_, m) in self.matrices() {
            m.for_each_slice(&mut |s| out.extend(file_range(file, s)));
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// File ranges (offset, length) of the planes that repacked 3- and 4-bit views no longer
    /// read (their codes were copied into `Nested8::repacked` at load): a caller with a mapped file
    /// may drop them from the resident set, as it does for the planes a lowered view leaves.
    pub fn repacked_ranges(&self, file: &[u8]) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for (_, m) in self.matrices() {
            out.extend(m.repacked_planes().iter().filter_map(|p| file_range(file, p)));
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Bytes the weights' current views read.
    pub fn view_bytes(&self, tied: bool) -> usize {
        let mut n = self.token_embd.view_bytes() + self.output_norm.len() * 4;
        if !tied {
            n += self.output.view_bytes();
        }
        for l in &self.layers {
            n += (l.attn_norm.len() + l.ffn_norm.len()) * 4;
            for m in [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down] {
                n += m.view_bytes();
            }
        }
        n
    }
}

/// `out = x / rms(x) * weight`, per token row.
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let ss = sum_lanes(x, |v| v * v) / x.len() as f32;
    let inv = 1.0 / libm::sqrtf(ss + eps);
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * inv);
    }
}

/// Rotate adjacent pairs `(2i, 2i+1)` of every head of `x` by the angles of position `pos`.
fn rope(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..head_dim / 2 {
            let (a, b) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = a * cos[i] - b * sin[i];
            head[2 * i + 1] = a * sin[i] + b * cos[i];
        }
    }
}

/// Where in a layer an [`Observer`] sees activations: the inputs of the linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// Normed input of `attn_q`, `attn_k`, `attn_v`: (n, dim).
    AttnIn,
    /// Input of `attn_output`: (n, q_dim).
    AttnOut,
    /// Normed input of `ffn_gate`, `ffn_up`: (n, dim).
    FfnIn,
    /// Input of `ffn_down`: (n, hidden).
    FfnDown,
    /// Normed input of the output head: (n, dim), only the rows logits are computed for.
    Head,
}

impl Site {
    /// The tensor kinds that read this site's activations.
    pub fn consumers(self) -> &'static [&'static str] {
        match self {
            Site::AttnIn => &["attn_q", "attn_k", "attn_v"],
            Site::AttnOut => &["attn_output"],
            Site::FfnIn => &["ffn_gate", "ffn_up"],
            Site::FfnDown => &["ffn_down"],
            Site::Head => &["output"],
        }
    }
}

/// Sees the input activations of every linear layer during a forward pass (calibration,
/// sensitivity profiling). `x` is (n, width) row-major; `layer` is `None` for the head.
pub trait Observer {
    fn observe(&mut self, layer: Option<usize>, site: Site, n: usize, x: &[f32]);
}

/// Which logits a forward call produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's (generation).
    Last,
    /// Every token's (evaluation).
    All,
}

/// Most tokens of one block of batched attention: a score block is (ATT_ROWS, positions).
const ATT_ROWS: usize = 64;
/// Most floats of one score block (so long contexts take fewer rows per block, bounding
/// memory at ATT_BLOCK_FLOATS per thread).
const ATT_BLOCK_FLOATS: usize = 256 * 1024;

/// Shapes of one layer's batched attention.
struct AttnGeometry {
    /// Tokens, at positions `pos..pos + n`.
    n: usize,
    pos: usize,
    hd: usize,
    q_dim: usize,
    kv_dim: usize,
    /// Query heads per kv head.
    group: usize,
    n_heads: usize,
    scale: f32,
    /// Tokens per score block.
    chunk: usize,
    /// Floats per row a score block may use (max_seq_len).
    stride: usize,
}

/// A pointer that tasks writing disjoint elements share.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: the tasks of `attention_batch` write disjoint elements (their own heads' columns of
// the output, their own score block) and finish before the borrows end.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}
impl SharedMut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Causal GQA attention of `n` tokens with sgemm, head by head and block of tokens by block:
/// `S = scale · Q_h K_h^T` (block rows × visible positions), the causal mask and softmax per
/// row, then `O_h = P V_h` straight into the head's columns of `out` (n, q_dim). `q` is
/// (n, q_dim); `keys` / `values` are the layer's cache rows `0..pos + n` (kv_dim each). Heads
/// are split over the threads, each with its own score block of `att`.
fn attention_batch(g: &AttnGeometry, q: &[f32], keys: &[f32], values: &[f32], out: &mut [f32], att: &mut [f32]) {
    let block = g.chunk * g.stride;
    assert!(g.chunk > 0 && att.len() >= block && q.len() >= g.n * g.q_dim && out.len() >= g.n * g.q_dim);
    assert!(keys.len() >= (g.pos + g.n) * g.kv_dim && values.len() >= (g.pos + g.n) * g.kv_dim);
    let slots = (att.len() / block).min(g.n_heads).min(kernels::threads()).max(1);
    let per = g.n_heads.div_ceil(slots);
    let out_ptr = SharedMut(out.as_mut_ptr());
    let att_ptr = SharedMut(att.as_mut_ptr());
    let task = |i: usize| {
        // SAFETY: slot `i < slots <= att.len() / block` owns `att[i * block..(i + 1) * block]`;
        // each task runs once.
        let s = unsafe { core::slice::from_raw_parts_mut(att_ptr.get().add(i * block), block) };
        for h in i * per..((i + 1) * per).min(g.n_heads) {
            let kv_off = (h / g.group) * g.hd;
            let mut t0 = 0;
            while t0 < g.n {
                let rows = g.chunk.min(g.n - t0);
                let width = g.pos + t0 + rows; // positions the block's last token sees
                // SAFETY (both products): every pointer offset and stride stays inside the
                // slice it came from (asserted above: q and out hold n rows of q_dim, keys and
                // values pos + n rows of kv_dim, `s` rows * width <= block floats); the output
                // columns h*hd..(h+1)*hd of `out` belong to this task's head alone.
                unsafe {
                    matrixmultiply::sgemm(
                        rows,
                        g.hd,
                        width,
                        g.scale,
                        q.as_ptr().add(t0 * g.q_dim + h * g.hd),
                        g.q_dim as isize,
                        1,
                        keys.as_ptr().add(kv_off),
                        1,
                        g.kv_dim as isize,
                        0.0,
                        s.as_mut_ptr(),
                        width as isize,
                        1,
                    );
                }
                for r in 0..rows {
                    let row = &mut s[r * width..(r + 1) * width];
                    let seen = g.pos + t0 + r + 1; // causal: positions 0..=pos + t0 + r
                    softmax(&mut row[..seen]);
                    row[seen..].fill(0.0);
                }
                unsafe {
                    matrixmultiply::sgemm(
                        rows,
                        width,
                        g.hd,
                        1.0,
                        s.as_ptr(),
                        width as isize,
                        1,
                        values.as_ptr().add(kv_off),
                        g.kv_dim as isize,
                        1,
                        0.0,
                        out_ptr.get().add(t0 * g.q_dim + h * g.hd),
                        g.q_dim as isize,
                        1,
                    );
                }
                t0 += rows;
            }
        }
    };
    let tasks = g.n_heads.div_ceil(per);
    #[cfg(feature = "std")]
    crate::pool::run(tasks, tasks, &task);
    #[cfg(not(feature = "std"))]
    (0..tasks).for_each(task);
}

/// Shapes of one layer's decode attention (one token at position `pos`).
struct DecodeGeometry {
    pos: usize,
    hd: usize,
    kv_dim: usize,
    /// Query heads per kv head.
    group: usize,
    scale: f32,
    /// Floats of each head's row of scores (max_seq_len).
    stride: usize,
}

/// Attention of one token at position `pos` to positions `0..=pos`, head by head, heads spread
/// over the threads: `s = scale · q_h · k_j`, softmax, `out_h = Σ_j s_j v_j`. `q` and `out` are
/// (q_dim); `keys` / `values` the layer's cache rows `0..=pos` (kv_dim each); `scores` holds a
/// row of `stride` floats per head.
fn attention_decode(g: &DecodeGeometry, q: &[f32], keys: &[f32], values: &[f32], out: &mut [f32], scores: &mut [f32]) {
    let n_heads = q.len() / g.hd;
    assert!(g.pos < g.stride && scores.len() >= n_heads * g.stride && out.len() >= n_heads * g.hd);
    assert!(keys.len() >= (g.pos + 1) * g.kv_dim && values.len() >= (g.pos + 1) * g.kv_dim);
    let out_ptr = SharedMut(out.as_mut_ptr());
    let scores_ptr = SharedMut(scores.as_mut_ptr());
    let attend = kernels::kernels().attend_head;
    let head = |h: usize| {
        // SAFETY: head `h < n_heads` alone owns its row of scores and its hd columns of `out`
        // (both in bounds, asserted above); each task runs once, before the borrows end.
        let (sc, o) = unsafe {
            (
                core::slice::from_raw_parts_mut(scores_ptr.get().add(h * g.stride), g.pos + 1),
                core::slice::from_raw_parts_mut(out_ptr.get().add(h * g.hd), g.hd),
            )
        };
        let kv_off = (h / g.group) * g.hd;
        attend(&q[h * g.hd..(h + 1) * g.hd], &keys[kv_off..], &values[kv_off..], g.kv_dim, g.scale, sc, o);
    };
    // Below a few thousand multiply-adds a head, waking a worker costs more than it saves.
    let threads = if (g.pos + 1) * g.hd * 2 >= 4096 { kernels::threads() } else { 1 };
    #[cfg(feature = "std")]
    crate::pool::run(n_heads, threads, &head);
    #[cfg(not(feature = "std"))]
    {
        let _ = threads;
        (0..n_heads).for_each(head);
    }
}

/// Bytes of each half of the next product's weights that idle pool workers prefetch in decode
/// while the caller works alone (norms, RoPE, activation quantization): on the 2-core
/// development machine tg128 at 4 bits went 289-293 → 297-301 tok/s with 16-256 KiB, back to
/// back (`edge-run bench`).
const PF_BYTES: usize = 64 * 1024;

impl<'a> Model<'a> {
    pub fn new(ck: &Checkpoint<'a>, opts: ModelOptions) -> Result<Self> {
        let plan = ViewPlan { default_bits: opts.view_bits, overrides: Vec::new() };
        Self::with_plan(ck, opts, &plan)
    }

    /// Instantiate with per-tensor views (`opts.view_bits` is ignored in favour of `plan`).
    pub fn with_plan(ck: &Checkpoint<'a>, opts: ModelOptions, plan: &ViewPlan) -> Result<Self> {
        Self::with_plan_releasing(ck, opts, plan, &|_, _| {})
    }

    /// [`Model::with_plan`], calling `release(offset, length)` with the file ranges that a
    /// repacked view stops reading as soon as each tensor is repacked (see
    /// [`Weights::repacked_ranges`]), so that a mapped file's pages can leave the resident set
    /// before the next tensor's copy is made.
    pub fn with_plan_releasing(ck: &Checkpoint<'a>, opts: ModelOptions, plan: &ViewPlan, release: &dyn Fn(u64, u64)) -> Result<Self> {
        let config = Config::from_checkpoint(ck)?;
        let weights = Weights::from_checkpoint_releasing(ck, &config, plan, release)?;
        Self::with_weights(config, weights, opts)
    }

    /// Change the views of a live model without reloading: the KV cache and buffers stay, the
    /// weights are re-borrowed from `ck` (the checkpoint the model was made from) at the views
    /// `plan` picks (matrices whose view does not change are kept, repacked copies included). Returns the byte ranges of the file (offset, length) that the old views
    /// read and the new ones do not, so a loader can release them (see
    /// `load::CheckpointBytes::release`).
    pub fn set_views(&mut self, ck: &Checkpoint<'a>, plan: &ViewPlan) -> Result<Vec<(u64, u64)>> {
        let weights = Weights::build(ck, &self.config, plan, &|_, _| {}, Some(&self.weights))?;
        let before = self.weights.read_ranges(ck.bytes());
        let after = weights.read_ranges(ck.bytes());
        self.weights = weights;
        Ok(before.into_iter().filter(|r| !after.contains(r)).collect())
    }

    pub fn with_weights(config: Config, weights: Weights<'a>, opts: ModelOptions) -> Result<Self> {
        let c = &config;
        let max_seq_len = match opts.max_seq_len {
            0 => c.max_seq_len,
            n => n.min(c.max_seq_len),
        };
        let max_batch = opts.max_batch.max(1);
        if max_batch > 1 << 16 || max_seq_len > 1 << 22 {
            return Err(Error::InvalidArgument { what: format!("batch {max_batch} or context {max_seq_len} too large") });
        }
        let half = c.head_dim / 2;
        let mut rope_cos = vec![0f32; max_seq_len * half];
        let mut rope_sin = vec![0f32; max_seq_len * half];
        for pos in 0..max_seq_len {
            for i in 0..half {
                // Angles in f64 (libm, so std and no_std builds agree): the table is built once.
                let freq = libm::pow(c.rope_theta as f64, -2.0 * i as f64 / c.head_dim as f64);
                let angle = pos as f64 * freq;
                rope_cos[pos * half + i] = libm::cos(angle) as f32;
                rope_sin[pos * half + i] = libm::sin(angle) as f32;
            }
        }
        let widest = c.dim.max(c.hidden_dim).max(c.q_dim());
        let kv = c.n_layers * max_seq_len * c.kv_dim();
        // Batched attention scores: blocks of `att_rows` tokens by all positions, one block per
        // thread that runs heads (at most one per head), bounded at ATT_BLOCK_FLOATS a block.
        let att_rows = if max_batch > 1 { (ATT_BLOCK_FLOATS / max_seq_len).clamp(1, ATT_ROWS.min(max_batch)) } else { 0 };
        let att_slots = if max_batch > 1 { kernels::threads().clamp(1, c.n_heads.max(1)) } else { 0 };
        let state = RunState {
            x: vec![0.0; max_batch * c.dim],
            xb: vec![0.0; max_batch * c.dim],
            q: vec![0.0; max_batch * c.q_dim()],
            k: vec![0.0; max_batch * c.kv_dim()],
            v: vec![0.0; max_batch * c.kv_dim()],
            att_out: vec![0.0; max_batch * c.q_dim()],
            proj: vec![0.0; max_batch * c.dim],
            hb: vec![0.0; max_batch * c.hidden_dim],
            hb2: vec![0.0; max_batch * c.hidden_dim],
            scores: vec![0.0; c.n_heads * max_seq_len],
            att: vec![0.0; att_slots * att_rows * max_seq_len],
            logits: vec![0.0; max_batch * c.vocab_size],
            key_cache: vec![0.0; kv],
            value_cache: vec![0.0; kv],
            rope_cos,
            rope_sin,
            scratch: kernels::Scratch::new(widest, max_batch, kernels::threads()),
        };
        Ok(Model { config, weights, max_seq_len, max_batch, att_rows, state })
    }

    /// Bytes of the run-time state (activations, logits, KV cache, tables).
    pub fn state_bytes(&self) -> usize {
        let s = &self.state;
        4 * [
            &s.x, &s.xb, &s.q, &s.k, &s.v, &s.att_out, &s.proj, &s.hb, &s.hb2, &s.scores, &s.att, &s.logits,
            &s.key_cache, &s.value_cache, &s.rope_cos, &s.rope_sin,
        ]
        .iter()
        .map(|b| b.len())
        .sum::<usize>()
            + s.scratch.bytes()
    }

    /// Run one token at `pos` and return its next-token logits (vocab).
    pub fn forward(&mut self, token: u32, pos: usize) -> Result<&[f32]> {
        self.forward_batch(&[token], pos, Logits::Last)
    }

    /// Run `tokens` at positions `pos..pos+len`, filling the KV cache. Returns the logits of the
    /// last token (vocab) or of every token (len, vocab).
    pub fn forward_batch(&mut self, tokens: &[u32], pos: usize, want: Logits) -> Result<&[f32]> {
        self.forward_observed(tokens, pos, want, None)
    }

    /// [`Model::forward_batch`], showing every linear layer's input to `observer`.
    pub fn forward_observed(
        &mut self,
        tokens: &[u32],
        pos: usize,
        want: Logits,
        mut observer: Option<&mut dyn Observer>,
    ) -> Result<&[f32]> {
        let mut see = |layer: Option<usize>, site: Site, n: usize, x: &[f32]| {
            if let Some(o) = observer.as_deref_mut() {
                o.observe(layer, site, n, x);
            }
        };
        let c = self.config;
        let n = tokens.len();
        if n == 0 || n > self.max_batch {
            return Err(Error::InvalidArgument {
                what: format!("batch of {n} tokens (1..={} allowed)", self.max_batch),
            });
        }
        if pos + n > self.max_seq_len {
            return Err(Error::InvalidArgument {
                what: format!(
                    "positions {pos}..{} exceed the context of {} tokens; use a shorter prompt or a larger --ctx",
                    pos + n,
                    self.max_seq_len
                ),
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::InvalidArgument { what: format!("token id {bad} is outside the vocabulary of {}", c.vocab_size) });
        }
        let (dim, kv_dim, q_dim, hidden, hd) = (c.dim, c.kv_dim(), c.q_dim(), c.hidden_dim, c.head_dim);
        let group = c.n_heads / c.n_kv_heads; // query heads per kv head
        let half = hd / 2;
        let w = &self.weights;
        let s = &mut self.state;

        // Token embeddings into the residual stream.
        for (t, &tok) in tokens.iter().enumerate() {
            w.token_embd.dequant_row(tok as usize, &mut s.x[t * dim..(t + 1) * dim]);
        }

        for (l, layer) in w.layers.iter().enumerate() {
            // Attention: RMSNorm, then q, k, v projections.
            for t in 0..n {
                rmsnorm(&mut s.xb[t * dim..(t + 1) * dim], &s.x[t * dim..(t + 1) * dim], layer.attn_norm, c.norm_eps);
            }
            see(Some(l), Site::AttnIn, n, &s.xb[..n * dim]);
            if n == 1 {
                let outs: &mut [&mut [f32]] = &mut [&mut s.q, &mut s.k, &mut s.v];
                kernels::matvec_shared(&[&layer.wq, &layer.wk, &layer.wv], &s.xb, outs, &mut s.scratch);
                kernels::prefetch_next(&layer.wo, PF_BYTES);
            } else {
                kernels::matmul(&layer.wq, &s.xb, n, &mut s.q, &mut s.scratch);
                kernels::matmul(&layer.wk, &s.xb, n, &mut s.k, &mut s.scratch);
                kernels::matmul(&layer.wv, &s.xb, n, &mut s.v, &mut s.scratch);
            }

            // RoPE on q and k; then k and v go into the cache at their positions.
            let loff = l * self.max_seq_len * kv_dim; // this layer's slice of the cache
            for t in 0..n {
                let p = pos + t;
                let (cos, sin) = (&s.rope_cos[p * half..(p + 1) * half], &s.rope_sin[p * half..(p + 1) * half]);
                rope(&mut s.q[t * q_dim..(t + 1) * q_dim], hd, cos, sin);
                rope(&mut s.k[t * kv_dim..(t + 1) * kv_dim], hd, cos, sin);
                let at = loff + p * kv_dim;
                s.key_cache[at..at + kv_dim].copy_from_slice(&s.k[t * kv_dim..(t + 1) * kv_dim]);
                s.value_cache[at..at + kv_dim].copy_from_slice(&s.v[t * kv_dim..(t + 1) * kv_dim]);
            }

            // Causal grouped-query attention: token t at position p attends to positions 0..=p.
            let scale = 1.0 / libm::sqrtf(hd as f32);
            if n == 1 {
                // Decode: one query per head, heads spread over the threads.
                let keys = &s.key_cache[loff..loff + (pos + 1) * kv_dim];
                let values = &s.value_cache[loff..loff + (pos + 1) * kv_dim];
                let geo = DecodeGeometry { pos, hd, kv_dim, group, scale, stride: self.max_seq_len };
                attention_decode(&geo, &s.q[..q_dim], keys, values, &mut s.att_out[..q_dim], &mut s.scores);
            } else {
                let geo = AttnGeometry {
                    n,
                    pos,
                    hd,
                    q_dim,
                    kv_dim,
                    group,
                    n_heads: c.n_heads,
                    scale,
                    chunk: self.att_rows,
                    stride: self.max_seq_len,
                };
                let keys = &s.key_cache[loff..loff + (pos + n) * kv_dim];
                let values = &s.value_cache[loff..loff + (pos + n) * kv_dim];
                attention_batch(&geo, &s.q, keys, values, &mut s.att_out, &mut s.att);
            }

            // Output projection and residual.
            see(Some(l), Site::AttnOut, n, &s.att_out[..n * q_dim]);
            kernels::matmul(&layer.wo, &s.att_out, n, &mut s.proj, &mut s.scratch);
            if n == 1 {
                kernels::prefetch_next(&layer.w_gate, PF_BYTES);
            }
            for (x, p) in s.x[..n * dim].iter_mut().zip(&s.proj) {
                *x += p;
            }

            // Feed-forward: RMSNorm, SwiGLU, down projection, residual.
            for t in 0..n {
                rmsnorm(&mut s.xb[t * dim..(t + 1) * dim], &s.x[t * dim..(t + 1) * dim], layer.ffn_norm, c.norm_eps);
            }
            see(Some(l), Site::FfnIn, n, &s.xb[..n * dim]);
            if n == 1 {
                let outs: &mut [&mut [f32]] = &mut [&mut s.hb, &mut s.hb2];
                kernels::matvec_shared(&[&layer.w_gate, &layer.w_up], &s.xb, outs, &mut s.scratch);
                kernels::prefetch_next(&layer.w_down, PF_BYTES);
            } else {
                kernels::matmul(&layer.w_gate, &s.xb, n, &mut s.hb, &mut s.scratch);
                kernels::matmul(&layer.w_up, &s.xb, n, &mut s.hb2, &mut s.scratch);
            }
            (kernels::kernels().swiglu)(&mut s.hb[..n * hidden], &s.hb2[..n * hidden]); // silu(gate) * up
            see(Some(l), Site::FfnDown, n, &s.hb[..n * hidden]);
            kernels::matmul(&layer.w_down, &s.hb, n, &mut s.proj, &mut s.scratch);
            if n == 1 {
                kernels::prefetch_next(w.layers.get(l + 1).map_or(&w.output, |next| &next.wq), PF_BYTES);
            }
            for (x, p) in s.x[..n * dim].iter_mut().zip(&s.proj) {
                *x += p;
            }
        }

        // Final norm and the output head, for the rows asked for.
        let first = match want {
            Logits::Last => n - 1,
            Logits::All => 0,
        };
        let rows = n - first;
        for t in first..n {
            let i = t - first;
            rmsnorm(&mut s.xb[i * dim..(i + 1) * dim], &s.x[t * dim..(t + 1) * dim], w.output_norm, c.norm_eps);
        }
        see(None, Site::Head, rows, &s.xb[..rows * dim]);
        kernels::matmul(&w.output, &s.xb, rows, &mut s.logits, &mut s.scratch);
        Ok(&s.logits[..rows * c.vocab_size])
    }
}
