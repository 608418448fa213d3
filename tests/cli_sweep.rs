//! `edge-run eval --sweep`: the degradation curve of SmolLM2 q8 against its f16 pack, on one
//! short window (the numbers are not the point here; the rows, files and their order are).

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;

/// The f16 pack posing as a round-to-nearest baseline: `edge.baseline` says what its weights
/// would take stored at 4 bits.
const BASELINE_BYTES: u64 = 76_000_000;

fn fake_baseline() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let src = smollm_f16();
        packed_once("smollm2-135m-fake-rtn4.edge", |tmp| {
            let meta = format!(r#"{{"method":"rtn","bits":4,"group_size":64,"weight_bytes":{BASELINE_BYTES}}}"#);
            with_metadata(&src, tmp, &[("edge.baseline", &meta)]);
        })
    })
    .clone()
}

fn sweep_args<'a>(model: &'a Path, out: &'a Path, ctx: &'a str) -> Vec<String> {
    [
        "eval",
        "--sweep",
        "-m",
        model.to_str().unwrap(),
        "--kl-base",
        smollm_f16().to_str().unwrap(),
        "--data",
        wiki_test().to_str().unwrap(),
        "--chunks",
        "1",
        "--ctx",
        ctx,
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn sweep_prints_the_table_and_writes_json_and_plot() {
    if !have_models() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep-out");
    let baseline = fake_baseline();
    let mut args = sweep_args(&smollm_q8_profiled(), &out, "128");
    args.extend(["--budgets", "3,4", "--byte-budgets", "80MB", "--baselines"].map(String::from));
    args.push(baseline.to_str().unwrap().to_string());
    let r = run(&args);
    r.ok();

    // The table: header, 11 rows (base, uniform 8/6/5/4/3/2, plans 4 and 3 and 80MB, the
    // baseline), score.
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].starts_with("config") && lines[0].contains("bits/w") && lines[0].contains("top-1"), "{}", r.stdout);
    assert!(lines[1].starts_with("base (f16)"), "{}", r.stdout);
    let uniform: Vec<Vec<&str>> =
        lines.iter().filter(|l| l.starts_with("uniform ")).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(uniform.len(), 6, "{}", r.stdout);
    // Rows by bytes (widest first) and KL growing as bits fall: columns are
    // "uniform", "8-bit", bytes, human (2 words), bits/w, PPL, KL, top-1.
    let bits: Vec<&str> = uniform.iter().map(|c| c[1]).collect();
    assert_eq!(bits, ["8-bit", "6-bit", "5-bit", "4-bit", "3-bit", "2-bit"]);
    let bytes: Vec<u64> = uniform.iter().map(|c| c[2].parse().unwrap()).collect();
    let kl: Vec<f64> = uniform.iter().map(|c| c[7].parse().unwrap()).collect();
    assert!(bytes.windows(2).all(|w| w[0] > w[1]), "{bytes:?}");
    assert!(kl.windows(2).all(|w| w[0] < w[1]), "{kl:?}");
    assert!(lines.iter().any(|l| l.starts_with("plan 4 bits")) && lines.iter().any(|l| l.starts_with("plan 3 bits")));
    assert!(lines.iter().any(|l| l.starts_with("rtn-4 g64")), "{}", r.stdout);
    let score_line = lines.last().unwrap();
    assert!(score_line.starts_with("compressibility score = "), "{score_line}");

    // sweep.json: every row, on the same scored tokens.
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json")).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 11, "{v:#}");
    assert_eq!(v["tokens_scored"], 63);
    assert_eq!(v["profile"], true);
    let kinds: Vec<&str> = rows.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["base", "uniform", "uniform", "uniform", "uniform", "uniform", "uniform", "plan", "plan", "plan", "baseline"]);
    let base = &rows[0];
    assert_eq!(f(&base["mean_kl"]), 0.0);
    assert_eq!(f(&base["top1_agreement_percent"]), 100.0);
    for r in &rows[1..] {
        assert!(f(&r["ppl"]) > 1.0 && f(&r["mean_kl"]) >= 0.0, "{r}");
        assert!(r["weight_bytes"].as_u64().unwrap() > 0);
    }
    for r in rows {
        assert!(f(&r["ece"]) > 0.0 && f(&r["ece"]) < 1.0, "{r}");
    }
    // The 8-bit view is close to the base; the 2-bit view far from it.
    assert!(f(&rows[1]["mean_kl"]) < 0.05 && f(&rows[6]["mean_kl"]) > 1.0, "{v:#}");
    for r in &rows[7..9] {
        assert!(f(&r["bits_per_weight"]) <= f(&r["target_bits"]) + 1e-9, "{r}");
        assert_eq!(r["views"].as_object().unwrap().len(), 31);
        assert!(f(&r["predicted_kl"]) > 0.0);
    }
    assert!(rows[7]["weight_bytes"].as_u64() > rows[8]["weight_bytes"].as_u64());
    // The byte-budget plan fits its budget.
    assert_eq!(rows[9]["byte_budget"].as_u64(), Some(80_000_000));
    assert!(rows[9]["weight_bytes"].as_u64().unwrap() <= 80_000_000, "{}", rows[9]);
    assert_eq!(rows[9]["views"].as_object().unwrap().len(), 31);
    // The baseline is worth the bytes it records, not its f16 size.
    assert_eq!(rows[10]["weight_bytes"].as_u64(), Some(BASELINE_BYTES));
    assert!(rows[10]["decode_bytes"].is_null());
    for r in &rows[..10] {
        // SmolLM2's head is its embedding: a decoded token reads every weight.
        assert_eq!(r["decode_bytes"], r["weight_bytes"], "{r}");
    }
    assert_eq!(rows[10]["config"], "rtn-4 g64");
    let c = &v["compressibility"];
    let score = f(&c["score"]);
    assert!(score > 0.0 && score <= 1.0, "{c}");
    assert!(c["definition"].as_str().unwrap().contains("trapezoid"));
    assert_eq!(c["exp_neg_kl"].as_array().unwrap().len(), 4);
    assert!(score_line.contains(&format!("{score:.4}")), "{score_line} vs {score}");

    // The plot.
    let svg = std::fs::read_to_string(out.join("sweep.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.len() > 5000, "{} bytes", svg.len());
    assert!(svg.contains("Perplexity vs weight bytes") && svg.contains("KL divergence"));
    assert!(svg.contains("rtn-4 g64") && svg.contains("4-bit"));
}

#[test]
fn sweep_without_a_profile_has_no_plans_and_prints_json() {
    if !have_models() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut args = sweep_args(&smollm_q8(), dir.path(), "64");
    args.push("--json".into());
    let r = run(&args);
    let v = r.json();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 7, "{v:#}");
    assert!(rows.iter().all(|r| r["kind"] != "plan"));
    assert_eq!(v["profile"], false);
    assert!(v["notes"][0].as_str().unwrap().contains("no sensitivity profile"), "{v:#}");
    // The file holds the same object.
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("sweep.json")).unwrap()).unwrap();
    assert_eq!(file["rows"], v["rows"]);
    assert!(std::fs::metadata(dir.path().join("sweep.svg")).unwrap().len() > 1000);
}

#[test]
fn compared_checkpoints_are_swept_view_by_view_as_the_model_is() {
    if !have_models() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Other codes than --model's: groups of 32.
    let plain = smollm_q8();
    let other = smollm_q8_min_max("smollm2-135m-q8-g32.edge", 32);
    let mut args = sweep_args(&plain, dir.path(), "64");
    args.extend(["--json".into(), "--compare".into(), other.to_str().unwrap().into()]);
    let v = run(&args).json();
    let rows = v["rows"].as_array().unwrap();
    let compared: Vec<&serde_json::Value> = rows.iter().filter(|r| r["kind"] == "compare").collect();
    let bits: Vec<u64> = compared.iter().map(|r| r["bits"].as_u64().unwrap()).collect();
    assert_eq!(bits, [8, 6, 5, 4, 3, 2], "{v:#}");
    assert!(compared.iter().all(|r| r["checkpoint"] == other.to_str().unwrap()));
    assert!(compared[0]["config"].as_str().unwrap().ends_with(" 8-bit"), "{}", compared[0]);

    // The same checkpoint swept as --model, on the same window, gives the same numbers.
    let own = run(sweep_args(&other, &dir.path().join("own"), "64").into_iter().chain(["--json".into()])).json();
    let own_uniform: Vec<&serde_json::Value> = own["rows"].as_array().unwrap().iter().filter(|r| r["kind"] == "uniform").collect();
    for (c, o) in compared.iter().zip(&own_uniform) {
        assert_eq!(c["bits"], o["bits"]);
        for k in ["mean_kl", "ppl", "ece", "weight_bytes", "top1_agreement_percent"] {
            assert_eq!(c[k], o[k], "{k} of the {}-bit view", c["bits"]);
        }
    }
    assert_eq!(v["compare"][0]["compressibility"]["score"], own["compressibility"]["score"], "{v:#}");
    // The two checkpoints' views are told apart.
    let main_uniform: Vec<&serde_json::Value> = rows.iter().filter(|r| r["kind"] == "uniform").collect();
    assert!(main_uniform.iter().zip(&compared).any(|(m, c)| m["mean_kl"] != c["mean_kl"]));
    let svg = std::fs::read_to_string(dir.path().join("sweep.svg")).unwrap();
    let stem = other.file_stem().unwrap().to_str().unwrap();
    assert!(svg.contains(&format!("{stem}: uniform views")), "no line for the compared checkpoint");
}

#[test]
fn sweep_argument_errors_are_one_line() {
    if !have_models() {
        return;
    }
    let wiki = wiki_test();
    let q8 = smollm_q8();
    let f16 = smollm_f16();
    let (q8, f16, wiki) = (q8.to_str().unwrap(), f16.to_str().unwrap(), wiki.to_str().unwrap());
    let e = run(["eval", "--sweep", "-m", q8, "--data", wiki]).one_line_error();
    assert!(e.contains("--kl-base"), "{e}");
    let e = run(["eval", "--sweep", "-m", q8, "--kl-base", f16, "--data", wiki, "--bits", "4"]).one_line_error();
    assert!(e.contains("cannot be used with"), "{e}");
    let e = run(["eval", "-m", q8, "--data", wiki, "--baselines", f16]).one_line_error();
    assert!(e.contains("--sweep"), "{e}");
    let e = run(["eval", "-m", q8, "--data", wiki, "--compare", q8]).one_line_error();
    assert!(e.contains("--sweep"), "{e}");
    let e = run(["eval", "--sweep", "-m", q8, "--kl-base", f16, "--data", wiki, "--chunks", "1", "--ctx", "16", "--compare", f16])
        .one_line_error();
    assert!(e.contains("no nested-plane tensors") && e.contains("--compare"), "{e}");
    let e = run(["eval", "--sweep", "-m", f16, "--kl-base", f16, "--data", wiki, "--chunks", "1", "--ctx", "16"])
        .one_line_error();
    assert!(e.contains("no nested-plane tensors"), "{e}");
}
