//! Qwen2 / Qwen2.5: Llama's blocks with a bias on each of the q, k and v projections (added
//! before RoPE), NEOX (rotate-half) RoPE, whose q/k rows GGUF files keep in Hugging Face's order
//! (the importers permute them, biases too, to the runtime's interleaved pairs), and an output
//! head that may be untied.

use super::llama::{linear, norm, OUTPUT, OUTPUT_NORM, TOKEN_EMBD};
use super::{Activation, Arch, Dim, Kind, QkOrder, Role, Site, TensorSpec};

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
        norm(Kind::AttnNorm, "input_layernorm.weight"),
        linear(Kind::AttnQ, &[Dim::Q, Dim::Model], Site::AttnIn, "self_attn.q_proj.weight"),
        bias(Kind::AttnQBias, &[Dim::Q], "self_attn.q_proj.bias"),
        linear(Kind::AttnK, &[Dim::Kv, Dim::Model], Site::AttnIn, "self_attn.k_proj.weight"),
        bias(Kind::AttnKBias, &[Dim::Kv], "self_attn.k_proj.bias"),
        linear(Kind::AttnV, &[Dim::Kv, Dim::Model], Site::AttnIn, "self_attn.v_proj.weight"),
        bias(Kind::AttnVBias, &[Dim::Kv], "self_attn.v_proj.bias"),
        linear(Kind::AttnOutput, &[Dim::Model, Dim::Q], Site::AttnOut, "self_attn.o_proj.weight"),
        norm(Kind::FfnNorm, "post_attention_layernorm.weight"),
        linear(Kind::FfnGate, &[Dim::Hidden, Dim::Model], Site::FfnIn, "mlp.gate_proj.weight"),
        linear(Kind::FfnUp, &[Dim::Hidden, Dim::Model], Site::FfnIn, "mlp.up_proj.weight"),
        linear(Kind::FfnDown, &[Dim::Model, Dim::Hidden], Site::FfnDown, "mlp.down_proj.weight"),
    ],
    post: &[OUTPUT_NORM, OUTPUT],
};
