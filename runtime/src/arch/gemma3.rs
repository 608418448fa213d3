//! Gemma 3 (text, `Gemma3ForCausalLM`): Llama's blocks with GeGLU (tanh GELU), an RMSNorm on
//! every query and key head before RoPE, "sandwich" norms (the attention's and the
//! feed-forward's outputs are normed before their residual adds), embeddings scaled by
//! `sqrt(dim)`, and sliding-window ("local") layers with their own RoPE base interleaved with
//! global ones (the pattern and bases are the config's: [`super::config::LocalLayers`]). The
//! output head is tied to the embedding.

use super::llama::{linear, norm, ATTN_K_NORM, ATTN_Q_NORM, OUTPUT, OUTPUT_NORM, TOKEN_EMBD};
use super::{Activation, Arch, Dim, Kind, QkOrder, Site};

pub const GEMMA3: Arch = Arch {
    name: "gemma3",
    hf_classes: &["Gemma3ForCausalLM"],
    hf_model_type: "gemma3_text",
    gguf_qk_order: QkOrder::RotateHalf,
    activation: Activation::GeluTanh,
    scale_embeddings: true,
    hf_norm_minus_one: true,
    gguf_local_defaults: Some((6, 10_000.0)),
    pre: &[TOKEN_EMBD],
    layer: &[
        norm(Kind::AttnNorm, "input_layernorm.weight"),
        linear(Kind::AttnQ, &[Dim::Q, Dim::Model], Site::AttnIn, "self_attn.q_proj.weight"),
        linear(Kind::AttnK, &[Dim::Kv, Dim::Model], Site::AttnIn, "self_attn.k_proj.weight"),
        linear(Kind::AttnV, &[Dim::Kv, Dim::Model], Site::AttnIn, "self_attn.v_proj.weight"),
        ATTN_Q_NORM,
        ATTN_K_NORM,
        linear(Kind::AttnOutput, &[Dim::Model, Dim::Q], Site::AttnOut, "self_attn.o_proj.weight"),
        norm(Kind::AttnPostNorm, "post_attention_layernorm.weight"),
        norm(Kind::FfnNorm, "pre_feedforward_layernorm.weight"),
        linear(Kind::FfnGate, &[Dim::Hidden, Dim::Model], Site::FfnIn, "mlp.gate_proj.weight"),
        linear(Kind::FfnUp, &[Dim::Hidden, Dim::Model], Site::FfnIn, "mlp.up_proj.weight"),
        linear(Kind::FfnDown, &[Dim::Model, Dim::Hidden], Site::FfnDown, "mlp.down_proj.weight"),
        norm(Kind::FfnPostNorm, "post_feedforward_layernorm.weight"),
    ],
    post: &[OUTPUT_NORM, OUTPUT],
};
