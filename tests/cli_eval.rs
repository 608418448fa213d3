//! `edge-run eval`: llama-perplexity's protocol on wikitext-2 with SmolLM2 (f16), and KL
//! divergence against a base model.

mod common;

use common::*;

/// README: llama.cpp's llama-perplexity, weights dequantized to F16, 4 windows of 512.
const LLAMA_CPP_PPL_4X512: f64 = 22.1095;

#[test]
fn perplexity_of_4_windows_matches_llama_cpp() {
    if !have_models() {
        return;
    }
    let m = smollm_f16();
    let r = run([
        "eval",
        "-m",
        m.to_str().unwrap(),
        "--data",
        wiki_test().to_str().unwrap(),
        "--ctx",
        "512",
        "--chunks",
        "4",
        "--json",
    ]);
    let v = r.json();
    let ppl = v["ppl"].as_f64().unwrap();
    let rel = (ppl - LLAMA_CPP_PPL_4X512).abs() / LLAMA_CPP_PPL_4X512;
    assert!(rel < 0.005, "PPL {ppl} is {:.3}% from llama.cpp's {LLAMA_CPP_PPL_4X512}", rel * 100.0);
    // The file read as is (CRLF kept), no BOS: 304,830 tokens; 4 windows x 255 scored tokens.
    assert_eq!(v["n_tokens"], 304_830);
    assert_eq!(v["add_bos"], false);
    assert_eq!(v["windows"], 4);
    assert_eq!(v["windows_available"], 304_830 / 512);
    assert_eq!(v["tokens_scored"], 4 * 255);
    assert_eq!(v["window_ppl"].as_array().unwrap().len(), 4);
    assert!(v["ppl_stderr"].as_f64().unwrap() > 0.0);
    assert!(v["tokens_per_second"].as_f64().unwrap() > 0.0);
    assert!(v["kl"].is_null());
    eprintln!("PPL 4x512 = {ppl:.4} (llama.cpp {LLAMA_CPP_PPL_4X512}), {:.1} tokens/s", v["tokens_per_second"]);
}

#[test]
fn kl_against_itself_is_zero_with_full_agreement() {
    if !have_models() {
        return;
    }
    let m = smollm_f16();
    let wiki = wiki_test();
    let args = [
        "eval",
        "-m",
        m.to_str().unwrap(),
        "--kl-base",
        m.to_str().unwrap(),
        "--data",
        wiki.to_str().unwrap(),
        "--ctx",
        "128",
        "--chunks",
        "2",
    ];
    let v = run(args.iter().chain(&["--json"])).json();
    let kl = &v["kl"];
    assert!(kl["mean_kl"].as_f64().unwrap().abs() < 1e-9, "{kl}");
    assert!(kl["max_kl"].as_f64().unwrap().abs() < 1e-9, "{kl}");
    assert_eq!(kl["top1_agreement_percent"], 100.0);
    assert_eq!(kl["base_ppl"], v["ppl"]);
    assert_eq!(v["tokens_scored"], 2 * 63);
    assert_eq!(v["decode_bytes"], v["weight_bytes"]); // a tied head: every weight is read

    // Forward passes of 50 tokens (3 per window) score the same as whole windows.
    let b = run(args.iter().chain(&["--json", "--batch-size", "50"])).json();
    let (p1, p2) = (v["ppl"].as_f64().unwrap(), b["ppl"].as_f64().unwrap());
    assert!((p1 - p2).abs() / p1 < 1e-4, "batch 128: {p1}, batch 50: {p2}");
    assert_eq!(b["batch_size"], 50);

    // The text report says the same on stdout.
    let r = run(args);
    r.ok();
    assert!(r.stdout.contains("PPL = "), "{}", r.stdout);
    assert!(r.stdout.contains("Mean KL(base || model) = 0.000000"), "{}", r.stdout);
    assert!(r.stdout.contains("Same top-1 = 100.000"), "{}", r.stdout);
}

#[test]
fn eval_rejects_a_file_shorter_than_one_window() {
    if !have_models() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("short.txt");
    std::fs::write(&data, "Only a few words here.\r\n").unwrap();
    let e = run(["eval", "-m", smollm_f16().to_str().unwrap(), "--data", data.to_str().unwrap()]).one_line_error();
    assert!(e.contains("fewer than one window") && e.contains("--ctx"), "{e}");
    // Missing data file.
    let e = run(["eval", "-m", smollm_f16().to_str().unwrap(), "--data", "/nonexistent/wiki.raw"]).one_line_error();
    assert!(e.contains("/nonexistent/wiki.raw"), "{e}");
}

#[test]
fn token_ids_evaluate_a_model_without_a_tokenizer() {
    let bin = stories_bin();
    if !bin.is_file() {
        assert!(std::env::var_os("EDGE_ALLOW_MISSING_MODELS").is_some(), "{} not found", bin.display());
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let env = [("EDGE_RUN_CACHE", cache.path().as_os_str())];
    // Three sequences of 64 tokens sampled from the model itself (BOS + 63).
    let mut ids: Vec<String> = Vec::new();
    for seed in ["1", "2", "3"] {
        let r = run_env(
            ["-m", bin.to_str().unwrap(), "--prompt-ids", "1", "-n", "63", "--temp", "1", "--seed", seed, "--ignore-eos"],
            &env,
        );
        r.ok();
        ids.push("1".into());
        ids.extend(r.stdout.split_whitespace().map(String::from));
    }
    assert_eq!(ids.len(), 192);
    let data = cache.path().join("sampled.ids");
    std::fs::write(&data, ids.join(" ")).unwrap();
    let (b, d) = (bin.to_str().unwrap(), data.to_str().unwrap());
    let v = run_env(["eval", "-m", b, "--data", d, "--token-ids", "--ctx", "64", "--json", "--kl-base", b], &env).ok().json();
    assert_eq!(v["windows"], 3);
    assert_eq!(v["tokens_scored"], 3 * 31);
    let ppl = v["ppl"].as_f64().unwrap();
    // Text the model sampled itself is far more predictable than uniform over 512 tokens.
    assert!(ppl > 1.0 && ppl < 100.0, "{ppl}");
    assert_eq!(v["kl"]["mean_kl"].as_f64(), Some(0.0), "{v}");
    // A JSON array works too; a 2-bit view of a q8 pack diverges from its 8-bit view.
    std::fs::write(&data, format!("[{}]", ids.join(", "))).unwrap();
    let v2 = run_env(
        ["eval", "-m", b, "--pack-encoding", "q8", "--bits", "2", "--data", d, "--token-ids", "--ctx", "64", "--json", "--kl-base", b],
        &env,
    )
    .ok()
    .json();
    assert!(v2["kl"]["mean_kl"].as_f64().unwrap() > 0.01, "{v2}");
    // Without --token-ids a model without a tokenizer says what to do; bad ids are named.
    let e = run_env(["eval", "-m", b, "--data", d, "--ctx", "64"], &env).one_line_error();
    assert!(e.contains("--token-ids"), "{e}");
    std::fs::write(&data, "1 2 x3").unwrap();
    let e = run_env(["eval", "-m", b, "--data", d, "--token-ids", "--ctx", "4"], &env).one_line_error();
    assert!(e.contains("x3") && e.contains("sampled.ids"), "{e}");
}
