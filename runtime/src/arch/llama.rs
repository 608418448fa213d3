//! Llama (and the models that share its tensors: SmolLM2, TinyLlama, llama2.c's stories):
//! pre-norm blocks of grouped-query attention with RoPE and a SwiGLU feed-forward, RMSNorm
//! everywhere, an output head that may be tied to the token embedding.

use super::{Arch, Dim, Kind, Role, Site, TensorSpec};

const fn norm(kind: Kind) -> TensorSpec {
    TensorSpec { kind, shape: &[Dim::Model], role: Role::Norm, site: None }
}

const fn linear(kind: Kind, shape: &'static [Dim], site: Site) -> TensorSpec {
    TensorSpec { kind, shape, role: Role::Linear, site: Some(site) }
}

pub const LLAMA: Arch = Arch {
    name: "llama",
    pre: &[TensorSpec { kind: Kind::TokenEmbd, shape: &[Dim::Vocab, Dim::Model], role: Role::Embedding, site: None }],
    layer: &[
        norm(Kind::AttnNorm),
        linear(Kind::AttnQ, &[Dim::Q, Dim::Model], Site::AttnIn),
        linear(Kind::AttnK, &[Dim::Kv, Dim::Model], Site::AttnIn),
        linear(Kind::AttnV, &[Dim::Kv, Dim::Model], Site::AttnIn),
        linear(Kind::AttnOutput, &[Dim::Model, Dim::Q], Site::AttnOut),
        norm(Kind::FfnNorm),
        linear(Kind::FfnGate, &[Dim::Hidden, Dim::Model], Site::FfnIn),
        linear(Kind::FfnUp, &[Dim::Hidden, Dim::Model], Site::FfnIn),
        linear(Kind::FfnDown, &[Dim::Model, Dim::Hidden], Site::FfnDown),
    ],
    post: &[
        norm(Kind::OutputNorm),
        TensorSpec { kind: Kind::Output, shape: &[Dim::Vocab, Dim::Model], role: Role::Head, site: Some(Site::Head) },
    ],
};
