//! Architectures: for each, its hyperparameters and its tensors, written down once.
//!
//! Everything that needs to know which tensors a model has reads the [`Arch`] of its
//! checkpoint: the weights binding ([`crate::model::Weights`]), the packer's validation and the
//! importers (`edge-pack`), the plan keys of `--plan` files and the sensitivity profile's units
//! ([`crate::plan`]), and the calibration sites ([`Site`]). Adding an architecture means adding
//! one file here (its [`Arch`]) plus its differences in the forward pass.
//!
//! Names are GGUF's: a global tensor is `{kind}.weight`, a layer's is `blk.{l}.{kind}.weight`
//! (a bias kind's name ends in `.bias`, and is the whole name: `blk.{l}.attn_q.bias`).
//!
//! What an architecture's forward pass does differently is read from its tensors where they
//! say it (a bias is added when the architecture lists one) and from [`Arch`]'s fields where
//! they cannot (the order its GGUF files store q/k rows in).

pub mod config;
mod gemma3;
mod llama;
mod qwen2;
mod qwen3;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

pub use config::{Config, LocalLayers};
use crate::error::{Error, Result};

pub use gemma3::GEMMA3;
pub use llama::LLAMA;
pub use qwen2::QWEN2;
pub use qwen3::QWEN3;

/// Every architecture this build runs.
pub const ARCHS: &[&Arch] = &[&LLAMA, &QWEN2, &QWEN3, &GEMMA3];

/// The names of [`ARCHS`], for error messages (`llama, qwen2, qwen3, gemma3`).
pub fn names() -> String {
    ARCHS.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
}

/// The architecture named `name` (a checkpoint's `general.architecture`).
pub fn by_name(name: &str) -> Result<&'static Arch> {
    ARCHS.iter().copied().find(|a| a.name == name).ok_or_else(|| Error::UnsupportedArchitecture { arch: name.into() })
}

/// The architecture of checkpoint `ck` (its `general.architecture`).
pub fn of_checkpoint(ck: &crate::format::Checkpoint<'_>) -> Result<&'static Arch> {
    let key = crate::format::keys::ARCH;
    by_name(ck.get_str(key).ok_or(Error::MissingMeta { key })?)
}

/// A tensor's dimension, resolved against a [`Config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    /// The residual stream (`dim`).
    Model,
    /// The feed-forward inner width.
    Hidden,
    /// All query heads (`n_heads * head_dim`).
    Q,
    /// All key/value heads (`n_kv_heads * head_dim`).
    Kv,
    /// One head (`head_dim`): the per-head q/k norms.
    Head,
    Vocab,
    /// Half a head: one per rotated pair (RoPE's frequencies).
    HalfHead,
}

impl Dim {
    pub fn of(self, c: &Config) -> usize {
        match self {
            Dim::Model => c.dim,
            Dim::Hidden => c.hidden_dim,
            Dim::Q => c.q_dim(),
            Dim::Kv => c.kv_dim(),
            Dim::Head => c.head_dim,
            Dim::Vocab => c.vocab_size,
            Dim::HalfHead => c.head_dim / 2,
        }
    }
}

/// Every kind of tensor any architecture has: the vocabulary of names, shared by all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    TokenEmbd,
    AttnNorm,
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    FfnNorm,
    FfnGate,
    FfnUp,
    FfnDown,
    OutputNorm,
    Output,
    AttnQBias,
    AttnKBias,
    AttnVBias,
    /// Per-frequency RoPE divisors (Llama 3 scaling; GGUF's `rope_freqs.weight`).
    RopeFreqs,
    /// RMSNorm of every query head before RoPE (head_dim).
    AttnQNorm,
    /// RMSNorm of every key head before RoPE (head_dim).
    AttnKNorm,
    /// RMSNorm of the attention's output before the residual add (Gemma's sandwich norms).
    AttnPostNorm,
    /// RMSNorm of the feed-forward's output before the residual add.
    FfnPostNorm,
}

impl Kind {
    /// How many kinds there are (the length of a per-kind table).
    pub const COUNT: usize = 20;

    /// The kind's part of a tensor name (`attn_q`, `attn_q.bias`); for a matrix, also the plan
    /// key naming every layer's.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::TokenEmbd => "token_embd",
            Kind::AttnNorm => "attn_norm",
            Kind::AttnQ => "attn_q",
            Kind::AttnK => "attn_k",
            Kind::AttnV => "attn_v",
            Kind::AttnOutput => "attn_output",
            Kind::FfnNorm => "ffn_norm",
            Kind::FfnGate => "ffn_gate",
            Kind::FfnUp => "ffn_up",
            Kind::FfnDown => "ffn_down",
            Kind::OutputNorm => "output_norm",
            Kind::Output => "output",
            Kind::AttnQBias => "attn_q.bias",
            Kind::AttnKBias => "attn_k.bias",
            Kind::AttnVBias => "attn_v.bias",
            Kind::RopeFreqs => "rope_freqs",
            Kind::AttnQNorm => "attn_q_norm",
            Kind::AttnKNorm => "attn_k_norm",
            Kind::AttnPostNorm => "post_attention_norm",
            Kind::FfnPostNorm => "post_ffw_norm",
        }
    }

    /// A bias: its name is the whole tensor name's end (`attn_q.bias`, no `.weight`).
    pub const fn is_bias(self) -> bool {
        matches!(self, Kind::AttnQBias | Kind::AttnKBias | Kind::AttnVBias)
    }

    /// Slot in a per-kind table.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// What a tensor is in the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Token embedding table (rows looked up); a matrix that takes views.
    Embedding,
    /// RMSNorm weights: f32 vectors, never viewed.
    Norm,
    /// A linear layer's bias, added to its output: an f32 vector, never viewed.
    Bias,
    /// Per-frequency RoPE divisors ([`Kind::RopeFreqs`]): an f32 vector, never viewed, stored
    /// only when the config says so ([`Config::rope_freq_factors`]).
    RopeFreqs,
    /// A linear layer `out = W x`: a matrix that takes views.
    Linear,
    /// The output head (absent when tied to the embedding): a matrix that takes views.
    Head,
}

/// Where in a layer an [`crate::model::Observer`] sees activations: the inputs of the linear
/// layers (and of the head). Which tensors read a site is in the [`Arch`] ([`Arch::consumers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// Normed input of the attention projections: (n, dim).
    AttnIn,
    /// Input of the attention output projection: (n, q_dim).
    AttnOut,
    /// Normed input of the feed-forward's first projections: (n, dim).
    FfnIn,
    /// Input of the feed-forward's down projection: (n, hidden).
    FfnDown,
    /// Normed input of the output head: (n, dim), only the rows logits are computed for.
    Head,
}

impl Site {
    /// Slot in a per-site table (the order of the variants).
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// One tensor of an architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorSpec {
    pub kind: Kind,
    /// Outermost dimension first; a matrix is `[out, in]`.
    pub shape: &'static [Dim],
    pub role: Role,
    /// The activations it multiplies (linear layers and the head).
    pub site: Option<Site>,
    /// Its name in Hugging Face `transformers` checkpoints: the whole name for a global tensor
    /// (`model.embed_tokens.weight`), the part after `model.layers.{l}.` for a layer's
    /// (`self_attn.q_proj.weight`).
    pub hf: &'static str,
}

impl TensorSpec {
    /// A matrix whose view (bit width) a plan chooses; everything else is a small f32 vector
    /// (norms, biases, RoPE factors), stored as is and never in a plan or a profile's units.
    pub fn takes_views(&self) -> bool {
        matches!(self.role, Role::Embedding | Role::Linear | Role::Head)
    }

    /// A matrix the model only reads a row at a time: the token embedding of a model with its
    /// own head (a tied one is the head too, and multiplies every token).
    pub fn rows_only(&self, c: &Config) -> bool {
        self.role == Role::Embedding && !c.tied_embeddings
    }

    pub fn shape(&self, c: &Config) -> Vec<u64> {
        self.shape.iter().map(|d| d.of(c) as u64).collect()
    }
}

/// One tensor of a model: its spec placed at a layer, with its name and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    /// `None` for the global tensors.
    pub layer: Option<usize>,
    pub shape: Vec<u64>,
    pub spec: &'static TensorSpec,
}

/// The feed-forward's gated activation: `act(gate) * up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: `silu(g) = g / (1 + e^-g)`.
    Silu,
    /// GeGLU with the tanh approximation of GELU (Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
}

/// The order of the rows of a q or k projection within each head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkOrder {
    /// Adjacent pairs `(2i, 2i+1)` rotate together: the runtime's order (llama.cpp's "NORM").
    Interleaved,
    /// Rows `i` and `i + head_dim/2` rotate together: Hugging Face's "rotate half" (llama.cpp's
    /// "NEOX"); importers permute such rows (and their biases) to [`QkOrder::Interleaved`].
    RotateHalf,
}

/// An architecture: its name, its tensors in file order, and how its forward pass and its
/// imports differ from Llama's (flags the one forward pass reads; the optional tensors, such
/// as q/k norms or the post-norms, are applied when the tensor list has them).
#[derive(Debug)]
pub struct Arch {
    /// `general.architecture` of its checkpoints (and of GGUF files).
    pub name: &'static str,
    /// The `architectures` class names of its Hugging Face `config.json` (`LlamaForCausalLM`);
    /// the first is this architecture's `model_type`-less default.
    pub hf_classes: &'static [&'static str],
    /// Its Hugging Face `model_type` (`llama`).
    pub hf_model_type: &'static str,
    /// The order its GGUF files store q/k rows in: llama.cpp's converter permutes Llama's to
    /// interleaved pairs and leaves the NEOX-RoPE architectures' (Qwen2, Gemma) as Hugging Face
    /// stores them.
    pub gguf_qk_order: QkOrder,
    /// The feed-forward's activation.
    pub activation: Activation,
    /// Embedding rows are multiplied by `sqrt(dim)` (in f32, as llama.cpp and transformers do
    /// for f32 weights) before the first layer (Gemma).
    pub scale_embeddings: bool,
    /// What Hugging Face checkpoints store of a norm weight is `w - 1` (Gemma's RMSNorm computes
    /// `x * (1 + w)`): importers add 1 so that the runtime's RMSNorm stays `x * w` (llama.cpp's
    /// converter does the same, so GGUF files hold `1 + w`).
    pub hf_norm_minus_one: bool,
    /// What llama.cpp assumes of a GGUF file of this architecture that names a sliding window
    /// but not the layer pattern or the local RoPE base: (period, local base); `None`: the
    /// architecture has no sliding-window layers.
    pub gguf_local_defaults: Option<(usize, f32)>,
    /// Global tensors stored before the layers.
    pub pre: &'static [TensorSpec],
    /// Every layer's tensors.
    pub layer: &'static [TensorSpec],
    /// Global tensors stored after the layers. The head ([`Role::Head`]) is left out when the
    /// config ties it to the embedding.
    pub post: &'static [TensorSpec],
}

/// The name of tensor `kind` at `layer` (or of the global one).
pub fn tensor_name(kind: Kind, layer: Option<usize>) -> String {
    let suffix = if kind.is_bias() { "" } else { ".weight" };
    match layer {
        Some(l) => format!("blk.{l}.{}{suffix}", kind.name()),
        None => format!("{}{suffix}", kind.name()),
    }
}

/// Whether config `c` stores the tensor `spec` (a tied head and absent RoPE factors are not).
fn stored(spec: &TensorSpec, c: &Config) -> bool {
    match spec.role {
        Role::Head => !c.tied_embeddings,
        Role::RopeFreqs => c.rope_freq_factors,
        _ => true,
    }
}

impl Arch {
    /// Every tensor a model of config `c` stores, in file order.
    pub fn tensors(&self, c: &Config) -> Vec<Tensor> {
        let place = |spec: &'static TensorSpec, layer: Option<usize>| Tensor {
            name: tensor_name(spec.kind, layer),
            layer,
            shape: spec.shape(c),
            spec,
        };
        let mut out = Vec::with_capacity(self.pre.len() + c.n_layers * self.layer.len() + self.post.len());
        out.extend(self.pre.iter().filter(|s| stored(s, c)).map(|s| place(s, None)));
        for l in 0..c.n_layers {
            out.extend(self.layer.iter().map(|s| place(s, Some(l))));
        }
        out.extend(self.post.iter().filter(|s| stored(s, c)).map(|s| place(s, None)));
        out
    }

    /// Whether this architecture has tensors of `kind`.
    pub fn has(&self, kind: Kind) -> bool {
        self.pre.iter().chain(self.layer).chain(self.post).any(|s| s.kind == kind)
    }

    /// The tensors that take views (matrices), in file order.
    pub fn matrices(&self, c: &Config) -> Vec<Tensor> {
        self.tensors(c).into_iter().filter(|t| t.spec.takes_views()).collect()
    }

    /// The layer and spec of tensor `name` (`blk.3.ffn_up.weight`, `token_embd.weight`), if
    /// this architecture has it.
    pub fn locate(&self, name: &str) -> Option<(Option<usize>, &'static TensorSpec)> {
        let (layer, part, specs) = match name.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
            Some((l, k)) => (Some(l.parse::<usize>().ok()?), k, self.layer),
            None => (None, name, self.pre),
        };
        let globals = if layer.is_none() { self.post } else { &[] };
        specs.iter().chain(globals).find(|s| tensor_name(s.kind, None) == part).map(|s| (layer, s))
    }

    /// The canonical name of Hugging Face tensor `hf` (`model.layers.3.mlp.up_proj.weight` ->
    /// `blk.3.ffn_up.weight`), if this architecture has it. A checkpoint may omit the
    /// `model.` prefix.
    pub fn from_hf(&self, hf: &str) -> Option<String> {
        if let Some(s) = self.pre.iter().chain(self.post).find(|s| s.hf == hf || s.hf.strip_prefix("model.") == Some(hf)) {
            return Some(tensor_name(s.kind, None));
        }
        let rest = hf.strip_prefix("model.").unwrap_or(hf).strip_prefix("layers.")?;
        let (layer, part) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        self.layer.iter().find(|s| s.hf == part).map(|s| tensor_name(s.kind, Some(layer)))
    }

    /// The Hugging Face name of canonical tensor `name` (the inverse of [`Arch::from_hf`]), if
    /// this architecture has it.
    pub fn to_hf(&self, name: &str) -> Option<String> {
        match self.locate(name).filter(|(_, s)| !s.hf.is_empty())? {
            (Some(l), s) => Some(format!("model.layers.{l}.{}", s.hf)),
            (None, s) => Some(s.hf.into()),
        }
    }

    /// The kinds whose input is `site`'s activations, in file order.
    pub fn consumers(&self, site: Site) -> Vec<Kind> {
        self.pre.iter().chain(self.layer).chain(self.post).filter(|s| s.site == Some(site)).map(|s| s.kind).collect()
    }

    /// The units a sensitivity profile measures and a plan chooses one view for: every layer
    /// (`blk.N`), then each global matrix (`token_embd`; `output` unless tied).
    pub fn plan_units(&self, c: &Config) -> Vec<String> {
        let mut u: Vec<String> = (0..c.n_layers).map(|l| format!("blk.{l}")).collect();
        for s in self.pre.iter().chain(self.post) {
            if s.takes_views() && stored(s, c) {
                u.push(String::from(s.kind.name()));
            }
        }
        u
    }

    /// What a plan key may be, for error messages.
    pub fn plan_keys_hint(&self, c: &Config) -> String {
        let kinds: Vec<&str> = self
            .layer
            .iter()
            .chain(self.pre)
            .chain(self.post)
            .filter(|s| s.takes_views() && stored(s, c))
            .map(|s| s.kind.name())
            .collect();
        format!(
            "keys are layers (blk.0 .. blk.{}), kinds ({}) or tensor names (blk.0.{}.weight)",
            c.n_layers.saturating_sub(1),
            kinds.join(", "),
            self.layer.iter().find(|s| s.takes_views()).map_or("", |s| s.kind.name())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::config::tests::tiny as config;

    #[test]
    fn llama_tensors_in_file_order() {
        let t = LLAMA.tensors(&config(false));
        assert_eq!(t.len(), 1 + 2 * 9 + 2);
        assert_eq!(t[0].name, "token_embd.weight");
        assert_eq!(t[0].shape, [96, 64]);
        assert_eq!(t[2].name, "blk.0.attn_q.weight");
        assert_eq!(t[4].shape, [32, 64]); // attn_v: (kv_dim, dim)
        assert_eq!(t[9].name, "blk.0.ffn_down.weight");
        assert_eq!(t[9].shape, [64, 128]);
        assert_eq!(t.last().unwrap().name, "output.weight");
        let tied = LLAMA.tensors(&config(true));
        assert_eq!(tied.last().unwrap().name, "output_norm.weight");
        assert_eq!(LLAMA.matrices(&config(true)).len(), 1 + 2 * 7);
    }

    #[test]
    fn units_sites_and_names() {
        assert_eq!(LLAMA.plan_units(&config(false)), ["blk.0", "blk.1", "token_embd", "output"]);
        assert_eq!(LLAMA.plan_units(&config(true)), ["blk.0", "blk.1", "token_embd"]);
        assert_eq!(LLAMA.consumers(Site::AttnIn), [Kind::AttnQ, Kind::AttnK, Kind::AttnV]);
        assert_eq!(LLAMA.consumers(Site::Head), [Kind::Output]);
        assert_eq!(tensor_name(Kind::FfnUp, Some(3)), "blk.3.ffn_up.weight");
        let (l, s) = LLAMA.locate("blk.3.ffn_down.weight").unwrap();
        assert_eq!((l, s.kind, s.site), (Some(3), Kind::FfnDown, Some(Site::FfnDown)));
        assert_eq!(LLAMA.locate("output.weight").unwrap().1.site, Some(Site::Head));
        assert_eq!(LLAMA.locate("token_embd.weight").unwrap().1.site, None);
        assert!(LLAMA.locate("blk.x.ffn_up.weight").is_none() && LLAMA.locate("blk.0.bias").is_none());
        assert_eq!(LLAMA.from_hf("model.layers.3.mlp.up_proj.weight").as_deref(), Some("blk.3.ffn_up.weight"));
        assert_eq!(LLAMA.from_hf("layers.0.input_layernorm.weight").as_deref(), Some("blk.0.attn_norm.weight"));
        assert_eq!(LLAMA.from_hf("lm_head.weight").as_deref(), Some("output.weight"));
        assert_eq!(LLAMA.from_hf("embed_tokens.weight").as_deref(), Some("token_embd.weight"));
        assert_eq!(LLAMA.from_hf("model.layers.0.self_attn.rotary_emb.inv_freq"), None);
        assert!(by_name("llama").is_ok());
        assert!(matches!(by_name("mamba"), Err(Error::UnsupportedArchitecture { .. })));
        for (i, k) in LLAMA.pre.iter().chain(LLAMA.layer).chain(LLAMA.post).map(|s| s.kind).enumerate() {
            assert!(k.index() < Kind::COUNT, "{i}");
        }
    }

    #[test]
    fn qwen2_biases_are_vectors_not_units() {
        let c = config(false);
        let t = QWEN2.tensors(&c);
        assert_eq!(t.len(), 1 + 2 * 12 + 2);
        assert_eq!(t[2].name, "blk.0.attn_q.weight");
        assert_eq!((t[3].name.as_str(), t[3].shape.as_slice()), ("blk.0.attn_q.bias", &[64u64][..]));
        assert_eq!((t[5].name.as_str(), t[5].shape.as_slice()), ("blk.0.attn_k.bias", &[32u64][..]));
        assert_eq!(QWEN2.matrices(&c).len(), LLAMA.matrices(&c).len());
        assert_eq!(QWEN2.plan_units(&c), LLAMA.plan_units(&c));
        assert!(!QWEN2.plan_keys_hint(&c).contains("bias"));
        let (l, s) = QWEN2.locate("blk.1.attn_v.bias").unwrap();
        assert_eq!((l, s.kind, s.role, s.site), (Some(1), Kind::AttnVBias, Role::Bias, None));
        assert_eq!(QWEN2.locate("blk.1.attn_v.weight").unwrap().1.kind, Kind::AttnV);
        assert!(QWEN2.locate("blk.1.attn_v.bias.weight").is_none() && QWEN2.locate("blk.1.attn_output.bias").is_none());
        assert!(LLAMA.locate("blk.0.attn_q.bias").is_none());
        assert_eq!(QWEN2.from_hf("model.layers.2.self_attn.k_proj.bias").as_deref(), Some("blk.2.attn_k.bias"));
        assert_eq!(QWEN2.consumers(Site::AttnIn), [Kind::AttnQ, Kind::AttnK, Kind::AttnV]);
        assert_eq!((QWEN2.gguf_qk_order, LLAMA.gguf_qk_order), (QkOrder::RotateHalf, QkOrder::Interleaved));
        assert!(by_name("qwen2").is_ok() && QWEN2.has(Kind::AttnQBias) && !LLAMA.has(Kind::AttnQBias));
    }

    #[test]
    fn qwen3_has_head_norms_and_no_biases() {
        let c = config(false);
        let t = QWEN3.tensors(&c);
        assert_eq!(t.len(), 1 + 2 * 11 + 2);
        assert_eq!((t[5].name.as_str(), t[5].shape.as_slice()), ("blk.0.attn_q_norm.weight", &[16u64][..]));
        assert_eq!(t[6].name, "blk.0.attn_k_norm.weight");
        assert!(!QWEN3.has(Kind::AttnQBias) && QWEN3.has(Kind::AttnKNorm) && !QWEN3.has(Kind::AttnPostNorm));
        assert_eq!(QWEN3.matrices(&c).len(), LLAMA.matrices(&c).len());
        assert_eq!(QWEN3.plan_units(&c), LLAMA.plan_units(&c));
        assert_eq!(QWEN3.from_hf("model.layers.1.self_attn.q_norm.weight").as_deref(), Some("blk.1.attn_q_norm.weight"));
        assert_eq!(QWEN3.gguf_qk_order, QkOrder::RotateHalf);
        assert!(by_name("qwen3").is_ok());
    }

    #[test]
    fn rope_factors_are_stored_only_when_the_config_says() {
        let mut c = config(false);
        assert!(!LLAMA.tensors(&c).iter().any(|t| t.spec.kind == Kind::RopeFreqs));
        c.rope_freq_factors = true;
        let t = LLAMA.tensors(&c);
        assert_eq!((t[1].name.as_str(), t[1].shape.as_slice()), ("rope_freqs.weight", &[8u64][..]));
        assert!(!t[1].spec.takes_views());
        assert_eq!(LLAMA.plan_units(&c), ["blk.0", "blk.1", "token_embd", "output"]);
        assert_eq!(LLAMA.locate("rope_freqs.weight").unwrap().1.kind, Kind::RopeFreqs);
    }

    #[test]
    fn gemma3_tensors_names_and_local_layers() {
        let mut c = config(true);
        c.local = LocalLayers { window: 512, period: 6, rope_theta: 10_000.0 };
        let t = GEMMA3.tensors(&c);
        assert_eq!(t.len(), 1 + 2 * 13 + 1);
        assert_eq!(t[5].name, "blk.0.attn_q_norm.weight");
        assert_eq!(t[5].shape, [16]); // head_dim, not dim
        assert_eq!(GEMMA3.from_hf("model.layers.2.post_attention_layernorm.weight").as_deref(), Some("blk.2.post_attention_norm.weight"));
        assert_eq!(GEMMA3.from_hf("model.layers.2.pre_feedforward_layernorm.weight").as_deref(), Some("blk.2.ffn_norm.weight"));
        assert_eq!(GEMMA3.from_hf("model.layers.0.post_feedforward_layernorm.weight").as_deref(), Some("blk.0.post_ffw_norm.weight"));
        assert_eq!(GEMMA3.from_hf("model.layers.0.self_attn.k_norm.weight").as_deref(), Some("blk.0.attn_k_norm.weight"));
        assert_eq!(GEMMA3.matrices(&c).len(), 1 + 2 * 7);
        // Gemma 3's 5:1: layers 5, 11, 17 global.
        let local: Vec<bool> = (0..18).map(|l| c.local.is_local(l)).collect();
        assert_eq!(local.iter().filter(|&&x| !x).count(), 3);
        assert!(!local[5] && !local[11] && !local[17] && local[0] && local[6]);
        assert_eq!(c.layer_window(0), Some(512));
        assert_eq!(c.layer_window(5), None);
        assert!(!LocalLayers::NONE.any() && !LocalLayers::NONE.is_local(0));
        assert!(by_name("gemma3").is_ok());
        for k in GEMMA3.pre.iter().chain(GEMMA3.layer).chain(GEMMA3.post).map(|s| s.kind) {
            assert!(k.index() < Kind::COUNT);
        }
    }
}
