//! The checkpoint's tokenizer and chat template, and token ids typed on the command line.

use std::str::FromStr;

use anyhow::{anyhow, Result};
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
        let bos = id(keys::BOS_ID);
        let eos = id(keys::EOS_ID);
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
        Ok(Some(Tok {
            tk,
            bos,
            eos,
            add_bos: ck.get_bool(keys::ADD_BOS),
            stops,
            chat_template: ck.get_str(keys::CHAT_TEMPLATE).map(str::to_owned),
        }))
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

/// Parse `--prompt-ids`: integers separated by spaces and/or commas.
pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<u32>().map_err(|_| anyhow!("--prompt-ids: '{t}' is not a token id (expected e.g. \"1 2 3\")")))
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


    #[test]
    fn prompt_ids() {
        assert_eq!(parse_ids("1 2,3 ,\t4").unwrap(), [1, 2, 3, 4]);
        assert!(parse_ids("1 -2").is_err());
    }
}
