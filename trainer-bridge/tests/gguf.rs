//! GGUF importer: dequantizers against hand-built blocks, the real SmolLM2 GGUF (config,
//! tensors, dequantized values, tokenizer rebuilt from metadata), and bad inputs.

#[path = "common/gguf_writer.rs"]
mod gguf_writer;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use edge_pack::gguf::{self, dequantize, import_gguf, load_gguf, GgmlType, GgufFile};
use gguf_writer::{noise, tiny_llama, Tiny, V};
use half::{bf16, f16};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn models_dir() -> PathBuf {
    std::env::var_os("EDGE_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/work/shared/models"))
}

fn data_dir() -> PathBuf {
    std::env::var_os("EDGE_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/work/shared/data"))
}

fn smollm_dir() -> PathBuf {
    models_dir().join("smollm2-135m-instruct-q4_1")
}

fn smollm_gguf() -> PathBuf {
    smollm_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Whether the real model is present; tests that need it skip (loudly) otherwise.
fn have_smollm() -> bool {
    let ok = smollm_gguf().is_file() && smollm_dir().join("tokenizer.json").is_file();
    if !ok {
        eprintln!("SKIP: {} not found (set EDGE_MODELS_DIR)", smollm_gguf().display());
    }
    ok
}

/// Deterministic pseudo-random integers.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn h(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

fn hf(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-6 * w.abs().max(1.0);
        assert!((g - w).abs() <= tol, "{what}: element {i}: got {g}, want {w}");
    }
}

/// Write `bytes` to a fresh temp dir as `name`; returns (dir guard, path).
fn temp_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    (dir, p)
}

fn load_err(bytes: &[u8]) -> String {
    let (_d, p) = temp_file("model.gguf", bytes);
    match load_gguf(&p, None) {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Dequantizers against hand-packed blocks (packing as ggml's quantize_row_*_ref lays it out,
// expected values from ggml's formula applied to the codes).
// ---------------------------------------------------------------------------------------------

#[test]
fn dequant_f32_f16_bf16() {
    let xs = [0.0f32, 1.0, -2.5, 3.140625, 65504.0, -0.000061035156];
    let b: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(dequantize(GgmlType::F32, &b, xs.len()).unwrap(), xs);
    let b: Vec<u8> = xs.iter().flat_map(|&x| h(x)).collect();
    let want: Vec<f32> = xs.iter().map(|&x| hf(x)).collect();
    assert_eq!(dequantize(GgmlType::F16, &b, xs.len()).unwrap(), want);
    let b: Vec<u8> = xs.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect();
    let want: Vec<f32> = xs.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
    assert_eq!(dequantize(GgmlType::BF16, &b, xs.len()).unwrap(), want);
}

#[test]
fn dequant_q4_0() {
    let mut r = Rng(1);
    let d = 0.0371;
    let l: Vec<u8> = (0..32).map(|_| r.below(16) as u8).collect();
    let mut b = h(d).to_vec();
    b.extend((0..16).map(|j| l[j] | (l[j + 16] << 4)));
    assert_eq!(b.len(), gguf::Q4_0_SIZE);
    let want: Vec<f32> = l.iter().map(|&q| (q as f32 - 8.0) * hf(d)).collect();
    assert_close(&dequantize(GgmlType::Q4_0, &b, 32).unwrap(), &want, "Q4_0");
}

#[test]
fn dequant_q4_1() {
    let mut r = Rng(2);
    let (d, m) = (0.0123, -0.25);
    let l: Vec<u8> = (0..32).map(|_| r.below(16) as u8).collect();
    let mut b = h(d).to_vec();
    b.extend(h(m));
    b.extend((0..16).map(|j| l[j] | (l[j + 16] << 4)));
    assert_eq!(b.len(), gguf::Q4_1_SIZE);
    let want: Vec<f32> = l.iter().map(|&q| q as f32 * hf(d) + hf(m)).collect();
    assert_close(&dequantize(GgmlType::Q4_1, &b, 32).unwrap(), &want, "Q4_1");
}

fn pack_q5(l: &[u8]) -> (u32, Vec<u8>) {
    let mut qh = 0u32;
    let mut qs = Vec::new();
    for j in 0..16 {
        qs.push((l[j] & 0x0F) | ((l[j + 16] & 0x0F) << 4));
        qh |= ((l[j] as u32 >> 4) & 1) << j;
        qh |= ((l[j + 16] as u32 >> 4) & 1) << (j + 16);
    }
    (qh, qs)
}

#[test]
fn dequant_q5_0() {
    let mut r = Rng(3);
    let d = 0.02;
    let l: Vec<u8> = (0..32).map(|_| r.below(32) as u8).collect();
    let (qh, qs) = pack_q5(&l);
    let mut b = h(d).to_vec();
    b.extend(qh.to_le_bytes());
    b.extend(qs);
    assert_eq!(b.len(), gguf::Q5_0_SIZE);
    let want: Vec<f32> = l.iter().map(|&q| (q as f32 - 16.0) * hf(d)).collect();
    assert_close(&dequantize(GgmlType::Q5_0, &b, 32).unwrap(), &want, "Q5_0");
}

#[test]
fn dequant_q5_1() {
    let mut r = Rng(4);
    let (d, m) = (0.011, 0.5);
    let l: Vec<u8> = (0..32).map(|_| r.below(32) as u8).collect();
    let (qh, qs) = pack_q5(&l);
    let mut b = h(d).to_vec();
    b.extend(h(m));
    b.extend(qh.to_le_bytes());
    b.extend(qs);
    assert_eq!(b.len(), gguf::Q5_1_SIZE);
    let want: Vec<f32> = l.iter().map(|&q| q as f32 * hf(d) + hf(m)).collect();
    assert_close(&dequantize(GgmlType::Q5_1, &b, 32).unwrap(), &want, "Q5_1");
}

#[test]
fn dequant_q8_0_two_blocks() {
    let mut r = Rng(5);
    let mut b = Vec::new();
    let mut want = Vec::new();
    for d in [0.003f32, -0.07] {
        let q: Vec<i8> = (0..32).map(|_| (r.below(256) as i32 - 128) as i8).collect();
        b.extend(h(d));
        b.extend(q.iter().map(|&x| x as u8));
        want.extend(q.iter().map(|&x| x as f32 * hf(d)));
    }
    assert_eq!(b.len(), 2 * gguf::Q8_0_SIZE);
    assert_close(&dequantize(GgmlType::Q8_0, &b, 64).unwrap(), &want, "Q8_0");
}

/// 2-bit codes of 256 elements packed as ggml's Q2_K/Q3_K `qs`: in each 128-element half,
/// byte l holds elements l, l+32, l+64, l+96 at bit offsets 0, 2, 4, 6.
fn pack_2bit(l: &[u8]) -> Vec<u8> {
    let mut q = vec![0u8; 64];
    for j in (0..256).step_by(128) {
        for i in 0..32 {
            q[j / 4 + i] = l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
        }
    }
    q
}

#[test]
fn dequant_q2_k() {
    let mut r = Rng(6);
    let (d, dmin) = (0.0125, 0.0075);
    let sc: Vec<u8> = (0..16).map(|_| r.below(16) as u8).collect();
    let mn: Vec<u8> = (0..16).map(|_| r.below(16) as u8).collect();
    let l: Vec<u8> = (0..256).map(|_| r.below(4) as u8).collect();
    let mut b: Vec<u8> = (0..16).map(|j| sc[j] | (mn[j] << 4)).collect();
    b.extend(pack_2bit(&l));
    b.extend(h(d));
    b.extend(h(dmin));
    assert_eq!(b.len(), gguf::Q2_K_SIZE);
    let want: Vec<f32> =
        (0..256).map(|i| hf(d) * sc[i / 16] as f32 * l[i] as f32 - hf(dmin) * mn[i / 16] as f32).collect();
    assert_close(&dequantize(GgmlType::Q2_K, &b, 256).unwrap(), &want, "Q2_K");
}

#[test]
fn dequant_q3_k() {
    let mut r = Rng(7);
    let d = 0.0042;
    // 16 signed 6-bit scales in -32..32, stored with +32; 3-bit codes stored as value+4.
    let sc: Vec<i32> = (0..16).map(|_| r.below(64) as i32 - 32).collect();
    let code: Vec<u8> = (0..256).map(|_| r.below(8) as u8).collect();
    let mut scales = [0u8; 12];
    for (j, &s) in sc.iter().enumerate() {
        let l = (s + 32) as u8;
        if j < 8 {
            scales[j] = l & 0x0F;
        } else {
            scales[j - 8] |= (l & 0x0F) << 4;
        }
        scales[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
    }
    // High bit of element j goes to hmask[j % 32], bit j / 32.
    let mut hmask = [0u8; 32];
    let mut low = code.clone();
    for j in 0..256 {
        if low[j] > 3 {
            hmask[j % 32] |= 1 << (j / 32);
            low[j] -= 4;
        }
    }
    let mut b = hmask.to_vec();
    b.extend(pack_2bit(&low));
    b.extend(scales);
    b.extend(h(d));
    assert_eq!(b.len(), gguf::Q3_K_SIZE);
    let want: Vec<f32> = (0..256).map(|i| hf(d) * sc[i / 16] as f32 * (code[i] as f32 - 4.0)).collect();
    assert_close(&dequantize(GgmlType::Q3_K, &b, 256).unwrap(), &want, "Q3_K");
}

/// 8 6-bit scales and 8 6-bit mins packed into 12 bytes as Q4_K/Q5_K do.
fn pack_scale_min_k4(ls: &[u8], lm: &[u8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0x0F) | ((lm[j] & 0x0F) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

#[test]
fn dequant_q4_k() {
    let mut r = Rng(8);
    let (d, dmin) = (0.0021, 0.0013);
    let ls: Vec<u8> = (0..8).map(|_| r.below(64) as u8).collect();
    let lm: Vec<u8> = (0..8).map(|_| r.below(64) as u8).collect();
    let l: Vec<u8> = (0..256).map(|_| r.below(16) as u8).collect();
    let mut b = h(d).to_vec();
    b.extend(h(dmin));
    b.extend(pack_scale_min_k4(&ls, &lm));
    for j in (0..256).step_by(64) {
        b.extend((0..32).map(|i| l[j + i] | (l[j + i + 32] << 4)));
    }
    assert_eq!(b.len(), gguf::Q4_K_SIZE);
    let want: Vec<f32> =
        (0..256).map(|i| hf(d) * ls[i / 32] as f32 * l[i] as f32 - hf(dmin) * lm[i / 32] as f32).collect();
    assert_close(&dequantize(GgmlType::Q4_K, &b, 256).unwrap(), &want, "Q4_K");
}

#[test]
fn dequant_q5_k() {
    let mut r = Rng(9);
    let (d, dmin) = (0.0017, 0.0009);
    let ls: Vec<u8> = (0..8).map(|_| r.below(64) as u8).collect();
    let lm: Vec<u8> = (0..8).map(|_| r.below(64) as u8).collect();
    let l: Vec<u8> = (0..256).map(|_| r.below(32) as u8).collect();
    let mut qh = [0u8; 32];
    let mut ql = Vec::new();
    let (mut m1, mut m2) = (1u8, 2u8);
    for n in (0..256).step_by(64) {
        for j in 0..32 {
            let (mut l1, mut l2) = (l[n + j], l[n + j + 32]);
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            ql.push(l1 | (l2 << 4));
        }
        m1 = m1.wrapping_shl(2);
        m2 = m2.wrapping_shl(2);
    }
    let mut b = h(d).to_vec();
    b.extend(h(dmin));
    b.extend(pack_scale_min_k4(&ls, &lm));
    b.extend(qh);
    b.extend(ql);
    assert_eq!(b.len(), gguf::Q5_K_SIZE);
    let want: Vec<f32> =
        (0..256).map(|i| hf(d) * ls[i / 32] as f32 * l[i] as f32 - hf(dmin) * lm[i / 32] as f32).collect();
    assert_close(&dequantize(GgmlType::Q5_K, &b, 256).unwrap(), &want, "Q5_K");
}

#[test]
fn dequant_q6_k() {
    let mut r = Rng(10);
    let d = 0.00061;
    let sc: Vec<i8> = (0..16).map(|_| (r.below(256) as i32 - 128) as i8).collect();
    let l: Vec<u8> = (0..256).map(|_| r.below(64) as u8).collect();
    let mut ql = vec![0u8; 128];
    let mut qh = vec![0u8; 64];
    for (n, j) in (0..256).step_by(128).enumerate() {
        for i in 0..32 {
            let q = |k: usize| l[j + i + k];
            ql[64 * n + i] = (q(0) & 0x0F) | ((q(64) & 0x0F) << 4);
            ql[64 * n + i + 32] = (q(32) & 0x0F) | ((q(96) & 0x0F) << 4);
            qh[32 * n + i] = (q(0) >> 4) | ((q(32) >> 4) << 2) | ((q(64) >> 4) << 4) | ((q(96) >> 4) << 6);
        }
    }
    let mut b = ql;
    b.extend(qh);
    b.extend(sc.iter().map(|&s| s as u8));
    b.extend(h(d));
    assert_eq!(b.len(), gguf::Q6_K_SIZE);
    let want: Vec<f32> = (0..256).map(|i| hf(d) * sc[i / 16] as f32 * (l[i] as f32 - 32.0)).collect();
    assert_close(&dequantize(GgmlType::Q6_K, &b, 256).unwrap(), &want, "Q6_K");
}

#[test]
fn dequant_q8_k() {
    let mut r = Rng(11);
    let d = 0.0123f32;
    let q: Vec<i8> = (0..256).map(|_| (r.below(256) as i32 - 128) as i8).collect();
    let mut b = d.to_le_bytes().to_vec();
    b.extend(q.iter().map(|&x| x as u8));
    b.extend([0u8; 32]); // bsums: not used by dequantization
    assert_eq!(b.len(), gguf::Q8_K_SIZE);
    let want: Vec<f32> = q.iter().map(|&x| x as f32 * d).collect();
    assert_close(&dequantize(GgmlType::Q8_K, &b, 256).unwrap(), &want, "Q8_K");
}

#[test]
fn dequant_rejects_bad_sizes_and_types() {
    let e = dequantize(GgmlType::Q4_0, &[0u8; 18], 16).unwrap_err().to_string();
    assert!(e.contains("whole number"), "{e}");
    let e = dequantize(GgmlType::Q4_0, &[0u8; 17], 32).unwrap_err().to_string();
    assert!(e.contains("take 18 bytes"), "{e}");
    let e = dequantize(GgmlType::IQ2_XS, &[0u8; 74], 256).unwrap_err().to_string();
    assert!(e.contains("IQ2_XS"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// The real model
// ---------------------------------------------------------------------------------------------

#[test]
fn smollm_header_and_metadata() {
    if !have_smollm() {
        return;
    }
    let g = GgufFile::open(&smollm_gguf()).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.tensors.len(), 272);
    assert_eq!(g.alignment, 32);
    assert_eq!(g.data_offset % 32, 0);
    assert_eq!(g.get_str("general.architecture").unwrap(), Some("llama"));
    assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap().len(), 49152);
    assert_eq!(g.get_str_array("tokenizer.ggml.merges").unwrap().unwrap().len(), 48900);
    let mut by_type = std::collections::BTreeMap::new();
    for t in &g.tensors {
        *by_type.entry(t.ty.name()).or_insert(0) += 1;
    }
    assert_eq!(by_type.get("Q8_0"), Some(&1));
    assert_eq!(by_type.get("Q4_1"), Some(&210));
    assert_eq!(by_type.get("F32"), Some(&61));
    let params: u64 = g.tensors.iter().map(|t| t.n_elements()).sum();
    assert_eq!(params, 134_515_008);
    // Type errors on metadata are reported, not ignored.
    let e = g.get_u64("general.name").unwrap_err().to_string();
    assert!(e.contains("general.name") && e.contains("string"), "{e}");
}

#[test]
fn smollm_loads_with_config_tensors_and_tokenizer() {
    if !have_smollm() {
        return;
    }
    let t0 = Instant::now();
    let m = load_gguf(&smollm_gguf(), None).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    eprintln!("load + dequantize of SmolLM2-135M: {secs:.2} s");
    assert!(secs < 30.0, "loading took {secs:.1} s");

    let c = m.config;
    assert_eq!(
        (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size, c.max_seq_len),
        (576, 1536, 30, 9, 3, 64, 49152, 8192)
    );
    assert_eq!(c.rope_theta, 100000.0);
    assert!((c.norm_eps - 1e-5).abs() < 1e-9);
    assert!(c.tied_embeddings);

    assert_eq!(m.tensors.len(), 1 + 30 * 9 + 1);
    let find = |n: &str| m.tensors.iter().find(|t| t.name == n).unwrap_or_else(|| panic!("no tensor {n}"));
    let shapes = [
        ("token_embd.weight", vec![49152, 576]),
        ("output_norm.weight", vec![576]),
        ("blk.0.attn_norm.weight", vec![576]),
        ("blk.0.attn_q.weight", vec![576, 576]),
        ("blk.0.attn_k.weight", vec![192, 576]),
        ("blk.0.attn_v.weight", vec![192, 576]),
        ("blk.0.attn_output.weight", vec![576, 576]),
        ("blk.29.ffn_norm.weight", vec![576]),
        ("blk.29.ffn_gate.weight", vec![1536, 576]),
        ("blk.29.ffn_up.weight", vec![1536, 576]),
        ("blk.29.ffn_down.weight", vec![576, 1536]),
    ];
    for (n, s) in shapes {
        let t = find(n);
        assert_eq!(t.shape, s, "{n}");
        assert_eq!(t.data.len() as u64, s.iter().product::<u64>(), "{n}");
    }
    assert!(m.tensors.iter().all(|t| t.name != "output.weight"));
    assert!(m.tensors.iter().all(|t| t.data.iter().all(|x| x.is_finite())));
    let params: usize = m.tensors.iter().map(|t| t.data.len()).sum();
    assert_eq!(params, 134_515_008);

    // Tokenizer: the tokenizer.json beside the file, verbatim.
    let beside = std::fs::read_to_string(smollm_dir().join("tokenizer.json")).unwrap();
    assert_eq!(m.tokenizer_json.as_deref(), Some(beside.as_str()));
    assert!(m.chat_template.as_deref().unwrap().contains("<|im_start|>"));
    assert_eq!((m.bos_token_id, m.eos_token_id, m.add_bos), (Some(1), Some(2), false));
    assert_eq!(m.name, "Smollm2 135M 8k Lc100K Mix1 Ep2");
    assert_eq!(m.source, "gguf:SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn smollm_dequantized_values_match_hand_computation() {
    if !have_smollm() {
        return;
    }
    let g = GgufFile::open(&smollm_gguf()).unwrap();

    // Q4_1: blk.0.attn_q.weight, blocks 0 and 1000, by hand from the raw bytes.
    let t = g.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(t.ty, GgmlType::Q4_1);
    let raw = g.tensor_bytes(t).unwrap();
    let deq = g.dequantize_tensor(t).unwrap();
    for blk in [0usize, 1000, raw.len() / 20 - 1] {
        let b = &raw[blk * 20..blk * 20 + 20];
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        let m = f16::from_le_bytes([b[2], b[3]]).to_f32();
        for j in 0..16 {
            let lo = (b[4 + j] & 0x0F) as f32 * d + m;
            let hi = (b[4 + j] >> 4) as f32 * d + m;
            assert_eq!(deq[blk * 32 + j], lo, "Q4_1 block {blk} element {j}");
            assert_eq!(deq[blk * 32 + j + 16], hi, "Q4_1 block {blk} element {}", j + 16);
        }
    }
    // Every Q4_1 group of 32 takes at most 16 distinct values, evenly spaced from the minimum.
    for name in ["blk.0.attn_q.weight", "blk.7.ffn_down.weight", "blk.29.ffn_up.weight"] {
        let t = g.tensor(name).unwrap();
        let deq = g.dequantize_tensor(t).unwrap();
        for group in deq.chunks_exact(32) {
            let mut v: Vec<u32> = group.iter().map(|x| x.to_bits()).collect();
            v.sort_unstable();
            v.dedup();
            assert!(v.len() <= 16, "{name}: a group has {} distinct values", v.len());
        }
    }

    // Q8_0: token_embd.weight, first and last blocks by hand; every value is an integer
    // multiple (-128..=127) of its block's scale.
    let t = g.tensor("token_embd.weight").unwrap();
    assert_eq!(t.ty, GgmlType::Q8_0);
    assert_eq!(t.shape(), vec![49152, 576]);
    let raw = g.tensor_bytes(t).unwrap();
    let deq = g.dequantize_tensor(t).unwrap();
    let n_blocks = raw.len() / 34;
    assert_eq!(n_blocks * 32, deq.len());
    for blk in [0usize, 12345, n_blocks - 1] {
        let b = &raw[blk * 34..blk * 34 + 34];
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        for j in 0..32 {
            assert_eq!(deq[blk * 32 + j], (b[2 + j] as i8) as f32 * d, "Q8_0 block {blk} element {j}");
        }
    }
    for (blk, group) in deq.chunks_exact(32).enumerate().step_by(97) {
        let b = &raw[blk * 34..blk * 34 + 2];
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        for &x in group {
            let q = x / d;
            assert!(d == 0.0 || ((q - q.round()).abs() < 1e-3 && (-128.0..=127.0).contains(&q)), "block {blk}: {x} / {d}");
        }
    }

    // F32 norms are the raw bytes.
    let t = g.tensor("output_norm.weight").unwrap();
    let raw = g.tensor_bytes(t).unwrap();
    let deq = g.dequantize_tensor(t).unwrap();
    let want: Vec<f32> = raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(deq, want);
}

#[test]
fn smollm_tokenizer_built_from_metadata_matches_the_shared_one() {
    if !have_smollm() {
        return;
    }
    let g = GgufFile::open(&smollm_gguf()).unwrap();
    let built = g.build_tokenizer_json().unwrap().expect("a gpt2/smollm tokenizer can be built");
    let built = tokenizers::Tokenizer::from_str(&built).unwrap();
    let shared = tokenizers::Tokenizer::from_file(smollm_dir().join("tokenizer.json")).unwrap();
    assert_eq!(built.get_vocab_size(true), 49152);

    let ids = |t: &tokenizers::Tokenizer, s: &str| t.encode(s, false).unwrap().get_ids().to_vec();
    assert_eq!(ids(&built, "Once upon a time"), [6403, 1980, 253, 655]);
    assert_eq!(ids(&built, "<|im_start|>user\nHi 2024!<|im_end|>"), ids(&shared, "<|im_start|>user\nHi 2024!<|im_end|>"));
    assert_eq!(ids(&built, "<|im_start|>")[..], [1]);

    let wiki = data_dir().join("wikitext-2-raw/wiki.test.raw");
    let Ok(bytes) = std::fs::read(&wiki) else {
        eprintln!("SKIP wiki comparison: {} not found (set EDGE_DATA_DIR)", wiki.display());
        return;
    };
    let mut end = bytes.len().min(100_000);
    while std::str::from_utf8(&bytes[..end]).is_err() {
        end -= 1;
    }
    let text = std::str::from_utf8(&bytes[..end]).unwrap();
    let a = ids(&built, text);
    let b = ids(&shared, text);
    assert!(a.len() > 20_000, "{} tokens", a.len());
    if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
        panic!("first difference at token {i}: built {:?} vs shared {:?}", &a[i..i + 5], &b[i..i + 5]);
    }
    assert_eq!(a.len(), b.len());
    let decoded = built.decode(&a, false).unwrap();
    assert_eq!(decoded, text);
}

#[test]
fn tokenizer_override_and_fallback_to_metadata() {
    if !have_smollm() {
        return;
    }
    // A GGUF alone in a folder: the tokenizer is built from its metadata.
    let dir = tempfile::tempdir().unwrap();
    let lone = dir.path().join("m.gguf");
    std::fs::hard_link(smollm_gguf(), &lone).or_else(|_| std::fs::copy(smollm_gguf(), &lone).map(|_| ())).unwrap();
    let g = GgufFile::open(&lone).unwrap();
    let m = import_gguf(&g, &lone, None).unwrap();
    let tj = m.tokenizer_json.expect("built from metadata");
    let t = tokenizers::Tokenizer::from_str(&tj).unwrap();
    assert_eq!(t.encode("Once upon a time", false).unwrap().get_ids(), [6403, 1980, 253, 655]);
    assert_eq!(m.source, "gguf:m.gguf");

    // An explicit override wins, and a broken one is a clear error.
    let over = dir.path().join("other.json");
    std::fs::copy(smollm_dir().join("tokenizer.json"), &over).unwrap();
    let m = import_gguf(&g, &lone, Some(&over)).unwrap();
    assert_eq!(m.tokenizer_json.unwrap(), std::fs::read_to_string(&over).unwrap());
    std::fs::write(&over, "{\"not\": \"a tokenizer\"}").unwrap();
    let e = format!("{:#}", import_gguf(&g, &lone, Some(&over)).unwrap_err());
    assert!(e.contains("not a valid Hugging Face tokenizer.json"), "{e}");
}

#[test]
fn truncated_real_file_is_an_error() {
    if !have_smollm() {
        return;
    }
    let full = std::fs::read(smollm_gguf()).unwrap();
    let data_cut = full.len() - 1000;
    for (cut, what) in [
        (0usize, "not a GGUF file"),
        (3, "not a GGUF file"),
        (10, "truncated GGUF"),
        (30, "truncated GGUF"),
        (200_000, "truncated GGUF"),
        (1_785_000, "truncated GGUF"),
        (data_cut, "truncated GGUF: tensor 'output_norm.weight' data ends at byte"),
    ] {
        let (_d, p) = temp_file("cut.gguf", &full[..cut]);
        let e = format!("{:#}", load_gguf(&p, None).unwrap_err());
        assert!(e.contains(what), "cut at {cut}: {e}");
        if cut > 10 {
            assert!(e.contains("re-download"), "cut at {cut}: {e}");
        }
        if cut == data_cut {
            assert!(e.contains(&format!("the file has {cut} bytes")), "{e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Synthetic files
// ---------------------------------------------------------------------------------------------

fn tiny_bytes() -> Vec<u8> {
    tiny_llama(Tiny::default()).to_bytes()
}

#[test]
fn tiny_model_loads() {
    let w = tiny_llama(Tiny::default());
    let (_d, p) = temp_file("tiny.gguf", &w.to_bytes());
    let m = load_gguf(&p, None).unwrap();
    let c = m.config;
    assert_eq!(
        (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size, c.max_seq_len),
        (64, 96, 2, 4, 2, 16, 10, 128)
    );
    assert_eq!((c.rope_theta, c.norm_eps), (500000.0, 1e-6));
    assert!(!c.tied_embeddings);
    assert_eq!(m.tensors.len(), 1 + 2 * 9 + 2);
    assert_eq!(m.tensors.last().unwrap().name, "output.weight");
    for t in &m.tensors {
        let src = &w.tensors.iter().find(|s| s.name == t.name).unwrap();
        let want: Vec<f32> = src.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(t.data, want, "{}", t.name);
        let ne_rev: Vec<u64> = src.ne.iter().rev().copied().collect();
        assert_eq!(t.shape, ne_rev, "{}", t.name);
    }
    // No tokenizer metadata and none beside: no tokenizer; llama-family defaults.
    assert!(m.tokenizer_json.is_none());
    assert_eq!(m.name, "tiny test llama");
    assert_eq!((m.bos_token_id, m.eos_token_id, m.add_bos), (None, None, false));
}

#[test]
fn tiny_model_v2_custom_alignment_quantized_tensors_and_defaults() {
    let mut w = tiny_llama(Tiny { tied: true, kv_heads: 4, ..Tiny::default() });
    w.version = 2;
    w.alignment = 64;
    w.kv("general.alignment", V::U32(64));
    // Defaults: no head_count_kv, freq_base, epsilon, dimension_count, name.
    for k in [
        "llama.attention.head_count_kv",
        "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.rope.dimension_count",
        "general.name",
    ] {
        w.remove_kv(k);
    }
    // Nested arrays and every scalar type parse.
    w.kv(
        "test.nested",
        V::Arr(9, vec![V::Arr(4, vec![V::U32(1), V::U32(2)]), V::Arr(8, vec![V::str("a"), V::str("bc")])]),
    )
    .kv("test.u8", V::U8(1))
    .kv("test.i8", V::I8(-1))
    .kv("test.u16", V::U16(2))
    .kv("test.i16", V::I16(-2))
    .kv("test.i32", V::I32(-3))
    .kv("test.u64", V::U64(4))
    .kv("test.i64", V::I64(-4))
    .kv("test.f64", V::F64(0.5))
    .kv("test.bool", V::Bool(true))
    .kv("test.f32s", V::Arr(6, vec![V::F32(1.5), V::F32(-2.0)]))
    .kv("tokenizer.ggml.model", V::str("llama"));
    // Re-encode attn_q of layer 0 as Q8_0 and ffn_up of layer 1 as F16.
    let q: Vec<f32> = noise(64 * 64, 99);
    let mut q8 = Vec::new();
    let mut want_q = Vec::new();
    for g in q.chunks_exact(32) {
        let amax = g.iter().fold(0f32, |a, x| a.max(x.abs()));
        let d = hf(amax / 127.0);
        q8.extend(h(d));
        for &x in g {
            let c = (x / d).round().clamp(-128.0, 127.0) as i8;
            q8.push(c as u8);
            want_q.push(c as f32 * d);
        }
    }
    w.tensor("blk.0.attn_q.weight", &[64, 64], GgmlType::Q8_0.0, q8);
    let up = noise(64 * 96, 98);
    w.tensor("blk.1.ffn_up.weight", &[64, 96], GgmlType::F16.0, up.iter().flat_map(|&x| h(x)).collect());

    let bytes = w.to_bytes();
    let g = GgufFile::from_bytes(bytes.clone(), "v2.gguf").unwrap();
    assert_eq!((g.version, g.alignment, g.data_offset % 64), (2, 64, 0));
    assert!(g.tensors.iter().all(|t| t.offset % 64 == 0));
    assert_eq!(g.get_u64("test.u16").unwrap(), Some(2));
    assert_eq!(g.get("test.i64").unwrap().as_i64(), Some(-4));
    assert_eq!(g.get_f64("test.f64").unwrap(), Some(0.5));
    assert_eq!(g.get_bool("test.bool").unwrap(), Some(true));
    let nested = g.get("test.nested").unwrap().as_array().unwrap();
    assert_eq!((nested.len(), nested.elem_type()), (2, 9));

    let (_d, p) = temp_file("v2-model.gguf", &bytes);
    let m = load_gguf(&p, None).unwrap();
    let c = m.config;
    assert_eq!((c.n_kv_heads, c.head_dim, c.rope_theta, c.norm_eps), (4, 16, 10000.0, 1e-5));
    assert!(c.tied_embeddings);
    assert!(m.tensors.iter().all(|t| t.name != "output.weight"));
    assert_eq!(m.name, "v2-model");
    assert!(m.add_bos, "llama vocabularies default to adding BOS");
    assert!(m.tokenizer_json.is_none(), "no tokenizer.ggml.tokens: no tokenizer");
    let find = |n: &str| &m.tensors.iter().find(|t| t.name == n).unwrap().data;
    assert_eq!(find("blk.0.attn_q.weight"), &want_q);
    let want_up: Vec<f32> = up.iter().map(|&x| hf(x)).collect();
    assert_eq!(find("blk.1.ffn_up.weight"), &want_up);
}

#[test]
fn small_gpt2_vocab_builds_a_tokenizer() {
    let mut w = tiny_llama(Tiny::default());
    // Byte-level vocabulary: 2 control tokens, 6 base tokens, 2 merges ("Ġ" is the space).
    let tokens = ["<s>", "</s>", "a", "b", "Ġ", "ab", "Ġab", "<user>", "c", "d"];
    w.kv("tokenizer.ggml.model", V::str("gpt2"))
        .kv("tokenizer.ggml.pre", V::str("gpt2"))
        .kv("tokenizer.ggml.tokens", V::strs(&tokens))
        .kv("tokenizer.ggml.token_type", V::i32s(&[3, 3, 1, 1, 1, 1, 1, 4, 1, 1]))
        .kv("tokenizer.ggml.merges", V::strs(&["a b", "Ġ ab"]))
        .kv("tokenizer.ggml.bos_token_id", V::U32(0))
        .kv("tokenizer.ggml.eos_token_id", V::U32(1))
        .kv("tokenizer.chat_template", V::str("{{ messages }}"));
    let (_d, p) = temp_file("tok.gguf", &w.to_bytes());
    let m = load_gguf(&p, None).unwrap();
    assert_eq!((m.bos_token_id, m.eos_token_id, m.add_bos), (Some(0), Some(1), false));
    assert_eq!(m.chat_template.as_deref(), Some("{{ messages }}"));
    let t = tokenizers::Tokenizer::from_str(m.tokenizer_json.as_deref().unwrap()).unwrap();
    let enc = t.encode("ab ab<user>c</s>", false).unwrap();
    assert_eq!(enc.get_ids(), [5, 6, 7, 8, 1]);
    assert_eq!(t.decode(&[5, 6, 8], false).unwrap(), "ab abc");

    // An unknown pre-tokenizer: no tokenizer rather than a wrong one.
    w.kv("tokenizer.ggml.pre", V::str("some-future-pre"));
    let g = GgufFile::from_bytes(w.to_bytes(), "x.gguf").unwrap();
    assert!(g.build_tokenizer_json().unwrap().is_none());
    // A merge naming a token outside the vocabulary: a clear error.
    w.kv("tokenizer.ggml.pre", V::str("smollm")).kv("tokenizer.ggml.merges", V::strs(&["a zz"]));
    let g = GgufFile::from_bytes(w.to_bytes(), "x.gguf").unwrap();
    let e = format!("{:#}", g.build_tokenizer_json().unwrap_err());
    assert!(e.contains("tokenizer does not load"), "{e}");
    // A BOS id outside the vocabulary.
    w.kv("tokenizer.ggml.merges", V::strs(&["a b"])).kv("tokenizer.ggml.bos_token_id", V::U32(99));
    let e = load_err(&w.to_bytes());
    assert!(e.contains("tokenizer.ggml.bos_token_id") && e.contains("outside the vocabulary"), "{e}");
}

#[test]
fn wrong_magic() {
    let mut b = tiny_bytes();
    b[..4].copy_from_slice(b"GGML");
    let e = load_err(&b);
    assert!(e.contains("not a GGUF file") && e.contains("GGML"), "{e}");
    let e = load_err(b"hello");
    assert!(e.contains("not a GGUF file"), "{e}");
}

#[test]
fn unsupported_version() {
    for (v, what) in [(1u32, "unsupported GGUF version 1"), (4, "unsupported GGUF version 4"), (0x0300_0000, "big-endian GGUF (version 3)")] {
        let mut w = tiny_llama(Tiny::default());
        w.version = v;
        let e = load_err(&w.to_bytes());
        assert!(e.contains(what), "{e}");
    }
}

#[test]
fn unsupported_architecture() {
    let mut w = tiny_llama(Tiny::default());
    w.kv("general.architecture", V::str("gpt2"));
    let e = load_err(&w.to_bytes());
    assert!(e.contains("unsupported architecture 'gpt2': edge-run runs llama, qwen2"), "{e}");
    w.remove_kv("general.architecture");
    let e = load_err(&w.to_bytes());
    assert!(e.contains("general.architecture"), "{e}");
}

#[test]
fn unsupported_tensor_type() {
    let mut w = tiny_llama(Tiny { dim: 256, hidden: 256, ..Tiny::default() });
    // IQ2_XS: 74 bytes per 256 elements.
    w.tensor("blk.1.attn_q.weight", &[256, 256], GgmlType::IQ2_XS.0, vec![0u8; 256 * 74]);
    let e = load_err(&w.to_bytes());
    assert!(
        e.contains("tensor 'blk.1.attn_q.weight' has GGUF type IQ2_XS, which edge-pack cannot read")
            && e.contains("llama-quantize"),
        "{e}"
    );
    // A type code ggml does not define at all.
    w.tensor("blk.1.attn_q.weight", &[256, 256], 1234, vec![0u8; 64]);
    let e = load_err(&w.to_bytes());
    assert!(e.contains("type #1234"), "{e}");
}

#[test]
fn missing_or_misshapen_tensors_and_keys() {
    let mut w = tiny_llama(Tiny::default());
    w.tensors.retain(|t| t.name != "blk.1.ffn_down.weight");
    let e = load_err(&w.to_bytes());
    assert!(e.contains("no tensor 'blk.1.ffn_down.weight'"), "{e}");

    let mut w = tiny_llama(Tiny::default());
    w.tensor_f32("blk.0.attn_k.weight", &[64, 64], &noise(64 * 64, 5));
    let e = load_err(&w.to_bytes());
    assert!(e.contains("tensor 'blk.0.attn_k.weight' has shape [64, 64] but the config implies [32, 64]"), "{e}");

    let mut w = tiny_llama(Tiny::default());
    w.remove_kv("llama.block_count");
    let e = load_err(&w.to_bytes());
    assert!(e.contains("missing 'llama.block_count'"), "{e}");

    let mut w = tiny_llama(Tiny::default());
    w.kv("llama.embedding_length", V::str("576"));
    let e = load_err(&w.to_bytes());
    assert!(e.contains("llama.embedding_length") && e.contains("string"), "{e}");

    let mut w = tiny_llama(Tiny::default());
    w.kv("llama.attention.head_count_kv", V::U32(3));
    let e = load_err(&w.to_bytes());
    assert!(e.contains("inconsistent attention config"), "{e}");
}

#[test]
fn hostile_counts_and_offsets() {
    // Huge tensor/metadata counts in the header.
    let mut b = tiny_bytes();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(load_err(&b).contains("declares 18446744073709551615 tensors"));
    let mut b = tiny_bytes();
    b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(load_err(&b).contains("metadata entries"));
    // A huge string length (the first key's).
    let mut b = tiny_bytes();
    b[24..32].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    let e = load_err(&b);
    assert!(e.contains("truncated GGUF") && e.contains("metadata entry #0"), "{e}");
    // A huge array count.
    let mut w = tiny_llama(Tiny::default());
    w.kv("a", V::Arr(8, vec![]));
    let mut b = w.to_bytes();
    let pos = find_bytes(&b, b"\x01\x00\x00\x00\x00\x00\x00\x00a\x09\x00\x00\x00\x08\x00\x00\x00") + 17;
    b[pos..pos + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let e = load_err(&b);
    assert!(e.contains("metadata 'a' declares 1152921504606846976 array elements"), "{e}");
    // Arrays nested deeper than any real file.
    let mut v = V::Arr(4, vec![]);
    for _ in 0..40 {
        v = V::Arr(9, vec![v]);
    }
    let mut w = tiny_llama(Tiny::default());
    w.kv("deep", v);
    assert!(load_err(&w.to_bytes()).contains("nests arrays more than"));
    // Unknown value type, bad bool.
    let mut w = tiny_llama(Tiny::default());
    w.kv("zz", V::U8(7));
    let mut b = w.to_bytes();
    let pos = find_bytes(&b, b"zz\x00\x00\x00\x00") + 2;
    b[pos] = 77;
    assert!(load_err(&b).contains("metadata 'zz' has unknown value type 77"));
    b[pos] = 7;
    assert!(load_err(&b).contains("bool value 7"));
    // Too many dimensions, a misaligned offset, a tensor past the end of the file.
    let mut w = tiny_llama(Tiny::default());
    w.tensor("x", &[1, 1, 1, 1, 1], 0, vec![0; 4]);
    assert!(load_err(&w.to_bytes()).contains("tensor 'x' has 5 dimensions"));
    let w = tiny_llama(Tiny::default());
    let mut b = w.to_bytes();
    let name = b"output_norm.weight";
    let pos = find_bytes(&b, name) + name.len() + 4 + 8 + 4;
    let off = u64::from_le_bytes(b[pos..pos + 8].try_into().unwrap());
    b[pos..pos + 8].copy_from_slice(&(off + 4).to_le_bytes());
    assert!(load_err(&b).contains("not a multiple of the alignment 32"));
    b[pos..pos + 8].copy_from_slice(&(!31u64).to_le_bytes());
    let e = load_err(&b);
    assert!(e.contains("truncated GGUF: tensor 'output_norm.weight' data ends at byte"), "{e}");
    // Dimensions whose product overflows.
    let mut w = tiny_llama(Tiny::default());
    w.tensor("y", &[1 << 40, 1 << 40], 0, vec![]);
    assert!(load_err(&w.to_bytes()).contains("overflows"));
    // Alignment that is not a power of two.
    let mut w = tiny_llama(Tiny::default());
    w.kv("general.alignment", V::U32(48));
    assert!(load_err(&w.to_bytes()).contains("general.alignment"));
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).expect("pattern present")
}

/// Every truncation of a small file, and many random corruptions, give `Err` or a valid model:
/// never a panic.
#[test]
fn fuzz_truncations_and_corruptions_never_panic() {
    let mut w = tiny_llama(Tiny { dim: 32, hidden: 32, layers: 1, heads: 2, kv_heads: 1, vocab: 8, tied: false });
    w.kv("tokenizer.ggml.model", V::str("gpt2"))
        .kv("tokenizer.ggml.pre", V::str("smollm"))
        .kv("tokenizer.ggml.tokens", V::strs(&["<s>", "a", "b", "ab", "Ġ", "c", "d", "e"]))
        .kv("tokenizer.ggml.token_type", V::i32s(&[3, 1, 1, 1, 1, 1, 1, 1]))
        .kv("tokenizer.ggml.merges", V::strs(&["a b"]));
    // Make a few tensors quantized so the block readers see corrupted input too.
    for (name, ty, size) in [("blk.0.ffn_up.weight", GgmlType::Q4_1, 20), ("blk.0.ffn_gate.weight", GgmlType::Q5_0, 22)] {
        let t = w.get_tensor_mut(name);
        t.ty = ty.0;
        t.data = (0..32 * size).map(|i| (i * 37 % 251) as u8).collect();
    }
    let good = w.to_bytes();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.gguf");
    let try_load = |b: Vec<u8>| -> bool {
        match GgufFile::from_bytes(b, "f.gguf") {
            Ok(g) => import_gguf(&g, &path, None).is_ok(),
            Err(_) => false,
        }
    };
    assert!(try_load(good.clone()));
    for cut in 0..good.len() {
        assert!(!try_load(good[..cut].to_vec()), "truncated at {cut} should fail");
    }
    let mut r = Rng(42);
    let header_len = GgufFile::from_bytes(good.clone(), "f").unwrap().data_offset as usize;
    for _ in 0..3000 {
        let mut b = good.clone();
        for _ in 0..1 + r.below(4) {
            let i = r.below(header_len as u64) as usize;
            b[i] = match r.below(4) {
                0 => 0xFF,
                1 => 0,
                _ => r.below(256) as u8,
            };
        }
        let _ = try_load(b);
    }
}

#[test]
fn read_tokenizer_json_reports_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    let e = format!("{:#}", edge_pack::tokenizer::read_tokenizer_json(&p).unwrap_err());
    assert!(e.contains("cannot read tokenizer file"), "{e}");
    std::fs::write(&p, "[1, 2").unwrap();
    let e = format!("{:#}", edge_pack::tokenizer::read_tokenizer_json(&p).unwrap_err());
    assert!(e.contains("not a valid Hugging Face tokenizer.json") && e.contains("tokenizer does not load"), "{e}");
    assert_eq!(edge_pack::tokenizer::find_tokenizer_json(&dir.path().join("x.gguf")), Some(p.clone()));
    assert_eq!(edge_pack::tokenizer::find_tokenizer_json(dir.path()), Some(p));
    if have_smollm() {
        let s = edge_pack::tokenizer::read_tokenizer_json(&smollm_dir().join("tokenizer.json")).unwrap();
        assert!(s.len() > 3_000_000);
    }
}

// ---------------------------------------------------------------------------------------------
// qwen2 and Llama 3 RoPE factors: a GGUF written as llama.cpp's converter writes each (qwen2's
// q/k rows and biases in Hugging Face's rotate-half order; llama's permuted to interleaved pairs,
// with `rope_freqs.weight`) imports to the same model as the Hugging Face folder.
// ---------------------------------------------------------------------------------------------

fn hf_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hf").join(name)
}

/// Rotate-half order from interleaved (the inverse of `unpermute_rotary`).
fn permute_rotary(data: &[f32], heads: usize, hd: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for p in 0..2 {
                let (src, dst) = (h * hd + 2 * i + p, h * hd + p * hd / 2 + i);
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// `m` written as a GGUF of its architecture, q/k rows (and biases, and head norms) in
/// `rotate_half` order.
fn as_gguf(m: &edge_pack::SourceModel, rotate_half: bool) -> gguf_writer::GgufWriter {
    let (a, c) = (m.arch.name, m.config);
    let mut w = gguf_writer::GgufWriter::default();
    w.kv("general.architecture", V::str(a))
        .kv(&format!("{a}.context_length"), V::U32(c.max_seq_len as u32))
        .kv(&format!("{a}.embedding_length"), V::U32(c.dim as u32))
        .kv(&format!("{a}.feed_forward_length"), V::U32(c.hidden_dim as u32))
        .kv(&format!("{a}.block_count"), V::U32(c.n_layers as u32))
        .kv(&format!("{a}.attention.head_count"), V::U32(c.n_heads as u32))
        .kv(&format!("{a}.attention.head_count_kv"), V::U32(c.n_kv_heads as u32))
        .kv(&format!("{a}.rope.freq_base"), V::F32(c.rope_theta))
        .kv(&format!("{a}.attention.layer_norm_rms_epsilon"), V::F32(c.norm_eps));
    for t in &m.tensors {
        let head_norm = t.name.contains("attn_q_norm.") || t.name.contains("attn_k_norm.");
        let heads = if head_norm { 1 } else if t.name.contains("attn_q.") { c.n_heads } else { c.n_kv_heads };
        let qk = t.name.contains("attn_q.") || t.name.contains("attn_k.") || head_norm;
        let cols = if t.shape.len() == 2 { t.shape[1] as usize } else { 1 };
        let data = if qk && rotate_half { permute_rotary(&t.data, heads, c.head_dim, cols) } else { t.data.clone() };
        let ne: Vec<u64> = t.shape.iter().rev().copied().collect();
        w.tensor_f32(&t.name, &ne, &data);
    }
    w
}

fn assert_same_model(a: &edge_pack::SourceModel, b: &edge_pack::SourceModel) {
    assert_eq!((a.arch.name, a.config), (b.arch.name, b.config));
    let names = |m: &edge_pack::SourceModel| m.tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(a), names(b));
    for (x, y) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!((&x.shape, &x.data), (&y.shape, &y.data), "{}", x.name);
    }
}

#[test]
fn qwen2_gguf_rows_and_biases_are_permuted_like_hf() {
    let hf = edge_pack::hf::load_hf(&hf_fixture("tiny-qwen2"), None).unwrap();
    let w = as_gguf(&hf, true);
    let (_d, path) = temp_file("qwen2.gguf", &w.to_bytes());
    let g = load_gguf(&path, None).unwrap();
    assert_same_model(&g, &hf);
    // Not vacuous: the permutation moves the bias values.
    let bias = |m: &edge_pack::SourceModel| m.tensors.iter().find(|t| t.name == "blk.0.attn_k.bias").unwrap().data.clone();
    assert_ne!(bias(&g), permute_rotary(&bias(&hf), hf.config.n_kv_heads, hf.config.head_dim, 1));
}

#[test]
fn qwen3_gguf_imports_like_hf() {
    let hf = edge_pack::hf::load_hf(&hf_fixture("tiny-qwen3"), None).unwrap();
    let mut w = as_gguf(&hf, true);
    // llama.cpp's converter writes Qwen3's head size (not hidden / heads) as key_length.
    w.kv("qwen3.attention.key_length", V::U32(hf.config.head_dim as u32))
        .kv("qwen3.attention.value_length", V::U32(hf.config.head_dim as u32));
    let (_d, path) = temp_file("qwen3.gguf", &w.to_bytes());
    let g = load_gguf(&path, None).unwrap();
    assert_same_model(&g, &hf);
    // Not vacuous: the head norms are stored in the rows' order, and the importer moves them.
    let norm = |m: &edge_pack::SourceModel| m.tensors.iter().find(|t| t.name == "blk.0.attn_q_norm.weight").unwrap().data.clone();
    assert_ne!(norm(&g), permute_rotary(&norm(&hf), 1, hf.config.head_dim, 1));
    // Without key_length the head size would be hidden / heads (16): refused, not misread.
    let mut short = as_gguf(&hf, true);
    short.kv("qwen3.attention.key_length", V::U32(16)).kv("qwen3.attention.value_length", V::U32(16));
    assert!(load_err(&short.to_bytes()).contains("attn_q"), "{}", load_err(&short.to_bytes()));
}

#[test]
fn llama3_gguf_rope_freqs_import_like_hf_and_other_scaling_is_refused() {
    let hf = edge_pack::hf::load_hf(&hf_fixture("tiny-llama3"), None).unwrap();
    let mut w = as_gguf(&hf, false);
    let (_d, path) = temp_file("llama3.gguf", &w.to_bytes());
    assert_same_model(&load_gguf(&path, None).unwrap(), &hf);
    for kind in ["yarn", "linear"] {
        w.kv("llama.rope.scaling.type", V::str(kind));
        let e = load_err(&w.to_bytes());
        assert!(e.contains(&format!("llama.rope.scaling.type = '{kind}'")), "{e}");
    }
    // qwen2 has no RoPE factors: a qwen2 GGUF with them is refused by name.
    let q = edge_pack::hf::load_hf(&hf_fixture("tiny-qwen2"), None).unwrap();
    let mut w = as_gguf(&q, true);
    w.tensor_f32("rope_freqs.weight", &[(q.config.head_dim / 2) as u64], &vec![1.0; q.config.head_dim / 2]);
    let e = load_err(&w.to_bytes());
    assert!(e.contains("rope_freqs.weight") && e.contains("qwen2"), "{e}");
}
