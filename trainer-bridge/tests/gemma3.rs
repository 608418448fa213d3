//! Gemma 3 through the importers against independent implementations: a tiny random
//! `Gemma3ForCausalLM` against transformers' logits (tests/fixtures/gemma3-tiny, made by
//! tests/oracles/hf_tiny.py), and Gemma 3 270M's GGUF against llama.cpp's greedy continuations.

#[path = "common/pack_util.rs"]
mod pack_util;

use std::path::{Path, PathBuf};

use edge_pack::pack::full_precision_in_memory;
use edge_pack::hf::load_hf;
use edge_runtime::kv::{KvBits, KvFormat};
use edge_runtime::model::{Logits, Model, ModelOptions};
use edge_runtime::Checkpoint;
use pack_util::*;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gemma3-tiny")
}

struct Oracle {
    tokens: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

fn oracle() -> Oracle {
    let text = std::fs::read_to_string(fixture().join("oracle.json")).expect("oracle.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("oracle json");
    let tokens = v["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
    let logits = v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect();
    Oracle { tokens, logits }
}

fn exact_options(max_batch: usize) -> ModelOptions {
    ModelOptions { max_seq_len: 0, max_batch, kv: KvFormat::uniform(KvBits::F32), ..ModelOptions::default() }
}

#[test]
fn tiny_hf_gemma3_config_is_read() {
    let m = load_hf(&fixture(), None).unwrap();
    let c = m.config;
    assert_eq!(m.arch.name, "gemma3");
    assert_eq!((c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim), (32, 64, 4, 4, 2, 16));
    assert!(c.tied_embeddings);
    assert_eq!((c.local.window, c.local.period, c.local.rope_theta, c.rope_theta), (8, 2, 10_000.0, 1_000_000.0));
    assert!(c.local.is_local(0) && !c.local.is_local(1) && c.local.is_local(2) && !c.local.is_local(3));
    assert_eq!(c.attn_scale, Some(1.0 / 12f32.sqrt()));
}

/// Our forward pass over the HF import matches transformers' logits at every position, both
/// batched (prefill, the window masked inside a block) and one token a call (decode, the window
/// a slice of the cache): 24 tokens against a window of 8, local and global layers.
#[test]
fn tiny_hf_gemma3_logits_match_transformers() {
    let m = load_hf(&fixture(), None).unwrap();
    let o = oracle();
    let bytes = full_precision_in_memory(&m).unwrap();
    let ck = Checkpoint::parse(bytes.as_bytes()).unwrap();
    let scale = o.logits.iter().flatten().fold(0f32, |a, x| a.max(x.abs()));
    assert!(scale > 0.1, "the oracle's logits are not trivial ({scale})");

    let mut model = Model::new(&ck, exact_options(o.tokens.len())).unwrap();
    let all = model.forward_batch(&o.tokens, 0, Logits::All).unwrap().to_vec();
    let vocab = o.logits[0].len();
    for (t, want) in o.logits.iter().enumerate() {
        let d = max_abs_diff(&all[t * vocab..(t + 1) * vocab], want);
        assert!(d < 1e-4 * scale.max(1.0), "batched: position {t} differs by {d} (logit scale {scale})");
    }

    let mut model = Model::new(&ck, exact_options(1)).unwrap();
    for (t, want) in o.tokens.iter().zip(&o.logits) {
        let pos = model.kv_end();
        let got = model.forward(*t, pos).unwrap();
        let d = max_abs_diff(got, want);
        assert!(d < 1e-4 * scale.max(1.0), "decode: position {pos} differs by {d}");
    }

    // Prefill in uneven blocks (blocks that straddle the window's edge) gives the same logits.
    let mut model = Model::new(&ck, exact_options(5)).unwrap();
    let mut pos = 0;
    for chunk in o.tokens.chunks(5) {
        let got = model.forward_batch(chunk, pos, Logits::All).unwrap().to_vec();
        for (i, row) in got.chunks(vocab).enumerate() {
            let d = max_abs_diff(row, &o.logits[pos + i]);
            assert!(d < 1e-4 * scale.max(1.0), "blocks of 5: position {} differs by {d}", pos + i);
        }
        pos += chunk.len();
    }
}

/// The sliding window and the norm convention matter here (else the test above is vacuous):
/// without them the logits leave the oracle's.
#[test]
fn tiny_hf_gemma3_window_and_norms_are_exercised() {
    let o = oracle();
    let check = |m: &edge_pack::SourceModel, what: &str| {
        let bytes = full_precision_in_memory(m).unwrap();
        let ck = Checkpoint::parse(bytes.as_bytes()).unwrap();
        let mut model = Model::new(&ck, exact_options(o.tokens.len())).unwrap();
        let all = model.forward_batch(&o.tokens, 0, Logits::All).unwrap().to_vec();
        let vocab = o.logits[0].len();
        let last = o.tokens.len() - 1;
        let d = max_abs_diff(&all[last * vocab..], &o.logits[last]);
        assert!(d > 1e-2, "{what}: the last position still matches ({d})");
    };
    let mut m = load_hf(&fixture(), None).unwrap();
    m.config.local.window = 1000;
    check(&m, "no window");
    let mut m = load_hf(&fixture(), None).unwrap();
    for t in m.tensors.iter_mut().filter(|t| t.name.ends_with("post_ffw_norm.weight")) {
        t.data.iter_mut().for_each(|w| *w -= 1.0);
    }
    check(&m, "norm weights as stored by HF");
}
