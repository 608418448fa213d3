//! Finding, auto-packing and opening a model; its tokenizer and chat template.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::UNIX_EPOCH;

use anyhow::{anyhow, bail, Context, Result};
use edge_runtime::format::{keys, Encoding, MAGIC};
use edge_runtime::load::CheckpointBytes;
use edge_runtime::Checkpoint;

use crate::cli::{ModelArgs, PackEncoding};

/// Where a model's `.edge` file came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The path given was an `.edge` checkpoint.
    Direct,
    /// Packed into the cache on this run.
    Packed { source: PathBuf },
    /// Found already packed in the cache.
    Cached { source: PathBuf },
}

impl Origin {
    /// `direct`, `packed` (on this run) or `cached`.
    pub fn name(&self) -> &'static str {
        match self {
            Origin::Direct => "direct",
            Origin::Packed { .. } => "packed",
            Origin::Cached { .. } => "cached",
        }
    }
}

/// A resolved `.edge` path plus where it came from.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub path: PathBuf,
    pub origin: Origin,
}

/// An opened checkpoint file (mapped or read).
pub struct ModelFile {
    pub path: PathBuf,
    pub origin: Origin,
    pub mmap: bool,
    pub bytes: CheckpointBytes,
    /// Seconds spent finding (and, the first time, packing) the model before opening it.
    pub resolve_seconds: f64,
}

impl ModelFile {
    /// Parse the checkpoint (header, metadata and table checksums are checked).
    pub fn parse(&self) -> Result<Checkpoint<'_>> {
        Checkpoint::parse(self.bytes.as_bytes()).map_err(|e| anyhow!("{}: {e}", self.path.display()))
    }
}

/// Resolve `args.model` to an `.edge` file (packing it into the cache if needed), then open it.
pub fn open_model(args: &ModelArgs) -> Result<ModelFile> {
    let path = args
        .model
        .as_deref()
        .ok_or_else(|| anyhow!("no model given; pass --model PATH (see `edge-run --help`)"))?;
    open_path(path, args.pack_encoding, args.group_size, !args.no_mmap)
}

/// Like [`open_model`] for an explicit path (e.g. `--kl-base`).
pub fn open_path(path: &Path, enc: PackEncoding, group: usize, mmap: bool) -> Result<ModelFile> {
    let t = std::time::Instant::now();
    let r = resolve(path, enc, group)?;
    let resolve_seconds = t.elapsed().as_secs_f64();
    let bytes = open_bytes(&r.path, mmap)?;
    Ok(ModelFile { path: r.path, origin: r.origin, mmap, bytes, resolve_seconds })
}

/// Map or read a checkpoint file.
pub fn open_bytes(path: &Path, mmap: bool) -> Result<CheckpointBytes> {
    let res = if mmap { CheckpointBytes::map(path) } else { CheckpointBytes::read(path) };
    // The runtime's I/O errors already name the path.
    res.map_err(|e| anyhow!("cannot open checkpoint: {e}"))
}

fn starts_with_magic(path: &Path) -> bool {
    let mut head = [0u8; 8];
    match std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)) {
        Ok(()) => head == MAGIC,
        Err(_) => false,
    }
}

/// Decide whether `path` is an `.edge` file, or pack it into the cache.
/// Packing and cache messages go to stderr in every mode (JSON goes to stdout).
pub fn resolve(path: &Path, enc: PackEncoding, group: usize) -> Result<Resolved> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!(
                "model '{}' does not exist; pass an .edge checkpoint, a GGUF file, a Hugging Face folder or a llama2.c .bin",
                path.display()
            )
        } else {
            anyhow!("cannot read model '{}': {e}", path.display())
        }
    })?;
    if meta.is_file() && (starts_with_magic(path) || path.extension().is_some_and(|e| e == "edge")) {
        return Ok(Resolved { path: path.to_path_buf(), origin: Origin::Direct });
    }
    let format = edge_pack::detect_format(path)
        .map_err(|e| anyhow!("{}; or pass an .edge checkpoint", one_line(&format!("{e:#}"))))?;
    if format == edge_pack::SourceFormat::Edge {
        return Ok(Resolved { path: path.to_path_buf(), origin: Origin::Direct });
    }
    let dir = cache_dir()?;
    let target = dir.join(cache_file_name(path, &meta, enc, group)?);
    if target.is_file() {
        eprintln!("edge-run: using cached pack of {}: {}", path.display(), target.display());
        return Ok(Resolved { path: target, origin: Origin::Cached { source: path.to_path_buf() } });
    }
    std::fs::create_dir_all(&dir).map_err(|e| {
        anyhow!("cannot create cache directory {}: {e}; set EDGE_RUN_CACHE to a writable directory", dir.display())
    })?;
    eprintln!(
        "edge-run: packing {} ({}, {}) into {} (first run only)",
        path.display(),
        format_name(format),
        enc.name(),
        target.display()
    );
    // Pack to a temporary name in the cache directory, then rename: a crash or a failed pack
    // never leaves a half-written file under the name a later run would reuse.
    let file_name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.partial-{}", std::process::id()));
    let opts = edge_pack::PackOptions {
        encoding: enc.to_pack(),
        group_size: group as u32,
        allow_no_tokenizer: true,
        force: true,
        progress: true,
        ..Default::default()
    };
    let result = edge_pack::pack_file(path, &tmp, &opts)
        .map_err(|e| anyhow!("cannot pack {}: {}", path.display(), one_line(&format!("{e:#}"))))
        .and_then(|_| {
            std::fs::rename(&tmp, &target)
                .with_context(|| format!("cannot move the packed model into {}", target.display()))
        });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(Resolved { path: target, origin: Origin::Packed { source: path.to_path_buf() } })
}

/// A source format's usual name.
pub fn format_name(f: edge_pack::SourceFormat) -> &'static str {
    match f {
        edge_pack::SourceFormat::Gguf => "GGUF",
        edge_pack::SourceFormat::HuggingFace => "Hugging Face",
        edge_pack::SourceFormat::Llama2c => "llama2.c",
        edge_pack::SourceFormat::Edge => ".edge",
    }
}

/// The cache directory: `$EDGE_RUN_CACHE`, else `$XDG_CACHE_HOME/edge-run`, else
/// `$HOME/.cache/edge-run`.
pub fn cache_dir() -> Result<PathBuf> {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = non_empty("EDGE_RUN_CACHE") {
        return Ok(d);
    }
    if let Some(d) = non_empty("XDG_CACHE_HOME") {
        return Ok(d.join("edge-run"));
    }
    if let Some(h) = non_empty("HOME") {
        return Ok(h.join(".cache").join("edge-run"));
    }
    bail!("no cache directory for packed models; set EDGE_RUN_CACHE (or XDG_CACHE_HOME or HOME)")
}

/// 64-bit FNV-1a: a stable hash (std's `DefaultHasher` is not promised to be).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= x as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Length-delimit each field so concatenations cannot collide.
        self.0 ^= b.len() as u64;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
}

fn hash_file_meta(h: &mut Fnv, m: &std::fs::Metadata) {
    h.u64(m.len());
    if let Ok(t) = m.modified() {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        h.u64(d.as_secs());
        h.u64(d.subsec_nanos() as u64);
    }
}

/// `<stem>-<hash>.edge`, the hash covering the canonical path, size and mtime of the input (of
/// every file, for a folder), the packer's version and the packing options.
fn cache_file_name(path: &Path, meta: &std::fs::Metadata, enc: PackEncoding, group: usize) -> Result<String> {
    let canon = std::fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    let mut h = Fnv::new();
    h.bytes(canon.as_os_str().as_encoded_bytes());
    if meta.is_dir() {
        let mut entries: Vec<(String, std::fs::Metadata)> = std::fs::read_dir(&canon)
            .with_context(|| format!("cannot list {}", canon.display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                m.is_file().then(|| (e.file_name().to_string_lossy().into_owned(), m))
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, m) in &entries {
            h.bytes(name.as_bytes());
            hash_file_meta(&mut h, m);
        }
    } else {
        hash_file_meta(&mut h, meta);
    }
    // edge-pack shares the workspace version with edge-run.
    h.bytes(b"edge-pack");
    h.bytes(env!("CARGO_PKG_VERSION").as_bytes());
    h.u64(edge_runtime::format::VERSION as u64);
    h.bytes(enc.name().as_bytes());
    if enc == PackEncoding::Nested8 {
        h.u64(group as u64);
    }
    let stem = canon
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let stem: String =
        stem.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    Ok(format!("{stem}-{:016x}.edge", h.0))
}

/// Collapse a possibly multi-line message to one line.
pub fn one_line(s: &str) -> String {
    let mut out = String::new();
    for l in s.split(['\n', '\r']).map(str::trim).filter(|l| !l.is_empty()) {
        if !out.is_empty() {
            out.push_str(if out.ends_with(':') || out.ends_with(';') { " " } else { "; " });
        }
        out.push_str(l);
    }
    out
}

/// Warn when `--bits` cannot apply to this checkpoint.
pub fn check_bits(ck: &Checkpoint<'_>, bits: Option<u8>, quiet: bool) {
    if let Some(b) = bits {
        if !ck.tensors.iter().any(|t| t.encoding == Encoding::Nested8) && !quiet {
            eprintln!(
                "edge-run: warning: --bits {b} ignored: this checkpoint has no nested-plane tensors (pack with --pack-encoding nested8)"
            );
        }
    }
}

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
    fn prompt_ids_and_one_line() {
        assert_eq!(parse_ids("1 2,3 ,\t4").unwrap(), [1, 2, 3, 4]);
        assert!(parse_ids("1 -2").is_err());
        assert_eq!(one_line("a\n\n  b:\n  c\r\n"), "a; b: c");
    }

    #[test]
    fn cache_names_are_stable_and_depend_on_options() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("My Model.gguf");
        std::fs::write(&f, b"x").unwrap();
        let m = std::fs::metadata(&f).unwrap();
        let a = cache_file_name(&f, &m, PackEncoding::F16, 64).unwrap();
        assert_eq!(a, cache_file_name(&f, &m, PackEncoding::F16, 64).unwrap());
        assert!(a.starts_with("My_Model-") && a.ends_with(".edge"), "{a}");
        assert_ne!(a, cache_file_name(&f, &m, PackEncoding::Nested8, 64).unwrap());
        // Group size only matters for grouped encodings.
        assert_eq!(a, cache_file_name(&f, &m, PackEncoding::F16, 32).unwrap());
        assert_ne!(
            cache_file_name(&f, &m, PackEncoding::Nested8, 32).unwrap(),
            cache_file_name(&f, &m, PackEncoding::Nested8, 64).unwrap()
        );
        // A changed file gets a new name.
        std::fs::write(&f, b"xy").unwrap();
        let m2 = std::fs::metadata(&f).unwrap();
        assert_ne!(a, cache_file_name(&f, &m2, PackEncoding::F16, 64).unwrap());
    }
}
