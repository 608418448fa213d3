//! The Llama forward pass, top to bottom, in the order the math happens (after llama2.c).
//!
//! Weights are borrowed from the checkpoint bytes (an mmap or an aligned buffer) as stored and
//! prepared by a [`Backend`] ([`weights`]); every run-time buffer is allocated once in
//! [`Model::with_weights`], sized for `max_batch` tokens and `max_seq_len` positions. Nothing is
//! allocated per token.
//!
//! The tensors and their shapes are the architecture's ([`crate::arch::LLAMA`]). The rows of q
//! and k are in interleaved RoPE order: each head rotates adjacent pairs `(2i, 2i+1)`.

pub mod weights;

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use crate::arch::Kind;
pub use crate::arch::Site;
use crate::backend::{AttnShape, Backend, Cpu};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::format::Checkpoint;
pub use crate::kernels::vector::{exp_fast, rmsnorm, softmax, softmax_reference};
use crate::kv::KvCache;
use crate::plan::ViewPlan;
pub use weights::{FileRange, Weights};

/// Options fixed when a model is instantiated. Which views the weights are read at is a
/// [`ViewPlan`], given to [`Model::with_plan`] and changed with [`Model::set_views`].
#[derive(Debug, Clone, Copy)]
pub struct ModelOptions {
    /// Positions the KV cache holds (capped at the model's trained context). 0 = the model's.
    pub max_seq_len: usize,
    /// Most tokens one [`Model::forward_batch`] call processes.
    pub max_batch: usize,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions { max_seq_len: 2048, max_batch: 64 }
    }
}

/// Run-time activations, allocated once.
#[derive(Debug)]
struct RunState {
    x: Vec<f32>,        // (batch, dim) residual stream
    xb: Vec<f32>,       // (batch, dim) normed input of a sub-block
    q: Vec<f32>,        // (batch, q_dim)
    k: Vec<f32>,        // (batch, kv_dim)
    v: Vec<f32>,        // (batch, kv_dim)
    att_out: Vec<f32>,  // (batch, q_dim) attention output before wo
    proj: Vec<f32>,     // (batch, dim) output of wo / w_down
    hb: Vec<f32>,       // (batch, hidden) gate, then silu(gate) * up
    hb2: Vec<f32>,      // (batch, hidden) up
    logits: Vec<f32>,   // (batch, vocab)
    rope_cos: Vec<f32>, // (max_seq_len, head_dim/2)
    rope_sin: Vec<f32>, // (max_seq_len, head_dim/2)
}

impl RunState {
    fn bytes(&self) -> usize {
        let s = self;
        4 * [&s.x, &s.xb, &s.q, &s.k, &s.v, &s.att_out, &s.proj, &s.hb, &s.hb2, &s.logits, &s.rope_cos, &s.rope_sin]
            .iter()
            .map(|b| b.len())
            .sum::<usize>()
    }
}

/// A model ready to run: config, weights in the backend's form, the KV cache and
/// preallocated state.
#[derive(Debug)]
pub struct Model<'a, B: Backend = Cpu> {
    pub config: Config,
    pub weights: Weights<'a, B>,
    pub max_seq_len: usize,
    pub max_batch: usize,
    backend: B,
    kv: KvCache,
    state: RunState,
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

impl<'a> Model<'a, Cpu> {
    /// The model at its 8-bit views on the CPU.
    pub fn new(ck: &Checkpoint<'a>, opts: ModelOptions) -> Result<Self> {
        Self::with_plan(ck, opts, &ViewPlan::default())
    }

    /// The model on the CPU with per-tensor views.
    pub fn with_plan(ck: &Checkpoint<'a>, opts: ModelOptions, plan: &ViewPlan) -> Result<Self> {
        Self::build(ck, opts, plan, &|_, _| {})
    }

    /// [`Model::with_plan`], telling `release(offset, length)` the file ranges a prepared copy
    /// replaced as soon as each matrix is prepared (see [`Model::build`]).
    pub fn with_plan_releasing(ck: &Checkpoint<'a>, opts: ModelOptions, plan: &ViewPlan, release: &dyn Fn(u64, u64)) -> Result<Self> {
        Self::build(ck, opts, plan, release)
    }
}

impl<'a, B: Backend> Model<'a, B> {
    /// The model on backend `B` at the views `plan` picks. `release(offset, length)` is told
    /// the file ranges a prepared copy replaced as soon as each matrix is prepared (see
    /// [`Weights::bind`]), so that a mapped file's pages can leave the resident set before the
    /// next copy is made (`load::CheckpointBytes::release`).
    pub fn build(ck: &Checkpoint<'a>, opts: ModelOptions, plan: &ViewPlan, release: &dyn Fn(u64, u64)) -> Result<Self> {
        let config = Config::from_checkpoint(ck)?;
        let (max_seq_len, max_batch) = Self::sizes(&config, opts)?;
        let backend = B::new(&config, max_batch, max_seq_len)?;
        let weights = Weights::bind(ck, &config, plan, &backend, None, release)?;
        Ok(Self::assemble(config, weights, backend, max_seq_len, max_batch))
    }

    /// Change the views of a live model without reloading: the KV cache and buffers stay, the
    /// weights are re-bound from `ck` (the checkpoint the model was made from) at the views
    /// `plan` picks (matrices whose view does not change are kept, prepared copies included).
    /// Returns the byte ranges of the file (offset, length) that the old views read and the
    /// new ones do not, so a loader can release them (see `load::CheckpointBytes::release`).
    pub fn set_views(&mut self, ck: &Checkpoint<'a>, plan: &ViewPlan) -> Result<Vec<FileRange>> {
        let weights = Weights::bind(ck, &self.config, plan, &self.backend, Some(&self.weights), &|_, _| {})?;
        let before = self.weights.read_ranges();
        let after = weights.read_ranges();
        self.weights = weights;
        Ok(before.into_iter().filter(|r| !after.contains(r)).collect())
    }

    /// A model over weights already bound.
    pub fn with_weights(config: Config, weights: Weights<'a, B>, opts: ModelOptions) -> Result<Self> {
        let (max_seq_len, max_batch) = Self::sizes(&config, opts)?;
        let backend = B::new(&config, max_batch, max_seq_len)?;
        Ok(Self::assemble(config, weights, backend, max_seq_len, max_batch))
    }

    /// (max_seq_len, max_batch) of `opts` for config `c`.
    fn sizes(c: &Config, opts: ModelOptions) -> Result<(usize, usize)> {
        let max_seq_len = match opts.max_seq_len {
            0 => c.max_seq_len,
            n => n.min(c.max_seq_len),
        };
        let max_batch = opts.max_batch.max(1);
        if max_batch > 1 << 16 || max_seq_len > 1 << 22 {
            return Err(Error::InvalidArgument { what: format!("batch {max_batch} or context {max_seq_len} too large") });
        }
        Ok((max_seq_len, max_batch))
    }

    fn assemble(config: Config, weights: Weights<'a, B>, backend: B, max_seq_len: usize, max_batch: usize) -> Self {
        let c = &config;
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
            logits: vec![0.0; max_batch * c.vocab_size],
            rope_cos,
            rope_sin,
        };
        let kv = KvCache::new(c.n_layers, max_seq_len, c.kv_dim());
        Model { config, weights, max_seq_len, max_batch, backend, kv, state }
    }

    /// Bytes of the run-time state (activations, logits, KV cache, tables, backend buffers).
    pub fn state_bytes(&self) -> usize {
        self.state.bytes() + self.kv.bytes() + self.backend.state_bytes()
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
        let half = hd / 2;
        let shape = AttnShape {
            n_heads: c.n_heads,
            head_dim: hd,
            group: c.n_heads / c.n_kv_heads, // query heads per kv head
            scale: 1.0 / libm::sqrtf(hd as f32),
        };
        let w = &self.weights;
        let s = &mut self.state;
        let b = &mut self.backend;
        let kv = &mut self.kv;

        // Token embeddings into the residual stream.
        for (t, &tok) in tokens.iter().enumerate() {
            b.row(w.token_embd(), tok as usize, &mut s.x[t * dim..(t + 1) * dim]);
        }

        for (l, layer) in w.layers.iter().enumerate() {
            // Attention: RMSNorm, then q, k, v projections.
            b.rmsnorm(&mut s.xb[..n * dim], &s.x[..n * dim], layer.norm(Kind::AttnNorm), c.norm_eps);
            see(Some(l), Site::AttnIn, n, &s.xb[..n * dim]);
            let (wq, wk, wv) = (layer.w(Kind::AttnQ), layer.w(Kind::AttnK), layer.w(Kind::AttnV));
            if n == 1 {
                b.matvec_shared(&[wq, wk, wv], &s.xb, &mut [&mut s.q[..], &mut s.k[..], &mut s.v[..]]);
                b.prefetch(layer.w(Kind::AttnOutput));
            } else {
                b.matmul_shared(&[wq, wk, wv], &s.xb, n, &mut [&mut s.q[..], &mut s.k[..], &mut s.v[..]]);
            }

            // RoPE on q and k at positions pos..pos+n; then k and v go into the cache there.
            let angles = pos * half..(pos + n) * half;
            b.rope(&mut s.q[..n * q_dim], &mut s.k[..n * kv_dim], hd, &s.rope_cos[angles.clone()], &s.rope_sin[angles]);
            for t in 0..n {
                kv.store(l, pos + t, &s.k[t * kv_dim..(t + 1) * kv_dim], &s.v[t * kv_dim..(t + 1) * kv_dim])?;
            }

            // Causal grouped-query attention: token t at position p attends to positions 0..=p.
            let cache = kv.view(l, pos + n);
            if n == 1 {
                b.attend_one(&shape, &s.q[..q_dim], cache, &mut s.att_out[..q_dim]);
            } else {
                b.attend_many(&shape, n, &s.q, cache, &mut s.att_out);
            }

            // Output projection and residual.
            see(Some(l), Site::AttnOut, n, &s.att_out[..n * q_dim]);
            b.matmul(layer.w(Kind::AttnOutput), &s.att_out, n, &mut s.proj);
            if n == 1 {
                b.prefetch(layer.w(Kind::FfnGate));
            }
            b.add(&mut s.x[..n * dim], &s.proj[..n * dim]);

            // Feed-forward: RMSNorm, SwiGLU, down projection, residual.
            b.rmsnorm(&mut s.xb[..n * dim], &s.x[..n * dim], layer.norm(Kind::FfnNorm), c.norm_eps);
            see(Some(l), Site::FfnIn, n, &s.xb[..n * dim]);
            let (gate, up) = (layer.w(Kind::FfnGate), layer.w(Kind::FfnUp));
            if n == 1 {
                b.matvec_shared(&[gate, up], &s.xb, &mut [&mut s.hb[..], &mut s.hb2[..]]);
                b.prefetch(layer.w(Kind::FfnDown));
            } else {
                b.matmul_shared(&[gate, up], &s.xb, n, &mut [&mut s.hb[..], &mut s.hb2[..]]);
            }
            b.swiglu(&mut s.hb[..n * hidden], &s.hb2[..n * hidden]); // silu(gate) * up
            see(Some(l), Site::FfnDown, n, &s.hb[..n * hidden]);
            b.matmul(layer.w(Kind::FfnDown), &s.hb, n, &mut s.proj);
            if n == 1 {
                b.prefetch(w.layers.get(l + 1).map_or(w.head(), |next| next.w(Kind::AttnQ)));
            }
            b.add(&mut s.x[..n * dim], &s.proj[..n * dim]);
        }

        // Final norm and the output head, for the rows asked for.
        let first = match want {
            Logits::Last => n - 1,
            Logits::All => 0,
        };
        let rows = n - first;
        b.rmsnorm(&mut s.xb[..rows * dim], &s.x[first * dim..n * dim], w.globals.norm(Kind::OutputNorm), c.norm_eps);
        see(None, Site::Head, rows, &s.xb[..rows * dim]);
        b.matmul(w.head(), &s.xb, rows, &mut s.logits);
        Ok(&s.logits[..rows * c.vocab_size])
    }
}
