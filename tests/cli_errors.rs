//! Failures end as one line `edge-run: error: ...` with exit code 1 (never a panic), and
//! auto-packing through `--model` goes to the cache and is reused.

mod common;

use std::ffi::OsStr;
use std::path::Path;

use common::*;

/// The packs in a cache folder (its lock files aside).
fn packs(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| !n.starts_with('.')).collect()
}

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
fn a_block_count_below_the_layers_stored() {
    if !have_models() {
        return;
    }
    // 30 layers stored, 20 declared: running the first 20 would be a different model.
    let p = scratch().join(format!("block-count-{}.edge", std::process::id()));
    with_meta_values(&smollm_f16(), &p, &[(edge_runtime::format::keys::N_LAYERS, edge_runtime::format::MetaValue::U64(20))]);
    let e = gen_err(&p);
    assert!(e.contains("is not one of the") && e.contains("(20 layers)"), "{e}");
    let _ = std::fs::remove_file(p);
}

#[test]
fn nan_weights_stop_with_an_error_and_inspect_names_the_tensor() {
    if !have_models() {
        return;
    }
    // A NaN in the last layer's FFN norm (f32), stored with a valid checksum.
    let p = scratch().join(format!("nan-norm-{}.edge", std::process::id()));
    let target = "blk.29.ffn_norm.weight";
    rewrite_checkpoint(&smollm_f16(), &p, &[], |name, segments| {
        if name == target {
            segments[0][40..44].copy_from_slice(&f32::NAN.to_le_bytes());
        }
    });
    let e = gen_err(&p);
    assert!(e.contains("non-finite logits") && e.contains("inspect --verify"), "{e}");
    let w = scratch().join(format!("nan-text-{}.txt", std::process::id()));
    std::fs::write(&w, &std::fs::read(wiki_test()).unwrap()[..8_000]).unwrap();
    let e = run(["eval", "-m", p.to_str().unwrap(), "--data", w.to_str().unwrap(), "--ctx", "128"]).one_line_error();
    assert!(e.contains("non-finite logits"), "{e}");
    let r = run(["inspect", p.to_str().unwrap(), "--verify"]);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains(&format!("tensor '{target}' holds a NaN or infinite value (index 10)")), "{all}");
    let _ = std::fs::remove_file(p);
    let _ = std::fs::remove_file(w);
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

    // 100 MB of text is refused before it is read, not after minutes of tokenizing.
    let big = scratch().join(format!("big-prompt-{}.txt", std::process::id()));
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(100 << 20).unwrap();
    let t = std::time::Instant::now();
    let e = run(["-m", m.to_str().unwrap(), "-f", big.to_str().unwrap(), "-n", "1"]).one_line_error();
    let _ = std::fs::remove_file(&big);
    assert!(e.contains("the prompt is 100.0 MiB of text") && e.contains("shorten it"), "{e}");
    assert!(t.elapsed().as_secs() < 10, "took {:?}", t.elapsed());
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
    let files = packs(cache.path());
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
    let files: Vec<_> = packs(cache.path()).into_iter().map(|n| cache.path().join(n)).collect();
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
    assert_eq!(packs(cache.path()).len(), 2);
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
    assert_eq!(packs(&xdg.path().join("edge-run")).len(), 1);
    run_env(args, &[("EDGE_RUN_CACHE", empty), ("XDG_CACHE_HOME", empty), ("HOME", home.path().as_os_str())]).ok();
    assert_eq!(packs(&home.path().join(".cache").join("edge-run")).len(), 1);
}

#[test]
fn two_processes_auto_packing_one_model_pack_it_once() {
    if !have_models() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let gguf = smollm_gguf();
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_edge-run"))
            .args(["-m", gguf.to_str().unwrap(), "--pack-encoding", "f16", "-p", "Hi", "-n", "2", "--temp", "0"])
            .env("EDGE_RUN_CACHE", cache.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    let err = format!("{}{}", String::from_utf8_lossy(&a.stderr), String::from_utf8_lossy(&b.stderr));
    assert_eq!(err.matches("edge-run: packed in ").count(), 1, "packed twice:\n{err}");
    assert_eq!(packs(cache.path()).len(), 1);
}

#[test]
fn a_folder_whose_symlinked_weights_change_is_packed_again() {
    let hf = models_dir().join("stories260K-hf");
    if !hf.is_dir() {
        assert!(std::env::var_os("EDGE_ALLOW_MISSING_MODELS").is_some(), "{} not found", hf.display());
        return;
    }
    // A Hugging Face cache's layout: the folder's files are links to blobs.
    let d = tempfile::tempdir().unwrap();
    let (blobs, model) = (d.path().join("blobs"), d.path().join("model"));
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&model).unwrap();
    std::fs::copy(hf.join("model.safetensors"), blobs.join("a")).unwrap();
    std::os::unix::fs::symlink(hf.join("config.json"), model.join("config.json")).unwrap();
    std::os::unix::fs::symlink(blobs.join("a"), model.join("model.safetensors")).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let env = [("EDGE_RUN_CACHE", cache.path().as_os_str())];
    let args = ["-m", model.to_str().unwrap(), "--pack-encoding", "f16", "--prompt-ids", "1", "-n", "2", "--temp", "0", "--json"];
    assert_eq!(run_env(args, &env).json()["packed"], "packed");
    assert_eq!(run_env(args, &env).json()["packed"], "cached");
    // Other weights behind the same link name (a new blob: same bytes here, but another file
    // with its own time, as a new download is).
    std::fs::copy(hf.join("model.safetensors"), blobs.join("b")).unwrap();
    std::fs::remove_file(model.join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink(blobs.join("b"), model.join("model.safetensors")).unwrap();
    let r = run_env(args, &env);
    assert_eq!(r.json()["packed"], "packed", "a stale pack was reused: {}", r.stderr);
}

#[test]
fn a_checkpoint_truncated_while_mapped_is_a_clear_error() {
    if !have_models() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("smollm.edge");
    std::fs::copy(smollm_f16(), &p).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_edge-run"))
        .args(["-m", p.to_str().unwrap(), "-p", "Once upon a time", "-n", "100000", "--ctx", "8192", "--ignore-eos", "--kv-window", "256"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Generating: truncate the file under it, as an interrupted copy over it would.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(4096).unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed().as_secs() > 60 {
            let _ = child.kill();
            panic!("edge-run kept running on a truncated mapping");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("edge-run: error: the checkpoint file shrank while in use"), "{err}");
}

#[test]
fn hostile_sizes_in_the_config_are_refused_before_allocating() {
    if !have_models() {
        return;
    }
    use edge_runtime::format::{keys, MetaValue};
    let m = smollm_f16();
    for (key, value) in [
        (keys::VOCAB_SIZE, 1u64 << 40),
        (keys::VOCAB_SIZE, 1 << 24),
        (keys::DIM, 1 << 24),
        (keys::HIDDEN_DIM, 1 << 24),
        (keys::DIM, 1 << 40),
        (keys::HIDDEN_DIM, 1 << 40),
        (keys::N_LAYERS, 1 << 40),
        (keys::N_HEADS, 1 << 40),
        (keys::CONTEXT_LENGTH, 1 << 62),
    ] {
        let p = scratch().join(format!("hostile-{}-{}.edge", key.replace('.', "_"), std::process::id()));
        with_meta_values(&m, &p, &[(key, MetaValue::U64(value))]);
        let r = run(["-m", p.to_str().unwrap(), "-p", "Hi", "-n", "2"]);
        let _ = std::fs::remove_file(&p);
        if key == keys::CONTEXT_LENGTH {
            // A trained context beyond reason changes nothing the run allocates (--ctx does).
            assert!(r.code == 0 || r.code == 1, "{key}: {}", r.stderr);
            if r.code == 1 {
                r.one_line_error();
            }
            continue;
        }
        let e = r.one_line_error();
        assert!(e.contains("is out of range") || e.contains("the model config implies"), "{key} = {value}: {e}");
    }
}

#[test]
fn every_flipped_bit_in_the_planes_a_view_reads_is_caught() {
    if !have_models() {
        return;
    }
    // The 4-bit view reads each nested tensor's group parameters and planes 0-2 (2+1+1 bits).
    let src = smollm_q8();
    let bytes = std::fs::read(&src).unwrap();
    let ck = edge_runtime::Checkpoint::parse(&bytes).unwrap();
    let base = bytes.as_ptr() as usize;
    let mut read: Vec<(String, usize, usize)> = Vec::new(); // (what, offset, len)
    for t in ck.tensors.iter().filter(|t| t.encoding == edge_runtime::format::Encoding::Nested8) {
        let mut plane = 0;
        for (i, s) in t.segments.iter().enumerate() {
            if s.kind == edge_runtime::format::SegmentKind::Plane {
                plane += 1;
                if plane > 3 {
                    continue;
                }
            }
            read.push((format!("tensor '{}' segment {i}", t.name), s.bytes.as_ptr() as usize - base, s.bytes.len()));
        }
    }
    let total: usize = read.iter().map(|r| r.2).sum();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let p = scratch().join(format!("flipped-{}.edge", std::process::id()));
    for trial in 0..6 {
        // A bit uniformly over the bytes the view reads.
        let mut k = (next() % total as u64) as usize;
        let (what, offset, _) = read.iter().find(|r| if k < r.2 { true } else { k -= r.2; false }).unwrap();
        let bit = next() % 8;
        let mut copy = bytes.clone();
        copy[offset + k] ^= 1 << bit;
        std::fs::write(&p, &copy).unwrap();
        let args = ["-m", p.to_str().unwrap(), "--bits", "4", "-p", "Once upon a time", "-n", "4", "--temp", "0"];
        let e = run(args).one_line_error();
        assert!(e.contains(&format!("checksum mismatch in {what}")), "trial {trial}: {e}");
        if trial == 0 {
            let w = scratch().join(format!("flipped-text-{}.txt", std::process::id()));
            std::fs::write(&w, &std::fs::read(wiki_test()).unwrap()[..8_000]).unwrap();
            let e = run(["eval", "-m", p.to_str().unwrap(), "--bits", "4", "--data", w.to_str().unwrap(), "--ctx", "128"]).one_line_error();
            let _ = std::fs::remove_file(w);
            assert!(e.contains(&format!("checksum mismatch in {what}")), "eval: {e}");
        }
        // --no-verify runs on it (and may give other text, or meet a scale turned NaN).
        let mut unchecked = args.to_vec();
        unchecked.push("--no-verify");
        let r = run(unchecked);
        assert!(r.code == 0 || r.stderr.contains("non-finite logits"), "trial {trial}: {}", r.stderr);
    }
    let _ = std::fs::remove_file(p);
}
