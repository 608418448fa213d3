//! Qwen2.5-Coder-0.5B-Instruct (`qwen2`: q/k/v biases, rotate-half RoPE rows in the GGUF, an
//! untied head) against llama.cpp on the same weights: greedy continuations and perplexity.
//!
//! The references come from llama.cpp (vendored in llama-cpp-python 0.3.36), run on the F16 GGUF
//! `llama-quantize --allow-requantize qwen2.5-coder-0.5b-instruct-q4_k_m.gguf F16` makes (the
//! weights our f16 pack holds): greedy ids by `tests/oracles/llama_cpp_greedy.py`, perplexity by
//! `llama-perplexity -c 512 --chunks 20`, the text's ids by `llama-tokenize --ids --no-bos`
//! (the fixture `tests/fixtures/qwen2.5-coder-0.5b-wiki-test-ids-20x512.json`: the first 20
//! windows of wiki.test.raw tokenized whole). Prompts go in as text (the tokenizer rebuilt from
//! the GGUF must give llama.cpp's ids) and as ids; perplexity reads the text file itself.

mod common;

use common::*;

struct Reference {
    prompt: &'static str,
    prompt_ids: &'static [u32],
    greedy: &'static [u64],
}

/// llama.cpp's greedy 32 tokens after each prompt (its own tokenization of the prompt).
const GREEDY: &[Reference] = &[
    Reference {
        prompt: "def fibonacci(n):",
        prompt_ids: &[750, 75698, 1445, 1648],
        greedy: &[198, 262, 421, 308, 2651, 220, 15, 510, 286, 470, 330, 7928, 1946, 698, 262, 4409, 308, 621, 220, 16, 510, 286, 470, 220, 15, 198, 262, 4409, 308, 621, 220, 17],
    },
    Reference {
        prompt: "The capital of France is",
        prompt_ids: &[785, 6722, 315, 9625, 374],
        greedy: &[12095, 13, 12095, 374, 7407, 304, 279, 10200, 30282, 949, 315, 9625, 13, 576, 6722, 315, 9625, 374, 7407, 304, 279, 10200, 30282, 949, 315, 9625, 13, 12095, 374, 7407, 304, 279],
    },
    Reference {
        prompt: "Once upon a time",
        prompt_ids: &[12522, 5193, 264, 882],
        greedy: &[11, 304, 264, 2613, 14126, 11, 1052, 12163, 264, 3908, 3743, 6941, 47290, 13, 47290, 572, 1602, 22208, 911, 279, 1879, 2163, 1059, 323, 4829, 311, 3960, 803, 911, 432, 13, 2932],
    },
    Reference {
        prompt: "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWrite a Python function that reverses a string.<|im_end|>\n<|im_start|>assistant\n",
        prompt_ids: &[151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 7985, 264, 13027, 729, 429, 17431, 288, 264, 914, 13, 151645, 198, 151644, 77091, 198],
        greedy: &[8420, 594, 264, 4285, 13027, 729, 311, 9931, 264, 914, 1447, 73594, 12669, 198, 750, 9931, 3904, 1141, 982, 262, 671, 9008, 458, 4287, 914, 311, 3553, 279, 27437, 914, 198, 262],
    },
    Reference {
        prompt: "// Quick sort in C\n#include <stdio.h>\n",
        prompt_ids: &[322, 17251, 3378, 304, 356, 198, 1067, 366, 10345, 860, 397],
        greedy: &[1067, 366, 13149, 860, 1339, 322, 5712, 311, 16658, 279, 1334, 198, 396, 16658, 1548, 2890, 12995, 526, 3347, 11, 526, 1550, 8, 341, 262, 526, 26045, 284, 2890, 58, 11892, 935],
    },
];

/// llama-perplexity on the F16 GGUF: the running estimate after 4 windows of 512 (its final
/// estimate after 20 is 38.0573, docs/RESULTS.md).
const LLAMA_CPP_PPL_4X512: f64 = 31.5044;

fn wiki_ids() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2.5-coder-0.5b-wiki-test-ids-20x512.json")
}

#[test]
fn greedy_continuations_equal_llama_cpp() {
    let Some(m) = qwen05_f16() else { return };
    for r in GREEDY {
        let prompt: Vec<String> = r.prompt_ids.iter().map(u32::to_string).collect();
        let v = run(["-m", m.to_str().unwrap(), "--prompt-ids", &prompt.join(","), "-n", "32", "--temp", "0", "--json"]).json();
        assert_eq!(v["config"]["tied_embeddings"], false, "Qwen2.5-Coder-0.5B's GGUF has its own output head");
        assert_eq!(ids(&v), r.greedy, "greedy continuation of {:?}", r.prompt);
        // The same from the text: the GGUF's tokenizer gives llama.cpp's ids.
        let t = run(["-m", m.to_str().unwrap(), "-p", r.prompt, "-n", "32", "--temp", "0", "--json"]).json();
        let prompt_ids: Vec<u64> = t["prompt_tokens"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
        let want: Vec<u64> = r.prompt_ids.iter().map(|&x| x as u64).collect();
        assert_eq!(prompt_ids, want, "tokens of {:?}", r.prompt);
        assert_eq!(ids(&t), r.greedy, "greedy continuation of {:?} given as text", r.prompt);
    }
}

#[test]
fn perplexity_of_4_windows_matches_llama_cpp() {
    let Some(m) = qwen05_f16() else { return };
    let v = run(["eval", "-m", m.to_str().unwrap(), "--data", wiki_ids().to_str().unwrap(), "--token-ids", "--ctx", "512", "--chunks", "4", "--json"]).json();
    let ppl = v["ppl"].as_f64().unwrap();
    let rel = (ppl - LLAMA_CPP_PPL_4X512).abs() / LLAMA_CPP_PPL_4X512;
    assert!(rel < 0.005, "PPL {ppl} is {:.3}% from llama.cpp's {LLAMA_CPP_PPL_4X512}", rel * 100.0);
    assert_eq!(v["windows"], 4);
    assert_eq!(v["tokens_scored"], 4 * 255);
    eprintln!("Qwen2.5-Coder-0.5B PPL 4x512 = {ppl:.4} (llama.cpp {LLAMA_CPP_PPL_4X512})");
    // From the text file itself, tokenized whole by the GGUF's tokenizer: it must make the same
    // 298,938 tokens llama-perplexity makes, and the same first window as llama.cpp's ids, to
    // the last bit (one window: the others would only repeat the forward pass above).
    let t = run(["eval", "-m", m.to_str().unwrap(), "--data", wiki_test().to_str().unwrap(), "--ctx", "512", "--chunks", "1", "--json"]).json();
    assert_eq!(t["n_tokens"], 298_938, "wiki.test.raw tokenized whole, as llama-perplexity does");
    assert_eq!(t["window_ppl"][0], v["window_ppl"][0], "the text's first window against llama.cpp's ids");
}

/// Qwen2.5-Coder-0.5B as nested 8-bit planes (min-max objective: seconds per tensor, not the
/// all-views search), once per test binary build.
fn qwen05_q8() -> Option<std::path::PathBuf> {
    let gguf = qwen05_gguf()?;
    Some(packed_once("qwen2.5-coder-0.5b-q8-minmax.edge", |tmp| {
        let opts = edge_pack::PackOptions {
            encoding: edge_pack::WeightEncoding::Nested8,
            group_size: 64,
            objective: edge_pack::quant::NestedObjective::MinMax,
            allow_no_tokenizer: true,
            force: true,
            ..Default::default()
        };
        edge_pack::pack_file(&gguf, tmp, &opts).expect("packing Qwen2.5-Coder-0.5B as q8");
    }))
}

#[test]
fn nested_views_track_the_f16_model() {
    let (Some(f16), Some(q8)) = (qwen05_f16(), qwen05_q8()) else { return };
    let kl = |bits: &str| {
        let v = run([
            "eval",
            "-m",
            q8.to_str().unwrap(),
            "--kl-base",
            f16.to_str().unwrap(),
            "--bits",
            bits,
            "--token-ids",
            "--data",
            wiki_ids().to_str().unwrap(),
            "--ctx",
            "128",
            "--chunks",
            "2",
            "--json",
        ])
        .json();
        (v["kl"]["mean_kl"].as_f64().unwrap(), v["kl"]["top1_agreement_percent"].as_f64().unwrap())
    };
    let (kl8, agree8) = kl("8");
    let (kl4, agree4) = kl("4");
    eprintln!("Qwen2.5-Coder-0.5B vs f16: 8-bit view KL {kl8:.5} (top-1 {agree8:.1}%), 4-bit KL {kl4:.4} (top-1 {agree4:.1}%)");
    assert!(kl8 < 0.01 && agree8 > 90.0, "8-bit view: KL {kl8}, top-1 agreement {agree8}%");
    assert!(kl4 > kl8 && kl4 < 0.5, "4-bit view: KL {kl4} (8-bit {kl8})");
    // Every view runs the qwen2 forward pass (biases included) to a full continuation.
    let prompt: Vec<String> = GREEDY[0].prompt_ids.iter().map(u32::to_string).collect();
    for bits in ["6", "3"] {
        let v = run(["-m", q8.to_str().unwrap(), "--prompt-ids", &prompt.join(","), "-n", "8", "--temp", "0", "--bits", bits, "--json"]).json();
        assert_eq!(ids(&v).len(), 8, "{bits}-bit view");
    }
}
