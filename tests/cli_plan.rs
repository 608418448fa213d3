//! View plans on the device: `--bits`, `--plan FILE`, and plans chosen from a sensitivity
//! profile for `--target-bits` / `--weight-budget`, on SmolLM2 packed as q8 (a synthetic profile
//! stands in for `edge-pack --calibrate`'s).

mod common;

use std::path::Path;

use common::*;

/// Greedy generation of 2 tokens with extra flags, as JSON.
fn gen(model: &Path, extra: &[&str]) -> serde_json::Value {
    greedy_json(model, "Once upon a time", 2, extra)
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

#[test]
fn profile_plans_respect_the_budget_and_are_reported() {
    if !have_models() {
        return;
    }
    let m = smollm_q8_profiled();
    let v35 = gen(&m, &["--target-bits", "3.5"]);
    let p = &v35["plan"];
    assert_eq!(p["source"], "target-bits");
    assert_eq!(p["target_bits"], 3.5);
    let bpw = p["bits_per_weight"].as_f64().unwrap();
    assert!(bpw <= 3.5 + 1e-9 && bpw > 3.3, "{p}");
    assert_eq!(p["weight_bytes"], v35["weight_bytes"]);
    // SmolLM2's head is its embedding: a decoded token reads every weight.
    assert_eq!(p["decode_bytes"], v35["weight_bytes"]);
    assert_eq!(v35["decode_bytes"], v35["weight_bytes"]);
    let views = p["views"].as_object().unwrap();
    assert_eq!(views.len(), 31, "{p}");
    assert!(views.values().all(|b| [2, 3, 4, 5, 6, 8].contains(&u(b))), "{p}");
    // The sensitive units get more bits than the least sensitive ones.
    assert!(u(&views["token_embd"]) >= u(&views["blk.1"]), "{p}");
    assert!(u(&views["blk.0"]) >= u(&views["blk.5"]), "{p}");
    assert!(p["predicted_kl"].as_f64().unwrap() > 0.0);

    // A lower budget takes fewer bytes; a higher one more.
    let v3 = gen(&m, &["--target-bits", "3"]);
    let v5 = gen(&m, &["--target-bits", "5"]);
    let (b3, b35, b5) = (u(&v3["weight_bytes"]), u(&v35["weight_bytes"]), u(&v5["weight_bytes"]));
    assert!(b3 < b35 && b35 < b5, "{b3} {b35} {b5}");
    assert!(v3["plan"]["predicted_kl"].as_f64() > v5["plan"]["predicted_kl"].as_f64());

    // A byte budget: the weights (norms included) fit it.
    let budget = (b35 + b5) / 2;
    let vb = gen(&m, &["--weight-budget", &format!("{budget}B")]);
    assert_eq!(vb["plan"]["source"], "weight-budget");
    assert_eq!(u(&vb["plan"]["weight_budget"]), budget);
    let wb = u(&vb["weight_bytes"]);
    assert!(wb <= budget && wb >= b35, "{wb} vs budget {budget}");
    let vm = gen(&m, &["--weight-budget", "60MB"]);
    assert!(u(&vm["weight_bytes"]) <= 60_000_000);

    // The plan is printed on stderr in text mode.
    let r = run([
        "-m",
        m.to_str().unwrap(),
        "-p",
        "Once upon a time",
        "-n",
        "1",
        "--temp",
        "0",
        "--target-bits",
        "3.5",
    ]);
    r.ok();
    let line = r.stderr.lines().find(|l| l.starts_with("edge-run: plan (--target-bits 3.5")).unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(line.contains("bits/weight") && line.contains("predicted KL") && line.contains("blk."), "{line}");
    assert!(line.contains(" MiB per token"), "{line}");
}

#[test]
fn plan_file_is_applied() {
    if !have_models() {
        return;
    }
    let m = smollm_q8();
    let bytes = |bits: &str| u(&gen(&m, &["--bits", bits])["weight_bytes"]);
    let (b3, b4, b8) = (bytes("3"), bytes("4"), bytes("8"));
    assert!(b3 < b4 && b4 < b8);

    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, "# a per-layer plan\ndefault = 4\n\n[views]\n\"blk.0\" = 8\n\"ffn_down\" = 3\n\"token_embd\" = 8\n")
        .unwrap();
    let v = gen(&m, &["--plan", plan.to_str().unwrap()]);
    let wb = u(&v["weight_bytes"]);
    assert!(b4 < wb && wb < b8, "{b4} < {wb} < {b8}");
    let p = &v["plan"];
    assert_eq!(p["source"], "file");
    assert_eq!(p["default_bits"], 4);
    assert_eq!(p["views"]["blk.0"], 8);
    assert_eq!(p["views"]["ffn_down"], 3);
    assert_eq!(p["weight_bytes"], v["weight_bytes"]);

    // The same plan with every key at 4 is exactly the uniform 4-bit view; all at 3 the 3-bit one.
    std::fs::write(&plan, "default = 3\n").unwrap();
    assert_eq!(u(&gen(&m, &["--plan", plan.to_str().unwrap()])["weight_bytes"]), b3);
    std::fs::write(&plan, "[views]\n\"blk.0.ffn_up.weight\" = 2\n").unwrap();
    let one = u(&gen(&m, &["--plan", plan.to_str().unwrap()])["weight_bytes"]);
    assert!(one < b8 && one > b4, "{one}");
}

#[test]
fn bits_4_changes_the_logits_of_a_q8_checkpoint() {
    if !have_models() {
        return;
    }
    let m = smollm_q8();
    let eval = |bits: &str| {
        run([
            "eval",
            "-m",
            m.to_str().unwrap(),
            "--bits",
            bits,
            "--kl-base",
            m.to_str().unwrap(),
            "--data",
            wiki_test().to_str().unwrap(),
            "--ctx",
            "64",
            "--chunks",
            "1",
            "--json",
        ])
        .json()
    };
    let v8 = eval("8");
    let v4 = eval("4");
    assert_eq!(v8["kl"]["mean_kl"], 0.0, "{v8}");
    let kl4 = v4["kl"]["mean_kl"].as_f64().unwrap();
    assert!(kl4 > 1e-4, "the 4-bit view's logits equal the 8-bit view's: KL {kl4}");
    assert_ne!(v4["ppl"], v8["ppl"]);
    assert!(u(&v4["weight_bytes"]) < u(&v8["weight_bytes"]));
    assert_eq!(v4["plan"]["source"], "bits");
    assert_eq!(v4["plan"]["default_bits"], 4);
}

#[test]
fn plan_errors_are_one_line() {
    if !have_models() {
        return;
    }
    let q8 = smollm_q8();
    let prof = smollm_q8_profiled();
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    let err = |m: &Path, extra: &[&str]| {
        let mut a = vec!["-m", m.to_str().unwrap(), "-p", "Hi", "-n", "1", "--temp", "0"];
        a.extend_from_slice(extra);
        run(a).one_line_error()
    };
    let p = plan.to_str().unwrap();

    // Not TOML / not a plan.
    std::fs::write(&plan, "default = [4\n").unwrap();
    let e = err(&q8, &["--plan", p]);
    assert!(e.contains("plan file") && e.contains("not a valid plan"), "{e}");
    std::fs::write(&plan, "defaults = 4\n").unwrap();
    let e = err(&q8, &["--plan", p]);
    assert!(e.contains("not a valid plan") && e.contains("defaults"), "{e}");
    // A width that is not a view.
    std::fs::write(&plan, "default = 7\n").unwrap();
    let e = err(&q8, &["--plan", p]);
    assert!(e.contains("default = 7") && e.contains("2, 3, 4, 5, 6 or 8"), "{e}");
    std::fs::write(&plan, "[views]\n\"blk.1\" = \"four\"\n").unwrap();
    assert!(err(&q8, &["--plan", p]).contains("\"blk.1\" = \"four\""));
    // Units the model does not have are named.
    std::fs::write(&plan, "[views]\n\"blk.99\" = 4\n\"ffn_upp\" = 3\n\"blk.2\" = 3\n\"output\" = 8\n").unwrap();
    let e = err(&q8, &["--plan", p]);
    assert!(e.contains("'blk.99'") && e.contains("'ffn_upp'") && e.contains("'output'"), "{e}");
    assert!(!e.contains("'blk.2'"), "{e}");
    // A missing plan file.
    let e = err(&q8, &["--plan", "/nonexistent/plan.toml"]);
    assert!(e.contains("/nonexistent/plan.toml"), "{e}");

    // No profile.
    let e = err(&q8, &["--target-bits", "3.5"]);
    assert!(e.contains("has no sensitivity profile: re-pack with `edge-pack --calibrate`"), "{e}");
    let e = err(&q8, &["--weight-budget", "90MB"]);
    assert!(e.contains("has no sensitivity profile"), "{e}");
    // Impossible budgets.
    let e = err(&prof, &["--target-bits", "2.2"]);
    assert!(e.contains("below the smallest plan") && e.contains("2.50"), "{e}");
    let e = err(&prof, &["--target-bits", "9"]);
    assert!(e.contains("above the largest plan"), "{e}");
    let e = err(&prof, &["--weight-budget", "20MB"]);
    assert!(e.contains("below the smallest plan"), "{e}");
    let e = err(&prof, &["--weight-budget", "20XB"]);
    assert!(e.contains("unknown unit 'XB'"), "{e}");
    // Conflicting flags.
    let e = err(&prof, &["--bits", "4", "--target-bits", "3.5"]);
    assert!(e.contains("cannot be used with"), "{e}");
    let e = err(&prof, &["--plan", p, "--weight-budget", "90MB"]);
    assert!(e.contains("cannot be used with"), "{e}");
}

#[test]
fn views_on_a_checkpoint_without_nested_tensors_are_an_error_in_every_command() {
    if !have_models() {
        return;
    }
    let f16 = smollm_f16();
    let f16 = f16.to_str().unwrap();
    let q8 = smollm_q8();
    let q8 = q8.to_str().unwrap();
    let data = wiki_test();
    let data = data.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, "default = 4\n").unwrap();
    let plan = plan.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["-m", f16, "-p", "Hi", "-n", "1", "--bits", "4"], "--bits 4"),
        (&["-m", f16, "-p", "Hi", "-n", "1", "--plan", plan], "--plan"),
        (&["-m", f16, "-p", "Hi", "-n", "1", "--target-bits", "3.5"], "--target-bits 3.5"),
        (&["-m", f16, "-p", "Hi", "-n", "1", "--weight-budget", "90MB"], "--weight-budget"),
        (&["eval", "-m", f16, "--data", data, "--bits", "4"], "--bits 4"),
        (&["eval", "-m", q8, "--data", data, "--kl-base", f16, "--kl-base-bits", "4"], "--kl-base-bits 4"),
        (&["bench", "-m", f16, "--bits", "4"], "--bits 4"),
        (&["bench", "-m", f16, "--plan", plan], "--plan"),
    ];
    for (args, flag) in cases {
        let e = run(*args).one_line_error();
        assert!(e.contains(&format!("{flag} needs a checkpoint with nested-plane tensors")), "{args:?}: {e}");
        assert!(e.contains("has no nested-plane tensors (its matrices are f16)") && e.contains("--encoding q8"), "{e}");
    }
}

#[test]
fn bench_measures_profile_and_file_plans() {
    if !have_models() {
        return;
    }
    let m = smollm_q8_profiled();
    let m = m.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, "default = 4\n[views]\n\"blk.0\" = 8\n").unwrap();
    let bench = |extra: &[&str]| {
        let mut a = vec!["bench", "-m", m, "-t", "1", "-p", "8", "-n", "2", "-r", "1", "--json"];
        a.extend_from_slice(extra);
        run(a).json()
    };
    let budget = 80_000_000u64;
    let cases: [(&[&str], &str, &str); 3] = [
        (&["--weight-budget", "80MB"], "weight-budget", "budget 76.3 MiB"),
        (&["--target-bits", "4.5"], "target-bits", "target 4.5"),
        (&["--plan", plan.to_str().unwrap()], "file", "plan.toml"),
    ];
    for (flags, source, label) in cases {
        let v = bench(flags);
        let rows = v["results"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "pp and tg: {v}");
        for r in rows {
            assert_eq!(r["view"], label, "{r}");
            let p = &r["plan"];
            assert_eq!(p["source"], source, "{r}");
            assert_eq!(p["weight_bytes"], r["weight_bytes"]);
            assert_eq!(r["decode_bytes"], r["weight_bytes"], "a tied head reads every weight");
            assert!(r["tokens_per_second"]["median"].as_f64().unwrap() > 0.0);
        }
        // The same plan generate would run.
        let g = gen(Path::new(m), flags);
        assert_eq!(g["weight_bytes"], rows[0]["weight_bytes"], "{flags:?}");
        assert_eq!(g["plan"]["views"], rows[0]["plan"]["views"], "{flags:?}");
        match source {
            "weight-budget" => assert!(u(&rows[0]["weight_bytes"]) <= budget),
            "target-bits" => assert!(rows[0]["bits_per_weight"].as_f64().unwrap() <= 4.5 + 1e-9),
            _ => assert_eq!(rows[0]["plan"]["views"]["blk.0"], 8),
        }
        assert!(rows[1]["read_gb_per_s"].as_f64().unwrap() > 0.0);
    }
    // In text mode the chosen plan is described on stderr, as generate and eval do.
    let r = run(["bench", "-m", m, "-t", "1", "-p", "8", "-n", "0", "-r", "1", "--weight-budget", "80MB"]);
    r.ok();
    let line = r.stderr.lines().find(|l| l.starts_with("edge-run: plan (--weight-budget")).unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(line.contains("per token") && line.contains("predicted KL"), "{line}");
    assert!(r.stdout.contains("budget 76.3 MiB"), "{}", r.stdout);
    // Without a profile there is no plan to measure.
    let q8 = smollm_q8();
    let e = run(["bench", "-m", q8.to_str().unwrap(), "--weight-budget", "80MB"]).one_line_error();
    assert!(e.contains("has no sensitivity profile"), "{e}");
}
