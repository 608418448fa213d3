//! The common in-memory form every importer produces (and all they share with the packer).

use edge_runtime::arch::Arch;
use edge_runtime::Config;

/// One tensor, dequantized to f32, under its canonical name, shape outermost first.
#[derive(Debug, Clone)]
pub struct SourceTensor {
    /// Canonical GGUF name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// `[rows, cols]` for matrices (`[out, in]`), `[n]` for vectors.
    pub shape: Vec<u64>,
    pub data: Vec<f32>,
}

/// A model as read from any source format.
#[derive(Debug, Clone)]
pub struct SourceModel {
    /// Its architecture: which tensors a model of `config` has.
    pub arch: &'static Arch,
    pub config: Config,
    /// Every tensor `arch` implies for `config`; q/k rows in interleaved RoPE order.
    pub tensors: Vec<SourceTensor>,
    /// Hugging Face `tokenizer.json` text, if the source has (or implies) one.
    pub tokenizer_json: Option<String>,
    /// Jinja chat template, if any.
    pub chat_template: Option<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub add_bos: bool,
    /// Human-readable model name.
    pub name: String,
    /// Where it came from (file name and format), for `inspect`.
    pub source: String,
}
