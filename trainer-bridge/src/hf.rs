//! Hugging Face folder reader: config.json, model.safetensors (or sharded), tokenizer.json.
//! (Helper-owned: being written.)

use std::path::Path;

use crate::source::SourceModel;

pub fn load_hf(dir: &Path, tokenizer: Option<&Path>) -> anyhow::Result<SourceModel> {
    let _ = (dir, tokenizer);
    anyhow::bail!("HF import is being written")
}
