//! Tokenizer handling for the packer: finding a `tokenizer.json`, building one from GGUF
//! metadata, validating it loads.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::Context;
use serde_json::json;

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

/// The `tokenizer.json` that belongs beside a model file (`<dir>/tokenizer.json`), if any.
/// `model_path` may be the model file or its folder.
pub fn find_tokenizer_json(model_path: &Path) -> Option<PathBuf> {
    let dir = if model_path.is_dir() { model_path } else { model_path.parent()? };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let p = dir.join("tokenizer.json");
    p.is_file().then_some(p)
}

/// The `tokenizer.ggml.*` metadata of a GGUF file, as needed to rebuild its tokenizer.
#[derive(Debug, Clone, Copy)]
pub struct GgmlVocab<'a> {
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE), `"llama"` (SentencePiece), ...
    pub model: &'a str,
    /// `tokenizer.ggml.pre`: llama.cpp's name of the pre-tokenizer.
    pub pre: Option<&'a str>,
    /// `tokenizer.ggml.tokens`, indexed by id.
    pub tokens: &'a [&'a str],
    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
    /// 6 byte), indexed by id.
    pub token_types: Option<&'a [i64]>,
    /// `tokenizer.ggml.merges`: `"left right"`, highest priority first.
    pub merges: &'a [&'a str],
}

/// GGML token type of control tokens (`<|im_start|>`, ...).
pub const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGML token type of user-defined added tokens.
pub const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The GPT-2 split regex (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_GPT2`).
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// The Llama 3 split regex (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_LLAMA3`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn split(pattern: &str) -> serde_json::Value {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
}

fn byte_level(use_regex: bool) -> serde_json::Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// The Hugging Face pre-tokenizer equivalent to llama.cpp's pre-tokenizer `pre`, and whether
/// BPE merges are bypassed for whole-vocabulary words (`ignore_merges`). `None` when unknown.
fn pre_tokenizer(pre: Option<&str>) -> Option<(serde_json::Value, bool)> {
    Some(match pre.unwrap_or("default") {
        // llama.cpp's fallback for BPE vocabularies without a known pre-tokenizer: four regexes
        // applied in turn, each splitting the pieces of the previous one.
        "default" => (
            json!({"type": "Sequence", "pretokenizers": [
                split(r"[\p{P}\$\+<=>\^~\|]+"),
                split(GPT2_REGEX),
                split(r"\p{N}+"),
                split(r"[0-9][0-9][0-9]"),
                byte_level(false),
            ]}),
            false,
        ),
        "gpt2" | "mpt" | "olmo" => (byte_level(true), false),
        // Each digit on its own, then the GPT-2 regex.
        "smollm" | "starcoder" | "refact" | "codeshell" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            false,
        ),
        "llama3" | "llama-bpe" | "smaug-bpe" | "falcon3" => (
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]}),
            true,
        ),
        _ => return None,
    })
}

/// Build a Hugging Face `tokenizer.json` from GGUF tokenizer metadata and check that it loads.
///
/// Supported: byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`) with a known
/// pre-tokenizer. Control tokens become special added tokens, user-defined tokens non-special
/// added tokens (both are matched in raw text before BPE, as llama.cpp does). `Ok(None)` for
/// anything else (SentencePiece `llama` vocabularies, unknown pre-tokenizers): the caller then
/// needs a `tokenizer.json` from elsewhere. No BOS/EOS are inserted by the tokenizer itself.
pub fn tokenizer_json_from_ggml(v: &GgmlVocab<'_>) -> anyhow::Result<Option<String>> {
    if v.model != "gpt2" {
        return Ok(None);
    }
    let Some((pre_tokenizer, ignore_merges)) = pre_tokenizer(v.pre) else { return Ok(None) };
    if v.tokens.is_empty() {
        anyhow::bail!("tokenizer.ggml.tokens is empty");
    }
    if let Some(tt) = v.token_types {
        if tt.len() != v.tokens.len() {
            anyhow::bail!(
                "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
                tt.len(),
                v.tokens.len()
            );
        }
    }

    let mut vocab = serde_json::Map::with_capacity(v.tokens.len());
    let mut added = Vec::new();
    for (id, &tok) in v.tokens.iter().enumerate() {
        if !vocab.contains_key(tok) {
            vocab.insert(tok.to_string(), json!(id));
        }
        let ty = v.token_types.map_or(1, |tt| tt[id]);
        if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
            added.push(json!({
                "id": id,
                "content": tok,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": ty == TOKEN_TYPE_CONTROL,
            }));
        }
    }

    let mut merges = Vec::with_capacity(v.merges.len());
    for (i, m) in v.merges.iter().enumerate() {
        // As llama.cpp: split at the first space after the first character (so a merge whose
        // left side is itself a space still splits correctly).
        let first = m.chars().next().map_or(0, char::len_utf8);
        let pos = m
            .get(first..)
            .and_then(|rest| rest.find(' '))
            .map(|p| p + first)
            .ok_or_else(|| anyhow::anyhow!("tokenizer.ggml.merges entry #{i} ({m:?}) is not two tokens separated by a space"))?;
        merges.push(json!([&m[..pos], &m[pos + 1..]]));
    }

    let tok = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": ignore_merges,
            "vocab": vocab,
            "merges": merges,
        },
    });
    let text = serde_json::to_string(&tok)?;
    validate_tokenizer_json(&text)?;
    Ok(Some(text))
}
