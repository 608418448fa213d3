//! Format detection (by content, never by file name) and dispatch to the importers.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};

use crate::source::SourceModel;

/// The formats edge-pack tells apart: the three it imports, and its own output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Gguf,
    HuggingFace,
    Llama2c,
    Edge,
}

fn not_a_model(path: &Path, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "'{}' is not a model edge-pack can read ({why}): expected a GGUF file, a Hugging Face folder \
         (config.json + safetensors) or a llama2.c .bin",
        path.display()
    )
}

/// The file or folder that holds the model at `path`: a folder with safetensors weights is a
/// Hugging Face folder; a folder without them that holds exactly one `.gguf` file (a GGUF
/// release with its tokenizer.json beside it) stands for that file.
pub fn resolve_input(path: &Path) -> anyhow::Result<std::path::PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let has_safetensors = path.join("model.safetensors").is_file() || path.join("model.safetensors.index.json").is_file();
    if has_safetensors {
        return Ok(path.to_path_buf());
    }
    let ggufs: Vec<_> = std::fs::read_dir(path)
        .with_context(|| format!("cannot list '{}'", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")))
        .collect();
    match ggufs.as_slice() {
        [one] => Ok(one.clone()),
        [] => Ok(path.to_path_buf()),
        many => bail!(
            "'{}' holds {} GGUF files and no safetensors: name the one to use (e.g. '{}')",
            path.display(),
            many.len(),
            many[0].display()
        ),
    }
}

/// Decide the format of `path` from its contents (magic bytes) or, for a folder, its files.
pub fn detect_format(path: &Path) -> anyhow::Result<SourceFormat> {
    let path = &resolve_input(path)?;
    let meta = std::fs::metadata(path).with_context(|| format!("cannot open '{}'", path.display()))?;
    if meta.is_dir() {
        if path.join("config.json").is_file() {
            return Ok(SourceFormat::HuggingFace);
        }
        return Err(not_a_model(path, "a folder without config.json"));
    }
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open '{}'", path.display()))?;
    let mut head = [0u8; 28];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read '{}'", path.display())),
        }
    }
    let head = &head[..n];
    if head.starts_with(b"GGUF") {
        return Ok(SourceFormat::Gguf);
    }
    if head.starts_with(&edge_runtime::format::MAGIC) {
        return Ok(SourceFormat::Edge);
    }
    if head.len() >= 4 && u32::from_le_bytes([head[0], head[1], head[2], head[3]]) == 0x616b_3432 {
        // A newer llama2.c export: let the importer say why it is refused.
        return Ok(SourceFormat::Llama2c);
    }
    if let Some(h) = crate::llama2c::Llama2cHeader::parse(head) {
        if h.file_size() == meta.len() {
            return Ok(SourceFormat::Llama2c);
        }
        bail!(
            "truncated or not a llama2.c checkpoint: '{}' is {} bytes, but its header ({}) implies {} bytes",
            path.display(),
            meta.len(),
            h.describe(),
            h.file_size()
        );
    }
    if n == 0 {
        return Err(not_a_model(path, "the file is empty"));
    }
    Err(not_a_model(path, "unrecognised contents"))
}

/// Read any supported source into a [`SourceModel`]. `tokenizer` overrides where the tokenizer
/// comes from (a `tokenizer.json`).
pub fn load_source(path: &Path, tokenizer: Option<&Path>) -> anyhow::Result<SourceModel> {
    let path = &resolve_input(path)?;
    if crate::qat::is_export(path) {
        bail!(
            "'{}' is an edge-qat export of trained 8-bit codes: pack it with edge-pack (which stores those codes as they are), then run the .edge file",
            path.display()
        );
    }
    match detect_format(path)? {
        SourceFormat::Gguf => crate::gguf::load_gguf(path, tokenizer),
        SourceFormat::HuggingFace => crate::hf::load_hf(path, tokenizer),
        SourceFormat::Llama2c => crate::llama2c::load_llama2c(path, tokenizer),
        SourceFormat::Edge => {
            bail!("'{}' is already an .edge checkpoint; nothing to pack (run it with edge-run)", path.display())
        }
    }
}
