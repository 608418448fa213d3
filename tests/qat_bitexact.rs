//! Issue 18's end-to-end check: a few steps of PyTorch QAT on stories260K (`trainer-bridge/python`,
//! `edge_qat`), its export packed by edge-pack without re-quantizing, and `edge-run eval
//! --logits-out` at every view against the PyTorch model's fake-quantized logits. Needs a Python
//! with torch (`$EDGE_QAT_PYTHON`, `/work/venv-torch/bin/python` or `python3`); says loudly that
//! it skipped where there is none.
//!
//! Nested weights meet f32 activations here (`EDGE_RUN_KERNELS=float`), as the PyTorch model
//! computes. Greedy tokens must be identical; logits agree to 3e-3 of the largest logit: the f32
//! pack of stories260K-hf differs from transformers by 6e-4 of it with no quantization at all
//! (docs/RESULTS.md), so the 1e-4 is not met yet and this bound records where it stands.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn torch_python() -> Option<PathBuf> {
    let candidates = [std::env::var_os("EDGE_QAT_PYTHON").map(PathBuf::from), Some("/work/venv-torch/bin/python".into()), Some("python3".into())];
    candidates.into_iter().flatten().find(|p| {
        Command::new(p).args(["-c", "import torch, transformers, safetensors, numpy"]).output().is_ok_and(|o| o.status.success())
    })
}

/// The f32 values of a little-endian `.npy` file of f32 (its header skipped).
fn npy_f32(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap();
    let header = u16::from_le_bytes([b[8], b[9]]) as usize;
    b[10 + header..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[test]
fn qat_export_runs_in_edge_run_as_in_pytorch() {
    let hf = models_dir().join("stories260K-hf");
    if !hf.is_dir() {
        assert!(std::env::var_os("EDGE_ALLOW_MISSING_MODELS").is_some(), "{} not found", hf.display());
        return;
    }
    let Some(py) = torch_python() else {
        eprintln!("*** SKIPPED: no Python with torch and transformers (set EDGE_QAT_PYTHON); the QAT export is untested ***");
        return;
    };
    let pkg = Path::new(env!("CARGO_MANIFEST_DIR")).join("trainer-bridge/python");
    let d = tempfile::tempdir().unwrap();
    let run_dir = d.path().join("run");
    let train = Command::new(&py)
        .current_dir(&pkg)
        .env("PYTHONPATH", &pkg)
        .args(["-m", "edge_qat.train", "--model", hf.to_str().unwrap(), "--out", run_dir.to_str().unwrap()])
        .args(["--steps", "3", "--samples", "8", "--seq-len", "32", "--batch", "4", "--seed", "0", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(train.status.success(), "training failed: {}", String::from_utf8_lossy(&train.stderr));
    let export = run_dir.join("export");
    let packed = d.path().join("qat.edge");
    let opts = edge_pack::PackOptions { allow_no_tokenizer: true, encoding: edge_pack::WeightEncoding::Nested8, ..Default::default() };
    edge_pack::pack_file(&export, &packed, &opts).expect("packing the export");

    let tokens = [1u32, 403, 11, 50, 200, 7, 99, 300, 12, 45, 88, 1, 2, 3, 4, 5];
    let ids = d.path().join("ids.json");
    std::fs::write(&ids, format!("{tokens:?}")).unwrap();
    let list: Vec<String> = tokens.iter().map(u32::to_string).collect();
    for view in [8u8, 6, 5, 4, 3, 2] {
        let ours = d.path().join(format!("ours-{view}.npy"));
        let r = run_env(
            ["eval", "-m", packed.to_str().unwrap(), "--bits", &view.to_string(), "--data", ids.to_str().unwrap(), "--token-ids", "--logits-out", ours.to_str().unwrap()],
            &[("EDGE_RUN_KERNELS", std::ffi::OsStr::new("float"))],
        );
        r.ok();
        let theirs = d.path().join(format!("theirs-{view}.npy"));
        let o = Command::new(&py)
            .current_dir(&pkg)
            .env("PYTHONPATH", &pkg)
            .args(["-m", "edge_qat.export", "logits", "--export", export.to_str().unwrap(), "--view", &view.to_string()])
            .args(["--tokens", &list.join(","), "--out", theirs.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let (a, b) = (npy_f32(&ours), npy_f32(&theirs));
        assert_eq!(a.len(), b.len());
        let vocab = a.len() / tokens.len();
        let argmax = |x: &[f32]| x.iter().enumerate().fold(0, |m, (i, v)| if *v > x[m] { i } else { m });
        let mut worst = 0f32;
        for (ra, rb) in a.chunks(vocab).zip(b.chunks(vocab)) {
            assert_eq!(argmax(ra), argmax(rb), "view {view}: greedy tokens differ");
            worst = ra.iter().zip(rb).map(|(x, y)| (x - y).abs()).fold(worst, f32::max);
        }
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        eprintln!("view {view}: largest logit difference {worst:.2e} (largest logit {scale:.1})");
        assert!(worst < 3e-3 * scale, "view {view}: logits differ by {worst} (largest logit {scale})");
    }
}
