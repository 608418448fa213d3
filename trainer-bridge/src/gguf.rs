//! GGUF reader (v2/v3): metadata, tensor infos, dequantization of every supported type to f32.
//! (Helper-owned: being written.)

use std::path::Path;

use crate::source::SourceModel;

/// Read a GGUF file of the Llama family into a [`SourceModel`].
/// `tokenizer` overrides the tokenizer (a `tokenizer.json`); otherwise one beside the file is
/// used, else one is built from the GGUF's own `tokenizer.ggml.*` metadata.
pub fn load_gguf(path: &Path, tokenizer: Option<&Path>) -> anyhow::Result<SourceModel> {
    let _ = (path, tokenizer);
    anyhow::bail!("GGUF import is being written")
}
