//! The common in-memory form every importer produces (and all they share with the packer).

use anyhow::bail;
use edge_runtime::arch::{self, Arch, Kind};
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

/// Reorder the rows of a q or k projection (or of its bias: `cols` 1) from rotate-half to
/// interleaved order: for head `h`, interleaved row `h*hd + 2*i + p` is rotate-half row
/// `h*hd + p*(hd/2) + i` (`p` in {0, 1}, `i < hd/2`).
pub fn unpermute_rotary(data: &[f32], n_heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    reorder_rotary(data, n_heads, head_dim, cols, true)
}

/// The inverse of [`unpermute_rotary`]: interleaved rows back to rotate-half order.
pub fn permute_rotary(data: &[f32], n_heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    reorder_rotary(data, n_heads, head_dim, cols, false)
}

fn reorder_rotary(data: &[f32], n_heads: usize, head_dim: usize, cols: usize, to_interleaved: bool) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for p in 0..2 {
                let interleaved = h * head_dim + 2 * i + p;
                let rotate_half = h * head_dim + p * half + i;
                let (dst, src) = if to_interleaved { (interleaved, rotate_half) } else { (rotate_half, interleaved) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Put the q and k projections of `tensors` (and their biases and per-head norms, where the
/// architecture has them), stored in rotate-half order (Hugging Face; GGUF files of NEOX-RoPE architectures),
/// into the interleaved order the runtime rotates. Tensors not in `tensors` are skipped (the
/// caller checks the tensor list).
pub fn interleave_qk(tensors: &mut [SourceTensor], config: &Config) -> anyhow::Result<()> {
    reorder_qk(tensors, config, true)
}

/// The inverse of [`interleave_qk`]: the runtime's interleaved q and k rows back to Hugging
/// Face's rotate-half order (to hand a checkpoint's codes to PyTorch).
pub fn rotate_half_qk(tensors: &mut [SourceTensor], config: &Config) -> anyhow::Result<()> {
    reorder_qk(tensors, config, false)
}

fn reorder_qk(tensors: &mut [SourceTensor], config: &Config, to_interleaved: bool) -> anyhow::Result<()> {
    let hd = config.head_dim;
    let kinds = [
        (Kind::AttnQ, config.n_heads),
        (Kind::AttnK, config.n_kv_heads),
        (Kind::AttnQBias, config.n_heads),
        (Kind::AttnKBias, config.n_kv_heads),
        // Per-head norms scale a head's values one by one: their weights move with the rows.
        (Kind::AttnQNorm, 1),
        (Kind::AttnKNorm, 1),
    ];
    for l in 0..config.n_layers {
        for (kind, heads) in kinds {
            let name = arch::tensor_name(kind, Some(l));
            let Some(t) = tensors.iter_mut().find(|t| t.name == name) else { continue };
            let rows = (heads * hd) as u64;
            let vector = kind.is_bias() || matches!(kind, Kind::AttnQNorm | Kind::AttnKNorm);
            let (rank, cols) = if vector { (1, 1) } else { (2, t.shape.get(1).copied().unwrap_or(0)) };
            if t.shape.len() != rank || t.shape[0] != rows || t.data.len() as u64 != rows * cols {
                bail!("tensor '{name}' has shape {:?}, expected {rows} rows ({heads} heads x head_dim {hd})", t.shape);
            }
            t.data = reorder_rotary(&t.data, heads, hd, cols as usize, to_interleaved);
        }
    }
    Ok(())
}
