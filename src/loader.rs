//! Finding, auto-packing (into the cache) and opening a model file.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{anyhow, bail, Context, Result};
use edge_pack::calibrate::{CalibrationOptions, CalibrationSource};
use edge_runtime::format::MAGIC;
use edge_runtime::load::CheckpointBytes;
use edge_runtime::Checkpoint;

use crate::cli::{ModelArgs, PackEncoding};
use crate::report::one_line;

/// Where a model's `.edge` file came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The path given was an `.edge` checkpoint.
    Direct,
    /// Packed into the cache on this run.
    Packed { source: PathBuf },
    /// Found already packed in the cache.
    Cached { source: PathBuf },
}

impl Origin {
    /// `direct`, `packed` (on this run) or `cached`.
    pub fn name(&self) -> &'static str {
        match self {
            Origin::Direct => "direct",
            Origin::Packed { .. } => "packed",
            Origin::Cached { .. } => "cached",
        }
    }
}

/// A resolved `.edge` path plus where it came from.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub path: PathBuf,
    pub origin: Origin,
}

/// An opened checkpoint file (mapped or read).
pub struct ModelFile {
    pub path: PathBuf,
    pub origin: Origin,
    pub mmap: bool,
    pub bytes: CheckpointBytes,
    /// Seconds spent finding (and, the first time, packing) the model before opening it.
    pub resolve_seconds: f64,
}

impl ModelFile {
    /// Parse the checkpoint (header, metadata and table checksums are checked).
    pub fn parse(&self) -> Result<Checkpoint<'_>> {
        Checkpoint::parse(self.bytes.as_bytes()).map_err(|e| anyhow!("{}: {e}", self.path.display()))
    }
}

/// Resolve `args.model` to an `.edge` file (packing it into the cache if needed), then open it.
pub fn open_model(args: &ModelArgs) -> Result<ModelFile> {
    let path = args
        .model
        .as_deref()
        .ok_or_else(|| anyhow!("no model given; pass --model PATH (see `edge-run --help`)"))?;
    open_path(path, args.pack_encoding, args.group_size, !args.no_mmap)
}

/// Like [`open_model`] for an explicit path (e.g. `--kl-base`).
pub fn open_path(path: &Path, enc: PackEncoding, group: usize, mmap: bool) -> Result<ModelFile> {
    let t = std::time::Instant::now();
    let r = resolve(path, enc, group)?;
    let resolve_seconds = t.elapsed().as_secs_f64();
    let bytes = open_bytes(&r.path, mmap)?;
    Ok(ModelFile { path: r.path, origin: r.origin, mmap, bytes, resolve_seconds })
}

/// Map or read a checkpoint file.
pub fn open_bytes(path: &Path, mmap: bool) -> Result<CheckpointBytes> {
    let res = if mmap { CheckpointBytes::map(path) } else { CheckpointBytes::read(path) };
    // The runtime's I/O errors already name the path.
    res.map_err(|e| anyhow!("cannot open checkpoint: {e}"))
}

fn starts_with_magic(path: &Path) -> bool {
    let mut head = [0u8; 8];
    match std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)) {
        Ok(()) => head == MAGIC,
        Err(_) => false,
    }
}

/// Decide whether `path` is an `.edge` file, or pack it into the cache.
/// Packing and cache messages go to stderr in every mode (JSON goes to stdout).
pub fn resolve(path: &Path, enc: PackEncoding, group: usize) -> Result<Resolved> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!(
                "model '{}' does not exist; pass an .edge checkpoint, a GGUF file, a Hugging Face folder or a llama2.c .bin",
                path.display()
            )
        } else {
            anyhow!("cannot read model '{}': {e}", path.display())
        }
    })?;
    if meta.is_file() && (starts_with_magic(path) || path.extension().is_some_and(|e| e == "edge")) {
        return Ok(Resolved { path: path.to_path_buf(), origin: Origin::Direct });
    }
    let format = edge_pack::detect_format(path)
        .map_err(|e| anyhow!("{}; or pass an .edge checkpoint", one_line(&format!("{e:#}"))))?;
    if format == edge_pack::SourceFormat::Edge {
        return Ok(Resolved { path: path.to_path_buf(), origin: Origin::Direct });
    }
    let dir = cache_dir()?;
    let target = dir.join(cache_file_name(path, &meta, enc, group)?);
    if target.is_file() {
        eprintln!("edge-run: using cached pack of {}: {}", path.display(), target.display());
        return Ok(Resolved { path: target, origin: Origin::Cached { source: path.to_path_buf() } });
    }
    std::fs::create_dir_all(&dir).map_err(|e| {
        anyhow!("cannot create cache directory {}: {e}; set EDGE_RUN_CACHE to a writable directory", dir.display())
    })?;
    // One packer per cache entry: a second process waits for the first, then uses its pack.
    let file_name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let lock_path = dir.join(format!(".{file_name}.lock"));
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot create the lock file {}; set EDGE_RUN_CACHE to a writable directory", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            eprintln!("edge-run: another edge-run is packing {} into the cache; waiting for it", path.display());
            lock.lock().with_context(|| format!("cannot lock {}", lock_path.display()))?;
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(anyhow!("cannot lock {}: {e}", lock_path.display())),
    }
    if target.is_file() {
        eprintln!("edge-run: using the pack of {} another edge-run just made: {}", path.display(), target.display());
        return Ok(Resolved { path: target, origin: Origin::Cached { source: path.to_path_buf() } });
    }
    edge_pack::interrupt::watch(&dir);
    eprintln!(
        "edge-run: packing {} ({}) as {} into {} (first run only{})",
        path.display(),
        format_name(format),
        describe(enc, group),
        target.display(),
        if enc == PackEncoding::Nested8Cal { "; --pack-encoding f16 or q8 packs in seconds, without a profile" } else { "" }
    );
    // Pack to a temporary name in the cache directory, then rename: a crash or a failed pack
    // never leaves a half-written file under the name a later run would reuse.
    let tmp = dir.join(format!(".{file_name}.partial-{}", std::process::id()));
    let start = std::time::Instant::now();
    let result = pack_into(path, &tmp, enc, group).and_then(|report| {
        std::fs::rename(&tmp, &target)
            .with_context(|| format!("cannot move the packed model into {}", target.display()))?;
        Ok(report)
    });
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let phases: Vec<String> = report.timings.iter().map(|(name, s)| format!("{name} {s:.1} s")).collect();
    eprintln!("edge-run: packed in {:.1} s ({})", start.elapsed().as_secs_f64(), phases.join(", "));
    Ok(Resolved { path: target, origin: Origin::Packed { source: path.to_path_buf() } })
}

/// GPTQ's weights of the 2-, 3-, 4- and 8-bit views' errors in a q8-cal pack: the project's
/// recipe (docs/RESULTS.md, issue 13), which keeps the 8-bit view of SmolLM2-135M within 0.5% of
/// f16's perplexity.
pub const AUTO_VIEW_WEIGHTS: [f32; 4] = [1.0, 1.0, 1.0, 4.0];

/// The calibration an auto-pack with `enc` runs: for q8-cal, GPTQ (all views at once) on
/// sequences the model samples itself, and the sensitivity profile; none otherwise.
pub fn auto_calibration(enc: PackEncoding) -> Option<CalibrationOptions> {
    (enc == PackEncoding::Nested8Cal).then(|| {
        let mut c = CalibrationOptions::new(CalibrationSource::SelfSampled);
        c.view_weights = AUTO_VIEW_WEIGHTS;
        c
    })
}

/// `enc` in words, for the packing message.
fn describe(enc: PackEncoding, group: usize) -> String {
    match enc {
        PackEncoding::Nested8 => format!("q8 (nested 8-bit planes, groups of {group}, uncalibrated)"),
        PackEncoding::Nested8Cal => format!(
            "q8-cal (nested 8-bit planes, groups of {group}, GPTQ on text the model samples itself, and a sensitivity profile)"
        ),
        e => e.name().to_string(),
    }
}

/// Read `path` and pack it into `tmp` with `enc`. A calibrated pack that fails after the model
/// was read falls back, with a one-line note, to the same planes uncalibrated (no profile), so
/// that any model the runtime runs still packs.
fn pack_into(path: &Path, tmp: &Path, enc: PackEncoding, group: usize) -> Result<edge_pack::PackReport> {
    let failed = |e: anyhow::Error| anyhow!("cannot pack {}: {}", path.display(), one_line(&format!("{e:#}")));
    let start = std::time::Instant::now();
    let model = edge_pack::load_source(path, None).map_err(failed)?;
    let reading = ("reading", start.elapsed().as_secs_f64());
    let mut opts = edge_pack::PackOptions {
        encoding: enc.to_pack(),
        group_size: group as u32,
        allow_no_tokenizer: true,
        force: true,
        progress: true,
        calibration: auto_calibration(enc),
        ..Default::default()
    };
    let packed = match edge_pack::pack_model(&model, tmp, &opts) {
        Err(e) if opts.calibration.is_some() => {
            let _ = std::fs::remove_file(tmp);
            opts.calibration = None;
            match edge_pack::pack_model(&model, tmp, &opts) {
                Ok(r) => {
                    eprintln!(
                        "edge-run: note: calibrating {} failed ({}), so it was packed as q8 without calibration: it has no sensitivity profile for --budget, --target-bits or --weight-budget to plan from",
                        path.display(),
                        one_line(&format!("{e:#}"))
                    );
                    Ok(r)
                }
                // The plain planes failed too: the calibrated pack's error is the one to report.
                Err(_) => Err(e),
            }
        }
        r => r,
    };
    let mut report = packed.map_err(failed)?;
    report.timings.insert(0, reading);
    Ok(report)
}

/// A source format's usual name.
pub fn format_name(f: edge_pack::SourceFormat) -> &'static str {
    match f {
        edge_pack::SourceFormat::Gguf => "GGUF",
        edge_pack::SourceFormat::HuggingFace => "Hugging Face",
        edge_pack::SourceFormat::Llama2c => "llama2.c",
        edge_pack::SourceFormat::Edge => ".edge",
    }
}

/// The cache directory: `$EDGE_RUN_CACHE`, else `$XDG_CACHE_HOME/edge-run`, else
/// `$HOME/.cache/edge-run`.
pub fn cache_dir() -> Result<PathBuf> {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = non_empty("EDGE_RUN_CACHE") {
        return Ok(d);
    }
    if let Some(d) = non_empty("XDG_CACHE_HOME") {
        return Ok(d.join("edge-run"));
    }
    if let Some(h) = non_empty("HOME") {
        return Ok(h.join(".cache").join("edge-run"));
    }
    bail!("no cache directory for packed models; set EDGE_RUN_CACHE (or XDG_CACHE_HOME or HOME)")
}

/// 64-bit FNV-1a: a stable hash (std's `DefaultHasher` is not promised to be).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= x as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Length-delimit each field so concatenations cannot collide.
        self.0 ^= b.len() as u64;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
}

fn hash_file_meta(h: &mut Fnv, m: &std::fs::Metadata) {
    h.u64(m.len());
    if let Ok(t) = m.modified() {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        h.u64(d.as_secs());
        h.u64(d.subsec_nanos() as u64);
    }
}

/// `<stem>-<hash>.edge`, the hash covering the canonical path, size and mtime of the input (of
/// every file, for a folder), the packer's version and the packing options.
fn cache_file_name(path: &Path, meta: &std::fs::Metadata, enc: PackEncoding, group: usize) -> Result<String> {
    let canon = std::fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    let mut h = Fnv::new();
    h.bytes(canon.as_os_str().as_encoded_bytes());
    if meta.is_dir() {
        let mut entries: Vec<(String, std::fs::Metadata)> = std::fs::read_dir(&canon)
            .with_context(|| format!("cannot list {}", canon.display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                // Followed through symlinks (Hugging Face's cache links every file to a blob):
                // a changed target changes the key.
                let m = std::fs::metadata(e.path()).ok()?;
                m.is_file().then(|| (e.file_name().to_string_lossy().into_owned(), m))
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, m) in &entries {
            h.bytes(name.as_bytes());
            hash_file_meta(&mut h, m);
        }
    } else {
        hash_file_meta(&mut h, meta);
    }
    // edge-pack shares the workspace version with edge-run.
    h.bytes(b"edge-pack");
    h.bytes(env!("CARGO_PKG_VERSION").as_bytes());
    h.u64(edge_runtime::format::VERSION as u64);
    h.bytes(enc.name().as_bytes());
    if enc.grouped() {
        h.u64(group as u64);
    }
    // The calibration recipe: a changed recipe packs anew.
    if let Some(c) = auto_calibration(enc) {
        h.bytes(b"self-sampled");
        h.u64(c.tokens as u64);
        h.u64(c.seq_len as u64);
        h.u64(c.seed);
        h.u64(c.profile_tokens.map_or(u64::MAX, |n| n as u64));
        h.bytes(c.gptq.name().as_bytes());
        h.u64(c.damp.to_bits());
        for w in c.view_weights {
            h.u64(w.to_bits() as u64);
        }
    }
    let stem = canon
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let stem: String =
        stem.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    Ok(format!("{stem}-{:016x}.edge", h.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_auto_pack_is_the_calibrated_recipe() {
        let c = auto_calibration(PackEncoding::Nested8Cal).expect("q8-cal calibrates");
        assert!(matches!(c.source, CalibrationSource::SelfSampled));
        assert_eq!(c.view_weights, [1.0, 1.0, 1.0, 4.0]);
        for enc in [PackEncoding::F32, PackEncoding::F16, PackEncoding::Bf16, PackEncoding::Nested8] {
            assert!(auto_calibration(enc).is_none(), "{enc:?}");
        }
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(["edge-run", "-m", "x.gguf", "-p", "hi"]).unwrap();
        assert_eq!(cli.generate.model.pack_encoding, PackEncoding::Nested8Cal);
        assert_eq!(cli.generate.model.group_size, 64);
    }

    #[test]
    fn cache_names_are_stable_and_depend_on_options() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("My Model.gguf");
        std::fs::write(&f, b"x").unwrap();
        let m = std::fs::metadata(&f).unwrap();
        let a = cache_file_name(&f, &m, PackEncoding::F16, 64).unwrap();
        assert_eq!(a, cache_file_name(&f, &m, PackEncoding::F16, 64).unwrap());
        assert!(a.starts_with("My_Model-") && a.ends_with(".edge"), "{a}");
        assert_ne!(a, cache_file_name(&f, &m, PackEncoding::Nested8, 64).unwrap());
        // The calibrated default is not mistaken for an f16 or a plain q8 pack.
        let cal = cache_file_name(&f, &m, PackEncoding::Nested8Cal, 64).unwrap();
        assert_ne!(a, cal);
        assert_ne!(cal, cache_file_name(&f, &m, PackEncoding::Nested8, 64).unwrap());
        // Group size only matters for grouped encodings.
        assert_eq!(a, cache_file_name(&f, &m, PackEncoding::F16, 32).unwrap());
        for enc in [PackEncoding::Nested8, PackEncoding::Nested8Cal] {
            assert_ne!(cache_file_name(&f, &m, enc, 32).unwrap(), cache_file_name(&f, &m, enc, 64).unwrap());
        }
        // A changed file gets a new name.
        std::fs::write(&f, b"xy").unwrap();
        let m2 = std::fs::metadata(&f).unwrap();
        assert_ne!(a, cache_file_name(&f, &m2, PackEncoding::F16, 64).unwrap());
    }
}
