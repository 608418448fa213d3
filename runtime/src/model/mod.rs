//! The forward pass of the Llama family, top to bottom, in the order the math happens (after
//! llama2.c). An architecture's differences are read where they are: a q/k/v bias is added when
//! its architecture ([`crate::arch`]) lists one (Qwen2); RoPE's frequencies are divided by the
//! checkpoint's per-frequency factors when it stores them (Llama 3.x).
//!
//! Weights are borrowed from the checkpoint bytes (an mmap or an aligned buffer) as stored and
//! prepared by a [`Backend`] ([`weights`]); every run-time buffer is allocated once in
//! [`Model::with_weights`], sized for `max_batch` tokens and `max_seq_len` positions. Nothing is
//! allocated per token.
//!
//! The tensors and their shapes are the architecture's ([`crate::arch::ARCHS`]); how an
//! architecture's pass differs from Llama's is its flags (the activation, scaled embeddings),
//! its optional tensors (biases, q/k norms, post-norms), read here, and its config's
//! sliding-window layers ([`crate::config::LocalLayers`]). The rows of q and k (and of their
//! biases and norms) are in interleaved RoPE order whatever the architecture's own (the
//! importers permute rotate-half rows): each head rotates adjacent pairs `(2i, 2i+1)`.

pub mod weights;

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use crate::arch::{Activation, Kind};
pub use crate::arch::Site;
use crate::backend::{AttnShape, Backend, Cpu};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::format::Checkpoint;
use crate::kernels::vector;
pub use crate::kernels::vector::{exp_fast, rmsnorm, softmax, softmax_reference};
use crate::kv::{KvCache, KvFormat, KvWindow, KV_GROUP};
use crate::plan::ViewPlan;
pub use weights::{FileRange, ViewChange, Weights};

/// Options fixed when a model is instantiated. Which views the weights are read at is a
/// [`ViewPlan`], given to [`Model::with_plan`] and changed with [`Model::set_views`].
#[derive(Debug, Clone, Copy)]
pub struct ModelOptions {
    /// Positions the KV cache holds (capped at the model's trained context). 0 = the model's.
    pub max_seq_len: usize,
    /// Most tokens one [`Model::forward_batch`] call processes.
    pub max_batch: usize,
    /// How the KV cache stores keys and values (f16 by default); see [`Model::set_kv_format`].
    pub kv: KvFormat,
    /// Keep only a sink and the most recent positions (StreamingLLM), so that positions run
    /// past `max_seq_len` at constant memory; see [`Model::set_kv_window`].
    pub kv_window: Option<KvWindow>,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions { max_seq_len: 2048, max_batch: 64, kv: KvFormat::default(), kv_window: None }
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
    rope_freqs: Vec<f64>, // (head_dim/2) radians per position of each rotated pair
    rope_cos: Vec<f32>, // (max_seq_len, head_dim/2)
    rope_sin: Vec<f32>, // (max_seq_len, head_dim/2)
    /// (max_seq_len, head_dim/2) the sliding-window layers' angles (their own RoPE base);
    /// empty without such layers.
    local_cos: Vec<f32>,
    local_sin: Vec<f32>,
    far_cos: Vec<f32>,  // (batch, head_dim/2) angles of positions past the table (a window)
    far_sin: Vec<f32>,  // (batch, head_dim/2)
    /// (n_layers, sink, kv_dim) the sink's keys before RoPE, sized when a window is set and
    /// filled once it evicts (see [`Model::forward_observed`]).
    sink_raw: Vec<f32>,
    sink_ready: bool,
    sink_cos: Vec<f32>, // (sink, head_dim/2) angles of the sink's positions past the table
    sink_sin: Vec<f32>,
}

impl RunState {
    /// Floats per token of the per-token buffers, in field order: x, xb, q, k, v, att_out, proj,
    /// hb, hb2, logits, far_cos, far_sin (what [`Model::assemble`] allocates and
    /// [`Model::planned_state_bytes`] predicts).
    fn per_token(c: &Config) -> [usize; 12] {
        let half = c.head_dim / 2;
        [c.dim, c.dim, c.q_dim(), c.kv_dim(), c.kv_dim(), c.q_dim(), c.dim, c.hidden_dim, c.hidden_dim, c.vocab_size, half, half]
    }

    fn bytes(&self) -> usize {
        let s = self;
        8 * s.rope_freqs.len()
            + 4 * [&s.x, &s.xb, &s.q, &s.k, &s.v, &s.att_out, &s.proj, &s.hb, &s.hb2, &s.logits, &s.rope_cos, &s.rope_sin, &s.local_cos, &s.local_sin, &s.far_cos, &s.far_sin, &s.sink_raw, &s.sink_cos, &s.sink_sin]
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
    /// Positions stored in the cache so far (the next position to run).
    kv_end: usize,
    state: RunState,
}

/// RoPE's frequency of each rotated pair `i < head_dim/2`: `θ^(-2i/head_dim)`, divided by the
/// checkpoint's factor `factors[i]` when it stores them (Llama 3.x scaling), in f64 (libm, so
/// std and no_std builds agree).
fn rope_freqs(c: &Config, factors: Option<&[f32]>) -> Vec<f64> {
    rope_freqs_at(c.rope_theta, c.head_dim, factors)
}

/// [`rope_freqs`] at base `theta` (a sliding-window layer's own).
fn rope_freqs_at(theta: f32, head_dim: usize, factors: Option<&[f32]>) -> Vec<f64> {
    (0..head_dim / 2)
        .map(|i| {
            let freq = libm::pow(theta as f64, -2.0 * i as f64 / head_dim as f64);
            match factors {
                Some(f) => freq / f[i] as f64,
                None => freq,
            }
        })
        .collect()
}

/// The RoPE angles of position `pos`: `cos`/`sin` of `pos · freqs[i]` for `i < cos.len()`.
fn rope_angles(freqs: &[f64], pos: usize, cos: &mut [f32], sin: &mut [f32]) {
    for ((co, si), &freq) in cos.iter_mut().zip(sin.iter_mut()).zip(freqs) {
        let angle = pos as f64 * freq;
        *co = libm::cos(angle) as f32;
        *si = libm::sin(angle) as f32;
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

impl<'a> Model<'a, Cpu> {
    /// Bytes of the run-time state other than the KV cache ([`Model::state_bytes`] minus
    /// [`Model::kv_bytes`]) of a model of config `c` built with `opts` without a window, on the
    /// CPU at the current thread count: activations, logits (max_batch × vocab), the RoPE
    /// tables and the backend's buffers. Pure arithmetic; nothing is allocated.
    pub fn planned_state_bytes(c: &Config, opts: ModelOptions) -> Result<usize> {
        let (max_seq_len, max_batch) = Self::sizes(c, opts)?;
        let half = c.head_dim / 2;
        // The per-token buffers and the two RoPE tables (the window's sink buffers are empty).
        let tables = if c.local.any() { 4 } else { 2 };
        let run_state = 4 * (max_batch * RunState::per_token(c).iter().sum::<usize>() + tables * max_seq_len * half) + 8 * half;
        Ok(run_state + Cpu::planned_state_bytes(c, max_batch, max_seq_len))
    }

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
        Self::check_kv_format(&config, opts.kv)?;
        Weights::<B>::check(ck, &config)?;
        let backend = B::new(&config, max_batch, max_seq_len)?;
        let weights = Weights::bind(ck, &config, plan, &backend, None, release)?;
        Self::assemble(config, weights, backend, opts, max_seq_len, max_batch)
    }

    /// Change the views of a live model without reloading: the KV cache and buffers stay, the
    /// weights are re-bound from `ck` (the checkpoint the model was made from) at the views
    /// `plan` picks (matrices whose view does not change are kept, prepared copies included).
    /// Returns the byte ranges of the file (offset, length) that the new views do not read,
    /// of those the old views read and those the new prepared copies were made from, so a
    /// loader can release them (see `load::CheckpointBytes::release`).
    pub fn set_views(&mut self, ck: &Checkpoint<'a>, plan: &ViewPlan) -> Result<Vec<FileRange>> {
        let weights = Weights::bind(ck, &self.config, plan, &self.backend, Some(&self.weights), &|_, _| {})?;
        let mut unread = self.weights.read_ranges();
        unread.extend(weights.replaced_since(&self.weights));
        let after = weights.read_ranges();
        unread.retain(|r| !after.contains(r));
        unread.sort_unstable();
        unread.dedup();
        self.weights = weights;
        Ok(unread)
    }

    /// [`Model::set_views`] without stopping the model: the new copies are made a slice at a
    /// time ([`ViewChange::step`], e.g. between tokens) while the model runs on the old ones,
    /// then [`Model::install_views`] swaps them in. The model ends as `set_views` leaves it.
    pub fn begin_views(&self, ck: &Checkpoint<'a>, plan: &ViewPlan) -> Result<ViewChange<'a, B>> {
        self.weights.begin_change(ck, plan, &self.backend)
    }

    /// Swap in the views of `change` (see [`Model::begin_views`]); returns the file ranges no
    /// longer read, as [`Model::set_views`] does.
    pub fn install_views(&mut self, change: ViewChange<'a, B>) -> Vec<FileRange> {
        self.weights.install(change)
    }

    /// A model over weights already bound.
    pub fn with_weights(config: Config, weights: Weights<'a, B>, opts: ModelOptions) -> Result<Self> {
        let (max_seq_len, max_batch) = Self::sizes(&config, opts)?;
        Self::check_kv_format(&config, opts.kv)?;
        let backend = B::new(&config, max_batch, max_seq_len)?;
        Self::assemble(config, weights, backend, opts, max_seq_len, max_batch)
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

    fn assemble(config: Config, weights: Weights<'a, B>, backend: B, opts: ModelOptions, max_seq_len: usize, max_batch: usize) -> Result<Self> {
        let c = &config;
        let kv = opts.kv;
        let half = c.head_dim / 2;
        let rope_freqs = rope_freqs(c, weights.globals.vector(Kind::RopeFreqs));
        let mut rope_cos = vec![0f32; max_seq_len * half];
        let mut rope_sin = vec![0f32; max_seq_len * half];
        for (pos, (co, si)) in rope_cos.chunks_exact_mut(half).zip(rope_sin.chunks_exact_mut(half)).enumerate() {
            rope_angles(&rope_freqs, pos, co, si);
        }
        let local = if c.local.any() { max_seq_len * half } else { 0 };
        let (mut local_cos, mut local_sin) = (vec![0f32; local], vec![0f32; local]);
        let local_freqs = rope_freqs_at(c.local.rope_theta, c.head_dim, None);
        for (pos, (co, si)) in local_cos.chunks_exact_mut(half).zip(local_sin.chunks_exact_mut(half)).enumerate() {
            rope_angles(&local_freqs, pos, co, si);
        }
        let [x, xb, q, k, v, att_out, proj, hb, hb2, logits, far_cos, far_sin] = RunState::per_token(c).map(|w| vec![0.0; max_batch * w]);
        let state = RunState {
            x,
            xb,
            q,
            k,
            v,
            att_out,
            proj,
            hb,
            hb2,
            logits,
            rope_freqs,
            rope_cos,
            rope_sin,
            local_cos,
            local_sin,
            far_cos,
            far_sin,
            sink_raw: Vec::new(),
            sink_ready: false,
            sink_cos: Vec::new(),
            sink_sin: Vec::new(),
        };
        let kv = KvCache::with_format(c.n_layers, max_seq_len, c.kv_dim(), c.head_dim, kv);
        let mut model = Model { config, weights, max_seq_len, max_batch, backend, kv, kv_end: 0, state };
        if let Some(w) = opts.kv_window {
            model.set_kv_window(w)?;
        }
        Ok(model)
    }

    /// Whether the cache can hold `format` for config `c`: integer codes come in groups of
    /// [`KV_GROUP`] values, so a head must be a whole number of groups.
    fn check_kv_format(c: &Config, format: KvFormat) -> Result<()> {
        let integer = [format.keys, format.values].iter().any(|b| b.bits() <= 8);
        if integer && !(c.head_dim.is_multiple_of(KV_GROUP) && c.head_dim.is_power_of_two()) {
            return Err(Error::InvalidArgument {
                what: format!(
                    "KV cache {}: integer codes need a head dimension that is a power of two and a multiple of {KV_GROUP} (this model's is {}); use --kv-bits 16",
                    format.name(),
                    c.head_dim
                ),
            });
        }
        Ok(())
    }

    /// The KV cache's format.
    pub fn kv_format(&self) -> KvFormat {
        self.kv.format()
    }

    /// The KV cache's window, if it evicts.
    pub fn kv_window(&self) -> Option<KvWindow> {
        self.kv.window()
    }

    /// Bytes of the KV cache, and what one position takes in it (all layers).
    pub fn kv_bytes(&self) -> (usize, usize) {
        (self.kv.bytes(), self.kv.bytes_per_position())
    }

    /// Positions stored so far (the position the next token runs at).
    pub fn kv_end(&self) -> usize {
        self.kv_end
    }

    /// Forget every stored position: the next call starts at position 0.
    pub fn reset_kv(&mut self) {
        self.kv_end = 0;
        self.state.sink_ready = false;
    }

    /// [`Model::forward_observed`] one token at a time (a batch that a window's cycling slots
    /// cannot hold in order), the logits gathered as asked in the logits buffer itself: each
    /// call leaves its token's in row 0, which moves to the token's row before the next call;
    /// token 0's waits in the last row and trades places with the last token's at the end.
    fn forward_split(&mut self, tokens: &[u32], pos: usize, want: Logits, mut observer: Option<&mut dyn Observer>) -> Result<&[f32]> {
        let (n, vocab) = (tokens.len(), self.config.vocab_size);
        for (t, &tok) in tokens.iter().enumerate() {
            let o = observer.as_mut().map(|o| &mut **o as &mut dyn Observer);
            self.forward_observed(&[tok], pos + t, Logits::Last, o)?;
            if want == Logits::All && n > 1 {
                let rows = &mut self.state.logits[..n * vocab];
                let (first, rest) = rows.split_at_mut(vocab);
                let dst = if t == 0 { n - 1 } else { t };
                let row = &mut rest[(dst - 1) * vocab..dst * vocab];
                if t == n - 1 {
                    first.swap_with_slice(row);
                } else {
                    row.copy_from_slice(first);
                }
            }
        }
        Ok(&self.state.logits[..if want == Logits::All { n } else { 1 } * vocab])
    }

    /// The sink's keys before RoPE, from the cache: slot `i < sink` holds position `i`'s key,
    /// rotated at `i` (no window has moved it yet), so rotating it back by `i` recovers it.
    fn capture_sink(&mut self) {
        let (c, kv_dim, half) = (self.config, self.config.kv_dim(), self.config.head_dim / 2);
        let st = &mut self.state;
        let sink = st.sink_raw.len() / (c.n_layers * kv_dim);
        let (cos, sin) = (&mut st.far_cos[..half], &mut st.far_sin[..half]);
        for l in 0..c.n_layers {
            for i in 0..sink {
                let k = &mut st.sink_raw[(l * sink + i) * kv_dim..][..kv_dim];
                self.kv.row_of(l, i, false, k);
                rope_angles(&st.rope_freqs, i, cos, sin);
                sin.iter_mut().for_each(|v| *v = -*v);
                vector::rope(k, c.head_dim, cos, sin);
            }
        }
        st.sink_ready = true;
    }

    /// Re-encode the KV cache in `format` while it holds positions (the budget controller steps
    /// f16 -> int8 -> int4): every stored value is read back and quantized again, layer by layer,
    /// and the old storage freed. Generation continues from where it was.
    pub fn set_kv_format(&mut self, format: KvFormat) -> Result<()> {
        Self::check_kv_format(&self.config, format)?;
        self.kv.set_format(format, self.kv_end);
        Ok(())
    }

    /// [`Model::set_kv_format`] of layer `layer` alone: a controller spreads a change over
    /// several tokens, a layer before each, so no token waits for the whole cache. Until every
    /// layer has it, the others keep their format (attention reads each layer as stored).
    pub fn set_kv_layer_format(&mut self, layer: usize, format: KvFormat) -> Result<()> {
        Self::check_kv_format(&self.config, format)?;
        if layer >= self.config.n_layers {
            return Err(Error::InvalidArgument { what: format!("layer {layer} of a model of {} layers", self.config.n_layers) });
        }
        self.kv.set_layer_format(layer, format, self.kv_end);
        Ok(())
    }

    /// The KV format of layer `layer` (see [`Model::set_kv_layer_format`]).
    pub fn kv_layer_format(&self, layer: usize) -> KvFormat {
        self.kv.layer_format(layer)
    }

    /// Keep only the first `window.sink` positions and the most recent ones in `window.slots`
    /// slots from now on (StreamingLLM): positions that no longer fit are dropped now, the
    /// cache shrinks to `window.slots` slots and generation can run past `max_seq_len`.
    pub fn set_kv_window(&mut self, window: KvWindow) -> Result<()> {
        if self.config.local.any() {
            // The sink's keys would need re-rotating at each layer's own base, and a local
            // layer's reach is positions, not slots: not built.
            return Err(Error::InvalidArgument {
                what: format!(
                    "--kv-window is not supported for models with sliding-window layers ({}, window {}); their local layers already attend to the last {} positions only",
                    self.weights.arch.name, self.config.local.window, self.config.local.window
                ),
            });
        }
        if window.slots > self.max_seq_len {
            return Err(Error::InvalidArgument {
                what: format!("KV window of {} positions is larger than the context of {}; lower --kv-window or raise --ctx", window.slots, self.max_seq_len),
            });
        }
        if let Some(old) = self.kv.window() {
            if old.sink != window.sink {
                return Err(Error::InvalidArgument {
                    what: format!("the KV sink is {} positions and cannot change while the model runs (asked for {})", old.sink, window.sink),
                });
            }
        }
        self.kv.set_window(window, self.kv_end)?;
        let (c, half) = (self.config, self.config.head_dim / 2);
        let st = &mut self.state;
        st.sink_raw.resize(c.n_layers * window.sink * c.kv_dim(), 0.0);
        st.sink_cos.resize(window.sink * half, 0.0);
        st.sink_sin.resize(window.sink * half, 0.0);
        Ok(())
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
        let c = self.config;
        let n = tokens.len();
        if n == 0 || n > self.max_batch {
            return Err(Error::InvalidArgument {
                what: format!("batch of {n} tokens (1..={} allowed)", self.max_batch),
            });
        }
        let window = self.kv.window();
        if window.is_none() && pos + n > self.max_seq_len {
            return Err(Error::InvalidArgument {
                what: format!(
                    "positions {pos}..{} exceed the context of {} tokens; use a shorter prompt, a larger --ctx, or --kv-window to keep only recent positions",
                    pos + n,
                    self.max_seq_len
                ),
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::InvalidArgument { what: format!("token id {bad} is outside the vocabulary of {}", c.vocab_size) });
        }
        // A batch attends causally in slot order; once a window cycles, a token's slots are
        // overwritten by later tokens of its batch, so such a batch runs token by token.
        if n > 1 && !self.kv.in_order(pos, n) {
            return self.forward_split(tokens, pos, want, observer);
        }
        let mut see = |layer: Option<usize>, site: Site, n: usize, x: &[f32]| {
            if let Some(o) = observer.as_deref_mut() {
                o.observe(layer, site, n, x);
            }
        };
        // Once a window has evicted, the sink's keys sit at the positions just before the oldest
        // recent one (`end - slots..`), as in a contiguous cache (StreamingLLM): every distance
        // from the query stays below the window's size. They are rotated there afresh each token
        // from their keys before RoPE, taken once from the cache (where they sit at 0..sink).
        let end = pos + n;
        let sink_at = window.filter(|w| end > w.slots).map(|w| end - w.slots);
        if sink_at.is_some() && !self.state.sink_ready {
            self.capture_sink();
        }
        self.kv_end = end;
        let (dim, kv_dim, q_dim, hidden, hd) = (c.dim, c.kv_dim(), c.q_dim(), c.hidden_dim, c.head_dim);
        let half = hd / 2;
        let arch = self.weights.arch;
        // Angles of positions past the table (a window runs on indefinitely).
        let st = &mut self.state;
        if end > self.max_seq_len {
            for (t, (co, si)) in st.far_cos.chunks_exact_mut(half).zip(st.far_sin.chunks_exact_mut(half)).take(n).enumerate() {
                rope_angles(&st.rope_freqs, pos + t, co, si);
            }
        }
        if let Some(at) = sink_at {
            for (i, (co, si)) in st.sink_cos.chunks_exact_mut(half).zip(st.sink_sin.chunks_exact_mut(half)).enumerate() {
                if at + i >= self.max_seq_len {
                    rope_angles(&st.rope_freqs, at + i, co, si);
                }
            }
        }
        let w = &self.weights;
        let s = &mut self.state;
        let b = &mut self.backend;
        let kv = &mut self.kv;

        // Token embeddings into the residual stream (times sqrt(dim) for Gemma).
        for (t, &tok) in tokens.iter().enumerate() {
            b.row(w.token_embd(), tok as usize, &mut s.x[t * dim..(t + 1) * dim]);
        }
        if arch.scale_embeddings {
            b.scale(&mut s.x[..n * dim], libm::sqrtf(dim as f32));
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
            // Biases of the architectures that have them (Qwen2): q (q_dim), k and v (kv_dim),
            // added to each token's row before RoPE.
            let biased = [(Kind::AttnQBias, &mut s.q, q_dim), (Kind::AttnKBias, &mut s.k, kv_dim), (Kind::AttnVBias, &mut s.v, kv_dim)];
            for (kind, out, width) in biased {
                if let Some(bias) = layer.vector(kind) {
                    out[..n * width].chunks_exact_mut(width).for_each(|row| b.add(row, bias));
                }
            }

            // Per-head RMSNorm of q and k (n * heads rows of head_dim), where the arch has it.
            if let Some(qn) = layer.vector(Kind::AttnQNorm) {
                b.rmsnorm_rows(&mut s.q[..n * q_dim], qn, c.norm_eps);
            }
            if let Some(kn) = layer.vector(Kind::AttnKNorm) {
                b.rmsnorm_rows(&mut s.k[..n * kv_dim], kn, c.norm_eps);
            }

            // RoPE on q and k at positions pos..pos+n (a sliding-window layer at its own base;
            // no window evicts in such a model, so its positions are in the table); then k and
            // v go into the cache there.
            let local = c.local.is_local(l);
            let (cos, sin) = if local {
                (&s.local_cos[pos * half..end * half], &s.local_sin[pos * half..end * half])
            } else if end <= self.max_seq_len {
                (&s.rope_cos[pos * half..end * half], &s.rope_sin[pos * half..end * half])
            } else {
                (&s.far_cos[..n * half], &s.far_sin[..n * half])
            };
            b.rope(&mut s.q[..n * q_dim], &mut s.k[..n * kv_dim], hd, cos, sin);
            for t in 0..n {
                kv.store(l, pos + t, &s.k[t * kv_dim..(t + 1) * kv_dim], &s.v[t * kv_dim..(t + 1) * kv_dim])?;
            }
            if let Some(at) = sink_at {
                // The sink's keys at positions at.. (s.k is free once stored).
                let sinks = s.sink_raw.len() / (c.n_layers * kv_dim);
                for i in 0..sinks {
                    let k = &mut s.k[..kv_dim];
                    k.copy_from_slice(&s.sink_raw[(l * sinks + i) * kv_dim..][..kv_dim]);
                    let p = at + i;
                    let (cos, sin) = if p < self.max_seq_len {
                        (&s.rope_cos[p * half..(p + 1) * half], &s.rope_sin[p * half..(p + 1) * half])
                    } else {
                        (&s.sink_cos[i * half..(i + 1) * half], &s.sink_sin[i * half..(i + 1) * half])
                    };
                    vector::rope(k, hd, cos, sin);
                    kv.store_keys(l, i, k);
                }
            }

            // Causal grouped-query attention: token t at position p attends to the positions
            // the cache holds up to p (all of 0..=p without a window; p + 1 - window..=p in a
            // sliding-window layer).
            let shape = AttnShape {
                n_heads: c.n_heads,
                head_dim: hd,
                group: c.n_heads / c.n_kv_heads, // query heads per kv head
                scale: c.attention_scale(),
                window: c.layer_window(l),
            };
            let cache = kv.view(l, kv.filled(end));
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
            add_normed(b, &mut s.x[..n * dim], &s.proj[..n * dim], &mut s.xb[..n * dim], layer.vector(Kind::AttnPostNorm), c.norm_eps);

            // Feed-forward: RMSNorm, SwiGLU (GeGLU), down projection, residual.
            b.rmsnorm(&mut s.xb[..n * dim], &s.x[..n * dim], layer.norm(Kind::FfnNorm), c.norm_eps);
            see(Some(l), Site::FfnIn, n, &s.xb[..n * dim]);
            let (gate, up) = (layer.w(Kind::FfnGate), layer.w(Kind::FfnUp));
            if n == 1 {
                b.matvec_shared(&[gate, up], &s.xb, &mut [&mut s.hb[..], &mut s.hb2[..]]);
                b.prefetch(layer.w(Kind::FfnDown));
            } else {
                b.matmul_shared(&[gate, up], &s.xb, n, &mut [&mut s.hb[..], &mut s.hb2[..]]);
            }
            match arch.activation {
                Activation::Silu => b.swiglu(&mut s.hb[..n * hidden], &s.hb2[..n * hidden]), // silu(gate) * up
                Activation::GeluTanh => b.geglu(&mut s.hb[..n * hidden], &s.hb2[..n * hidden]), // gelu(gate) * up
            }
            see(Some(l), Site::FfnDown, n, &s.hb[..n * hidden]);
            b.matmul(layer.w(Kind::FfnDown), &s.hb, n, &mut s.proj);
            if n == 1 {
                b.prefetch(w.layers.get(l + 1).map_or(w.head(), |next| next.w(Kind::AttnQ)));
            }
            add_normed(b, &mut s.x[..n * dim], &s.proj[..n * dim], &mut s.xb[..n * dim], layer.vector(Kind::FfnPostNorm), c.norm_eps);
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
        // NaN or infinity anywhere upstream reaches every logit: stop rather than sample from
        // it or score it (a scan of the vocabulary, microseconds against a token's milliseconds).
        let logits = &s.logits[..rows * c.vocab_size];
        if let Some(i) = logits.iter().position(|x| !x.is_finite()) {
            return Err(Error::NonFinite { position: pos + first + i / c.vocab_size });
        }
        Ok(logits)
    }
}

/// The residual add of a sub-block's output `y` (n, dim): `x += y`, or `x += rmsnorm(y)` where
/// the architecture norms it first (Gemma's post-norms; `tmp` (n, dim) holds it).
fn add_normed<B: Backend>(b: &B, x: &mut [f32], y: &[f32], tmp: &mut [f32], norm: Option<&[f32]>, eps: f32) {
    match norm {
        Some(w) => {
            b.rmsnorm(tmp, y, w, eps);
            b.add(x, tmp);
        }
        None => b.add(x, y),
    }
}
