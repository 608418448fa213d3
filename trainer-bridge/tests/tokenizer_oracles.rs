//! Tokenizers rebuilt from GGUF metadata (and from a SentencePiece `tokenizer.model`) against
//! llama.cpp's own tokenizer: the references in `tests/oracles/refs/` were written by
//! `tests/oracles/llama_tokenize_refs.sh` (llama-tokenize on the same files). Per model: all of
//! wiki.test.raw as one text (count and digests of the ids), 37 tricky strings, 300 wiki lines,
//! special-token markup with and without special-token parsing, and decode(encode(x)) == x.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::Instant;

use edge_pack::gguf::GgufFile;
use edge_pack::sentencepiece::SpmModel;
use edge_pack::tokenizer::{tokenizer_json_from_ggml, GgmlVocab};
use serde_json::Value;
use tokenizers::Tokenizer;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn shared(var: &str, sub: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/work/shared").join(sub))
}

fn models_dir() -> PathBuf {
    shared("EDGE_MODELS_DIR", "models")
}

fn wiki_path() -> PathBuf {
    shared("EDGE_DATA_DIR", "data").join("wikitext-2-raw/wiki.test.raw")
}

/// `fetch.sh`'s cache: `$EDGE_MODELS`, else `~/.cache/edge-run-models`.
fn cache_dir() -> PathBuf {
    std::env::var_os("EDGE_MODELS").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/edge-run-models")
    })
}

/// A missing input fails the test unless `EDGE_ALLOW_MISSING_MODELS` is set (then a loud skip).
fn missing(what: &str) {
    let msg = format!("{what} (set EDGE_MODELS_DIR / EDGE_DATA_DIR / EDGE_MODELS)");
    if std::env::var_os("EDGE_ALLOW_MISSING_MODELS").is_some() {
        eprintln!("\n*** SKIP tokenizer oracle: {msg} ***\n");
        return;
    }
    panic!("{msg}; set EDGE_ALLOW_MISSING_MODELS=1 to skip");
}

/// A model `fetch.sh` downloads: fetched (cached) when missing.
fn fetched(name: &str, file: &str) -> Option<PathBuf> {
    let p = cache_dir().join(file);
    if !p.is_file() {
        let script = models_dir().join("fetch.sh");
        eprintln!("fetching {name} with {}", script.display());
        let ok = Command::new(&script).arg(name).status().is_ok_and(|s| s.success());
        if !ok || !p.is_file() {
            missing(&format!("{} not found and `{} {name}` failed", p.display(), script.display()));
            return None;
        }
    }
    Some(p)
}

fn refs(model: &str) -> Value {
    let p = repo().join("tests/oracles/refs").join(format!("{model}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// FNV-1a 64 over the ids as u32 little-endian (as make_refs.py).
fn fnv1a64(ids: &[u32]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ids.iter().flat_map(|i| i.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn encode(tk: &mut Tokenizer, text: &str, parse_special: bool) -> Vec<u32> {
    tk.set_encode_special_tokens(!parse_special);
    tk.encode_fast(text, false).unwrap().get_ids().to_vec()
}

/// Whether `text` contains an added token's text (then decoding is not the identity: a
/// SentencePiece prefix space follows each special token).
fn has_added_token(tk: &Tokenizer, text: &str) -> bool {
    tk.get_added_tokens_decoder().values().any(|t| text.contains(&t.content))
}

/// Compare `tk` with the llama.cpp references of `model`; returns (ids compared, mismatches).
fn check(model: &str, mut tk: Tokenizer) -> (usize, usize) {
    let r = refs(model);
    let mut compared = 0;
    let mut bad = Vec::new();

    let wiki = std::fs::read(wiki_path()).ok();
    let lines: Option<Vec<&str>> = wiki.as_deref().map(|w| std::str::from_utf8(w).unwrap().split('\n').collect());
    for (kind, parse_special) in [("cases", true), ("plain", false)] {
        for c in r[kind].as_array().unwrap() {
            let text = match (c.get("text"), c.get("wiki_line"), &lines) {
                (Some(t), _, _) => t.as_str().unwrap(),
                (None, Some(i), Some(lines)) => lines[i.as_u64().unwrap() as usize],
                _ => continue,
            };
            let want = ids_of(&c["ids"]);
            let got = encode(&mut tk, text, parse_special);
            compared += want.len();
            if got != want {
                bad.push(format!("{kind} {text:?}:\n    llama.cpp {want:?}\n    ours      {got:?}"));
            }
            if parse_special && !has_added_token(&tk, text) {
                let back = tk.decode(&got, false).unwrap();
                assert_eq!(back, text, "{model}: decode(encode(x)) != x");
            }
        }
    }

    // All of wiki.test.raw as one text, special tokens not parsed.
    if let Some(w) = &wiki {
        let text = std::str::from_utf8(w).unwrap();
        let ww = &r["wiki"];
        assert_eq!(ww["bytes"].as_u64().unwrap() as usize, w.len(), "wiki.test.raw is not the file the references used");
        let t0 = Instant::now();
        let got = encode(&mut tk, text, false);
        eprintln!("{model}: wiki.test.raw ({} bytes) -> {} ids in {:.2?}", w.len(), got.len(), t0.elapsed());
        let want_n = ww["count"].as_u64().unwrap() as usize;
        compared += want_n;
        if got.len() != want_n || fnv1a64(&got) != ww["fnv1a64"].as_str().unwrap() {
            let chunk = ww["chunk"].as_u64().unwrap() as usize;
            let first = ww["chunks"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .find(|(k, h)| got.get(k * chunk..((k + 1) * chunk).min(got.len())).map(fnv1a64).as_deref() != h.as_str())
                .map_or(0, |(k, _)| k);
            let at = &got[(first * chunk).min(got.len())..((first + 1) * chunk).min(got.len())];
            let ctx = tk.decode(&at[..at.len().min(64)], false).unwrap();
            bad.push(format!(
                "wiki.test.raw: {} ids vs llama.cpp's {want_n}; first differing chunk #{first} (ids {}..), which starts {ctx:?}",
                got.len(),
                first * chunk
            ));
        }
        let t0 = Instant::now();
        assert_eq!(tk.decode(&got, false).unwrap(), text, "{model}: decode(encode(wiki.test.raw)) != wiki.test.raw");
        eprintln!("{model}: decoded in {:.2?}", t0.elapsed());
    } else {
        missing(&format!("{} not found: whole-file and wiki-line comparisons skipped", wiki_path().display()));
    }

    eprintln!("{model}: {compared} llama.cpp ids compared, {} mismatching cases", bad.len());
    assert!(bad.is_empty(), "{model}: {} mismatches with llama.cpp:\n  {}", bad.len(), bad.join("\n  "));
    (compared, bad.len())
}

/// Build the tokenizer of a GGUF from its metadata, timing it.
fn from_gguf(path: &Path) -> (GgufFile, Tokenizer) {
    let g = GgufFile::open(path).unwrap();
    let t0 = Instant::now();
    let json = g.build_tokenizer_json().unwrap().expect("a tokenizer is rebuilt from the metadata");
    let built = t0.elapsed();
    let tk = Tokenizer::from_str(&json).unwrap();
    eprintln!("{}: tokenizer.json built in {built:.2?} ({} MB)", path.display(), json.len() >> 20);
    (g, tk)
}

/// llama.cpp adds BOS as the GGUF says (`add_bos_token`; SentencePiece vocabularies default to
/// yes): the metadata edge-pack stores must say the same.
fn check_bos(model: &str, g: &GgufFile) {
    let r = refs(model);
    let with_bos = ids_of(&r["bos"]["ids"]);
    let add_bos = g
        .get_bool("tokenizer.ggml.add_bos_token")
        .unwrap()
        .unwrap_or(g.get_str("tokenizer.ggml.model").unwrap() == Some("llama"));
    let bos = g.get_u64("tokenizer.ggml.bos_token_id").unwrap().map(|b| b as u32);
    assert_eq!(add_bos, with_bos.first() == bos.as_ref(), "{model}: BOS rule");
}

#[test]
fn qwen2_byte_level_bpe_matches_llama_cpp() {
    let Some(p) = fetched("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") else { return };
    let (g, tk) = from_gguf(&p);
    assert_eq!(g.get_str("tokenizer.ggml.pre").unwrap(), Some("qwen2"));
    check_bos("qwen2.5-coder-0.5b", &g);
    check("qwen2.5-coder-0.5b", tk);
}

#[test]
fn gemma3_sentencepiece_matches_llama_cpp() {
    let Some(p) = fetched("gemma3-270m", "gemma-3-270m-q4_k_m.gguf") else { return };
    let t0 = Instant::now();
    let (g, tk) = from_gguf(&p);
    let took = t0.elapsed();
    assert!(took.as_secs() < 30, "building a 262k-token SentencePiece tokenizer took {took:?}");
    assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), Some("llama"));
    check_bos("gemma3-270m", &g);
    check("gemma3-270m", tk);
}

#[test]
fn smollm2_byte_level_bpe_matches_llama_cpp() {
    let p = models_dir().join("smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !p.is_file() {
        return missing(&format!("{} not found", p.display()));
    }
    let (g, tk) = from_gguf(&p);
    check_bos("smollm2-135m", &g);
    check("smollm2-135m", tk);
}

/// Llama 2's SentencePiece vocabulary, read from `tokenizer.model` (always in shared/models):
/// the SentencePiece case CI can always run. The references come from llama.cpp's own copy of
/// this vocabulary (`models/ggml-vocab-llama-spm.gguf`); when that file is here, the two are
/// checked to be the same vocabulary.
#[test]
fn llama2_sentencepiece_model_matches_llama_cpp() {
    let p = models_dir().join("llama2c/tokenizer.model");
    if !p.is_file() {
        return missing(&format!("{} not found", p.display()));
    }
    let m = SpmModel::open(&p).unwrap();
    assert_eq!((m.pieces.len(), m.add_dummy_prefix, m.unk_id, m.bos_id, m.eos_id), (32000, true, Some(0), Some(1), Some(2)));
    assert_eq!((&m.pieces[13][..], m.types[13], m.types[0], m.types[1], m.types[400]), ("<0x0A>", 6, 2, 3, 1));
    let vocab_gguf = std::env::var_os("LLAMA_CPP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/llama/llama_cpp_python-0.3.36/vendor/llama.cpp"))
        .join("models/ggml-vocab-llama-spm.gguf");
    if let Ok(g) = GgufFile::open(&vocab_gguf) {
        let tokens = g.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap();
        assert!(tokens.iter().eq(m.pieces.iter()), "pieces differ from llama.cpp's Llama SPM vocabulary");
        assert_eq!(g.get_f32_array("tokenizer.ggml.scores").unwrap().unwrap(), m.scores);
        assert_eq!(g.get_int_array("tokenizer.ggml.token_type").unwrap().unwrap(), m.types);
        check_bos("llama2-spm", &g);
    } else {
        eprintln!("note: {} not here; the vocabulary identity is not re-checked", vocab_gguf.display());
    }
    let t0 = Instant::now();
    let json = m.tokenizer_json().unwrap();
    eprintln!("llama2 tokenizer.model: tokenizer.json built in {:.2?}", t0.elapsed());
    check("llama2-spm", Tokenizer::from_str(&json).unwrap());
}

#[test]
fn bad_sentencepiece_models_are_errors() {
    for (bytes, what) in [
        (&b""[..], "no pieces"),
        (&[0x0a, 0x05, 0x0a][..], "truncated"),
        (&[0x0a, 0x02, 0x10, 0x01][..], "has no text"),
        (&[0x0b][..], "wire type 3"),
    ] {
        let e = format!("{:#}", SpmModel::parse(bytes).unwrap_err());
        assert!(e.contains(what), "{e}");
    }
    // GGUF SentencePiece metadata without scores, or with too few: a one-line error, no panic.
    let tokens = ["<unk>", "a", "b", "ab"];
    let mut v = GgmlVocab {
        model: "llama",
        pre: None,
        tokens: &tokens,
        token_types: None,
        merges: &[],
        scores: None,
        add_space_prefix: Some(false),
        unk_id: Some(0),
    };
    let e = tokenizer_json_from_ggml(&v).unwrap_err().to_string();
    assert!(e.contains("without tokenizer.ggml.scores"), "{e}");
    v.scores = Some(&[0.0, -1.0]);
    let e = tokenizer_json_from_ggml(&v).unwrap_err().to_string();
    assert!(e.contains("tokenizer.ggml.scores has 2 entries"), "{e}");
    // A tiny vocabulary: "ab" merges, "c" falls back to <unk> (no byte tokens).
    v.scores = Some(&[0.0, -1.0, -2.0, -0.5]);
    let tk = Tokenizer::from_str(&tokenizer_json_from_ggml(&v).unwrap().unwrap()).unwrap();
    assert_eq!(tk.encode("abba", false).unwrap().get_ids(), [3, 2, 1]);
}
