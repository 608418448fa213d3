//! llama2.c `.bin` reader (legacy v0 header). (Helper-owned: being written.)

use std::path::Path;

use crate::source::SourceModel;

pub fn load_llama2c(path: &Path, tokenizer: Option<&Path>) -> anyhow::Result<SourceModel> {
    let _ = (path, tokenizer);
    anyhow::bail!("llama2.c import is being written")
}
