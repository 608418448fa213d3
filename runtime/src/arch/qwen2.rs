//! Qwen2 / Qwen2.5: Llama's blocks with a bias on each of the q, k and v projections (added
//! before RoPE), NEOX (rotate-half) RoPE, whose q/k rows GGUF files keep in Hugging Face's order
//! (the importers permute them, biases too, to the runtime's interleaved pairs), and an output
//! head that may be untied.

use super::llama::{ATTN_K, ATTN_NORM, ATTN_OUTPUT, ATTN_Q, ATTN_V, FFN_DOWN, FFN_GATE, FFN_NORM, FFN_UP, OUTPUT, OUTPUT_NORM, TOKEN_EMBD};
use super::{Activation, Arch, Dim, Kind, QkOrder, Role, TensorSpec};

const fn bias(kind: Kind, shape: &'static [Dim], hf: &'static str) -> TensorSpec {
    TensorSpec { kind, shape, role: Role::Bias, site: None, hf }
}

pub const QWEN2: Arch = Arch {
    name: "qwen2",
    hf_classes: &["Qwen2ForCausalLM"],
    hf_model_type: "qwen2",
    gguf_qk_order: QkOrder::RotateHalf,
    activation: Activation::Silu,
    scale_embeddings: false,
    hf_norm_minus_one: false,
    gguf_local_defaults: None,
    pre: &[TOKEN_EMBD],
    layer: &[
        ATTN_NORM,
        ATTN_Q,
        bias(Kind::AttnQBias, &[Dim::Q], "self_attn.q_proj.bias"),
        ATTN_K,
        bias(Kind::AttnKBias, &[Dim::Kv], "self_attn.k_proj.bias"),
        ATTN_V,
        bias(Kind::AttnVBias, &[Dim::Kv], "self_attn.v_proj.bias"),
        ATTN_OUTPUT,
        FFN_NORM,
        FFN_GATE,
        FFN_UP,
        FFN_DOWN,
    ],
    post: &[OUTPUT_NORM, OUTPUT],
};
