//! The fuzz targets of the library crates, each `fn(&[u8]) -> String` calling the real reader,
//! and their seeds (real files from `../shared/models`, and a tiny GGUF written here).
//!
//! The CLI's own readers (board configs, plan files, sensor readings) live in the binary crate,
//! which has no library; their targets are in `src/fuzz_targets.rs` there.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use edge_pack::gguf::GgufFile;
use edge_runtime::model::ModelOptions;
use edge_runtime::{Checkpoint, Model};

/// `../shared/models` of the repository (or `$EDGE_RUN_MODELS`).
pub fn models_dir() -> PathBuf {
    std::env::var_os("EDGE_RUN_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/models"))
}

/// A seed file, or a loud panic saying which real file the fuzz run needs.
pub fn seed_file(rel: &str) -> Vec<u8> {
    let p = models_dir().join(rel);
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!("fuzz seed {} is missing ({e}): the fuzz targets need the real models of ../shared/models (see its README)", p.display())
    })
}

fn ok_or_err<T, E: std::fmt::Display>(r: Result<T, E>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

// ---- .edge checkpoints ----------------------------------------------------------------------

/// Header field offsets (docs/FORMAT.md; `runtime/src/format/read.rs` reads them in this order).
const FILE_LEN: usize = 16;
const META_OFF: usize = 24;
const META_LEN: usize = 32;
const TABLE_OFF: usize = 40;
const TABLE_LEN: usize = 48;
const META_SUM: usize = 80;
const TABLE_SUM: usize = 88;
const HEADER_SUM: usize = 120;

/// The stories260K checkpoint packed at q8 (nested planes) and f16, made once per process from
/// the llama2.c release in `../shared/models` with the real `edge-pack` code.
pub fn edge_seeds() -> Vec<Vec<u8>> {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let input = models_dir().join("llama2c/stories260K.bin");
            assert!(input.exists(), "fuzz seed {} is missing: the .edge targets pack it", input.display());
            [edge_pack::WeightEncoding::Nested8, edge_pack::WeightEncoding::F16]
                .iter()
                .map(|&encoding| {
                    let out = dir.path().join("seed.edge");
                    let opts = edge_pack::PackOptions {
                        encoding,
                        group_size: 32,
                        allow_no_tokenizer: true,
                        force: true,
                        ..Default::default()
                    };
                    edge_pack::pack_file(&input, &out, &opts).expect("packing the stories260K seed");
                    std::fs::read(&out).expect("reading the packed seed")
                })
                .collect()
        })
        .clone()
}

/// The bytes in a 16-byte-aligned buffer, as a mapped or `CheckpointBytes::read` file would be.
fn aligned(data: &[u8]) -> Vec<u128> {
    let mut buf = vec![0u128; data.len().div_ceil(16)];
    bytemuck::cast_slice_mut::<u128, u8>(&mut buf)[..data.len()].copy_from_slice(data);
    buf
}

/// Parse, verify the segments, and bind the tensors into a model with a small context.
fn edge_load(data: &[u8]) -> String {
    let buf = aligned(data);
    let bytes = &bytemuck::cast_slice::<u128, u8>(&buf)[..data.len()];
    let ck = match Checkpoint::parse(bytes) {
        Ok(ck) => ck,
        Err(e) => return e.to_string(),
    };
    let verified = ok_or_err(ck.verify());
    let opts = ModelOptions { max_seq_len: 16, max_batch: 2, ..Default::default() };
    match Model::new(&ck, opts) {
        Ok(mut m) => {
            // One token through the model: binding that accepted the tensors must run them.
            let vocab = m.config.vocab_size as u32;
            let r = m.forward(1 % vocab.max(1), 0).map(|l| l.len());
            format!("model: {verified}; {}", ok_or_err(r))
        }
        Err(e) => format!("model: {e}"),
    }
}

/// `.edge` parsing and tensor binding, mutations as they come (most stop at a checksum).
pub fn edge(data: &[u8]) -> String {
    edge_load(data)
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Make a mutant pass the header, metadata and tensor-table checksums (and the file length), so
/// mutations reach the parser's structure checks and the binding behind them.
pub fn fix_checksums(data: &[u8]) -> Vec<u8> {
    let mut b = data.to_vec();
    if b.len() < edge_runtime::format::HEADER_LEN {
        return b;
    }
    let len = b.len() as u64;
    put_u64(&mut b, FILE_LEN, len);
    let section = |b: &[u8], off: usize, len: usize| -> Option<u64> {
        let (o, l) = (get_u64(b, off), get_u64(b, len));
        let end = o.checked_add(l)?;
        (end <= b.len() as u64).then(|| edge_runtime::format::checksum(&b[o as usize..end as usize]))
    };
    if let Some(s) = section(&b, META_OFF, META_LEN) {
        put_u64(&mut b, META_SUM, s);
    }
    if let Some(s) = section(&b, TABLE_OFF, TABLE_LEN) {
        put_u64(&mut b, TABLE_SUM, s);
    }
    let h = edge_runtime::format::checksum(&b[..HEADER_SUM]);
    put_u64(&mut b, HEADER_SUM, h);
    b
}

/// `.edge` parsing and tensor binding with the section checksums recomputed after mutation.
pub fn edge_fixed(data: &[u8]) -> String {
    edge_load(&fix_checksums(data))
}

// ---- GGUF -----------------------------------------------------------------------------------

/// A tiny GGUF writer for the seed: a one-layer llama (dim 8, 2 heads, ffn 16, vocab 16) with a
/// SentencePiece-style tokenizer in its metadata, every tensor f32.
pub fn tiny_gguf(tokenizer_model: &str) -> Vec<u8> {
    fn s(b: &mut Vec<u8>, v: &str) {
        b.extend((v.len() as u64).to_le_bytes());
        b.extend(v.as_bytes());
    }
    fn kv_str(b: &mut Vec<u8>, k: &str, v: &str) {
        s(b, k);
        b.extend(8u32.to_le_bytes());
        s(b, v);
    }
    fn kv_u32(b: &mut Vec<u8>, k: &str, v: u32) {
        s(b, k);
        b.extend(4u32.to_le_bytes());
        b.extend(v.to_le_bytes());
    }
    fn kv_f32(b: &mut Vec<u8>, k: &str, v: f32) {
        s(b, k);
        b.extend(6u32.to_le_bytes());
        b.extend(v.to_le_bytes());
    }
    let vocab = 16u64;
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let gpt2 = tokenizer_model == "gpt2";
    for c in ["a", "b", "c", "d", "e", " ", "ab", "cd", "abc", "de", "\u{2581}a", "<0x0A>", "x"] {
        tokens.push(if gpt2 { c.replace(' ', "\u{120}") } else { c.into() });
    }
    let tensors: Vec<(String, Vec<u64>)> = {
        let mut t = vec![("token_embd.weight".to_string(), vec![8, vocab]), ("output_norm.weight".into(), vec![8])];
        for (n, d) in [
            ("attn_norm", vec![8]),
            ("attn_q", vec![8, 8]),
            ("attn_k", vec![8, 8]),
            ("attn_v", vec![8, 8]),
            ("attn_output", vec![8, 8]),
            ("ffn_norm", vec![8]),
            ("ffn_gate", vec![8, 16]),
            ("ffn_up", vec![8, 16]),
            ("ffn_down", vec![16, 8]),
        ] {
            t.push((format!("blk.0.{n}.weight"), d));
        }
        t
    };
    let mut meta = Vec::new();
    let mut n_kv = 0u64;
    kv_str(&mut meta, "general.architecture", "llama");
    n_kv += 1;
    kv_str(&mut meta, "general.name", "fuzz-tiny");
    n_kv += 1;
    for (k, v) in [
        ("llama.block_count", 1),
        ("llama.context_length", 64),
        ("llama.embedding_length", 8),
        ("llama.feed_forward_length", 16),
        ("llama.attention.head_count", 2),
        ("llama.attention.head_count_kv", 2),
        ("tokenizer.ggml.bos_token_id", 1),
        ("tokenizer.ggml.eos_token_id", 2),
    ] {
        kv_u32(&mut meta, k, v);
        n_kv += 1;
    }
    kv_f32(&mut meta, "llama.attention.layer_norm_rms_epsilon", 1e-5);
    n_kv += 1;
    kv_f32(&mut meta, "llama.rope.freq_base", 10000.0);
    n_kv += 1;
    kv_str(&mut meta, "tokenizer.ggml.model", tokenizer_model);
    n_kv += 1;
    // tokens: array of strings
    s(&mut meta, "tokenizer.ggml.tokens");
    meta.extend(9u32.to_le_bytes());
    meta.extend(8u32.to_le_bytes());
    meta.extend((tokens.len() as u64).to_le_bytes());
    for t in &tokens {
        s(&mut meta, t);
    }
    n_kv += 1;
    s(&mut meta, "tokenizer.ggml.scores");
    meta.extend(9u32.to_le_bytes());
    meta.extend(6u32.to_le_bytes());
    meta.extend((tokens.len() as u64).to_le_bytes());
    for i in 0..tokens.len() {
        meta.extend((-(i as f32)).to_le_bytes());
    }
    n_kv += 1;
    s(&mut meta, "tokenizer.ggml.token_type");
    meta.extend(9u32.to_le_bytes());
    meta.extend(5u32.to_le_bytes());
    meta.extend((tokens.len() as u64).to_le_bytes());
    for i in 0..tokens.len() {
        let ty: i32 = match i {
            0 => 2,
            1 | 2 => 3,
            14 => 6,
            _ => 1,
        };
        meta.extend(ty.to_le_bytes());
    }
    n_kv += 1;
    if gpt2 {
        s(&mut meta, "tokenizer.ggml.merges");
        meta.extend(9u32.to_le_bytes());
        meta.extend(8u32.to_le_bytes());
        let merges = ["a b", "c d", "ab c", "d e"];
        meta.extend((merges.len() as u64).to_le_bytes());
        for m in merges {
            s(&mut meta, m);
        }
        n_kv += 1;
    }

    let mut b = Vec::new();
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend(n_kv.to_le_bytes());
    b.extend(meta);
    let mut offset = 0u64;
    let mut data = Vec::new();
    for (i, (name, dims)) in tensors.iter().enumerate() {
        s(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(0u32.to_le_bytes()); // F32
        b.extend(offset.to_le_bytes());
        let n: u64 = dims.iter().product();
        for j in 0..n {
            let v = if name.ends_with("norm.weight") { 1.0 } else { ((i as u64 * 31 + j * 7) % 13) as f32 / 13.0 - 0.5 };
            data.extend(v.to_le_bytes());
        }
        while data.len() % 32 != 0 {
            data.push(0);
        }
        offset = data.len() as u64;
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend(data);
    b
}

/// The first 64 KiB of the SmolLM2 GGUF (a real header, cut inside its vocabulary).
pub fn smollm2_gguf_head(n: usize) -> Vec<u8> {
    use std::io::Read;
    let p = models_dir().join("smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut f = std::fs::File::open(&p).unwrap_or_else(|e| panic!("fuzz seed {} is missing: {e}", p.display()));
    let mut buf = vec![0u8; n];
    let got = f.read(&mut buf).expect("reading the GGUF seed");
    buf.truncate(got);
    buf
}

pub fn gguf_seeds() -> Vec<Vec<u8>> {
    vec![tiny_gguf("llama"), tiny_gguf("gpt2"), smollm2_gguf_head(64 << 10)]
}

/// The GGUF reader and import through `import_gguf` (the path `load_gguf` takes after reading
/// the file), dequantization included.
pub fn gguf(data: &[u8]) -> String {
    let g = match GgufFile::from_bytes(data.to_vec(), "fuzz.gguf") {
        Ok(g) => g,
        Err(e) => return format!("{e:#}"),
    };
    let path = Path::new("/nonexistent-edge-fuzz/fuzz.gguf");
    match edge_pack::gguf::import_gguf(&g, path, None) {
        Ok(m) => format!("ok {}", m.tensors.len()),
        Err(e) => format!("{e:#}"),
    }
}

/// The tokenizer rebuilt from GGUF metadata, then loaded the way a pack embeds it.
pub fn gguf_tokenizer(data: &[u8]) -> String {
    let g = match GgufFile::from_bytes(data.to_vec(), "fuzz.gguf") {
        Ok(g) => g,
        Err(e) => return format!("{e:#}"),
    };
    match g.build_tokenizer_json() {
        Ok(Some(json)) => format!("json: {}", ok_or_err(edge_pack::tokenizer::validate_tokenizer_json(&json))),
        Ok(None) => "none".into(),
        Err(e) => format!("{e:#}"),
    }
}

/// The SentencePiece `tokenizer.model` reader.
pub fn sentencepiece(data: &[u8]) -> String {
    match edge_pack::sentencepiece::SpmModel::parse(data) {
        Ok(_) => "ok".into(),
        Err(e) => format!("{e:#}"),
    }
}

/// The llama2.c `.bin` reader (stories260K's own format), through `load_llama2c`.
pub fn llama2c(data: &[u8]) -> String {
    let p = crate::write_scratch("model.bin", data);
    match edge_pack::llama2c::load_llama2c(&p, None) {
        Ok(m) => format!("ok {}", m.tensors.len()),
        Err(e) => format!("{e:#}").replace(&p.display().to_string(), "FILE"),
    }
}

// ---- Hugging Face folders ---------------------------------------------------------------------

/// stories260K's Hugging Face `config.json` and SmolLM2's.
pub fn hf_config_seeds() -> Vec<Vec<u8>> {
    vec![seed_file("stories260K-hf/config.json"), seed_file("smollm2-135m-instruct-q4_1/config.json")]
}

/// stories260K's safetensors, whole.
pub fn safetensors_seeds() -> Vec<Vec<u8>> {
    vec![seed_file("stories260K-hf/model.safetensors")]
}

/// A folder of `config.json` and `model.safetensors` through `load_hf`: `input` is written to
/// the file named `mutated` each time, the other file, real and unchanged, once per run.
fn load_folder(mutated: &str, input: &[u8], fixed: &str, fixed_seed: &str) -> String {
    let dir = crate::scratch();
    if !dir.join(fixed).is_file() {
        std::fs::write(dir.join(fixed), seed_file(fixed_seed)).expect("writing the fixed file");
    }
    crate::write_scratch(mutated, input);
    match edge_pack::hf::load_hf(&dir, None) {
        Ok(m) => format!("ok {}", m.tensors.len()),
        Err(e) => format!("{e:#}").replace(&dir.display().to_string(), "DIR"),
    }
}

/// A mutated `config.json` beside stories260K's real weights.
pub fn hf_config(data: &[u8]) -> String {
    load_folder("config.json", data, "model.safetensors", "stories260K-hf/model.safetensors")
}

/// Mutated safetensors beside stories260K's real `config.json`.
pub fn safetensors(data: &[u8]) -> String {
    load_folder("model.safetensors", data, "config.json", "stories260K-hf/config.json")
}
