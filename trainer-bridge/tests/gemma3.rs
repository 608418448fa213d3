//! Gemma 3 through the importers against independent implementations: a tiny random
//! `Gemma3ForCausalLM` against transformers' logits (tests/fixtures/hf/tiny-gemma3, made by
//! tests/oracles/make_tiny_hf.py), and Gemma 3 270M's GGUF against llama.cpp's greedy
//! continuations.

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
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hf/tiny-gemma3")
}

struct Oracle {
    tokens: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

fn oracle() -> Oracle {
    let text = std::fs::read_to_string(fixture().join("logits.json")).expect("logits.json");
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

/// Gemma 3 270M's GGUF, fetched (cached) by the shared models' fetch.sh; `None`, said loudly,
/// when it cannot be had here.
fn gemma_270m() -> Option<PathBuf> {
    let script = Path::new("/work/shared/models/fetch.sh");
    let out = std::process::Command::new(script).arg("gemma3-270m").output();
    match out {
        Ok(o) if o.status.success() => {
            let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            if p.is_file() {
                return Some(p);
            }
            eprintln!("!!!!! SKIPPED: fetch.sh gemma3-270m printed no file ({}) !!!!!", p.display());
        }
        Ok(o) => eprintln!("!!!!! SKIPPED: fetch.sh gemma3-270m failed: {} !!!!!", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => eprintln!("!!!!! SKIPPED: cannot run {}: {e} !!!!!", script.display()),
    }
    None
}

/// llama.cpp's greedy continuations (llama-cpp-python 0.3.36's vendored llama.cpp, through
/// tests/oracles/llama_cpp_greedy.py) on the F16 GGUF of the same weights
/// (`llama-quantize --allow-requantize gemma-3-270m-q4_k_m.gguf F16`): prompt ids (llama.cpp's
/// tokenization, BOS first) and 32 greedy ids each.
const GREEDY: &[(&str, &[u32], &[u32])] = &[
    (
        "The capital of France is",
        &[2, 818, 5279, 529, 7001, 563],
        &[506, 5279, 529, 506, 2891, 529, 7001, 236761, 1030, 563, 506, 7488, 3207, 528, 7001, 532, 506, 1855, 7488, 3207, 528, 3879, 236761, 1030, 563, 5628, 528, 506, 6029, 529, 506, 2891],
    ),
    (
        "Once upon a time, in a small village,",
        &[2, 14946, 3324, 496, 990, 236764, 528, 496, 1944, 9744, 236764],
        &[993, 11742, 496, 880, 7489, 3415, 236761, 1293, 691, 496, 2651, 236772, 25421, 236764, 11481, 236764, 532, 2712, 880, 236761, 1293, 9312, 914, 2523, 532, 4690, 1401, 1623, 236761, 3656, 1719, 236764],
    ),
    (
        "def fibonacci(n):\n",
        &[2, 2063, 10779, 78113, 236769, 236749, 1473, 107],
        &[140, 584, 538, 1251, 236743, 236771, 236787, 107, 144, 2060, 236743, 236771, 107, 140, 36208, 538, 1251, 236743, 236770, 236787, 107, 144, 2060, 236743, 236770, 107, 140, 36208, 538, 1251, 236743, 236778],
    ),
    (
        "The three primary colors are",
        &[2, 818, 1806, 5905, 7913, 659],
        &[2604, 236764, 3730, 236764, 532, 7070, 236761, 108, 818, 5905, 7913, 659, 2604, 236764, 3730, 236764, 532, 7070, 236761, 108, 818, 5905, 7913, 659, 2604, 236764, 3730, 236764, 532, 7070, 236761, 108],
    ),
];

/// Greedy ids after `prompt` (prefilled in one batch), one token a call.
fn greedy_after(model: &mut Model<'_>, prompt: &[u32], steps: usize) -> Vec<u32> {
    model.reset_kv();
    let mut logits = model.forward_batch(prompt, 0, Logits::Last).unwrap().to_vec();
    let mut out = Vec::new();
    for _ in 0..steps {
        let t = argmax(&logits);
        out.push(t);
        let pos = model.kv_end();
        logits = model.forward(t, pos).unwrap().to_vec();
    }
    out
}

/// Gemma 3 270M from its GGUF, its weights dequantized and stored as f16: greedy continuations
/// identical to llama.cpp's on the F16 GGUF of the same weights, for 32 tokens on four prompts
/// and after a 700-token prompt (past the 512-position sliding window of the local layers).
#[test]
fn gemma3_270m_greedy_matches_llama_cpp() {
    let Some(path) = gemma_270m() else { return };
    let m = edge_pack::gguf::load_gguf(&path, None).unwrap();
    let c = m.config;
    assert_eq!((c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim), (640, 2048, 18, 4, 1, 256));
    assert_eq!((c.local.window, c.local.period, c.local.rope_theta, c.rope_theta), (512, 6, 10_000.0, 1_000_000.0));
    let bytes = full_precision_in_memory(&m).unwrap();
    drop(m);
    let ck = Checkpoint::parse(bytes.as_bytes()).unwrap();
    let opts = ModelOptions { max_seq_len: 1024, max_batch: 512, ..ModelOptions::default() };
    let mut model = Model::new(&ck, opts).unwrap();
    for (text, prompt, want) in GREEDY {
        let got = greedy_after(&mut model, prompt, want.len());
        assert_eq!(&got, want, "greedy continuation of {text:?}");
    }
    let long: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("../../gemma3-270m-long-greedy.json")).unwrap()).unwrap();
    let ids = |k: &str| long[k].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect::<Vec<u32>>();
    let (prompt, want) = (ids("prompt_ids"), ids("greedy"));
    assert!(prompt.len() > 512 + 100);
    // Prefill in blocks of at most 512 (max_batch), then decode.
    model.reset_kv();
    let mut pos = 0;
    let mut logits = Vec::new();
    for chunk in prompt.chunks(512) {
        logits = model.forward_batch(chunk, pos, Logits::Last).unwrap().to_vec();
        pos += chunk.len();
    }
    let mut got = Vec::new();
    for _ in 0..want.len() {
        let t = argmax(&logits);
        got.push(t);
        logits = model.forward(t, pos).unwrap().to_vec();
        pos += 1;
    }
    assert_eq!(got, want, "greedy continuation of the first 700 tokens of wiki.test.raw");
}

/// What edge-run does not implement is refused in one line naming it.
#[test]
fn tiny_hf_gemma3_unsupported_options_are_named() {
    let dir = std::env::temp_dir().join(format!("edge-gemma3-opts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture().join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let base: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap()).unwrap();
    let cases: &[(&str, serde_json::Value, &str)] = &[
        ("final_logit_softcapping", serde_json::json!(30.0), "final_logit_softcapping"),
        ("attn_logit_softcapping", serde_json::json!(50.0), "attn_logit_softcapping"),
        ("hidden_activation", serde_json::json!("relu"), "relu"),
        (
            "layer_types",
            serde_json::json!(["full_attention", "sliding_attention", "sliding_attention", "full_attention"]),
            "layer_types",
        ),
        (
            "rope_parameters",
            serde_json::json!({"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}, "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
            "linear",
        ),
    ];
    for (key, value, named) in cases {
        let mut cfg = base.clone();
        cfg[*key] = value.clone();
        std::fs::write(dir.join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
        let e = match load_hf(&dir, None) {
            Ok(_) => panic!("{key} = {value} was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains(named) && !e.contains('\n'), "{key}: {e}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
