//! Llama (and the models that share its tensors: SmolLM2, TinyLlama, llama2.c's stories):
//! pre-norm blocks of grouped-query attention with RoPE and a SwiGLU feed-forward, RMSNorm
//! everywhere, an output head that may be tied to the token embedding.

//!
//! Llama 3.x's RoPE scaling is per-frequency divisors, stored as `rope_freqs.weight` when the
//! config says so (GGUF's tensor; computed at pack time from a Hugging Face `rope_scaling`).

use super::{Activation, Arch, Dim, Kind, QkOrder, Role, Site, TensorSpec};

pub(super) const fn norm(kind: Kind, hf: &'static str) -> TensorSpec {
    TensorSpec { kind, shape: &[Dim::Model], role: Role::Norm, site: None, hf }
}

pub(super) const fn linear(kind: Kind, shape: &'static [Dim], site: Site, hf: &'static str) -> TensorSpec {
    TensorSpec { kind, shape, role: Role::Linear, site: Some(site), hf }
}

pub(super) const TOKEN_EMBD: TensorSpec =
    TensorSpec { kind: Kind::TokenEmbd, shape: &[Dim::Vocab, Dim::Model], role: Role::Embedding, site: None, hf: "model.embed_tokens.weight" };

// The Llama block's tensors, shared with the architectures that extend it.
pub(super) const ATTN_NORM: TensorSpec = norm(Kind::AttnNorm, "input_layernorm.weight");
pub(super) const ATTN_Q: TensorSpec = linear(Kind::AttnQ, &[Dim::Q, Dim::Model], Site::AttnIn, "self_attn.q_proj.weight");
pub(super) const ATTN_K: TensorSpec = linear(Kind::AttnK, &[Dim::Kv, Dim::Model], Site::AttnIn, "self_attn.k_proj.weight");
pub(super) const ATTN_V: TensorSpec = linear(Kind::AttnV, &[Dim::Kv, Dim::Model], Site::AttnIn, "self_attn.v_proj.weight");
pub(super) const ATTN_OUTPUT: TensorSpec = linear(Kind::AttnOutput, &[Dim::Model, Dim::Q], Site::AttnOut, "self_attn.o_proj.weight");
pub(super) const FFN_NORM: TensorSpec = norm(Kind::FfnNorm, "post_attention_layernorm.weight");
pub(super) const FFN_GATE: TensorSpec = linear(Kind::FfnGate, &[Dim::Hidden, Dim::Model], Site::FfnIn, "mlp.gate_proj.weight");
pub(super) const FFN_UP: TensorSpec = linear(Kind::FfnUp, &[Dim::Hidden, Dim::Model], Site::FfnIn, "mlp.up_proj.weight");
pub(super) const FFN_DOWN: TensorSpec = linear(Kind::FfnDown, &[Dim::Model, Dim::Hidden], Site::FfnDown, "mlp.down_proj.weight");
pub(super) const OUTPUT_NORM: TensorSpec = norm(Kind::OutputNorm, "model.norm.weight");

// The RMSNorm of every query and key head before RoPE (Gemma 3, Qwen3): one weight per head
// dimension, shared by all heads.
pub(super) const ATTN_Q_NORM: TensorSpec =
    TensorSpec { kind: Kind::AttnQNorm, shape: &[Dim::Head], role: Role::Norm, site: None, hf: "self_attn.q_norm.weight" };
pub(super) const ATTN_K_NORM: TensorSpec =
    TensorSpec { kind: Kind::AttnKNorm, shape: &[Dim::Head], role: Role::Norm, site: None, hf: "self_attn.k_norm.weight" };

pub(super) const OUTPUT: TensorSpec =
    TensorSpec { kind: Kind::Output, shape: &[Dim::Vocab, Dim::Model], role: Role::Head, site: Some(Site::Head), hf: "lm_head.weight" };

pub const LLAMA: Arch = Arch {
    name: "llama",
    activation: Activation::Silu,
    scale_embeddings: false,
    hf_norm_minus_one: false,
    gguf_local_defaults: None,
    hf_classes: &["LlamaForCausalLM"],
    hf_model_type: "llama",
    gguf_qk_order: QkOrder::Interleaved,
    pre: &[
        TOKEN_EMBD,
        TensorSpec { kind: Kind::RopeFreqs, shape: &[Dim::HalfHead], role: Role::RopeFreqs, site: None, hf: "" },
    ],
    layer: &[
        ATTN_NORM,
        ATTN_Q,
        ATTN_K,
        ATTN_V,
        ATTN_OUTPUT,
        FFN_NORM,
        FFN_GATE,
        FFN_UP,
        FFN_DOWN,
    ],
    post: &[OUTPUT_NORM, OUTPUT],
};
