//! Tokenizer handling for the packer: finding a `tokenizer.json`, building one from GGUF
//! metadata, validating it loads.

use std::path::Path;
use std::str::FromStr;

use anyhow::Context;

/// Read a Hugging Face `tokenizer.json` and check that it loads with the `tokenizers` crate.
/// Returns the file's text unchanged.
pub fn read_tokenizer_json(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read tokenizer file {}", path.display()))?;
    validate_tokenizer_json(&text).with_context(|| {
        format!(
            "{} is not a valid Hugging Face tokenizer.json; pass the model's own tokenizer.json with --tokenizer",
            path.display()
        )
    })?;
    Ok(text)
}

/// Check that `text` parses as a `tokenizers::Tokenizer`.
pub fn validate_tokenizer_json(text: &str) -> anyhow::Result<()> {
    tokenizers::Tokenizer::from_str(text)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("tokenizer does not load: {e}"))
}
