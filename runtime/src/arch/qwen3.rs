//! Qwen3 (dense, `Qwen3ForCausalLM`): Qwen2's blocks without the q/k/v biases and with an
//! RMSNorm on every query and key head before RoPE (as Gemma 3's), a head size of its own
//! (`head_dim`, not `hidden / heads`), NEOX (rotate-half) RoPE whose q/k rows GGUF files keep
//! in Hugging Face's order, and an output head that may be tied.

use super::llama::{
    ATTN_K, ATTN_K_NORM, ATTN_NORM, ATTN_OUTPUT, ATTN_Q, ATTN_Q_NORM, ATTN_V, FFN_DOWN, FFN_GATE, FFN_NORM, FFN_UP, OUTPUT,
    OUTPUT_NORM, TOKEN_EMBD,
};
use super::{Activation, Arch, QkOrder};

pub const QWEN3: Arch = Arch {
    name: "qwen3",
    hf_classes: &["Qwen3ForCausalLM"],
    hf_model_type: "qwen3",
    gguf_qk_order: QkOrder::RotateHalf,
    activation: Activation::Silu,
    scale_embeddings: false,
    hf_norm_minus_one: false,
    gguf_local_defaults: None,
    pre: &[TOKEN_EMBD],
    layer: &[ATTN_NORM, ATTN_Q, ATTN_K, ATTN_V, ATTN_Q_NORM, ATTN_K_NORM, ATTN_OUTPUT, FFN_NORM, FFN_GATE, FFN_UP, FFN_DOWN],
    post: &[OUTPUT_NORM, OUTPUT],
};
