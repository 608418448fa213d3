//! Encoding a [`SourceModel`] and writing the `.edge` file. (Helper-owned: being written.)

use std::path::{Path, PathBuf};

use crate::source::SourceModel;

/// How linear weights (and embeddings) are stored. Norms are always f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightEncoding {
    F32,
    #[default]
    F16,
    Bf16,
    /// 8-bit codes as nested bit planes (views of 8/4/3/2 bits).
    Nested8,
}

#[derive(Debug, Clone)]
pub struct PackOptions {
    pub encoding: WeightEncoding,
    /// Group size of grouped encodings (multiple of 8 dividing every row).
    pub group_size: u32,
    /// A `tokenizer.json` to embed instead of the one found with the model.
    pub tokenizer: Option<PathBuf>,
    /// Pack even without a tokenizer (the checkpoint then runs on token ids only).
    pub allow_no_tokenizer: bool,
    /// Replace an existing output file.
    pub force: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            encoding: WeightEncoding::F16,
            group_size: 64,
            tokenizer: None,
            allow_no_tokenizer: false,
            force: false,
            progress: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PackReport {
    pub output: PathBuf,
    pub bytes: u64,
    pub n_tensors: usize,
    pub seconds: f64,
}

/// Encode `model` and write it atomically to `output`.
pub fn pack_model(model: &SourceModel, output: &Path, opts: &PackOptions) -> anyhow::Result<PackReport> {
    let _ = (model, output, opts);
    anyhow::bail!("packing is being written")
}

/// Read `input` (any supported format) and pack it to `output`.
pub fn pack_file(input: &Path, output: &Path, opts: &PackOptions) -> anyhow::Result<PackReport> {
    let model = crate::load_source(input, opts.tokenizer.as_deref())?;
    pack_model(&model, output, opts)
}
