//! edge-pack: turns a model (GGUF, Hugging Face folder, llama2.c `.bin`) into one `.edge` file.
//!
//! Every importer produces a [`SourceModel`]: its architecture and config, the tensors the
//! architecture implies under their canonical (GGUF) names as f32 with q/k rows in interleaved
//! RoPE order, and the tokenizer and chat template. [`pack::pack_model`] encodes it and writes
//! the checkpoint atomically.
//!
//! Modules, each using only those on the lines below it (and `edge_runtime`):
//! ```text
//! pack                             encode a SourceModel (calibrated or not), write the file
//! source_detect                    tell an input's format, hand it to its importer
//! gguf  hf  llama2c                importers: one format -> SourceModel
//! calibrate  sensitivity           GPTQ's tokens, Hessians and codes; the per-unit KL profile
//! sentencepiece                    a tokenizer.model read as GGUF-style vocabulary fields
//! source  tokenizer  quant  threads  rope_scaling  writable  arg_values
//! ```
//! The importers know nothing of calibration or packing; calibration and the profile know
//! nothing of the sources.

pub mod arg_values;
pub mod calibrate;
pub mod gguf;
pub mod hf;
pub mod interrupt;
pub mod llama2c;
pub mod pack;
pub mod qat;
pub mod quant;
pub mod rope_scaling;
pub mod sensitivity;
pub mod sentencepiece;
pub mod source;
mod source_detect;
mod threads;
pub mod tokenizer;
pub mod writable;

pub use pack::{pack_file, pack_model, pack_model_with, PackOptions, PackReport, WeightEncoding};
pub use source::{SourceModel, SourceTensor};
pub use source_detect::{detect_format, load_source, resolve_input, SourceFormat};

/// Install a panic hook that prints `PROGRAM: error: internal error: MESSAGE at FILE:LINE;
/// please report this bug` on one line and exits with status 1 (both binaries use it: a panic
/// is a bug, but the user still gets one line, not a backtrace).
pub fn install_one_line_panic_hook(program: &'static str) {
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let line = format!("internal error: {msg}{at}; please report this bug").replace(['\n', '\r'], " ");
        eprintln!("{program}: error: {line}");
        std::process::exit(1);
    }));
}
