//! `edge-run` generation on the real SmolLM2-135M-Instruct (packed f16) and stories260K.

mod common;

use common::*;

/// README reference: greedy continuation of "Once upon a time" (independent fp32 forward pass).
const ONCE_UPON_A_TIME: &str = ", the city of Nova Haven was a thriving metropolis, with towering skyscrapers and bustling streets. But as the years went by, the city began to lose";

#[test]
fn greedy_once_upon_a_time_matches_the_reference() {
    if !have_models() {
        return;
    }
    let m = smollm_f16();
    let v = greedy_json(&m, "Once upon a time", 32, &[]);
    // The prompt tokenizes as the README says, with no BOS.
    let prompt: Vec<u64> = v["prompt_tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
    assert_eq!(prompt, [6403, 1980, 253, 655]);
    let text = v["text"].as_str().unwrap();
    assert!(
        text.starts_with(ONCE_UPON_A_TIME),
        "greedy continuation differs from the reference:\n got: {text:?}\nwant: {ONCE_UPON_A_TIME:?}"
    );
    // The reference covers well over 20 tokens.
    assert_eq!(v["n_generated"], 32);
    assert_eq!(v["stop_reason"], "length");

    // Streaming output (plain mode) prints exactly the same text, then a newline.
    let r = run(["-m", m.to_str().unwrap(), "-p", "Once upon a time", "-n", "32", "--temp", "0"]);
    r.ok();
    assert_eq!(r.stdout, format!("{text}\n"));
    // Timings and memory go to stderr.
    for want in ["prefill", "decode", "tokens/s", "peak RSS", "weights", "KV cache"] {
        assert!(r.stderr.contains(want), "stderr lacks {want:?}:\n{}", r.stderr);
    }
}

#[test]
fn chat_answers_paris_and_stops_at_im_end() {
    if !have_models() {
        return;
    }
    let v = greedy_json(&smollm_f16(), "What is the capital of France?", 64, &["--chat"]);
    assert_eq!(v["text"], "The capital of France is Paris.");
    assert_eq!(v["stop_reason"], "eos");
    let toks = ids(&v);
    assert_eq!(*toks.last().unwrap(), 2, "last token must be <|im_end|> (2): {toks:?}");
    // The prompt is the ChatML rendering: <|im_start|>system ... <|im_start|>assistant\n.
    let prompt = v["prompt_tokens"].as_array().unwrap();
    assert_eq!(prompt[0], 1);
    assert_eq!(prompt[prompt.len() - 4], 1);

    // --special shows the end-of-turn token; --ignore-eos generates past it.
    let v = greedy_json(&smollm_f16(), "What is the capital of France?", 12, &["--chat", "--ignore-eos", "--special"]);
    assert_eq!(v["n_generated"], 12);
    assert!(v["text"].as_str().unwrap().starts_with("The capital of France is Paris.<|im_end|>"), "{}", v["text"]);
}

#[test]
fn json_has_the_fields_and_n_is_respected() {
    if !have_models() {
        return;
    }
    let v = greedy_json(&smollm_f16(), "The capital of France is", 5, &["--ignore-eos"]);
    assert_eq!(v["n_generated"], 5);
    assert_eq!(ids(&v).len(), 5);
    assert_eq!(v["n_prompt_tokens"], 5);
    assert_eq!(v["prompt"], "The capital of France is");
    // README: top-1 next token is ' Paris'.
    assert!(v["text"].as_str().unwrap().starts_with(" Paris"), "{}", v["text"]);
    for key in [
        "text",
        "tokens",
        "prompt_tokens",
        "stop_reason",
        "peak_rss_bytes",
        "weight_bytes",
        "kv_cache_bytes",
        "config",
        "sampler",
        "ctx",
    ] {
        assert!(!v[key].is_null(), "missing {key}: {v}");
    }
    assert!(v["prefill"]["tokens_per_second"].as_f64().unwrap() > 0.0);
    assert!(v["decode"]["tokens_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(v["decode"]["tokens"], 4);
    assert!(v["peak_rss_bytes"].as_u64().unwrap() > 1 << 20);
    assert_eq!(v["weight_bytes"], 269_100_288u64); // 134,515,008 params: f16 matrices + f32 norms
    assert_eq!(v["decode_bytes"], 269_100_288u64); // the head is the embedding: every weight is read
    assert_eq!(v["config"]["n_layers"], 30);
    assert_eq!(v["config"]["vocab_size"], 49152);
    assert_eq!(v["config"]["norm_eps"], 1e-5);
    assert_eq!(v["ctx"], 2048);
    // KV cache, f16 by default: 2 (k, v) * 30 layers * 2048 positions * 192 (3 kv heads * 64) * 2 bytes.
    assert_eq!(v["kv_cache_bytes"], 2 * 30 * 2048 * 192 * 2);
    assert_eq!(v["kv_cache"]["bytes_per_token"], 2 * 30 * 192 * 2);

    // -n 1: one token, no decode step.
    let v = greedy_json(&smollm_f16(), "The capital of France is", 1, &[]);
    assert_eq!(ids(&v).len(), 1);
    assert_eq!(v["decode"]["tokens"], 0);
}

#[test]
fn seeded_sampling_is_reproducible() {
    if !have_models() {
        return;
    }
    let m = smollm_f16();
    let sample = |seed: &str| {
        let r = run([
            "-m",
            m.to_str().unwrap(),
            "-p",
            "Once upon a time",
            "-n",
            "24",
            "--temp",
            "1.0",
            "--seed",
            seed,
            "--ignore-eos",
            "--json",
        ]);
        let v = r.json();
        assert_eq!(v["sampler"]["seed"], seed.parse::<u64>().unwrap());
        ids(&v)
    };
    let a = sample("42");
    assert_eq!(a.len(), 24);
    assert_eq!(a, sample("42"), "same seed, different tokens");
    assert_ne!(a, sample("43"), "different seeds gave the same 24 tokens");
}

#[test]
fn mmap_and_no_mmap_agree_and_prompt_ids_match_text() {
    if !have_models() {
        return;
    }
    let m = smollm_f16();
    let a = greedy_json(&m, "Once upon a time", 16, &[]);
    let b = greedy_json(&m, "Once upon a time", 16, &["--no-mmap"]);
    assert_eq!(a["mmap"], true);
    assert_eq!(b["mmap"], false);
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(a["text"], b["text"]);

    // The same prompt as ids gives the same tokens; prefill batch size does not matter.
    let r = run([
        "-m",
        m.to_str().unwrap(),
        "--prompt-ids",
        "6403 1980 253 655",
        "-n",
        "16",
        "--temp",
        "0",
        "--json",
        "--batch-size",
        "1",
    ]);
    assert_eq!(ids(&r.json()), ids(&a));
}

#[test]
fn long_prompt_prefills_in_batches() {
    if !have_models() {
        return;
    }
    // ~150 prompt tokens: 3 prefill batches of 64; the result must not depend on the batch size.
    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(15);
    let m = smollm_f16();
    let a = greedy_json(&m, &prompt, 6, &[]);
    let b = greedy_json(&m, &prompt, 6, &["--batch-size", "150"]);
    assert!(a["n_prompt_tokens"].as_u64().unwrap() > 128);
    assert_eq!(ids(&a), ids(&b));
}

#[test]
fn n_minus_one_generates_until_the_end_of_text_or_a_full_context() {
    let bin = stories_bin();
    if !bin.is_file() {
        assert!(std::env::var_os("EDGE_ALLOW_MISSING_MODELS").is_some(), "{} not found", bin.display());
        return;
    }
    let b = bin.to_str().unwrap();
    // stories260K does not end its text within 24 positions: the context ends generation, after
    // the prompt's 1 token and 24 generated (the last one sampled, not fed back).
    for n in ["-1", "--n-predict=-1"] {
        let args = ["-m", b, "--prompt-ids", "1", "--temp", "0", "--ctx", "24", "--ignore-eos", "--json"];
        let mut args = args.to_vec();
        if n == "-1" {
            args.extend(["-n", "-1"]);
        } else {
            args.push(n);
        }
        let v = run(&args).json();
        assert_eq!(v["stop_reason"], "context", "{args:?}: {v}");
        assert_eq!(v["n_generated"], 24, "{args:?}");
    }
    // Without --ignore-eos, generation ends at EOS or the full context, whichever comes first.
    let v = run(["-m", b, "--prompt-ids", "1", "-n", "-1", "--temp", "0", "--ctx", "64", "--json"]).json();
    assert!(v["stop_reason"] == "eos" || v["stop_reason"] == "context", "{v}");
    // Other negative counts are refused, saying what -1 means.
    let e = run(["-m", b, "--prompt-ids", "1", "-n", "-2"]).one_line_error();
    assert!(e.contains("'-2'") && e.contains("-1 to generate until the end of text"), "{e}");
    let r = run(["--help"]);
    assert!(r.stdout.contains("-1: until the end of text"), "{}", r.stdout);
}

#[test]
fn llama2c_without_tokenizer_runs_on_ids_and_matches_run_c() {
    let bin = stories_bin();
    if !bin.is_file() {
        assert!(std::env::var_os("EDGE_ALLOW_MISSING_MODELS").is_some(), "{} not found", bin.display());
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let env = [("EDGE_RUN_CACHE", cache.path().as_os_str())];
    // README oracle: llama2.c run.c, greedy from BOS (f16 weights: 8-bit planes change the first token).
    let r = run_env(["-m", bin.to_str().unwrap(), "--pack-encoding", "f16", "--prompt-ids", "1", "-n", "30", "--temp", "0"], &env);
    r.ok();
    assert_eq!(
        r.stdout.trim(),
        "461 461 401 401 401 461 378 455 473 456 435 299 362 409 283 264 283 452 288 13 431 431 431 431 431 431 431 431 431 431"
    );
    // The Hugging Face conversion of the same model (a folder) packs and runs the same.
    let hf = models_dir().join("stories260K-hf");
    let r2 = run_env(["-m", hf.to_str().unwrap(), "--pack-encoding", "f16", "--prompt-ids", "1", "-n", "30", "--temp", "0"], &env);
    r2.ok();
    assert_eq!(r2.stdout, r.stdout);
    // A text prompt needs a tokenizer: a clear error.
    let e = run_env(["-m", bin.to_str().unwrap(), "--pack-encoding", "f16", "-p", "hello"], &env).one_line_error();
    assert!(e.contains("no tokenizer") && e.contains("--prompt-ids"), "{e}");
}
