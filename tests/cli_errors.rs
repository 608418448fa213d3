//! Failures end as one line `edge-run: error: ...` with exit code 1 (never a panic), and
//! auto-packing through `--model` goes to the cache and is reused.

mod common;

use std::ffi::OsStr;
use std::path::Path;

use common::*;

fn gen_err(model: &Path) -> String {
    run(["-m", model.to_str().unwrap(), "-p", "Hello", "-n", "4"]).one_line_error()
}

#[test]
fn truncated_checkpoint() {
    if !have_models() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("truncated.edge");
    corrupt_copy(&smollm_f16(), &p, |b| b.truncate(b.len() / 2));
    let e = gen_err(&p);
    assert!(e.contains("truncated") && e.contains("truncated.edge"), "{e}");
    let e = run(["inspect", p.to_str().unwrap()]).one_line_error();
    assert!(e.contains("truncated"), "{e}");
    // Shorter than the header.
    std::fs::write(&p, b"EDGERUN\0\x01").unwrap();
    assert!(gen_err(&p).contains("truncated"));
}

#[test]
fn flipped_byte_in_the_header() {
    if !have_models() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("header.edge");
    corrupt_copy(&smollm_f16(), &p, |b| b[40] ^= 0x01);
    let e = gen_err(&p);
    assert!(e.contains("checksum mismatch in header"), "{e}");
    let e = run(["inspect", p.to_str().unwrap()]).one_line_error();
    assert!(e.contains("checksum mismatch in header"), "{e}");
}

#[test]
fn format_version_99() {
    if !have_models() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v99.edge");
    corrupt_copy(&smollm_f16(), &p, |b| b[8..12].copy_from_slice(&99u32.to_le_bytes()));
    let e = gen_err(&p);
    assert!(e.contains("version 99") && e.contains("re-pack"), "{e}");
    let e = run(["eval", "-m", p.to_str().unwrap(), "--data", wiki_test().to_str().unwrap()]).one_line_error();
    assert!(e.contains("version 99"), "{e}");
}

#[test]
fn wrong_magic() {
    let dir = tempfile::tempdir().unwrap();
    // Named .edge: read as a checkpoint, rejected by its magic.
    let p = dir.path().join("notes.edge");
    std::fs::write(&p, "These are my notes, not a model.\n".repeat(10)).unwrap();
    let e = gen_err(&p);
    assert!(e.contains("not an .edge checkpoint"), "{e}");
    let e = run(["inspect", p.to_str().unwrap()]).one_line_error();
    assert!(e.contains("not an .edge checkpoint"), "{e}");
    // Any other name: not a format edge-pack can read either.
    let p = dir.path().join("notes.txt");
    std::fs::write(&p, "These are my notes, not a model.\n".repeat(10)).unwrap();
    let e = gen_err(&p);
    assert!(e.contains("notes.txt") && e.contains(".edge checkpoint"), "{e}");
    // Nothing was written beside it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn nonexistent_model() {
    let e = gen_err(Path::new("/nonexistent/model.edge"));
    assert!(e.contains("/nonexistent/model.edge") && e.contains("does not exist"), "{e}");
    let e = run(["inspect", "/nonexistent/model.edge"]).one_line_error();
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn empty_and_over_long_prompts() {
    if !have_models() {
        return;
    }
    let m = smollm_f16();
    let e = run(["-m", m.to_str().unwrap(), "-p", ""]).one_line_error();
    assert!(e.contains("prompt is empty"), "{e}");
    let e = run(["-m", m.to_str().unwrap()]).one_line_error();
    assert!(e.contains("no prompt"), "{e}");

    let long = "This prompt is far too long for a context of sixteen tokens, by a wide margin.";
    let e = run(["-m", m.to_str().unwrap(), "--ctx", "16", "-p", long]).one_line_error();
    assert!(e.contains("tokens but the context holds 16") && e.contains("--ctx"), "{e}");

    let e = run(["-m", m.to_str().unwrap(), "--prompt-ids", "1 99999999"]).one_line_error();
    assert!(e.contains("99999999") && e.contains("vocabulary"), "{e}");
}

#[test]
fn bad_arguments_are_one_line() {
    for args in [
        vec!["--bogus"],
        vec!["-m", "x.edge", "-p", "hi", "--bits", "7"],
        vec!["-m", "x.edge", "-p", "hi", "--temp", "-1"],
        vec!["-m", "x.edge", "-p", "hi", "--top-p", "1.5"],
        vec!["eval", "-m", "x.edge"],
        vec!["inspect"],
        vec![],
        vec!["-m", "x.edge", "-p", "hi", "--temp", "x"],
        vec!["eval", "-m", "x.edge", "-d", "x.txt", "--chunks", "0"],
        vec!["-m", "x.edge", "-p", "hi", "--device", "gpu"],
        vec!["-m", "x.edge", "-p", "hi", "--device", "cuda:x"],
    ] {
        let e = run(&args).one_line_error();
        // One help hint, ours, naming the subcommand's help when there is one.
        assert_eq!(e.matches("--help").count(), 1, "{args:?}: {e}");
        assert!(!e.contains("For more information"), "{args:?}: {e}");
        let want = match args.first() {
            Some(&sub) if ["eval", "inspect"].contains(&sub) => format!("see `edge-run {sub} --help`"),
            _ => "see `edge-run --help`".to_string(),
        };
        assert!(e.ends_with(&want), "{args:?}: {e}");
    }
}

/// `--device cuda` where it cannot run is one line saying why and what to do: in a build
/// without the feature, how to get one; with it (on a machine without a GPU), that no driver or
/// GPU was found. Checked before the model is opened, so a missing model does not hide it.
#[test]
fn cuda_device_that_cannot_run_says_why() {
    for dev in ["cuda", "cuda:1"] {
        let e = run(["-m", "/nonexistent/model.edge", "-p", "hi", "--device", dev]).one_line_error();
        let why = if cfg!(feature = "cuda") { "CUDA:" } else { "--features cuda" };
        assert!(e.contains(why), "{dev}: {e}");
        assert!(e.contains("--device cpu") || e.contains("run on the CPU"), "{dev}: {e}");
    }
    let e = run(["bench", "-m", "/nonexistent/model.edge", "--device", "cuda"]).one_line_error();
    assert!(e.contains("cuda"), "{e}");
}

#[test]
fn help_has_examples_and_version_works() {
    let r = run(["--help"]);
    r.ok();
    for want in ["Examples:", "--model", "--prompt", "--chat", "--json", "eval", "inspect", "EDGE_RUN_CACHE"] {
        assert!(r.stdout.contains(want), "--help lacks {want}");
    }
    let r = run(["eval", "--help"]);
    r.ok();
    assert!(r.stdout.contains("--kl-base") && r.stdout.contains("--chunks"));
    let r = run(["--version"]);
    r.ok();
    assert!(r.stdout.starts_with("edge-run "));
}

#[test]
fn gguf_through_model_is_packed_into_the_cache_once() {
    if !have_models() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let env = [("EDGE_RUN_CACHE", cache.path().as_os_str())];
    let gguf = smollm_gguf();
    // f16: the calibrated default takes minutes on SmolLM2 (the default is tested on stories260K).
    let args =
        ["-m", gguf.to_str().unwrap(), "--pack-encoding", "f16", "-p", "Once upon a time", "-n", "8", "--temp", "0", "--json"];
    let first = run_env(args, &env);
    let v1 = first.json();
    assert!(first.stderr.contains("packing") && first.stderr.contains("edge-run: packed in "), "{}", first.stderr);
    assert_eq!(v1["packed"], "packed");
    let files: Vec<String> =
        std::fs::read_dir(cache.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].starts_with("SmolLM2-135M-Instruct.Q4_1-") && files[0].ends_with(".edge"), "{files:?}");

    let second = run_env(args, &env);
    let v2 = second.json();
    assert!(second.stderr.contains("using cached pack"), "{}", second.stderr);
    assert_eq!(v2["packed"], "cached");
    assert_eq!(v1["tokens"], v2["tokens"]);
    assert_eq!(v1["checkpoint"], v2["checkpoint"]);
    // Same greedy tokens as the checkpoint the other tests pack.
    assert_eq!(ids(&v1), ids(&greedy_json(&smollm_f16(), "Once upon a time", 8, &[])));
}

#[test]
fn the_default_auto_pack_is_calibrated_with_a_sensitivity_profile() {
    let hf = models_dir().join("stories260K-hf");
    if !hf.is_dir() {
        assert!(std::env::var_os("EDGE_ALLOW_MISSING_MODELS").is_some(), "{} not found", hf.display());
        return;
    }
    // A Hugging Face folder without a tokenizer: calibration samples token ids from the model.
    let cache = tempfile::tempdir().unwrap();
    let env = [("EDGE_RUN_CACHE", cache.path().as_os_str())];
    let h = hf.to_str().unwrap();
    let first = run_env(["-m", h, "--prompt-ids", "1", "-n", "4", "--temp", "0", "--json"], &env);
    assert_eq!(first.json()["packed"], "packed");
    assert!(first.stderr.contains(" as q8-cal ("), "{}", first.stderr);
    let done = first.stderr.lines().find(|l| l.starts_with("edge-run: packed in ")).unwrap_or_else(|| panic!("{}", first.stderr));
    assert!(done.contains(" s (reading ") && done.contains("profile "), "{done}");
    assert!(!first.stderr.contains("note:"), "calibration fell back:\n{}", first.stderr);
    let files: Vec<_> = std::fs::read_dir(cache.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");

    // The cached pack is nested 8-bit planes in groups of 64, with the sensitivity profile.
    let info = run(["inspect".as_ref(), files[0].as_os_str(), "--json".as_ref()]).json();
    let profile = &info["sensitivity_profile"];
    assert!(profile["calibration"].as_str().unwrap_or("").contains("sampled from the full-precision model"), "{profile}");
    assert!(!profile["units"].as_array().unwrap().is_empty(), "{profile}");
    let matrices: Vec<&serde_json::Value> = info["tensors"].as_array().unwrap().iter().filter(|t| t["shape"].as_array().unwrap().len() == 2).collect();
    assert!(matrices.iter().all(|t| t["encoding"] == "nested8" && t["group_size"] == 64), "{matrices:?}");

    // --budget plans from it (it refuses a pack without a profile), from the cache.
    let r = run_env(["-m", h, "--prompt-ids", "1", "-n", "4", "--temp", "0", "--budget", "256MB", "--json"], &env);
    assert_eq!(r.json()["packed"], "cached");
    // The other encodings are cached apart, and --pack-encoding q8 has no profile to plan from.
    let r = run_env(["-m", h, "--pack-encoding", "q8", "--prompt-ids", "1", "-n", "4", "--budget", "256MB"], &env);
    assert!(r.one_line_error().contains("no sensitivity profile"), "{}", r.stderr);
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 2);
}

#[test]
fn cache_falls_back_to_xdg_then_home() {
    let bin = stories_bin();
    if !bin.is_file() {
        assert!(std::env::var_os("EDGE_ALLOW_MISSING_MODELS").is_some(), "{} not found", bin.display());
        return;
    }
    let xdg = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let args = ["-m", bin.to_str().unwrap(), "--prompt-ids", "1", "-n", "3", "--temp", "0"];
    let empty = OsStr::new("");
    run_env(args, &[("EDGE_RUN_CACHE", empty), ("XDG_CACHE_HOME", xdg.path().as_os_str())]).ok();
    let n = std::fs::read_dir(xdg.path().join("edge-run")).unwrap().count();
    assert_eq!(n, 1);
    run_env(args, &[("EDGE_RUN_CACHE", empty), ("XDG_CACHE_HOME", empty), ("HOME", home.path().as_os_str())]).ok();
    let n = std::fs::read_dir(home.path().join(".cache").join("edge-run")).unwrap().count();
    assert_eq!(n, 1);
}
