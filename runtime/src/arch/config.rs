//! Model hyperparameters, read from checkpoint metadata: the fields every architecture of the
//! Llama family shares (an architecture with more adds them here, read from its own keys).

use crate::error::{Error, Result};
use crate::format::{keys, Checkpoint};

/// The most layers a model may declare: far above any real model's, and a bound every reader of
/// a config checks before the count drives an allocation (the tensor list, per-layer tables).
pub const MAX_LAYERS: usize = 4096;

/// Hyperparameters of a Llama-family model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Residual stream width.
    pub dim: usize,
    /// SwiGLU inner width.
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_heads`).
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Longest context the model was trained for.
    pub max_seq_len: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
    /// The output head reuses the token embedding.
    pub tied_embeddings: bool,
    /// The checkpoint stores per-frequency RoPE divisors (`rope_freqs.weight`, Llama 3.x
    /// scaling): frequency `i` is `rope_theta^(-2i/head_dim) / rope_freqs[i]`.
    pub rope_freq_factors: bool,
    /// Sliding-window layers, if any (Gemma 3).
    pub local: LocalLayers,
    /// The attention's query scale; `None`: `1 / sqrt(head_dim)` (Gemma's
    /// `query_pre_attn_scalar^-1/2`).
    pub attn_scale: Option<f32>,
}

/// Sliding-window ("local") attention layers interleaved with global ones: in every `period`
/// layers the first `period - 1` are local (llama.cpp's `sliding_window_pattern`; Gemma 3's
/// 5:1 is period 6). A local layer's token at position `p` attends to positions
/// `p - window + 1..=p` only, and rotates with its own RoPE base.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalLayers {
    /// Positions a local layer sees (its own included); 0: no local layers.
    pub window: usize,
    pub period: usize,
    /// RoPE base of the local layers.
    pub rope_theta: f32,
}

impl LocalLayers {
    /// Every layer global.
    pub const NONE: LocalLayers = LocalLayers { window: 0, period: 0, rope_theta: 10000.0 };

    /// Whether layer `l` is local.
    pub fn is_local(&self, l: usize) -> bool {
        self.window > 0 && self.period > 1 && l % self.period < self.period - 1
    }

    /// Whether any layer is local.
    pub fn any(&self) -> bool {
        self.window > 0 && self.period > 1
    }
}

impl Config {
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// The query scale of attention.
    pub fn attention_scale(&self) -> f32 {
        self.attn_scale.unwrap_or_else(|| 1.0 / libm::sqrtf(self.head_dim as f32))
    }

    /// Positions layer `l` attends to back from the current one (itself included), if bounded.
    pub fn layer_window(&self, l: usize) -> Option<usize> {
        self.local.is_local(l).then_some(self.local.window)
    }

    pub fn from_checkpoint(ck: &Checkpoint<'_>) -> Result<Self> {
        let arch = super::of_checkpoint(ck)?;
        let rope_freqs = super::tensor_name(super::Kind::RopeFreqs, None);
        let u = |key: &'static str| -> Result<usize> {
            let v = ck.get_u64(key).ok_or(Error::MissingMeta { key })?;
            // Bound every dimension: no file-supplied count may drive a huge allocation.
            if v == 0 || v > (1 << 24) {
                return Err(Error::Corrupt { what: alloc::format!("metadata '{key}' = {v} is out of range") });
            }
            Ok(v as usize)
        };
        let f = |key: &'static str| -> Result<f32> {
            let v = ck.get_f32(key).ok_or(Error::MissingMeta { key })?;
            if !v.is_finite() || v <= 0.0 {
                return Err(Error::Corrupt { what: alloc::format!("metadata '{key}' = {v} is out of range") });
            }
            Ok(v)
        };
        let c = Config {
            dim: u(keys::DIM)?,
            hidden_dim: u(keys::HIDDEN_DIM)?,
            n_layers: u(keys::N_LAYERS)?,
            n_heads: u(keys::N_HEADS)?,
            n_kv_heads: u(keys::N_KV_HEADS)?,
            head_dim: u(keys::HEAD_DIM)?,
            vocab_size: u(keys::VOCAB_SIZE)?,
            max_seq_len: u(keys::CONTEXT_LENGTH)?,
            norm_eps: f(keys::NORM_EPS)?,
            rope_theta: f(keys::ROPE_THETA)?,
            tied_embeddings: ck.get_bool(keys::TIED_EMBEDDINGS).unwrap_or(false),
            local: match ck.get_u64(keys::SLIDING_WINDOW) {
                None | Some(0) => LocalLayers::NONE,
                Some(_) => LocalLayers {
                    window: u(keys::SLIDING_WINDOW)?,
                    period: u(keys::SLIDING_WINDOW_PATTERN)?,
                    rope_theta: f(keys::ROPE_THETA_LOCAL)?,
                },
            },
            attn_scale: match ck.get_f32(keys::ATTN_SCALE) {
                None => None,
                Some(_) => Some(f(keys::ATTN_SCALE)?),
            },
            rope_freq_factors: ck.tensor(&rope_freqs).is_some(),
        };
        if c.rope_freq_factors && !arch.has(super::Kind::RopeFreqs) {
            return Err(Error::Corrupt { what: alloc::format!("a {} checkpoint cannot hold '{rope_freqs}'", arch.name) });
        }
        if !c.n_heads.is_multiple_of(c.n_kv_heads) || !c.head_dim.is_multiple_of(2) || c.n_layers > MAX_LAYERS {
            return Err(Error::Corrupt {
                what: alloc::format!(
                    "inconsistent attention config: {} heads, {} kv heads, head_dim {}",
                    c.n_heads,
                    c.n_kv_heads,
                    c.head_dim
                ),
            });
        }
        Ok(c)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::Config;

    /// A two-layer llama small enough to write out by hand in tests.
    pub(crate) fn tiny(tied: bool) -> Config {
        Config {
            dim: 64,
            hidden_dim: 128,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 16,
            vocab_size: 96,
            max_seq_len: 32,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            tied_embeddings: tied,
            local: super::LocalLayers::NONE,
            attn_scale: None,
            rope_freq_factors: false,
        }
    }
}
