//! Shared helpers of the CLI integration tests: where the real models are, a SmolLM2 f16
//! checkpoint packed once (atomically) into the target's temporary directory, and running the
//! `edge-run` binary.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// `$EDGE_MODELS_DIR`, else `shared/models` beside the checkout, else `/work/shared/models`.
pub fn models_dir() -> PathBuf {
    shared_dir("EDGE_MODELS_DIR", "models")
}

/// `$EDGE_DATA_DIR`, else `shared/data` beside the checkout, else `/work/shared/data`.
pub fn data_dir() -> PathBuf {
    shared_dir("EDGE_DATA_DIR", "data")
}

fn shared_dir(var: &str, sub: &str) -> PathBuf {
    if let Some(d) = std::env::var_os(var) {
        return PathBuf::from(d);
    }
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("shared").join(sub);
    if beside.is_dir() {
        return beside;
    }
    PathBuf::from("/work/shared").join(sub)
}

pub fn smollm_gguf() -> PathBuf {
    models_dir().join("smollm2-135m-instruct-q4_1").join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub fn stories_bin() -> PathBuf {
    models_dir().join("llama2c").join("stories260K.bin")
}

pub fn wiki_test() -> PathBuf {
    data_dir().join("wikitext-2-raw").join("wiki.test.raw")
}

/// Whether the real models are present. Missing models fail the test unless
/// `EDGE_ALLOW_MISSING_MODELS` is set (then the test is skipped, loudly).
pub fn have_models() -> bool {
    let ok = smollm_gguf().is_file() && wiki_test().is_file();
    if !ok {
        if std::env::var_os("EDGE_ALLOW_MISSING_MODELS").is_none() {
            panic!(
                "{} or {} not found: set EDGE_MODELS_DIR / EDGE_DATA_DIR (or EDGE_ALLOW_MISSING_MODELS=1 to skip)",
                smollm_gguf().display(),
                wiki_test().display()
            );
        }
        eprintln!("SKIP: models not found");
    }
    ok
}

/// A scratch directory of this test binary under the target's temporary directory.
pub fn scratch() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("edge-run-cli");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// SmolLM2-135M-Instruct packed as f16, shared by every test (and test binary): packed if
/// missing or older than this test binary (which links the packer), to a temporary name, then
/// renamed into place.
pub fn smollm_f16() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let out = scratch().join("smollm2-135m-f16.edge");
        let exe_time = std::env::current_exe().and_then(|e| e.metadata()).and_then(|m| m.modified()).ok();
        let fresh = out
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .is_some_and(|t| exe_time.is_none_or(|e| t >= e));
        if !fresh {
            let tmp = out.with_extension(format!("partial-{}", std::process::id()));
            let opts = edge_pack::PackOptions { force: true, ..Default::default() };
            edge_pack::pack_file(&smollm_gguf(), &tmp, &opts).expect("packing SmolLM2");
            std::fs::rename(&tmp, &out).unwrap();
        }
        out
    })
    .clone()
}

/// Result of one run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Assert success and return stdout parsed as one JSON object.
    pub fn json(&self) -> serde_json::Value {
        assert_eq!(self.code, 0, "edge-run failed: {}", self.stderr);
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", self.stdout))
    }

    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "edge-run failed:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        self
    }

    /// Assert the run failed the CLI's way: exit code 1, one line on stderr
    /// `edge-run: error: ...`, no panic or backtrace. Returns that line.
    pub fn one_line_error(&self) -> String {
        assert_eq!(self.code, 1, "expected exit code 1, got {}:\nstdout: {}\nstderr: {}", self.code, self.stdout, self.stderr);
        let err_lines: Vec<&str> = self.stderr.lines().filter(|l| l.starts_with("edge-run: error: ")).collect();
        assert_eq!(err_lines.len(), 1, "expected one error line:\n{}", self.stderr);
        // Only informational edge-run lines may precede it (e.g. "packing ..."), nothing else.
        for l in self.stderr.lines() {
            assert!(l.starts_with("edge-run: "), "unexpected stderr line {l:?} in:\n{}", self.stderr);
        }
        assert!(self.stderr.lines().last() == Some(err_lines[0]), "the error must be the last line:\n{}", self.stderr);
        for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace", "internal error"] {
            assert!(!self.stderr.contains(bad), "{bad} in stderr:\n{}", self.stderr);
        }
        err_lines[0].to_string()
    }
}

/// Run `edge-run` with `args`; the cache is redirected to the scratch directory.
pub fn run<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_env(args, &[])
}

pub fn run_env<I, S>(args: I, env: &[(&str, &OsStr)]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(env!("CARGO_BIN_EXE_edge-run"));
    c.args(args).env("EDGE_RUN_CACHE", scratch().join("cache")).env_remove("RUST_BACKTRACE");
    for (k, v) in env {
        c.env(k, v);
    }
    Run::from(c.output().expect("running edge-run"))
}

/// Greedy generation as JSON.
pub fn greedy_json(model: &Path, prompt: &str, n: usize, extra: &[&str]) -> serde_json::Value {
    let n = n.to_string();
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("-m"),
        model.as_os_str(),
        OsStr::new("-p"),
        OsStr::new(prompt),
        OsStr::new("-n"),
        OsStr::new(&n),
        OsStr::new("--temp"),
        OsStr::new("0"),
        OsStr::new("--json"),
    ];
    args.extend(extra.iter().map(OsStr::new));
    run(args).json()
}

/// The generated token ids of a JSON result.
pub fn ids(v: &serde_json::Value) -> Vec<u64> {
    v["tokens"].as_array().expect("tokens").iter().map(|t| t.as_u64().unwrap()).collect()
}

/// A copy of `src` at `dst` with `f` applied to its bytes.
pub fn corrupt_copy(src: &Path, dst: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = std::fs::read(src).unwrap();
    f(&mut b);
    std::fs::write(dst, b).unwrap();
}

/// A file packed once into the scratch directory by `pack` (to a temporary name, then renamed),
/// reused while it is newer than this test binary.
pub fn packed_once(name: &str, pack: impl FnOnce(&Path)) -> PathBuf {
    let out = scratch().join(name);
    let exe_time = std::env::current_exe().and_then(|e| e.metadata()).and_then(|m| m.modified()).ok();
    let fresh = out.metadata().and_then(|m| m.modified()).ok().is_some_and(|t| exe_time.is_none_or(|e| t >= e));
    if !fresh {
        let tmp = out.with_extension(format!("partial-{}", std::process::id()));
        pack(&tmp);
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

/// SmolLM2-135M-Instruct packed as nested8 (q8, group 64) with the fast min-max objective
/// (seconds, not minutes: these tests exercise views and plans, not the quantizer's quality).
pub fn smollm_q8() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| smollm_q8_min_max("smollm2-135m-q8-minmax.edge", 64)).clone()
}

/// SmolLM2 packed as q8 with min/max codes in groups of `group` (once per build, as `name`).
pub fn smollm_q8_min_max(name: &str, group: u32) -> PathBuf {
    packed_once(name, |tmp| {
        let opts = edge_pack::PackOptions {
            encoding: edge_pack::WeightEncoding::Nested8,
            group_size: group,
            objective: edge_pack::quant::NestedObjective::MinMax,
            force: true,
            ..Default::default()
        };
        edge_pack::pack_file(&smollm_gguf(), tmp, &opts).expect("packing SmolLM2 as q8");
    })
}

/// A copy of checkpoint `src` at `dst` with metadata `extra` added (or replaced): every tensor
/// and every other metadata entry copied as is.
pub fn with_metadata(src: &Path, dst: &Path, extra: &[(&str, &str)]) {
    let values: Vec<(&str, edge_runtime::format::MetaValue<'_>)> =
        extra.iter().map(|(k, v)| (*k, edge_runtime::format::MetaValue::Str(v))).collect();
    with_meta_values(src, dst, &values);
}

/// [`with_metadata`] with values of any type.
pub fn with_meta_values(src: &Path, dst: &Path, extra: &[(&str, edge_runtime::format::MetaValue<'_>)]) {
    rewrite_checkpoint(src, dst, extra, |_, _| {});
}

/// A copy of checkpoint `src` at `dst`, metadata `extra` added or replaced and each tensor's
/// segments passed through `edit(name, segments)`, written with fresh checksums (a damage the
/// checksums cannot see).
pub fn rewrite_checkpoint(
    src: &Path,
    dst: &Path,
    extra: &[(&str, edge_runtime::format::MetaValue<'_>)],
    mut edit: impl FnMut(&str, &mut Vec<Vec<u8>>),
) {
    use edge_runtime::format::{CheckpointWriter, TensorData};
    let bytes = std::fs::read(src).unwrap();
    let ck = edge_runtime::Checkpoint::parse(&bytes).unwrap();
    let mut w = CheckpointWriter::new();
    for (k, v) in &ck.meta {
        w.set_meta(k, *v);
    }
    for (k, v) in extra {
        w.set_meta(k, *v);
    }
    for t in &ck.tensors {
        let mut segments: Vec<Vec<u8>> = t.segments.iter().map(|s| s.bytes.to_vec()).collect();
        edit(t.name, &mut segments);
        w.add_tensor(TensorData { name: t.name.to_string(), encoding: t.encoding, shape: t.shape.clone(), group_size: t.group_size, segments })
            .unwrap();
    }
    let tmp = dst.with_extension(format!("partial-{}", std::process::id()));
    w.write_file(&tmp, true, |_, _| {}).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

/// A synthetic sensitivity profile for SmolLM2 (30 layers and token_embd), in the format
/// `edge-pack --calibrate` writes: the first and last layers and the embedding are the most
/// sensitive, and KL falls with the view width.
pub fn synthetic_profile(n_layers: usize) -> String {
    let mut units = Vec::new();
    let unit = |name: String, f: f64| {
        serde_json::json!({ "name": name, "kl": { "2": 0.30 * f, "3": 0.06 * f, "4": 0.012 * f } })
    };
    units.push(unit("token_embd".into(), 6.0));
    for l in 0..n_layers {
        let f = if l == 0 || l + 1 == n_layers { 4.0 } else { 1.0 + 0.3 * (l % 5) as f64 };
        units.push(unit(format!("blk.{l}"), f));
    }
    serde_json::json!({
        "version": 1, "metric": "kl", "reference": "8-bit view",
        "calibration": "synthetic (test)", "tokens": 1000, "units": units,
    })
    .to_string()
}

/// SmolLM2 q8 with [`synthetic_profile`] in its metadata.
pub fn smollm_q8_profiled() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let src = smollm_q8();
        packed_once("smollm2-135m-q8-profiled.edge", |tmp| {
            with_metadata(&src, tmp, &[("edge.sensitivity", &synthetic_profile(30))]);
        })
    })
    .clone()
}

/// A larger model `fetch.sh NAME` fetches (`qwen2.5-coder-0.5b`) into `$EDGE_MODELS`, else
/// `~/.cache/edge-run-models` (as `file`): the cached file, fetched first if missing. `None`,
/// after a loud SKIPPED line, when it cannot be fetched (no network): the caller skips.
pub fn fetched_model(name: &str, file: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("EDGE_MODELS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("edge-run-models")))?;
    let path = dir.join(file);
    if path.is_file() {
        return Some(path);
    }
    let script = models_dir().join("fetch.sh");
    let fetched = Command::new("bash").arg(&script).arg(name).arg(&dir).output();
    match fetched {
        Ok(o) if o.status.success() && path.is_file() => Some(path),
        Ok(o) => {
            eprintln!(
                "SKIPPED: {} could not be fetched ({} {name} failed: {}); this test did not run",
                path.display(),
                script.display(),
                String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")
            );
            None
        }
        Err(e) => {
            eprintln!("SKIPPED: {} is missing and {} could not run ({e}); this test did not run", path.display(), script.display());
            None
        }
    }
}

/// Qwen2.5-Coder-0.5B-Instruct's GGUF (Q4_K_M), fetched if missing.
pub fn qwen05_gguf() -> Option<PathBuf> {
    fetched_model("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
}

/// Qwen2.5-Coder-0.5B-Instruct packed as f16 (its Q4_K_M weights dequantized: the weights
/// llama.cpp runs from the F16 GGUF `llama-quantize --allow-requantize ... F16` makes), once per
/// test binary build. Without a tokenizer until the `qwen2` pre-tokenizer lands: tests give ids.
pub fn qwen05_f16() -> Option<PathBuf> {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    PATH.get_or_init(|| {
        let gguf = qwen05_gguf()?;
        Some(packed_once("qwen2.5-coder-0.5b-f16.edge", |tmp| {
            let opts = edge_pack::PackOptions { force: true, allow_no_tokenizer: true, ..Default::default() };
            edge_pack::pack_file(&gguf, tmp, &opts).expect("packing Qwen2.5-Coder-0.5B");
        }))
    })
    .clone()
}
