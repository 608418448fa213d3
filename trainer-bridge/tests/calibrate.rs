//! Calibration (`--calibrate FILE`, `--calibrate-self`): the sensitivity profile, GPTQ, and the
//! round-to-nearest baseline (`--rtn-baseline`), on stories260K (trained in fp32) and small
//! synthetic models, through the library and the CLI.

#[path = "common/pack_util.rs"]
mod pack_util;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use edge_pack::calibrate::{sample_self, CalibrationOptions, CalibrationSet, CalibrationSource, GptqTarget, DEFAULT_GPTQ};
use edge_pack::llama2c::load_llama2c;
use edge_pack::pack::{full_precision_in_memory, rtn_weight_bytes};
use edge_pack::sensitivity::{mean_kl, model_for, reference_of};
use edge_pack::{pack_file, pack_model, PackOptions, SourceModel, WeightEncoding};
use edge_runtime::format::Encoding;
use edge_runtime::plan::ViewPlan;
use edge_runtime::Checkpoint;
use pack_util::*;
use serde_json::Value;

fn stories() -> &'static SourceModel {
    static M: OnceLock<SourceModel> = OnceLock::new();
    M.get_or_init(|| load_llama2c(&stories_bin(), None).expect("stories260K loads"))
}

/// Token sequences sampled from the f32 model with `seed` (fresh tokens for measuring).
fn sampled(model: &SourceModel, seqs: usize, len: usize, seed: u64) -> CalibrationSet {
    let fp = full_precision_in_memory(model).unwrap();
    let ck = Checkpoint::parse(fp.as_bytes()).unwrap();
    let mut o = CalibrationOptions::new(CalibrationSource::SelfSampled);
    o.tokens = seqs * len;
    o.seq_len = len;
    o.seed = seed;
    sample_self(&ck, model.bos_token_id, &o, |_| {}).unwrap()
}

/// Fresh tokens (seed 4242, never a calibration seed here) and the f32 model's distributions.
struct Fresh {
    windows: Vec<Vec<u32>>,
    reference: edge_pack::sensitivity::Reference,
}

fn fresh() -> &'static Fresh {
    static F: OnceLock<Fresh> = OnceLock::new();
    F.get_or_init(|| {
        let windows = sampled(stories(), 4, 256, 4242).sequences;
        let fp = full_precision_in_memory(stories()).unwrap();
        let ck = Checkpoint::parse(fp.as_bytes()).unwrap();
        let mut m = model_for(&ck, &windows, &ViewPlan::default()).unwrap();
        let reference = reference_of(&mut m, &windows).unwrap();
        Fresh { windows, reference }
    })
}

/// Mean KL per token vs the f32 model on the fresh tokens, at `plan`.
fn kl_vs_f32(bytes: &[u8], plan: &ViewPlan) -> f64 {
    let f = fresh();
    let ck = Checkpoint::parse(bytes).unwrap();
    let mut m = model_for(&ck, &f.windows, plan).unwrap();
    mean_kl(&mut m, &f.reference, &f.windows).unwrap()
}

fn calibrated(gptq: GptqTarget, tokens: usize, profile_tokens: Option<usize>) -> PackOptions {
    let mut c = CalibrationOptions::new(CalibrationSource::SelfSampled);
    c.tokens = tokens;
    c.gptq = gptq;
    c.profile_tokens = profile_tokens;
    PackOptions { encoding: WeightEncoding::Nested8, allow_no_tokenizer: true, calibration: Some(c), ..Default::default() }
}

fn profile_of(ck: &Checkpoint<'_>) -> Value {
    serde_json::from_str(ck.get_str("edge.sensitivity").expect("a sensitivity profile")).expect("profile JSON")
}

fn kl_at(unit: &Value, bits: &str) -> f64 {
    unit["kl"][bits].as_f64().unwrap_or_else(|| panic!("unit {unit} lacks a KL at {bits} bits"))
}

/// A stories260K pack with `--calibrate-self` defaults (but 512 calibration tokens), shared by
/// the tests that read its profile.
fn self_calibrated() -> &'static (tempfile::TempDir, std::path::PathBuf) {
    static P: OnceLock<(tempfile::TempDir, std::path::PathBuf)> = OnceLock::new();
    P.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("cal.edge");
        let report = pack_model(stories(), &out, &calibrated(DEFAULT_GPTQ, 512, None)).unwrap();
        let c = report.calibration.expect("a calibration report");
        assert_eq!((c.tokens, c.profile_tokens, c.units), (512, 512, 6));
        assert_eq!(c.gptq_matrices, 35, "every layer matrix of the 5 layers (the tied embedding is not GPTQ'd)");
        (dir, out)
    })
}

#[test]
fn self_calibrated_profile_is_present_and_well_formed() {
    if !have_models() {
        return;
    }
    let (_, out) = self_calibrated();
    let bytes = read_bytes(out);
    let ck = Checkpoint::parse(bytes.as_bytes()).unwrap();
    ck.verify().unwrap();
    for t in &ck.tensors {
        let want = if t.shape.len() == 2 { Encoding::Nested8 } else { Encoding::F32 };
        assert_eq!(t.encoding, want, "{}", t.name);
    }
    let p = profile_of(&ck);
    assert_eq!(p["version"], 1);
    assert_eq!(p["metric"], "kl");
    assert_eq!(p["reference"], "8-bit view");
    let desc = p["calibration"].as_str().unwrap();
    assert!(desc.contains("sampled") && desc.contains("seed 0") && desc.contains("2 sequences x 256"), "{desc}");
    assert_eq!(p["tokens"], 512);
    let units = p["units"].as_array().unwrap();
    let names: Vec<&str> = units.iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["blk.0", "blk.1", "blk.2", "blk.3", "blk.4", "token_embd"]);
    let mut monotone = 0;
    for u in units {
        assert_eq!(u["kl"].as_object().unwrap().len(), 5, "{u}");
        let (k2, k3, k4, k5, k6) = (kl_at(u, "2"), kl_at(u, "3"), kl_at(u, "4"), kl_at(u, "5"), kl_at(u, "6"));
        for k in [k2, k3, k4, k5, k6] {
            assert!(k.is_finite() && k >= 0.0, "{u}");
        }
        monotone += (k2 >= k4 && k4 >= k6) as usize;
        eprintln!("{}: 2-bit {k2:.4}  3-bit {k3:.4}  4-bit {k4:.4}  5-bit {k5:.5}  6-bit {k6:.5}", u["name"]);
    }
    assert!(monotone >= units.len() - 1, "KL(2) >= KL(4) >= KL(6) for only {monotone} of {} units", units.len());
    // Lowering one unit to 4 bits costs something but much less than lowering it to 2.
    assert!(units.iter().all(|u| kl_at(u, "4") > 0.0));
}

#[test]
fn profile_predicts_the_harm_of_lowering_a_unit() {
    if !have_models() {
        return;
    }
    let (_, out) = self_calibrated();
    let bytes = read_bytes(out);
    let ck = Checkpoint::parse(bytes.as_bytes()).unwrap();
    let p = profile_of(&ck);
    let units = p["units"].as_array().unwrap();
    let by_kl2 = |u: &&Value| kl_at(u, "2");
    let most = units.iter().max_by(|a, b| by_kl2(a).total_cmp(&by_kl2(b))).unwrap();
    let least = units.iter().min_by(|a, b| by_kl2(a).total_cmp(&by_kl2(b))).unwrap();
    // Measured on fresh tokens against the 8-bit model, as the profile defines it.
    let f = fresh();
    let mut m = model_for(&ck, &f.windows, &ViewPlan::uniform(8)).unwrap();
    let eight = reference_of(&mut m, &f.windows).unwrap();
    let mut harm = |unit: &Value| {
        let plan = ViewPlan { default_bits: Some(8), overrides: vec![(unit["name"].as_str().unwrap().into(), 2)] };
        m.set_views(&ck, &plan).unwrap();
        mean_kl(&mut m, &eight, &f.windows).unwrap()
    };
    let (h_most, h_least) = (harm(most), harm(least));
    eprintln!(
        "most sensitive {} (profile {:.4}, fresh {h_most:.4}); least {} (profile {:.4}, fresh {h_least:.4})",
        most["name"],
        by_kl2(&most),
        least["name"],
        by_kl2(&least)
    );
    assert!(h_most > 1.5 * h_least, "{h_most} vs {h_least}");
}

#[test]
fn gptq_lowers_kl_on_fresh_tokens() {
    if !have_models() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.edge");
    let gptq = dir.path().join("gptq.edge");
    let o = PackOptions { encoding: WeightEncoding::Nested8, allow_no_tokenizer: true, ..Default::default() };
    pack_model(stories(), &plain, &o).unwrap();
    pack_model(stories(), &gptq, &calibrated(DEFAULT_GPTQ, 1024, Some(16))).unwrap();
    let (plain, gptq) = (read_bytes(&plain), read_bytes(&gptq));
    let mut better = 0;
    for bits in [8u8, 4, 3, 2] {
        let a = kl_vs_f32(plain.as_bytes(), &ViewPlan::uniform(bits));
        let b = kl_vs_f32(gptq.as_bytes(), &ViewPlan::uniform(bits));
        eprintln!("{bits}-bit view: KL vs f32 {a:.5} without GPTQ, {b:.5} with");
        better += (b < a) as usize;
        if bits == 4 {
            assert!(b < 0.97 * a, "GPTQ should lower the 4-bit view's KL: {b} vs {a}");
        }
        // No view may get much worse.
        assert!(b < 1.05 * a, "{bits}-bit view: {b} vs {a}");
    }
    assert!(better >= 3, "GPTQ lowered the KL of only {better} of 4 views");
}

#[test]
fn rtn_baseline_metadata_and_weights() {
    if !have_models() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (bits, group) in [(4u8, 64u32), (2, 32)] {
        let out = dir.path().join(format!("rtn{bits}.edge"));
        let o = PackOptions { rtn_baseline: Some(bits), group_size: group, allow_no_tokenizer: true, ..Default::default() };
        let report = pack_file(&stories_bin(), &out, &o).unwrap();
        let bytes = read_bytes(&out);
        let ck = Checkpoint::parse(bytes.as_bytes()).unwrap();
        ck.verify().unwrap();
        let b: Value = serde_json::from_str(ck.get_str("edge.baseline").expect("edge.baseline")).unwrap();
        assert_eq!(b["method"], "rtn");
        assert_eq!(b["bits"], bits);
        assert_eq!(b["group_size"], group);
        // Every matrix at `bits` per weight plus 4 bytes per group (rows padded to whole
        // groups: 172 = 64 + 64 + 44), norms as f32.
        let c = stories().config;
        let (d, h, v) = (c.dim as u64, c.hidden_dim as u64, c.vocab_size as u64);
        let g = group as u64;
        let mat = |rows: u64, cols: u64| (rows * cols * bits as u64).div_ceil(8) + 4 * rows * cols.div_ceil(g);
        let per_layer = mat(c.q_dim() as u64, d)
            + 2 * mat(c.kv_dim() as u64, d)
            + mat(d, c.q_dim() as u64)
            + 2 * mat(h, d)
            + mat(d, h)
            + 2 * 4 * d;
        let expected = mat(v, d) + c.n_layers as u64 * per_layer + 4 * d;
        assert_eq!(b["weight_bytes"], expected);
        assert_eq!(rtn_weight_bytes(stories(), bits, group as usize), expected);
        assert_eq!(report.baseline.as_deref(), ck.get_str("edge.baseline"));

        let mut levels_seen = 0;
        for src in &stories().tensors {
            let t = ck.tensor(&src.name).unwrap();
            let m = edge_runtime::backend::cpu::matrix(t, None).unwrap();
            let mut row = vec![0f32; m.cols];
            if src.shape.len() == 1 {
                assert_eq!(t.encoding, Encoding::F32);
                m.dequant_row(0, &mut row);
                assert_eq!(row, src.data, "norm {}", src.name);
                continue;
            }
            assert_eq!(t.encoding, Encoding::F16, "{}", src.name);
            let mut want = vec![0f32; m.cols];
            for r in 0..m.rows {
                let w = &src.data[r * m.cols..(r + 1) * m.cols];
                edge_pack::quant::rtn_fake_quant(w, bits, group as usize, &mut want);
                m.dequant_row(r, &mut row);
                for (c, (&got, &x)) in row.iter().zip(&want).enumerate() {
                    assert_eq!(got, half::f16::from_f32(x).to_f32(), "{} [{r}, {c}]", src.name);
                }
                // Each group holds at most 2^bits distinct values.
                for gv in row.chunks(group as usize) {
                    let mut u: Vec<u32> = gv.iter().map(|x| x.to_bits()).collect();
                    u.sort_unstable();
                    u.dedup();
                    assert!(u.len() <= 1 << bits, "{}: {} levels", src.name, u.len());
                    levels_seen = levels_seen.max(u.len());
                }
            }
        }
        assert_eq!(levels_seen, 1 << bits, "some group uses every level");
    }
}

#[test]
fn calibrate_refuses_missing_files_and_the_evaluation_text() {
    let dir = tempfile::tempdir().unwrap();
    let model = synthetic_model(3, true);
    let tok = dir.path().join("tokenizer.json");
    std::fs::write(&tok, TINY_TOKENIZER).unwrap();
    let out = dir.path().join("x.edge");
    let with = |p: &Path| {
        let mut o = calibrated(GptqTarget::Off, 64, None);
        o.calibration.as_mut().unwrap().source = CalibrationSource::File(p.to_path_buf());
        o.tokenizer = Some(tok.clone());
        o
    };
    let e = pack_model(&model, &out, &with(&dir.path().join("missing.txt"))).unwrap_err().to_string();
    assert!(e.contains("does not exist") && e.contains("missing.txt"), "{e}");
    // The evaluation text is refused by name, wherever it is and whether or not it exists.
    let shared = models_dir().join("../data/wikitext-2-raw/wiki.test.raw");
    let copy = dir.path().join("wiki.test.raw");
    std::fs::write(&copy, "once upon once upon\n").unwrap();
    for p in [shared.as_path(), copy.as_path(), Path::new("wiki.test.raw")] {
        let e = pack_model(&model, &out, &with(p)).unwrap_err().to_string();
        assert!(e.contains("refusing to calibrate") && e.contains("evaluation text"), "{e}");
        let e = pack_file(&stories_bin(), &out, &with(p)).unwrap_err().to_string();
        assert!(e.contains("evaluation text"), "{e}");
    }
    assert!(!out.exists());
    assert!(temp_files(dir.path()).is_empty());
}

#[test]
fn calibrate_on_a_text_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = synthetic_model(5, false);
    let tok = dir.path().join("tokenizer.json");
    std::fs::write(&tok, TINY_TOKENIZER).unwrap();
    let text = dir.path().join("calib.txt");
    std::fs::write(&text, "once upon ".repeat(400)).unwrap();
    let out = dir.path().join("x.edge");
    let mut o = calibrated(DEFAULT_GPTQ, 128, None);
    o.calibration.as_mut().unwrap().source = CalibrationSource::File(text.clone());
    o.calibration.as_mut().unwrap().seq_len = 32;
    o.tokenizer = Some(tok);
    let report = pack_model(&model, &out, &o).unwrap();
    let c = report.calibration.unwrap();
    assert_eq!(c.tokens, 128);
    assert_eq!(c.gptq_matrices, 2 * 7 + 1, "untied: the output head is GPTQ'd too");
    let bytes = read_bytes(&out);
    let ck = Checkpoint::parse(bytes.as_bytes()).unwrap();
    let p = profile_of(&ck);
    assert!(p["calibration"].as_str().unwrap().contains("calib.txt"), "{}", p["calibration"]);
    let names: Vec<&str> = p["units"].as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["blk.0", "blk.1", "token_embd", "output"]);

    // A model without a tokenizer cannot tokenize text.
    let o2 = PackOptions { tokenizer: None, ..o.clone() };
    let e = pack_file(&stories_bin(), &dir.path().join("y.edge"), &o2).unwrap_err().to_string();
    assert!(e.contains("needs a tokenizer") && e.contains("--calibrate-self"), "{e}");
}

// ---------------------------------------------------------------- CLI

fn cli(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edge-pack")).args(args).current_dir(cwd).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn cli_calibrate_self_and_rtn_baseline() {
    if !have_models() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = stories_bin();
    let bin = bin.to_str().unwrap();
    let (code, stdout, stderr) = cli(
        &[bin, "--allow-no-tokenizer", "--calibrate-self", "--calibrate-tokens", "128", "--calibrate-seed", "7", "-o", "c.edge", "--json", "-q"],
        dir.path(),
    );
    assert_eq!(code, 0, "{stderr}");
    let j: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["encoding"], "q8", "calibration implies q8");
    assert_eq!(j["calibration"]["tokens"], 128);
    assert_eq!(j["calibration"]["gptq"], DEFAULT_GPTQ.name());
    assert!(j["calibration"]["description"].as_str().unwrap().contains("seed 7"));
    assert!(j["timings"]["profile"].as_f64().is_some());
    let bytes = read_bytes(&dir.path().join("c.edge"));
    let ck = Checkpoint::parse(bytes.as_bytes()).unwrap();
    assert_eq!(profile_of(&ck)["tokens"], 128);

    let (code, stdout, stderr) = cli(&[bin, "--allow-no-tokenizer", "--rtn-baseline", "3", "-g", "32", "-o", "r.edge"], dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("round-to-nearest baseline") && stdout.contains("\"bits\":3"), "{stdout}");

    // Errors: one line, exit status 1, nothing written.
    std::fs::write(dir.path().join("wiki.test.raw"), "text").unwrap();
    for (args, needle) in [
        (vec!["--calibrate", "missing.txt"], "does not exist"),
        (vec!["--calibrate", "wiki.test.raw"], "evaluation text"),
        (vec!["--calibrate-self", "--calibrate", "x.txt"], "cannot be used with"),
        (vec!["--calibrate-tokens", "64"], "--calibrate"),
        (vec!["--calibrate-self", "--calibrate-tokens", "4"], "4"),
        (vec!["--calibrate-self", "-e", "f16"], "need --encoding q8"),
        (vec!["--rtn-baseline", "7"], "7"),
        (vec!["--calibrate-self", "--gptq-view-weights", "1,1,1"], "four weights"),
        (vec!["--calibrate-self", "--gptq-view-weights", "0,0,0,0"], "not all zero"),
        (vec!["--gptq-view-weights", "1,1,1,4"], "--calibrate"),
        (vec!["--rtn-baseline", "4", "--calibrate-self"], "cannot be used with"),
        (vec!["--rtn-baseline", "4", "-e", "q8"], "f16"),
        (vec!["--calibrate-self", "--gptq", "7"], "7"),
    ] {
        let mut a = vec![bin, "--allow-no-tokenizer", "-o", "e.edge"];
        a.extend(&args);
        let (code, stdout, stderr) = cli(&a, dir.path());
        assert_eq!(code, 1, "{args:?}: {stdout} {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("edge-pack: error: ") && stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!dir.path().join("e.edge").exists());
    }
    assert!(temp_files(dir.path()).is_empty());
}
