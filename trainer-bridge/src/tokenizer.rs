//! Tokenizer handling for the packer: finding a `tokenizer.json`, building one from GGUF
//! metadata, validating it loads. (Helper-owned: being written.)
