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
    // Calibration of the top-1 next-token probability: a real model is neither perfect nor
    // useless, and ECE is at least the overall gap |mean confidence - accuracy| (bins only
    // split that gap's terms, whose absolute values can only add up to more).
    let ece = v["ece"].as_f64().unwrap();
    let (conf, acc) = (v["mean_top1_probability"].as_f64().unwrap(), v["top1_accuracy"].as_f64().unwrap());
    assert!(ece > 0.0 && ece < 0.5, "ECE {ece}");
    assert!(conf > 0.05 && conf < 0.95 && acc > 0.05 && acc < 0.95, "confidence {conf}, accuracy {acc}");
    assert!(ece >= (conf - acc).abs() - 1e-12, "ECE {ece} < |{conf} - {acc}|");
    assert_eq!(v["ece_bins"], 15);

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
    assert!(r.stdout.contains(&format!("ECE = {ece:.4}")), "{}", r.stdout);
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

    // --logits-out: every position of the ids, as .npy [n, vocab]; at the 8-bit view its
    // NLL over a window's scored half is the window's perplexity as eval scores it.
    let first64 = cache.path().join("first64.ids");
    std::fs::write(&first64, ids[..64].join(" ")).unwrap();
    let f64s = first64.to_str().unwrap();
    let npy = |bits: &str| -> (Vec<Vec<f32>>, serde_json::Value) {
        let out = cache.path().join(format!("logits{bits}.npy"));
        let v = run_env(
            ["eval", "-m", b, "--pack-encoding", "q8", "--bits", bits, "--data", f64s, "--token-ids", "--json", "--logits-out", out.to_str().unwrap()],
            &env,
        )
        .ok()
        .json();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let hl = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        let header = std::str::from_utf8(&bytes[10..10 + hl]).unwrap();
        assert!(header.contains("'descr': '<f4'") && header.contains("'shape': (64, 512)"), "{header}");
        let data: Vec<f32> = bytes[10 + hl..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(data.len(), 64 * 512);
        (data.chunks(512).map(<[f32]>::to_vec).collect(), v)
    };
    let (l8, j8) = npy("8");
    let (l2, _) = npy("2");
    assert_eq!(j8["tokens"], 64);
    let argmax = |r: &[f32]| r.iter().enumerate().fold(0, |b, (i, x)| if *x > r[b] { i } else { b });
    let greedy: Vec<usize> = j8["greedy"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    assert_eq!(greedy, l8.iter().map(|r| argmax(r)).collect::<Vec<_>>());
    assert!(l8 != l2, "the 2-bit view's logits equal the 8-bit view's");
    let nll = |r: &[f32], t: usize| {
        let m = r.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x)) as f64;
        m + r.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() - r[t] as f64
    };
    let tok: Vec<usize> = ids[..64].iter().map(|s| s.parse().unwrap()).collect();
    let mean: f64 = (32..63).map(|j| nll(&l8[j], tok[j + 1])).sum::<f64>() / 31.0;
    let w = run_env(
        ["eval", "-m", b, "--pack-encoding", "q8", "--bits", "8", "--data", d, "--token-ids", "--ctx", "64", "--chunks", "1", "--json"],
        &env,
    )
    .ok()
    .json();
    let ppl_w = w["ppl"].as_f64().unwrap();
    assert!((mean.exp() - ppl_w).abs() / ppl_w < 1e-4, "logits-out NLL gives PPL {}, eval {ppl_w}", mean.exp());
    // Without --token-ids a model without a tokenizer says what to do; bad ids are named.
    let e = run_env(["eval", "-m", b, "--data", d, "--ctx", "64"], &env).one_line_error();
    assert!(e.contains("--token-ids"), "{e}");
    std::fs::write(&data, "1 2 x3").unwrap();
    let e = run_env(["eval", "-m", b, "--data", d, "--token-ids", "--ctx", "4"], &env).one_line_error();
    assert!(e.contains("x3") && e.contains("sampled.ids"), "{e}");
}
