//! The checkpoint's tokenizer and chat template, and token ids typed on the command line.

use std::str::FromStr;

use anyhow::{anyhow, bail, Result};
use edge_runtime::format::keys;
use edge_runtime::Checkpoint;

use crate::report::one_line;

/// The checkpoint's tokenizer, special ids and chat template.
pub struct Tok {
    pub tk: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Whether a BOS token starts every sequence; `None` when the checkpoint does not say
    /// (the tokenizer's own post-processor decides then).
    pub add_bos: Option<bool>,
    /// Tokens that end generation (EOS and the usual end-of-turn tokens present).
    pub stops: Vec<u32>,
    pub chat_template: Option<String>,
}

const END_OF_TURN: &[&str] =
    &["<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<|endoftext|>", "<|end_of_text|>", "</s>", "<end_of_turn>"];

impl Tok {
    /// The tokenizer embedded in `ck`, or `None` when it has none.
    pub fn from_checkpoint(ck: &Checkpoint<'_>) -> Result<Option<Tok>> {
        let Some(json) = ck.get_bytes(keys::TOKENIZER_JSON) else { return Ok(None) };
        let json = std::str::from_utf8(json).map_err(|_| anyhow!("the embedded tokenizer is not UTF-8; re-pack the model"))?;
        let tk = tokenizers::Tokenizer::from_str(json)
            .map_err(|e| anyhow!("the embedded tokenizer does not load ({e}); re-pack the model"))?;
        let id = |k: &str| ck.get_u64(k).and_then(|v| u32::try_from(v).ok());
        Ok(Some(Tok::new(
            tk,
            id(keys::BOS_ID),
            id(keys::EOS_ID),
            ck.get_bool(keys::ADD_BOS),
            ck.get_str(keys::CHAT_TEMPLATE).map(str::to_owned),
        )))
    }

    /// A tokenizer with its special ids; the stop tokens are EOS and the end-of-turn tokens
    /// (`END_OF_TURN`) that are special tokens of `tk`.
    pub fn new(tk: tokenizers::Tokenizer, bos: Option<u32>, eos: Option<u32>, add_bos: Option<bool>, chat_template: Option<String>) -> Tok {
        let mut stops: Vec<u32> = eos.into_iter().collect();
        let added = tk.get_added_vocabulary();
        for name in END_OF_TURN {
            if let Some(i) = tk.token_to_id(name) {
                // Only special added tokens: a plain vocabulary entry spelled like one is text.
                let special = added.get_added_tokens_decoder().get(&i).is_some_and(|t| t.special);
                if special && !stops.contains(&i) {
                    stops.push(i);
                }
            }
        }
        Tok { tk, bos, eos, add_bos, stops, chat_template }
    }

    /// Tokenize `text`, adding BOS as the checkpoint says. `parse_special`: recognise special
    /// tokens written in the text (chat markup) rather than tokenizing them as plain text.
    pub fn encode(&mut self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        self.tk.set_encode_special_tokens(!parse_special);
        let add_special = self.add_bos.is_none();
        let enc = self.tk.encode_fast(text, add_special).map_err(|e| anyhow!("cannot tokenize the text: {e}"))?;
        let mut ids = enc.get_ids().to_vec();
        if let (Some(true), Some(bos)) = (self.add_bos, self.bos) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.tk.decode(ids, skip_special).map_err(|e| anyhow!("cannot decode tokens: {e}"))
    }

    fn token_text(&self, id: Option<u32>) -> String {
        id.and_then(|i| self.tk.id_to_token(i)).unwrap_or_default()
    }

    /// Render the chat template for one user message (and an optional system message), with the
    /// generation prompt added, as Hugging Face's `apply_chat_template` does.
    pub fn render_chat(&self, system: Option<&str>, user: &str) -> Result<String> {
        let tmpl = self.chat_template.as_deref().ok_or_else(|| {
            anyhow!("this checkpoint has no chat template; drop --chat (or re-pack with a tokenizer that has one)")
        })?;
        render_chat_template(tmpl, system, user, &self.token_text(self.bos), &self.token_text(self.eos))
    }
}

/// Render a Hugging Face chat template (Jinja) for one user message, with
/// `add_generation_prompt=true`, the way `transformers` does: `trim_blocks` and `lstrip_blocks`,
/// Python string methods, `raise_exception` and `strftime_now`.
pub fn render_chat_template(tmpl: &str, system: Option<&str>, user: &str, bos: &str, eos: &str) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |fmt: String| -> String { strftime_now(&fmt) });
    env.add_template("chat", tmpl)
        .map_err(|e| anyhow!("the chat template does not parse: {}", one_line(&e.to_string())))?;
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(minijinja::context! { role => "system", content => s });
    }
    messages.push(minijinja::context! { role => "user", content => user });
    let t = env.get_template("chat").map_err(|e| anyhow!("chat template: {e}"))?;
    t.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => true,
        bos_token => bos,
        eos_token => eos,
    })
    .map_err(|e| anyhow!("cannot render the chat template: {}", one_line(&e.to_string())))
}

/// The local time formatted with C's `strftime` (templates use it for a "today" line).
#[cfg(unix)]
fn strftime_now(fmt: &str) -> String {
    let Ok(cfmt) = std::ffi::CString::new(fmt) else { return String::new() };
    let mut buf = [0u8; 256];
    // SAFETY: `time` and `localtime_r` write only into the locals passed; `strftime` writes at
    // most `buf.len()` bytes into `buf` and returns how many (0 on overflow).
    let n = unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return String::new();
        }
        libc::strftime(buf.as_mut_ptr().cast(), buf.len(), cfmt.as_ptr(), &tm)
    };
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[cfg(not(unix))]
fn strftime_now(_fmt: &str) -> String {
    String::new()
}

/// Parse token ids given by `what` (`--prompt-ids`, a `--token-ids` file): whole numbers
/// separated by spaces and/or commas, each below `vocab`, the model's vocabulary size. An error
/// names the first bad id and its position (from 1), and for one out of range the vocabulary.
pub fn parse_ids(s: &str, vocab: usize, what: &str) -> Result<Vec<u32>> {
    s.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| !t.is_empty())
        .enumerate()
        .map(|(i, t)| {
            let pos = i + 1;
            let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
            if t.strip_prefix('-').is_some_and(digits) {
                bail!("{what}: token id {t} at position {pos} is negative; ids run from 0 to {} (the model's vocabulary of {vocab})", vocab.saturating_sub(1));
            }
            if !digits(t) {
                bail!("{what}: '{t}' at position {pos} is not a token id; give whole numbers separated by spaces or commas, e.g. \"1 2 3\"");
            }
            match t.parse::<u64>() {
                Ok(id) if id < vocab as u64 => Ok(id as u32),
                _ => bail!(
                    "{what}: token id {t} at position {pos} is out of range for the model's vocabulary of {vocab} tokens (ids 0 to {})",
                    vocab.saturating_sub(1)
                ),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_like_transformers() {
        let r = render_chat_template(CHATML, None, "Hi?", "<s>", "</s>").unwrap();
        assert_eq!(r, "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n");
        let r = render_chat_template(CHATML, Some("Be brief"), "Hi?", "<s>", "</s>").unwrap();
        assert!(r.starts_with("<|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\n"), "{r}");
    }

    #[test]
    fn python_methods_blocks_and_exceptions() {
        // trim_blocks/lstrip_blocks, .strip(), bos_token, raise_exception, strftime_now.
        let t = "{{ bos_token }}\n  {% for m in messages %}\n[{{ m['role'] }}] {{ m['content'].strip() }}\n  {% endfor %}\n{% if strftime_now('%Y') | length != 4 %}{{ raise_exception('no year') }}{% endif %}";
        let r = render_chat_template(t, None, "  spaced  ", "<s>", "</s>").unwrap();
        assert_eq!(r, "<s>\n[user] spaced\n");
        let bad = "{{ raise_exception('Only user and assistant roles are supported') }}";
        let e = render_chat_template(bad, None, "x", "", "").unwrap_err().to_string();
        assert!(e.contains("Only user and assistant roles") && !e.contains('\n'), "{e}");
        assert!(render_chat_template("{% for %}", None, "x", "", "").is_err());
    }


    /// A model `fetch.sh` downloads, fetched (cached) when missing; `None` (said loudly) when it
    /// cannot be had and `EDGE_ALLOW_MISSING_MODELS` is set.
    fn fetched_gguf(name: &str, file: &str) -> Option<std::path::PathBuf> {
        let cache = std::env::var_os("EDGE_MODELS").map(std::path::PathBuf::from).unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/edge-run-models")
        });
        let p = cache.join(file);
        if !p.is_file() {
            let models = std::env::var_os("EDGE_MODELS_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| "/work/shared/models".into());
            let _ = std::process::Command::new(models.join("fetch.sh")).arg(name).status();
        }
        if p.is_file() {
            return Some(p);
        }
        let msg = format!("{} not found and fetch.sh {name} failed", p.display());
        assert!(std::env::var_os("EDGE_ALLOW_MISSING_MODELS").is_some(), "{msg}; set EDGE_ALLOW_MISSING_MODELS=1 to skip");
        eprintln!("\n*** SKIP chat template test: {msg} ***\n");
        None
    }

    /// The tokenizer edge-pack builds from a GGUF's metadata, with the GGUF's special ids.
    fn tok_from_gguf(path: &std::path::Path, template: Option<String>) -> Tok {
        let g = edge_pack::gguf::GgufFile::open(path).unwrap();
        let json = g.build_tokenizer_json().unwrap().unwrap();
        let id = |k: &str| g.get_u64(k).unwrap().map(|v| v as u32);
        let spm = g.get_str("tokenizer.ggml.model").unwrap() == Some("llama");
        let add_bos = g.get_bool("tokenizer.ggml.add_bos_token").unwrap().unwrap_or(spm);
        let template = template.or_else(|| g.get_str("tokenizer.chat_template").unwrap().map(str::to_owned));
        let tk = tokenizers::Tokenizer::from_str(&json).unwrap();
        Tok::new(tk, id("tokenizer.ggml.bos_token_id"), id("tokenizer.ggml.eos_token_id"), Some(add_bos), template)
    }

    /// Render each prompt of `tests/oracles/refs/<model>.json` with our chat-template path and
    /// tokenize it: the text must be what transformers renders, the ids what llama.cpp gives.
    fn check_chat(model: &str, tok: &mut Tok, end_of_turn: &str) {
        let refs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracles/refs").join(format!("{model}.json"));
        let refs: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(refs).unwrap()).unwrap();
        let chats = refs["chat"].as_array().unwrap();
        assert!(!chats.is_empty());
        for c in chats {
            let rendered = tok.render_chat(c["system"].as_str(), c["user"].as_str().unwrap()).unwrap();
            assert_eq!(rendered, c["rendered"].as_str().unwrap(), "{model}: rendering differs from transformers'");
            let want: Vec<u32> = c["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            assert_eq!(tok.encode(&rendered, true).unwrap(), want, "{model}: prompt ids differ from llama.cpp's");
        }
        let eot = tok.tk.token_to_id(end_of_turn).unwrap();
        assert!(tok.stops.contains(&eot), "{model}: {end_of_turn} ({eot}) does not stop generation: {:?}", tok.stops);
        assert!(tok.stops.contains(&tok.eos.unwrap()));
    }

    #[test]
    fn qwen2_chatml_template_from_the_gguf() {
        let Some(p) = fetched_gguf("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") else { return };
        let mut tok = tok_from_gguf(&p, None);
        assert!(tok.chat_template.as_deref().unwrap().contains("You are Qwen, created by Alibaba Cloud"));
        assert_eq!((tok.add_bos, tok.eos), (Some(false), Some(151645)));
        check_chat("qwen2.5-coder-0.5b", &mut tok, "<|im_end|>");
        // The default system prompt comes from the template when none is given.
        let r = tok.render_chat(None, "Hi").unwrap();
        assert!(r.starts_with("<|im_start|>system\nYou are Qwen") && r.ends_with("<|im_start|>assistant\n"), "{r}");
    }

    /// Gemma 3 270M is the base model: its GGUF has no chat template, so the instruction-tuned
    /// Gemma 3 template (tests/oracles/gemma3-it-chat-template.jinja) is applied to its vocabulary.
    #[test]
    fn gemma3_template_with_bos_and_end_of_turn() {
        let Some(p) = fetched_gguf("gemma3-270m", "gemma-3-270m-q4_k_m.gguf") else { return };
        let tmpl = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracles/gemma3-it-chat-template.jinja");
        let mut tok = tok_from_gguf(&p, Some(std::fs::read_to_string(tmpl).unwrap()));
        assert_eq!((tok.add_bos, tok.bos), (Some(true), Some(2)));
        check_chat("gemma3-270m", &mut tok, "<end_of_turn>");
        // The template writes <bos> itself: exactly one BOS, not two.
        let ids = tok.encode(&tok.render_chat(None, "Hi").unwrap(), true).unwrap();
        assert_eq!((ids[0], ids[1]), (2, 105), "{ids:?}");
        // Plain text gets BOS from the tokenizer's rule; and SentencePiece decodes losslessly.
        let ids = tok.encode("Hello  world\n", false).unwrap();
        assert_eq!(ids[0], 2);
        assert_eq!(tok.decode(&ids, true).unwrap(), "Hello  world\n");
    }

    /// Qwen3's template (its thinking and tool branches in Jinja: `namespace`, reversed slices,
    /// Python string methods), as Qwen ships it: rendered as transformers renders it.
    #[test]
    fn qwen3_template_renders_as_transformers_does() {
        let tmpl = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracles/qwen3-chat-template.jinja");
        let tmpl = std::fs::read_to_string(tmpl).unwrap();
        // transformers 5.25's `apply_chat_template(..., add_generation_prompt=True)` of the same.
        let r = render_chat_template(&tmpl, None, "Hello", "", "<|im_end|>").unwrap();
        assert_eq!(r, "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n");
        let r = render_chat_template(&tmpl, Some("Be brief."), "Hello", "", "<|im_end|>").unwrap();
        assert_eq!(r, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn prompt_ids() {
        assert_eq!(parse_ids("1 2,3 ,\t4", 5, "--prompt-ids").unwrap(), [1, 2, 3, 4]);
        let e = parse_ids("1 -2", 5, "--prompt-ids").unwrap_err().to_string();
        assert!(e.contains("-2 at position 2 is negative"), "{e}");
        let e = parse_ids("1 2 x3", 5, "--prompt-ids").unwrap_err().to_string();
        assert!(e.contains("'x3' at position 3 is not a token id"), "{e}");
        // Out of range, including beyond u64.
        for big in ["5", "4294967296", "99999999999999999999999"] {
            let e = parse_ids(&format!("0 {big}"), 5, "ids.txt").unwrap_err().to_string();
            assert_eq!(e, format!("ids.txt: token id {big} at position 2 is out of range for the model's vocabulary of 5 tokens (ids 0 to 4)"));
        }
    }
}
