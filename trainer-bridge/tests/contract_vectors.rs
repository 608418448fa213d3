//! The contract's shared test vectors: the committed JSON equals what the Rust contract
//! generates now, and the Python trainer (`trainer-bridge/python`) reproduces it bit for bit
//! (its pytest suite, run here when a Python with torch is available).

#[path = "../examples/contract_vectors.rs"]
mod contract_vectors;

use std::path::{Path, PathBuf};
use std::process::Command;

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

#[test]
fn committed_vectors_match_the_rust_contract() {
    let path = python_dir().join("tests/data/contract_vectors.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let now = contract_vectors::vectors_json();
    assert!(
        committed == now,
        "the Rust contract no longer produces {}: if the change is intended, regenerate it with \
         `cargo run -p edge-pack --example contract_vectors -- {}` and update the Python side",
        path.display(),
        path.display()
    );
    assert!(now.len() < 300_000, "vector file grew to {} bytes", now.len());
}

/// A Python that imports torch, numpy and pytest: $EDGE_QAT_PYTHON, /work/venv-torch/bin/python,
/// or python3.
fn torch_python() -> Option<String> {
    let candidates = std::env::var("EDGE_QAT_PYTHON")
        .into_iter()
        .chain(["/work/venv-torch/bin/python".to_string(), "python3".to_string()]);
    candidates.into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import torch, numpy, pytest, safetensors"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn python_side_reproduces_the_vectors() {
    let Some(py) = torch_python() else {
        eprintln!(
            "\n*** SKIPPED python_side_reproduces_the_vectors: no Python with torch, numpy, pytest and \
             safetensors (set EDGE_QAT_PYTHON) ***\n"
        );
        return;
    };
    let out = Command::new(&py)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_contract.py"])
        .current_dir(python_dir())
        .env("PYTHONPATH", python_dir())
        .output()
        .expect("run pytest");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pytest with {py} failed:\n{text}");
    eprintln!("{}", text.lines().last().unwrap_or(""));
}
