//! edge-pack: turns a model (GGUF, Hugging Face folder, llama2.c `.bin`) into one `.edge` file.
//!
//! Every importer produces a [`SourceModel`]: the Llama config, the tensors under their
//! canonical (GGUF) names as f32 with q/k rows in interleaved RoPE order, and the tokenizer
//! and chat template. [`pack::pack_model`] encodes it and writes the checkpoint atomically.

pub mod calibrate;
pub mod gguf;
pub mod hf;
pub mod llama2c;
pub mod pack;
pub mod quant;
pub mod sensitivity;
pub mod source;
pub mod tokenizer;
mod source_detect;
pub use source_detect::resolve_input;

pub use pack::{pack_file, pack_model, PackOptions, PackReport, WeightEncoding};
pub use source::{detect_format, load_source, SourceFormat, SourceModel, SourceTensor};
