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
    /// `tokenizer.ggml.merges`: `"left right"`, highest priority first (BPE only).
    pub merges: &'a [&'a str],
    /// `tokenizer.ggml.scores`, indexed by id (SentencePiece: a merge's priority is the score
    /// of the token it makes).
    pub scores: Option<&'a [f32]>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece; llama.cpp's default is true).
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
}

/// GGML token type of ordinary vocabulary entries.
pub const TOKEN_TYPE_NORMAL: i64 = 1;
/// GGML token type of the unknown token (`<unk>`).
pub const TOKEN_TYPE_UNKNOWN: i64 = 2;
/// GGML token type of control tokens (`<|im_start|>`, ...).
pub const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGML token type of user-defined added tokens.
pub const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Token texts llama.cpp treats as control tokens whatever their GGUF type (`llama_vocab::impl::
/// load`: the end-of-generation and fill-in-the-middle tokens it detects by text), so they are
/// matched as special tokens, and not matched when special tokens are not parsed. (llama.cpp
/// forces a FIM text only when the GGUF names no token for that role; no model here does.)
const FORCED_CONTROL: &[&str] = &[
    // end of generation / turn / message
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>", "[e~[",
    // fill in the middle
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>", "\u{2581}<PRE>", "<|code_prefix|>", "<|prefix|>",
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>", "\u{2581}<SUF>", "<|code_suffix|>", "<|suffix|>",
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>", "\u{2581}<MID>", "<|code_middle|>", "<|middle|>",
    "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]",
    "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", "<|file_sep|>",
];

/// The GPT-2 split regex (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_GPT2`).
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// The Llama 3 split regex (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_LLAMA3`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The Qwen2 split regex (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_QWEN2`): Llama 3's with every digit
/// on its own (`\p{N}`, not `\p{N}{1,3}`).
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn split(pattern: &str) -> serde_json::Value {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
}

fn byte_level(use_regex: bool) -> serde_json::Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// The Hugging Face pre-tokenizer equivalent to llama.cpp's pre-tokenizer `pre`, and whether
/// BPE merges are bypassed for whole-vocabulary words (`ignore_merges`). `None` when unknown.
/// The names are those llama.cpp's `llama_vocab::impl::load` maps to each pre-type.
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
        "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" => (byte_level(true), false),
        // Each digit on its own, then the GPT-2 regex.
        "smollm" | "starcoder" | "refact" | "codeshell" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            false,
        ),
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "falcon3" | "dbrx" => (
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]}),
            true,
        ),
        // LLAMA_VOCAB_PRE_TYPE_QWEN2 (stablelm2, hunyuan and solar-open share its regex).
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" | "hunyuan" | "solar-open" => (
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]}),
            false,
        ),
        _ => return None,
    })
}

/// Build a Hugging Face `tokenizer.json` from GGUF tokenizer metadata and check that it loads.
///
/// Supported: byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`) with a known
/// pre-tokenizer, and SentencePiece vocabularies (`"llama"`, with scores) rebuilt as a BPE model
/// that reproduces llama.cpp's SPM tokenizer (see [`spm_parts`]). Control and unknown tokens
/// become special added tokens, user-defined tokens non-special added tokens (both are matched
/// in raw text before anything else, as llama.cpp does). `Ok(None)` for anything else (other
/// vocabulary kinds, unknown pre-tokenizers): the caller then needs a `tokenizer.json` from
/// elsewhere. No BOS/EOS are inserted by the tokenizer itself.
pub fn tokenizer_json_from_ggml(v: &GgmlVocab<'_>) -> anyhow::Result<Option<String>> {
    let vocab;
    let (mut doc, model) = match v.model {
        "gpt2" => {
            let Some((pre_tokenizer, ignore_merges)) = pre_tokenizer(v.pre) else { return Ok(None) };
            vocab = Vocab::new(v)?;
            let doc = json!({
                "added_tokens": vocab.added,
                "normalizer": null,
                "pre_tokenizer": pre_tokenizer,
                "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            });
            let model = BpeJson {
                vocab: &vocab,
                merges: gguf_merges(v.merges)?,
                unk_token: None,
                byte_fallback: false,
                ignore_merges,
            };
            (doc, model)
        }
        "llama" => {
            vocab = Vocab::new(v)?;
            spm_parts(v, &vocab)?
        }
        _ => return Ok(None),
    };
    if let Some(d) = doc.as_object_mut() {
        d.insert("version".into(), json!("1.0"));
        d.insert("truncation".into(), json!(null));
        d.insert("padding".into(), json!(null));
    }
    // The large parts (vocabulary, merges) are serialized straight from borrowed slices: going
    // through `serde_json::Value` costs seconds for a 262k-token vocabulary.
    let mut text = serde_json::to_string(&doc)?;
    text.pop(); // the closing brace
    text.push_str(",\"model\":");
    text.push_str(&serde_json::to_string(&model)?);
    text.push('}');
    validate_tokenizer_json(&text)?;
    Ok(Some(text))
}

/// The token table as the `tokenizers` crate wants it: text -> id, and the added tokens.
struct Vocab {
    /// Token texts by id (llama.cpp renames an empty token `[EMPTY_<id>]`).
    texts: Vec<String>,
    /// Text -> id. A text listed twice maps to its last id, as in llama.cpp.
    ids: std::collections::HashMap<String, u32>,
    types: Vec<i64>,
    added: Vec<serde_json::Value>,
}

impl Vocab {
    fn new(v: &GgmlVocab<'_>) -> anyhow::Result<Vocab> {
        if v.tokens.is_empty() {
            anyhow::bail!("tokenizer.ggml.tokens is empty");
        }
        let n = v.tokens.len();
        if let Some(tt) = v.token_types {
            if tt.len() != n {
                anyhow::bail!("tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {n}", tt.len());
            }
        }
        let mut types: Vec<i64> = v.token_types.map_or_else(|| vec![TOKEN_TYPE_NORMAL; n], <[i64]>::to_vec);
        let texts: Vec<String> = v
            .tokens
            .iter()
            .enumerate()
            .map(|(id, t)| if t.is_empty() { format!("[EMPTY_{id}]") } else { (*t).to_string() })
            .collect();
        let mut ids = std::collections::HashMap::with_capacity(n);
        let mut added = Vec::new();
        for (id, tok) in texts.iter().enumerate() {
            ids.insert(tok.clone(), id as u32);
            if FORCED_CONTROL.contains(&tok.as_str()) {
                types[id] = TOKEN_TYPE_CONTROL;
            }
            let ty = types[id];
            if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED || ty == TOKEN_TYPE_UNKNOWN {
                added.push(json!({
                    "id": id,
                    "content": tok,
                    "single_word": false,
                    "lstrip": false,
                    "rstrip": false,
                    "normalized": false,
                    "special": ty != TOKEN_TYPE_USER_DEFINED,
                }));
            }
        }
        Ok(Vocab { texts, ids, types, added })
    }

    /// Whether `id` is the id llama.cpp finds for its text (not an earlier duplicate).
    fn is_canonical(&self, id: usize) -> bool {
        self.ids.get(&self.texts[id]) == Some(&(id as u32))
    }
}

/// A Hugging Face `BPE` model, serialized in id order (deterministic output).
struct BpeJson<'a> {
    vocab: &'a Vocab,
    merges: Vec<(&'a str, &'a str)>,
    unk_token: Option<&'a str>,
    byte_fallback: bool,
    ignore_merges: bool,
}

impl serde::Serialize for BpeJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct VocabMap<'a>(&'a Vocab);
        impl serde::Serialize for VocabMap<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let v = self.0;
                s.collect_map((0..v.texts.len()).filter(|&i| v.is_canonical(i)).map(|i| (&v.texts[i], i as u32)))
            }
        }
        let mut m = s.serialize_map(Some(11))?;
        m.serialize_entry("type", "BPE")?;
        m.serialize_entry("dropout", &None::<f32>)?;
        m.serialize_entry("unk_token", &self.unk_token)?;
        m.serialize_entry("continuing_subword_prefix", &None::<&str>)?;
        m.serialize_entry("end_of_word_suffix", &None::<&str>)?;
        m.serialize_entry("fuse_unk", &self.byte_fallback)?;
        m.serialize_entry("byte_fallback", &self.byte_fallback)?;
        m.serialize_entry("ignore_merges", &self.ignore_merges)?;
        m.serialize_entry("vocab", &VocabMap(self.vocab))?;
        m.serialize_entry("merges", &self.merges)?;
        m.end()
    }
}

/// `tokenizer.ggml.merges` (`"left right"`) as pairs.
fn gguf_merges<'a>(merges: &[&'a str]) -> anyhow::Result<Vec<(&'a str, &'a str)>> {
    merges
        .iter()
        .enumerate()
        .map(|(i, &m)| {
            // As llama.cpp: split at the first space after the first character (so a merge whose
            // left side is itself a space still splits correctly).
            let first = m.chars().next().map_or(0, char::len_utf8);
            let pos = m.get(first..).and_then(|rest| rest.find(' ')).map(|p| p + first).ok_or_else(|| {
                anyhow::anyhow!("tokenizer.ggml.merges entry #{i} ({m:?}) is not two tokens separated by a space")
            })?;
            Ok((&m[..pos], &m[pos + 1..]))
        })
        .collect()
}

/// A SentencePiece (`llama`) vocabulary as a Hugging Face BPE tokenizer that gives llama.cpp's
/// ids (`llm_tokenizer_spm_session`): the document without its model, and the model.
///
/// llama.cpp escapes spaces as `▁` (after prefixing one when `add_space_prefix`, at the start of
/// every piece of text between special tokens), splits the text into characters and repeatedly
/// merges the adjacent pair whose concatenation is the highest-scoring token (leftmost on a tie);
/// characters left over that are not tokens become byte tokens `<0xXX>`. A BPE model does the
/// same when it has one merge `(a, b)` for every way of splitting each token into two tokens,
/// ranked by the score of the token it makes (as HF's `SentencePieceExtractor` derives them),
/// with `byte_fallback`. The normalizer does the escaping (`Prepend` runs per piece of text
/// between added tokens, like llama.cpp's prefix). What cannot be expressed: two different
/// tokens with the same score competing for overlapping pairs (llama.cpp takes the leftmost,
/// BPE the lower rank), and a merge whose left or right part is a character that is not itself
/// a token; neither changed an id on the texts in `tests/oracles`.
fn spm_parts<'a>(v: &GgmlVocab<'_>, vocab: &'a Vocab) -> anyhow::Result<(serde_json::Value, BpeJson<'a>)> {
    let n = vocab.texts.len();
    let scores = v.scores.ok_or_else(|| anyhow::anyhow!("SentencePiece vocabulary without tokenizer.ggml.scores"))?;
    if scores.len() != n {
        anyhow::bail!("tokenizer.ggml.scores has {} entries but tokenizer.ggml.tokens has {n}", scores.len());
    }
    // Every split of every token into two tokens: llama.cpp looks the concatenation of any two
    // adjacent symbols up among all tokens, whatever their type.
    let mut merges: Vec<(f32, &str, &str)> = Vec::new();
    for (id, text) in vocab.texts.iter().enumerate() {
        if !vocab.is_canonical(id) {
            continue; // a duplicate text: llama.cpp only ever finds its last id
        }
        for (k, _) in text.char_indices().skip(1) {
            let (l, r) = text.split_at(k);
            if vocab.ids.contains_key(l) && vocab.ids.contains_key(r) {
                merges.push((scores[id], l, r));
            }
        }
    }
    // Highest score first (a stable sort: ties keep id order, then split order).
    merges.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));

    let add_space_prefix = v.add_space_prefix.unwrap_or(true);
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let normalizer = if add_space_prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace]})
    } else {
        replace
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let unk = v
        .unk_id
        .and_then(|i| vocab.texts.get(i as usize))
        .or_else(|| vocab.types.iter().position(|&t| t == TOKEN_TYPE_UNKNOWN).map(|i| &vocab.texts[i]));
    let doc = json!({
        "added_tokens": vocab.added,
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
    });
    let model = BpeJson {
        vocab,
        merges: merges.into_iter().map(|(_, l, r)| (l, r)).collect(),
        unk_token: unk.map(String::as_str),
        byte_fallback: true,
        ignore_merges: false,
    };
    Ok((doc, model))
}
