//! Hugging Face import against transformers itself: tiny random-weight models made by
//! `tests/oracles/make_tiny_hf.py` (a Qwen2 with q/k/v biases and an untied head; a Qwen3 with
//! q/k head norms and a head size of its own; a Llama with Llama 3 RoPE scaling), packed as f32,
//! must give the logits transformers computed for them.

#[path = "common/pack_util.rs"]
mod pack_util;

use std::path::{Path, PathBuf};

use edge_pack::hf::load_hf;
use edge_pack::{pack_model, PackOptions, SourceModel, WeightEncoding};
use edge_runtime::kv::{KvBits, KvFormat};
use edge_runtime::model::{Logits, Model, ModelOptions};
use edge_runtime::Checkpoint;
use pack_util::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hf").join(name)
}

/// The fixture's tokens and transformers' logits (one row per token).
fn oracle(name: &str) -> (Vec<u32>, Vec<Vec<f32>>) {
    read_logits(&fixture(name).join("logits.json"))
}

/// Tokens and logits (one row per token) of a `{"tokens": [..], "logits": [[..], ..]}` file.
fn read_logits(path: &Path) -> (Vec<u32>, Vec<Vec<f32>>) {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tokens = v["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
    let logits = v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect();
    (tokens, logits)
}

/// `model` packed as f32: its logits for `tokens`, token by token (decode) and as one batch
/// (prefill), which must agree.
fn our_logits(model: &SourceModel, tokens: &[u32]) -> Vec<Vec<f32>> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.edge");
    let opts = PackOptions { encoding: WeightEncoding::F32, allow_no_tokenizer: true, ..Default::default() };
    pack_model(model, &out, &opts).unwrap();
    let bytes = read_bytes(&out);
    let one_by_one = logits_for(bytes.as_bytes(), tokens, None);
    let ck = Checkpoint::parse(bytes.as_bytes()).unwrap();
    let opts = ModelOptions { kv: KvFormat::uniform(KvBits::F32), ..Default::default() };
    let mut m = Model::new(&ck, opts).unwrap();
    let batch = m.forward_batch(tokens, 0, Logits::All).unwrap().to_vec();
    for (pos, (row, b)) in one_by_one.iter().zip(batch.chunks_exact(row_len(&one_by_one))).enumerate() {
        let d = max_abs_diff(row, b);
        assert!(d < 1e-4, "position {pos}: batched and token-by-token logits differ by {d}");
    }
    one_by_one
}

/// `m` with `edit` applied to the values of every tensor whose name `matches`.
fn edited(m: &SourceModel, matches: impl Fn(&str) -> bool, edit: impl Fn(&mut [f32])) -> SourceModel {
    let mut m = m.clone();
    m.tensors.iter_mut().filter(|t| matches(&t.name)).for_each(|t| edit(&mut t.data));
    m
}

/// Swap the values of each adjacent pair: a rotate-half vector left in interleaved order.
fn swap_pairs(d: &mut [f32]) {
    d.chunks_exact_mut(2).for_each(|p| p.swap(0, 1));
}

fn row_len(rows: &[Vec<f32>]) -> usize {
    rows[0].len()
}

/// Largest |ours - theirs| over every logit, relative to the largest |theirs|.
fn rel_diff(ours: &[Vec<f32>], theirs: &[Vec<f32>]) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    let scale = theirs.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    ours.iter().zip(theirs).map(|(a, b)| max_abs_diff(a, b)).fold(0f32, f32::max) / scale
}

#[test]
fn qwen2_matches_transformers() {
    let m = load_hf(&fixture("tiny-qwen2"), None).unwrap();
    assert_eq!(m.arch.name, "qwen2");
    assert!(!m.config.tied_embeddings);
    for b in ["blk.0.attn_q.bias", "blk.1.attn_k.bias", "blk.1.attn_v.bias"] {
        assert!(m.tensors.iter().any(|t| t.name == b), "{b} imported");
    }
    let (tokens, theirs) = oracle("tiny-qwen2");
    let ours = our_logits(&m, &tokens);
    let d = rel_diff(&ours, &theirs);
    assert!(d < 1e-4, "logits differ from transformers' by {d} (relative)");
    eprintln!("{}: max |logit difference| / max |logit| = {d:.2e}", m.name);

    // Not vacuous: the biases matter, and so does their permutation with the q/k rows.
    let no_bias = edited(&m, |n| n.ends_with(".bias"), |d| d.fill(0.0));
    assert!(rel_diff(&our_logits(&no_bias, &tokens), &theirs) > 1e-2);
    let unpermuted = edited(&m, |n| n == "blk.0.attn_q.bias", swap_pairs);
    assert!(rel_diff(&our_logits(&unpermuted, &tokens), &theirs) > 1e-3);
}

#[test]
fn qwen3_matches_transformers() {
    let m = load_hf(&fixture("tiny-qwen3"), None).unwrap();
    assert_eq!(m.arch.name, "qwen3");
    assert!(m.config.tied_embeddings);
    assert_eq!((m.config.head_dim, m.config.q_dim(), m.config.dim), (32, 128, 64));
    assert!(!m.tensors.iter().any(|t| t.name.ends_with(".bias")));
    let (tokens, theirs) = oracle("tiny-qwen3");
    let ours = our_logits(&m, &tokens);
    let d = rel_diff(&ours, &theirs);
    assert!(d < 1e-4, "logits differ from transformers' by {d} (relative)");
    eprintln!("{}: max |logit difference| / max |logit| = {d:.2e}", m.name);

    // Not vacuous: the head norms matter, and so does their permutation with the q/k rows.
    for kind in ["attn_q_norm", "attn_k_norm"] {
        let plain = edited(&m, |n| n.contains(kind), |d| d.fill(1.0));
        assert!(rel_diff(&our_logits(&plain, &tokens), &theirs) > 1e-2, "{kind}");
    }
    let unpermuted = edited(&m, |n| n == "blk.0.attn_k_norm.weight", swap_pairs);
    assert!(rel_diff(&our_logits(&unpermuted, &tokens), &theirs) > 1e-3);
}

/// Qwen3 has no real checkpoint here: llama.cpp's own converter made a GGUF of the tiny model
/// (`tests/oracles/llama_cpp_tiny_gguf.py`), and llama.cpp's logits on it are the oracle.
#[test]
fn qwen3_gguf_from_llama_cpp_matches_llama_cpp_and_transformers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf/tiny-qwen3");
    let g = edge_pack::gguf::load_gguf(&dir.join("model.gguf"), None).unwrap();
    let hf = load_hf(&fixture("tiny-qwen3"), None).unwrap();
    assert_eq!((g.arch.name, g.config), (hf.arch.name, hf.config));
    for (a, b) in g.tensors.iter().zip(&hf.tensors) {
        assert_eq!((&a.name, &a.data), (&b.name, &b.data), "the GGUF's tensors are the folder's");
    }
    let (tokens, theirs) = oracle("tiny-qwen3");
    let ours = our_logits(&g, &tokens);
    let d = rel_diff(&ours, &theirs);
    assert!(d < 1e-4, "logits differ from transformers' by {d} (relative)");
    let (lc_tokens, lc) = read_logits(&dir.join("llama_cpp_logits.json"));
    assert_eq!(lc_tokens, tokens);
    let argmax = |r: &[f32]| r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    for (pos, (a, b)) in ours.iter().zip(&lc).enumerate() {
        assert_eq!(argmax(a), argmax(b), "position {pos}: greedy token differs from llama.cpp's");
    }
    // llama.cpp multiplies its f16 weights with f16-rounded activations (about 1e-3 off).
    let d = rel_diff(&ours, &lc);
    assert!(d < 5e-3, "logits differ from llama.cpp's by {d} (relative)");
    eprintln!("tiny-qwen3 GGUF: max |logit difference| / max |logit| against llama.cpp = {d:.2e}");
}

#[test]
fn llama3_rope_scaling_matches_transformers() {
    let m = load_hf(&fixture("tiny-llama3"), None).unwrap();
    assert_eq!(m.arch.name, "llama");
    assert!(m.config.rope_freq_factors);
    let f = &m.tensors.iter().find(|t| t.name == "rope_freqs.weight").expect("rope_freqs.weight").data;
    assert_eq!(f.len(), m.config.head_dim / 2);
    assert_eq!((f[0], f[f.len() - 1]), (1.0, 8.0), "{f:?}");
    let (tokens, theirs) = oracle("tiny-llama3");
    let ours = our_logits(&m, &tokens);
    let d = rel_diff(&ours, &theirs);
    assert!(d < 1e-4, "logits differ from transformers' by {d} (relative)");
    eprintln!("{}: max |logit difference| / max |logit| = {d:.2e}", m.name);

    // Without the factors the model runs with other positions: the fixture tests the scaling.
    let mut plain = m.clone();
    plain.tensors.retain(|t| t.name != "rope_freqs.weight");
    plain.config.rope_freq_factors = false;
    assert!(rel_diff(&our_logits(&plain, &tokens), &theirs) > 1e-2);
}

#[test]
fn unsupported_rope_scaling_and_architectures_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("tiny-llama3");
    std::fs::copy(src.join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut c = config.clone();
        edit(&mut c);
        std::fs::write(dir.path().join("config.json"), c.to_string()).unwrap();
        format!("{:#}", load_hf(dir.path(), None).unwrap_err())
    };
    for kind in ["yarn", "linear", "dynamic"] {
        let e = with(&|c| c["rope_scaling"] = serde_json::json!({"rope_type": kind, "factor": 4.0}));
        assert!(e.contains(&format!("'{kind}'")) && !e.contains('\n'), "{e}");
    }
    let e = with(&|c| c["architectures"] = serde_json::json!(["MambaForCausalLM"]));
    assert!(e.contains("MambaForCausalLM") && e.contains("Qwen2ForCausalLM") && !e.contains('\n'), "{e}");
    // A qwen2 model cannot take Llama 3 scaling (its forward pass has no factors).
    let e = with(&|c| {
        c["architectures"] = serde_json::json!(["Qwen2ForCausalLM"]);
        c["model_type"] = serde_json::json!("qwen2");
    });
    assert!(e.contains("llama3") && e.contains("qwen2"), "{e}");
}
