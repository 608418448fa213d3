//! `edge-run inspect` on the packed SmolLM2 checkpoint, and `--verify` on a corrupted copy.

mod common;

use common::*;

#[test]
fn inspect_lists_every_tensor_and_the_config() {
    if !have_models() {
        return;
    }
    let m = smollm_f16();
    let r = run(["inspect", m.to_str().unwrap()]);
    r.ok();
    let out = &r.stdout;
    // 30 layers x 9 tensors + token_embd + output_norm (tied: no output.weight).
    assert!(out.contains("272 tensors"), "{out}");
    let rows = out.lines().filter(|l| l.trim_start().starts_with("blk.")).count();
    assert_eq!(rows, 270);
    assert!(out.lines().any(|l| l.trim_start().starts_with("token_embd.weight") && l.contains("49152 x 576")));
    assert!(out.lines().any(|l| l.trim_start().starts_with("output_norm.weight")));
    for want in [
        "version 2",
        "architecture  llama",
        "layers 30",
        "heads 9 (kv 3)",
        "vocab 49152",
        "tied embeddings yes",
        "tokenizer     yes",
        "<|im_start|>",
        "chat template yes",
        "totals by encoding",
        "segments not checked",
    ] {
        assert!(out.contains(want), "inspect output lacks {want:?}:\n{out}");
    }
    let f16 = out.lines().find(|l| l.trim_start().starts_with("f16 ")).expect("f16 total");
    assert!(f16.contains("211 tensors"), "{f16}");
    let f32 = out.lines().find(|l| l.trim_start().starts_with("f32 ")).expect("f32 total");
    assert!(f32.contains("61 tensors"), "{f32}");
    assert!(out.contains("134515008 params"), "{out}");
    // The tokenizer JSON is elided, not printed.
    let tj = out.lines().find(|l| l.trim_start().starts_with("tokenizer.huggingface.json")).expect("tokenizer line");
    assert!(tj.ends_with("chars)") && tj.len() < 200, "{tj}");
    assert!(out.len() < 100_000);
}

#[test]
fn inspect_json_and_verify() {
    if !have_models() {
        return;
    }
    let m = smollm_f16();
    let v = run(["inspect", m.to_str().unwrap(), "--json", "--verify"]).json();
    assert_eq!(v["n_tensors"], 272);
    assert_eq!(v["tensors"].as_array().unwrap().len(), 272);
    assert_eq!(v["format_version"], edge_runtime::format::VERSION);
    assert_eq!(v["config"]["n_layers"], 30);
    assert_eq!(v["tokenizer"]["present"], true);
    assert_eq!(v["tokenizer"]["vocab_size"], 49152);
    assert_eq!(v["tokenizer"]["eos"], "<|im_end|>");
    assert_eq!(v["tokenizer"]["chat_template"], true);
    assert_eq!(v["totals"]["f16"]["tensors"], 211);
    assert_eq!(v["totals"]["f32"]["tensors"], 61);
    assert_eq!(v["params"], 134_515_008u64);
    assert_eq!(v["checksums"]["segments"], "ok");
    assert_eq!(v["checksums"]["segments_total"], 272);
    assert_eq!(v["metadata"]["general.architecture"], "llama");
    assert_eq!(v["metadata"]["tokenizer.huggingface.json"]["elided"], true);

    let r = run(["inspect", "--verify", m.to_str().unwrap()]);
    r.ok();
    assert!(r.stdout.contains("all 272 segments OK"), "{}", r.stdout);
}

#[test]
fn verify_names_the_tensor_with_a_flipped_byte() {
    if !have_models() {
        return;
    }
    let m = smollm_f16();
    // Where blk.5.ffn_up.weight's data lies in the file.
    let bytes = edge_runtime::load::CheckpointBytes::read(&m).unwrap();
    let ck = edge_runtime::Checkpoint::parse(bytes.as_bytes()).unwrap();
    let seg = &ck.tensor("blk.5.ffn_up.weight").unwrap().segments[0];
    let at = (seg.file_offset + seg.bytes.len() as u64 / 2) as usize;
    drop(ck);
    drop(bytes);

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("flipped.edge");
    corrupt_copy(&m, &bad, |b| b[at] ^= 0x10);

    // Parsing checks only header, metadata and table: plain inspect still works...
    let r = run(["inspect", bad.to_str().unwrap()]);
    r.ok();
    // ...and --verify finds the tensor.
    let r = run(["inspect", "--verify", bad.to_str().unwrap()]);
    let e = r.one_line_error();
    assert!(e.contains("blk.5.ffn_up.weight"), "{e}");
    assert!(e.contains("1 of 272 segments"), "{e}");
    assert!(r.stdout.contains("FAILED") && r.stdout.contains("blk.5.ffn_up.weight"), "{}", r.stdout);
    let r = run(["inspect", "--verify", "--json", bad.to_str().unwrap()]);
    r.one_line_error();
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["checksums"]["segments"], "failed");
    assert!(v["checksums"]["failed"][0].as_str().unwrap().contains("blk.5.ffn_up.weight"));
}

#[test]
fn inspect_of_a_gguf_counts_its_tensors_and_what_a_token_reads() {
    if !have_models() {
        return;
    }
    let g = smollm_gguf();
    let v = run(["inspect", g.to_str().unwrap(), "--json"]).json();
    assert_eq!(v["format"], "gguf");
    assert_eq!(v["architecture"], "llama");
    // The same file packed: as many tensors, as many parameters.
    let packed = run(["inspect", smollm_f16().to_str().unwrap(), "--json"]).json();
    assert_eq!(v["tensors"].as_u64().unwrap() as usize, packed["tensors"].as_array().unwrap().len());
    let types = v["types"].as_object().unwrap();
    let sum = |k: &str| types.values().map(|t| t[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("bytes"), v["bytes"].as_u64().unwrap());
    // Tensor data fills the file after its header, up to alignment padding.
    let len = std::fs::metadata(&g).unwrap().len();
    let bytes = v["bytes"].as_u64().unwrap();
    assert!(bytes < len && len - bytes < 8 << 20, "{bytes} of {len}");
    // Tied: the embedding is the head, read whole by every token.
    assert_eq!(v["tied_embeddings"], true);
    assert_eq!(v["decode_bytes"], v["bytes"]);
    let text = run(["inspect", g.to_str().unwrap()]);
    let text = &text.ok().stdout;
    assert!(text.contains("Q4_1") && text.contains("read per decoded token"), "{text}");
    let e = run(["inspect", "--verify", g.to_str().unwrap()]).one_line_error();
    assert!(e.contains("GGUF") && e.contains("--verify"), "{e}");
}

#[path = "../trainer-bridge/tests/common/gguf_writer.rs"]
mod gguf_writer;

#[test]
fn inspect_of_an_untied_gguf_leaves_out_all_but_a_row_of_the_embedding() {
    let dir = tempfile::tempdir().unwrap();
    for tied in [false, true] {
        let c = gguf_writer::Tiny { tied, ..Default::default() };
        let p = dir.path().join(format!("tiny-{tied}.gguf"));
        std::fs::write(&p, gguf_writer::tiny_llama(c).to_bytes()).unwrap();
        let v = run(["inspect", p.to_str().unwrap(), "--json"]).json();
        let (bytes, decode) = (v["bytes"].as_u64().unwrap(), v["decode_bytes"].as_u64().unwrap());
        assert_eq!(v["tied_embeddings"], tied);
        // All F32: the embedding is vocab x dim floats.
        let embedding = c.vocab * c.dim * 4;
        assert_eq!(decode, if tied { bytes } else { bytes - embedding }, "tied {tied}");
    }
}

#[test]
fn verify_of_a_view_reads_only_its_planes() {
    if !have_models() {
        return;
    }
    let m = smollm_q8();
    // Flip a byte in the last plane (bits 3-0) of one nested tensor: only the 8-bit view reads it.
    let bytes = edge_runtime::load::CheckpointBytes::read(&m).unwrap();
    let ck = edge_runtime::Checkpoint::parse(bytes.as_bytes()).unwrap();
    let t = ck.tensor("blk.5.ffn_up.weight").unwrap();
    let low = t.planes().nth(3).expect("four planes");
    let at = (low.file_offset + low.bytes.len() as u64 / 2) as usize;
    let n_segments: usize = ck.tensors.iter().map(|t| t.segments.len()).sum();
    drop(ck);
    drop(bytes);
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("flipped-plane.edge");
    corrupt_copy(&m, &bad, |b| b[at] ^= 0x01);

    for bits in ["2", "3", "4"] {
        let v = run(["inspect", "--verify", "--bits", bits, "--json", bad.to_str().unwrap()]).ok().json();
        assert_eq!(v["checksums"]["segments"], "ok", "{bits}-bit view");
        let checked = v["checksums"]["segments_checked"].as_u64().unwrap();
        assert!(checked < n_segments as u64, "{bits}-bit view checked {checked} of {n_segments}");
    }
    let v2 = run(["inspect", "--verify", "--bits", "2", "--json", bad.to_str().unwrap()]).json();
    let v4 = run(["inspect", "--verify", "--bits", "4", "--json", bad.to_str().unwrap()]).json();
    assert!(v2["checksums"]["bytes_checked"].as_u64() < v4["checksums"]["bytes_checked"].as_u64());
    let r = run(["inspect", "--verify", "--bits", "8", bad.to_str().unwrap()]);
    let e = r.one_line_error();
    assert!(e.contains("blk.5.ffn_up.weight") && e.contains("8-bit view"), "{e}");
    let e = run(["inspect", "--bits", "4", bad.to_str().unwrap()]).one_line_error();
    assert!(e.contains("--verify"), "{e}");
}
