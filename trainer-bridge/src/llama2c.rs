//! llama2.c `.bin` reader (legacy v0 header).
//!
//! Layout (little-endian), as written by llama2.c's `export.py --version 0` and read by `run.c`:
//! ```text
//! 7 x i32: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
//!          (vocab_size < 0: the classifier is not shared with the token embedding)
//! f32 weights: token_embedding (vocab, dim), rms_att (layers, dim), wq (layers, dim, dim),
//!   wk (layers, kv_dim, dim), wv (layers, kv_dim, dim), wo (layers, dim, dim),
//!   rms_ffn (layers, dim), w1 (layers, hidden, dim), w2 (layers, dim, hidden),
//!   w3 (layers, hidden, dim), rms_final (dim), freq_cis_real (seq_len, head_size/2),
//!   freq_cis_imag (seq_len, head_size/2), [wcls (vocab, dim)]
//! ```
//! `w1` is the gate, `w3` the up and `w2` the down projection. q/k rows are already in the
//! interleaved RoPE order. RoPE theta is 10000 and the RMSNorm epsilon 1e-5 (fixed in `run.c`).

use std::path::Path;

use anyhow::{bail, Context};
use edge_runtime::arch::{self, Kind};
use edge_runtime::Config;

use crate::source::{SourceModel, SourceTensor};

/// The 7-int legacy header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Llama2cHeader {
    pub dim: u64,
    pub hidden_dim: u64,
    pub n_layers: u64,
    pub n_heads: u64,
    pub n_kv_heads: u64,
    pub vocab_size: u64,
    pub seq_len: u64,
    /// The output classifier is the token embedding (vocab_size was positive in the file).
    pub shared_classifier: bool,
}

pub(crate) const HEADER_BYTES: u64 = 28;

/// Magic of the newer llama2.c export versions (1 and 2), "ak42" as a little-endian u32.
const LLAMA2C_V1_MAGIC: u32 = 0x616b_3432;

impl Llama2cHeader {
    /// Parse the header if its values are plausible for a llama2.c model; `None` otherwise.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < HEADER_BYTES as usize {
            return None;
        }
        let v: Vec<i32> = bytes[..HEADER_BYTES as usize]
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let (dim, hidden, layers, heads, kv_heads, vocab, seq) = (v[0], v[1], v[2], v[3], v[4], v[5], v[6]);
        let pos = |x: i32, max: i32| x > 0 && x <= max;
        if !(pos(dim, 1 << 16)
            && pos(hidden, 1 << 18)
            && pos(layers, 1024)
            && pos(heads, 1024)
            && pos(kv_heads, 1024)
            && vocab != 0
            && vocab.unsigned_abs() <= 1 << 22
            && pos(seq, 1 << 24))
        {
            return None;
        }
        if dim % heads != 0 || heads % kv_heads != 0 || (dim / heads) % 2 != 0 {
            return None;
        }
        Some(Llama2cHeader {
            dim: dim as u64,
            hidden_dim: hidden as u64,
            n_layers: layers as u64,
            n_heads: heads as u64,
            n_kv_heads: kv_heads as u64,
            vocab_size: vocab.unsigned_abs() as u64,
            seq_len: seq as u64,
            shared_classifier: vocab > 0,
        })
    }

    pub fn head_dim(&self) -> u64 {
        self.dim / self.n_heads
    }

    /// Number of f32 values after the header, in file order.
    fn n_floats(&self) -> u64 {
        let (d, h, l, v) = (self.dim, self.hidden_dim, self.n_layers, self.vocab_size);
        let kv = self.n_kv_heads * self.head_dim();
        let mut n = v * d; // token embedding
        n += l * d; // rms_att
        n += l * d * d + 2 * l * kv * d + l * d * d; // wq, wk, wv, wo
        n += l * d; // rms_ffn
        n += 3 * l * h * d; // w1, w2, w3
        n += d; // rms_final
        n += self.seq_len * self.head_dim(); // freq_cis_real + freq_cis_imag
        if !self.shared_classifier {
            n += v * d;
        }
        n
    }

    /// The exact file size this header implies.
    pub fn file_size(&self) -> u64 {
        HEADER_BYTES + 4 * self.n_floats()
    }

    pub fn describe(&self) -> String {
        format!(
            "dim {}, hidden {}, {} layers, {} heads, {} kv heads, vocab {}, seq_len {}",
            self.dim, self.hidden_dim, self.n_layers, self.n_heads, self.n_kv_heads, self.vocab_size, self.seq_len
        )
    }
}

/// Check that `bytes` (a whole file named `path`) is a legacy llama2.c checkpoint.
pub(crate) fn check_file(path: &Path, bytes: &[u8]) -> anyhow::Result<Llama2cHeader> {
    if bytes.len() >= 8 && u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) == LLAMA2C_V1_MAGIC {
        let version = i32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        bail!(
            "'{}' is a llama2.c version {version} export; only the legacy version 0 format is supported \
             (re-export it with llama2.c's `export.py --version 0`)",
            path.display()
        );
    }
    let Some(h) = Llama2cHeader::parse(bytes) else {
        bail!(
            "truncated or not a llama2.c checkpoint: '{}' does not start with a plausible llama2.c header",
            path.display()
        );
    };
    let expected = h.file_size();
    if bytes.len() as u64 != expected {
        bail!(
            "truncated or not a llama2.c checkpoint: '{}' is {} bytes, but its header ({}) implies {} bytes",
            path.display(),
            bytes.len(),
            h.describe(),
            expected
        );
    }
    Ok(h)
}

/// Split the first `n` values off `rest` (sizes were checked against the file size).
fn take_floats<'a>(rest: &mut &'a [f32], n: u64) -> &'a [f32] {
    let (head, tail) = rest.split_at(n as usize);
    *rest = tail;
    head
}

/// Read a llama2.c `.bin`. The format carries no tokenizer (llama2.c's `tokenizer.bin` is a
/// different format); `tokenizer` names a `tokenizer.json` to use with it.
pub fn load_llama2c(path: &Path, tokenizer: Option<&Path>) -> anyhow::Result<SourceModel> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read '{}'", path.display()))?;
    let h = check_file(path, &bytes)?;
    let floats: Vec<f32> =
        bytes[HEADER_BYTES as usize..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    drop(bytes);

    let (d, hd, l, v) = (h.dim, h.hidden_dim, h.n_layers, h.vocab_size);
    let kv = h.n_kv_heads * h.head_dim();
    let mut rest: &[f32] = &floats;
    // The file's blocks in file order, each tensor kind's layers stacked.
    let tok = take_floats(&mut rest, v * d);
    let rms_att = take_floats(&mut rest, l * d);
    let wq = take_floats(&mut rest, l * d * d);
    let wk = take_floats(&mut rest, l * kv * d);
    let wv = take_floats(&mut rest, l * kv * d);
    let wo = take_floats(&mut rest, l * d * d);
    let rms_ffn = take_floats(&mut rest, l * d);
    let w1 = take_floats(&mut rest, l * hd * d);
    let w2 = take_floats(&mut rest, l * d * hd);
    let w3 = take_floats(&mut rest, l * hd * d);
    let rms_final = take_floats(&mut rest, d);
    let _freq_cis = take_floats(&mut rest, h.seq_len * h.head_dim());
    let wcls = if h.shared_classifier { None } else { Some(take_floats(&mut rest, v * d)) };
    let block = |kind: Kind| -> Option<&[f32]> {
        Some(match kind {
            Kind::TokenEmbd => tok,
            Kind::AttnNorm => rms_att,
            Kind::AttnQ => wq,
            Kind::AttnK => wk,
            Kind::AttnV => wv,
            Kind::AttnOutput => wo,
            Kind::FfnNorm => rms_ffn,
            Kind::FfnGate => w1,
            Kind::FfnUp => w3,
            Kind::FfnDown => w2,
            Kind::OutputNorm => rms_final,
            Kind::Output => wcls?,
            // Not in llama2.c's (Llama) files.
            Kind::AttnQNorm | Kind::AttnKNorm | Kind::AttnPostNorm | Kind::FfnPostNorm => return None,
            Kind::AttnQBias | Kind::AttnKBias | Kind::AttnVBias | Kind::RopeFreqs => return None,
        })
    };

    let config = Config {
        dim: d as usize,
        hidden_dim: hd as usize,
        n_layers: l as usize,
        n_heads: h.n_heads as usize,
        n_kv_heads: h.n_kv_heads as usize,
        head_dim: h.head_dim() as usize,
        vocab_size: v as usize,
        max_seq_len: h.seq_len as usize,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        tied_embeddings: h.shared_classifier,
        local: edge_runtime::config::LocalLayers::NONE,
        attn_scale: None,
        rope_freq_factors: false,
    };
    let arch = &arch::LLAMA;
    // Each tensor of the architecture is its layer's slice of its kind's block.
    let mut tensors = Vec::new();
    for t in arch.tensors(&config) {
        let Some(b) = block(t.spec.kind) else {
            bail!("'{}' has no tensor '{}' (llama2.c files store no {})", path.display(), t.name, t.spec.kind.name());
        };
        let n = t.shape.iter().product::<u64>() as usize;
        let i = t.layer.unwrap_or(0);
        tensors.push(SourceTensor { name: t.name, shape: t.shape, data: b[i * n..(i + 1) * n].to_vec() });
    }
    let tokenizer_json = match tokenizer {
        Some(p) => Some(crate::tokenizer::read_tokenizer_json(p)?),
        None => None,
    };
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "llama2c".into());
    let file = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(SourceModel {
        arch,
        config,
        tensors,
        tokenizer_json,
        chat_template: None,
        // llama2.c's run.c: BOS = 1 is prepended to every prompt, EOS = 2.
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        add_bos: true,
        name,
        source: format!("{file} (llama2.c)"),
    })
}
