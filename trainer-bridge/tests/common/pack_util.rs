//! Helpers of the edge-pack tests (packing, running packed checkpoints, synthetic models).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use edge_pack::{SourceModel, SourceTensor};
use edge_runtime::load::CheckpointBytes;
use edge_runtime::kv::{KvBits, KvFormat};
use edge_runtime::model::ModelOptions;
use edge_runtime::{Checkpoint, Config, Model};

/// The shared model folder: `EDGE_MODELS_DIR`, else `shared/models` beside the checkout.
pub fn models_dir() -> PathBuf {
    std::env::var_os("EDGE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/models"))
}

pub fn stories_bin() -> PathBuf {
    models_dir().join("llama2c/stories260K.bin")
}

pub fn stories_hf() -> PathBuf {
    models_dir().join("stories260K-hf")
}

/// Whether the shared models are present. Missing models fail the test (a silent skip would
/// hide a broken setup) unless `EDGE_ALLOW_MISSING_MODELS` is set, which skips it.
pub fn have_models() -> bool {
    if stories_bin().is_file() && stories_hf().join("model.safetensors").is_file() {
        return true;
    }
    let msg = format!("models not found under {} (set EDGE_MODELS_DIR)", models_dir().display());
    if std::env::var_os("EDGE_ALLOW_MISSING_MODELS").is_some() {
        eprintln!("SKIP: {msg}");
        return false;
    }
    panic!("{msg}; set EDGE_ALLOW_MISSING_MODELS=1 to skip the tests that need them");
}

/// The llama2.c `run.c` greedy oracle from BOS, `-t 0 -n 61` (see the models README).
pub fn stories_oracle() -> Vec<u32> {
    let mut ids: Vec<u32> =
        vec![461, 461, 401, 401, 401, 461, 378, 455, 473, 456, 435, 299, 362, 409, 283, 264, 283, 452, 288, 13];
    ids.extend(std::iter::repeat_n(431, 13));
    ids.extend([
        293, 430, 417, 363, 416, 315, 342, 418, 424, 400, 442, 402, 303, 266, 299, 374, 466, 396, 303, 271, 362, 390,
        469, 306, 469, 423, 314, 347,
    ]);
    ids
}

pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// One token a call, with the exact (f32) KV cache: what the oracles and reference outputs were
/// computed with.
fn reference_options() -> ModelOptions {
    ModelOptions { max_seq_len: 0, max_batch: 1, kv: KvFormat::uniform(KvBits::F32), ..ModelOptions::default() }
}

/// Run a greedy decode of `steps` tokens from `first` over checkpoint `bytes`, returning the
/// generated ids and the logits of every step.
pub fn greedy(bytes: &[u8], first: u32, steps: usize, view_bits: Option<u8>) -> (Vec<u32>, Vec<Vec<f32>>) {
    let ck = Checkpoint::parse(bytes).expect("parse");
    let plan = edge_runtime::plan::ViewPlan { default_bits: view_bits, overrides: Vec::new() };
    let mut model = Model::with_plan(&ck, reference_options(), &plan).expect("model");
    let mut tok = first;
    let (mut ids, mut all) = (Vec::new(), Vec::new());
    for pos in 0..steps {
        let logits = model.forward(tok, pos).expect("forward").to_vec();
        tok = argmax(&logits);
        ids.push(tok);
        all.push(logits);
    }
    (ids, all)
}

/// Logits of feeding a fixed token sequence (teacher forcing).
pub fn logits_for(bytes: &[u8], tokens: &[u32], view_bits: Option<u8>) -> Vec<Vec<f32>> {
    let ck = Checkpoint::parse(bytes).expect("parse");
    let plan = edge_runtime::plan::ViewPlan { default_bits: view_bits, overrides: Vec::new() };
    let mut model = Model::with_plan(&ck, reference_options(), &plan).expect("model");
    tokens.iter().enumerate().map(|(pos, &t)| model.forward(t, pos).expect("forward").to_vec()).collect()
}

pub fn read_bytes(path: &Path) -> CheckpointBytes {
    CheckpointBytes::read(path).expect("read checkpoint")
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Files in `dir` whose name marks a temporary file of the writer.
pub fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect()
}

/// A deterministic xorshift generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// A random Llama model whose rows divide into groups of 8, 16, 32 and 64.
pub fn synthetic_model(seed: u64, tied: bool) -> SourceModel {
    let config = Config {
        dim: 64,
        hidden_dim: 128,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        vocab_size: 96,
        max_seq_len: 64,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        tied_embeddings: tied,
        local: edge_runtime::config::LocalLayers::NONE,
        attn_scale: None,
        rope_freq_factors: false,
    };
    let mut rng = Rng::new(seed);
    let tensors = edge_runtime::arch::LLAMA
        .tensors(&config)
        .into_iter()
        .map(|t| {
            let (name, shape) = (t.name, t.shape);
            let n: u64 = shape.iter().product();
            let data = (0..n)
                .map(|i| {
                    if shape.len() == 1 {
                        1.0 + 0.1 * rng.uniform()
                    } else if i % 97 == 0 {
                        // Outliers, so groups have very different ranges.
                        2.0 * rng.uniform()
                    } else {
                        0.08 * rng.uniform()
                    }
                })
                .collect();
            SourceTensor { name, shape, data }
        })
        .collect();
    SourceModel {
        arch: &edge_runtime::arch::LLAMA,
        config,
        tensors,
        tokenizer_json: None,
        chat_template: None,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        add_bos: true,
        name: "synthetic".into(),
        source: "synthetic (test)".into(),
    }
}

/// A tiny word-level `tokenizer.json` (5 tokens).
pub const TINY_TOKENIZER: &str = r#"{
  "version": "1.0",
  "truncation": null,
  "padding": null,
  "added_tokens": [],
  "normalizer": null,
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null,
  "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "once": 3, "upon": 4}, "unk_token": "<unk>"}
}"#;
