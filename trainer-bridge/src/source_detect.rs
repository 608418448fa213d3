//! Format detection (by content, never by file name) and dispatch to the importers.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};

use crate::source::{SourceFormat, SourceModel};

fn not_a_model(path: &Path, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "'{}' is not a model edge-pack can read ({why}): expected a GGUF file, a Hugging Face folder \
         (config.json + safetensors) or a llama2.c .bin",
        path.display()
    )
}

pub(crate) fn detect(path: &Path) -> anyhow::Result<SourceFormat> {
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

pub(crate) fn load(path: &Path, tokenizer: Option<&Path>) -> anyhow::Result<SourceModel> {
    match detect(path)? {
        SourceFormat::Gguf => crate::gguf::load_gguf(path, tokenizer),
        SourceFormat::HuggingFace => crate::hf::load_hf(path, tokenizer),
        SourceFormat::Llama2c => crate::llama2c::load_llama2c(path, tokenizer),
        SourceFormat::Edge => {
            bail!("'{}' is already an .edge checkpoint; nothing to pack (run it with edge-run)", path.display())
        }
    }
}
