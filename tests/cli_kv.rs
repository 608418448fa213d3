//! The KV cache flags on the real SmolLM2-135M-Instruct: `--kv-bits` (f16, int8, int4, pairs),
//! `--kv-window` / `--kv-sink` (StreamingLLM), the full-cache stop, eval and bench at depth.

mod common;

use common::*;

/// SmolLM2-135M: 30 layers, 3 kv heads of 64 (kv_dim 192).
const LAYERS: u64 = 30;
const KV_DIM: u64 = 192;

/// Bytes of one cache row of `bits` (groups of 32 values: int8 one f16 scale, int4 two f16).
fn row_bytes(bits: u32) -> u64 {
    let groups = KV_DIM / 32;
    match bits {
        32 => 4 * KV_DIM,
        16 => 2 * KV_DIM,
        8 => KV_DIM + 2 * groups,
        4 => KV_DIM / 2 + 4 * groups,
        _ => unreachable!(),
    }
}

/// KV bytes per token over every layer, keys in `k` bits and values in `v`.
fn per_token(k: u32, v: u32) -> u64 {
    LAYERS * (row_bytes(k) + row_bytes(v))
}

#[test]
fn kv_formats_report_their_bytes_per_token() {
    if !have_models() {
        return;
    }
    let m = smollm_f16();
    let f16 = greedy_json(&m, "Once upon a time", 8, &["--ctx", "64"]);
    for (flag, k, v) in [("16", 16, 16), ("8", 8, 8), ("4", 4, 4), ("k8v4", 8, 4), ("32", 32, 32)] {
        let r = greedy_json(&m, "Once upon a time", 8, &["--ctx", "64", "--kv-bits", flag]);
        let kv = &r["kv_cache"];
        assert_eq!(kv["format"], flag, "{r}");
        assert_eq!((kv["keys"].as_u64(), kv["values"].as_u64()), (Some(k as u64), Some(v as u64)));
        assert_eq!(kv["bytes_per_token"], per_token(k, v), "--kv-bits {flag}");
        assert_eq!(kv["bytes"], 64 * per_token(k, v), "--kv-bits {flag}");
        assert_eq!(r["kv_cache_bytes"], kv["bytes"]);
        assert!(kv["window"].is_null());
        assert_eq!(r["n_generated"], 8);
        // int8 keys and values barely move the logits: the first greedy tokens are f16's.
        if k >= 8 && v >= 8 {
            assert_eq!(ids(&r)[..4], ids(&f16)[..4], "--kv-bits {flag}");
        }
    }
    // f16 by default: 2 bytes a value.
    assert_eq!(f16["kv_cache"]["format"], "16");
    assert_eq!(f16["kv_cache"]["bytes_per_token"], LAYERS * 2 * 2 * KV_DIM);

    // The memory lines say it too.
    let r = run(["-m", m.to_str().unwrap(), "-p", "Hi", "-n", "2", "--ctx", "64", "--kv-bits", "8"]);
    r.ok();
    assert!(r.stderr.contains("KV cache int8"), "{}", r.stderr);
    assert!(r.stderr.contains("12.0 KiB per token"), "{}", r.stderr);
}

#[test]
fn a_window_generates_past_the_context_at_constant_memory() {
    if !have_models() {
        return;
    }
    let m = smollm_f16();
    let v = greedy_json(&m, "Once upon a time", 100, &["--ctx", "64", "--kv-window", "32", "--ignore-eos"]);
    assert_eq!(v["n_generated"], 100, "{v}");
    assert_eq!(v["stop_reason"], "length");
    let kv = &v["kv_cache"];
    assert_eq!(kv["window"]["slots"], 32);
    assert_eq!(kv["window"]["sink"], 4);
    // Memory is flat: 32 positions' worth, not --ctx's or the 104 run.
    assert_eq!(kv["bytes"], 32 * per_token(16, 16), "{kv}");
    // Until the window cycles (positions 0..32: the prompt's 4 and 28 generated), every
    // position is computed exactly as without a window.
    let full = greedy_json(&m, "Once upon a time", 40, &["--ctx", "64", "--ignore-eos"]);
    assert_eq!(ids(&v)[..29], ids(&full)[..29]);

    // An int8 window with its own sink, and -n -1: until the end of text. The chat prompt is
    // longer than the window.
    let v = run([
        "-m", m.to_str().unwrap(), "-p", "What is the capital of France?", "-n", "-1", "--temp", "0", "--json", "--chat",
        "--ctx", "64", "--kv-window", "24", "--kv-sink", "2", "--kv-bits", "8",
    ])
    .json();
    assert!(v["n_prompt_tokens"].as_u64().unwrap() > 24, "{v}");
    assert_eq!(v["stop_reason"], "eos", "{v}");
    assert_eq!(v["kv_cache"]["window"]["sink"], 2);
    assert_eq!(v["kv_cache"]["bytes"], 24 * per_token(8, 8));
}

#[test]
fn a_full_cache_stops_generation_with_a_message() {
    if !have_models() {
        return;
    }
    let m = smollm_f16();
    let v = greedy_json(&m, "Once upon a time", 100, &["--ctx", "64", "--ignore-eos"]);
    // 4 prompt positions and 60 generated ones fill 64; the last token is sampled, not fed.
    assert_eq!(v["stop_reason"], "context", "{v}");
    assert_eq!(v["n_generated"], 61);
    let why = v["stop_message"].as_str().expect("stop_message");
    assert!(why.contains("--kv-window") && why.contains("--ctx"), "{why}");

    // Streaming: a clean exit, the message on stderr.
    let r = run(["-m", m.to_str().unwrap(), "-p", "Once upon a time", "-n", "100", "--ctx", "64", "--temp", "0", "--ignore-eos"]);
    r.ok();
    assert!(r.stderr.contains("stop: context"), "{}", r.stderr);
    assert!(r.stderr.lines().any(|l| l.contains("KV cache is full") && l.contains("--kv-window")), "{}", r.stderr);

    // A prompt longer than the context stays an error, and says what would help.
    let long = "word ".repeat(100);
    let e = run(["-m", m.to_str().unwrap(), "-p", &long, "-n", "2", "--ctx", "32"]).one_line_error();
    assert!(e.contains("--ctx") && e.contains("--kv-window"), "{e}");
    // With a window it runs.
    let v = greedy_json(&m, &long, 2, &["--ctx", "32", "--kv-window", "32"]);
    assert_eq!(v["n_generated"], 2);
}

#[test]
fn bad_kv_flags_are_one_line_errors() {
    if !have_models() {
        return;
    }
    let m = smollm_f16();
    let m = m.to_str().unwrap();
    let data = wiki_test();
    let d = data.to_str().unwrap();
    let gen = |extra: &[&'static str]| {
        let mut a = vec!["-m", m, "-p", "Hi", "-n", "2", "--ctx", "64"];
        a.extend_from_slice(extra);
        a
    };
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (gen(&["--kv-bits", "5"]), &["--kv-bits", "'5'", "k8v4"]),
        (gen(&["--kv-bits", "k8v3"]), &["--kv-bits", "k8v3"]),
        (gen(&["--kv-bits", "16,8"]), &["--kv-bits", "bench"]),
        (gen(&["--kv-window", "0"]), &["--kv-window", "'0'"]),
        (gen(&["--kv-window", "8", "--kv-sink", "8"]), &["--kv-sink 8", "--kv-window 8", "smaller"]),
        (gen(&["--kv-window", "4"]), &["--kv-sink 4", "--kv-window 4"]),
        (gen(&["--kv-window", "128"]), &["--kv-window 128", "context of 64", "--ctx"]),
        (gen(&["--kv-sink", "2"]), &["--kv-sink", "needs --kv-window"]),
        (vec!["eval", "-m", m, "--data", d, "--ctx", "64", "--kv-window", "128"], &["--kv-window 128", "--ctx"]),
        (vec!["eval", "-m", m, "--data", d, "--kv-bits", "3"], &["--kv-bits", "'3'"]),
        (vec!["eval", "-m", m, "--data", d, "--kv-sink", "1"], &["needs --kv-window"]),
        (vec!["bench", "-m", m, "--kv-bits", "16,5"], &["--kv-bits", "'5'"]),
        (vec!["bench", "-m", m, "-p", "0", "-n", "8", "--kv-window", "16", "--kv-sink", "20"], &["--kv-sink 20", "--kv-window 16"]),
        (vec!["bench", "-m", m, "-p", "0", "-n", "8", "--n-depth", "8190"], &["--n-gen 8", "--n-depth 8190", "8192"]),
    ];
    for (args, want) in cases {
        let line = run(&args).one_line_error();
        for w in want {
            assert!(line.contains(w), "{args:?}: {line:?} lacks {w:?}");
        }
    }
}

#[test]
fn eval_applies_the_kv_flags_to_the_model_not_the_base() {
    if !have_models() {
        return;
    }
    let m = smollm_f16();
    let m = m.to_str().unwrap();
    let data = wiki_test();
    let eval = |extra: &[&str]| {
        let mut a = vec!["eval", "-m", m, "--data", data.to_str().unwrap(), "--ctx", "64", "--chunks", "2", "--kl-base", m, "--json"];
        a.extend_from_slice(extra);
        run(&a).json()
    };
    // int8 keys and values against the same weights at f16: a small, non-zero KL.
    let v = eval(&["--kv-bits", "8"]);
    let kl = v["kl"]["mean_kl"].as_f64().unwrap();
    assert!(kl.is_finite() && kl > 0.0 && kl < 0.01, "KL {kl}");
    assert!(v["kl"]["top1_agreement_percent"].as_f64().unwrap() > 90.0);
    assert_eq!(v["kv_cache"]["format"], "8");
    assert_eq!(v["kv_cache"]["bytes_per_token"], per_token(8, 8));
    assert_eq!(v["kv_cache"]["bytes"], 64 * per_token(8, 8));

    // A window as long as the eval window never evicts: the base's logits exactly.
    let v = eval(&["--kv-window", "64"]);
    assert_eq!(v["kl"]["mean_kl"].as_f64().unwrap(), 0.0, "{v}");
    // A shorter one cycles within every eval window (run token by token): a finite KL that
    // a window of 24 positions makes visible, and each eval window starts afresh.
    let v = eval(&["--kv-window", "24", "--kv-sink", "4"]);
    let kl = v["kl"]["mean_kl"].as_f64().unwrap();
    assert!(kl.is_finite() && kl > 0.0, "KL {kl}");
    assert_eq!(v["kv_cache"]["window"]["slots"], 24);
    assert_eq!(v["kv_cache"]["bytes"], 24 * per_token(16, 16));
    assert!(v["ppl"].as_f64().unwrap().is_finite());
}

#[test]
fn bench_measures_each_kv_format_at_depth() {
    if !have_models() {
        return;
    }
    let m = smollm_f16();
    let v = run([
        "bench", "-m", m.to_str().unwrap(), "--n-depth", "256", "-n", "8", "-p", "0", "--kv-bits", "16,8", "-r", "1", "-t", "1",
        "--json",
    ])
    .json();
    assert_eq!(v["n_depth"], 256);
    let rows = v["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    for (r, (k, name)) in rows.iter().zip([(16, "16"), (8, "8")]) {
        assert_eq!(r["test"], "tg8@d256");
        assert_eq!(r["n_depth"], 256);
        assert_eq!(r["kv_cache"]["format"], name);
        let bpt = per_token(k, k);
        assert_eq!(r["kv_cache"]["bytes_per_token"], bpt);
        // The context holds the depth and the generated tokens.
        assert_eq!(r["kv_cache"]["bytes"], (256 + 8) * bpt);
        // A decoded token reads the weights and the keys and values of the depth.
        assert_eq!(r["read_bytes_per_token"].as_u64().unwrap(), r["decode_bytes"].as_u64().unwrap() + 256 * bpt);
        assert!(r["tokens_per_second"]["median"].as_f64().unwrap() > 0.0);
    }

    // The table gives the KV format and its bytes per token.
    let r = run(["bench", "-m", m.to_str().unwrap(), "-d", "32", "-n", "4", "-p", "8", "--kv-bits", "k8v4", "-r", "1", "-t", "1"]);
    r.ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", r.stdout);
    assert!(lines[0].contains("| KV ") && lines[0].contains("KV/token"), "{}", lines[0]);
    assert!(lines[2].contains("pp8@d32") && lines[2].contains("k8v4"), "{}", lines[2]);
    assert!(lines[3].contains("tg4@d32"), "{}", lines[3]);
}
