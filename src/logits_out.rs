//! `edge-run eval --logits-out FILE`: every position's logits of one token sequence, as a
//! .npy array, for comparing the runtime with another implementation of the same weights
//! (the edge-qat PyTorch package's fake-quantized model: issue 18's bit-exactness test).

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Result};
use edge_runtime::model::Logits;
use serde_json::json;

use crate::cli::EvalArgs;
use crate::perplexity::{read_text, window_model};
use crate::session::{KvSettings, Loaded};
use crate::tokenizer::{self, Tok};

pub fn run(args: &EvalArgs, main: &Loaded<'_>, tok: Option<&mut Tok>, batch: usize, kv: KvSettings, out: &Path) -> Result<()> {
    let text = read_text(&args.data, args.json)?;
    let vocab = main.config.vocab_size;
    let ids = match tok {
        Some(t) => {
            let mut ids = t.encode(&text, false)?;
            if let (Some(true), Some(b)) = (t.add_bos, t.bos) {
                if ids.first() != Some(&b) {
                    ids.insert(0, b);
                }
            }
            ids
        }
        None => tokenizer::parse_ids(text.trim().trim_start_matches('[').trim_end_matches(']'), vocab, &args.data.display().to_string())?,
    };
    if ids.is_empty() {
        bail!("{} holds no tokens; --logits-out needs at least one", args.data.display());
    }
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        bail!("the tokenizer produced id {bad}, outside the model's vocabulary of {vocab}; re-pack the model");
    }
    let n = ids.len();
    if n > main.config.max_seq_len {
        bail!("{} holds {n} tokens, more than the model's context of {}; give a shorter sequence", args.data.display(), main.config.max_seq_len);
    }
    let mut model = window_model(main, n, batch.min(n), kv)?;
    model.reset_kv();
    let mut logits = Vec::with_capacity(n * vocab);
    for (i, chunk) in ids.chunks(batch.max(1)).enumerate() {
        let rows = model.forward_batch(chunk, i * batch.max(1), Logits::All)?;
        logits.extend_from_slice(&rows[..chunk.len() * vocab]);
    }
    write_npy(out, &logits, n, vocab)?;
    let greedy: Vec<u32> = logits.chunks(vocab).map(edge_runtime::sampler::argmax).collect();
    if args.json {
        let obj = json!({
            "logits_out": out.display().to_string(),
            "tokens": n,
            "vocab": vocab,
            "bits": args.model.bits,
            "plan": main.selection.to_json(&main.footprint),
            "greedy": greedy,
        });
        let _ = writeln!(std::io::stdout().lock(), "{obj}");
    } else {
        let _ = writeln!(std::io::stdout().lock(), "wrote the logits of {n} positions x {vocab} tokens to {}", out.display());
    }
    Ok(())
}

/// Write `data` (`rows` x `cols`, row-major f32) as a NumPy .npy file (format 1.0:
/// magic, header length, a Python dict literal padded to 64 bytes, then little-endian data),
/// through a temporary file renamed into place.
pub fn write_npy(path: &Path, data: &[f32], rows: usize, cols: usize) -> Result<()> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // magic (6) + version (2) + length (2) + header + '\n', a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + 4 * data.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for x in data {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    edge_pack::writable::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_data_follows() {
        let dir = std::env::temp_dir().join(format!("edge-run-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.npy");
        write_npy(&p, &[1.0, -2.5, 3.0, 0.25, 5.0, 6.0], 2, 3).unwrap();
        let b = std::fs::read(&p).unwrap();
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hl) % 64, 0);
        let h = std::str::from_utf8(&b[10..10 + hl]).unwrap();
        assert!(h.contains("'shape': (2, 3)") && h.ends_with('\n'), "{h}");
        assert_eq!(f32::from_le_bytes(b[10 + hl + 4..10 + hl + 8].try_into().unwrap()), -2.5);
        assert_eq!(b.len(), 10 + hl + 24);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
