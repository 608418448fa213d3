//! Batched attention (prefill) against token-by-token decode, and the fast `exp` of the
//! softmax against `libm::expf`.

mod support;
use support::{aligned, rand_u8, TinyLlama};

use edge_runtime::format::Checkpoint;
use edge_runtime::model::{exp_fast, softmax, softmax_reference, Logits, Model, ModelOptions};

/// A random small Llama (dim 64, 2 layers, GQA 4/2, head_dim 16, vocab 96, context 256) with
/// nested 8-bit weights.
fn small_model() -> Vec<u8> {
    let m = TinyLlama { dim: 64, hidden: 128, layers: 2, heads: 4, kv_heads: 2, vocab: 96, context: 256, group: 16, range: 0.8, seed: 7 };
    m.bytes()
}

/// Logits of every token, one token per forward call (the decode path).
fn sequential(m: &mut Model<'_>, tokens: &[u32]) -> Vec<f32> {
    let mut all = Vec::new();
    for (p, &t) in tokens.iter().enumerate() {
        all.extend_from_slice(m.forward(t, p).unwrap());
    }
    all
}

/// Logits of every token, prefilled in batches of the given sizes.
fn batched(m: &mut Model<'_>, tokens: &[u32], sizes: &[usize]) -> Vec<f32> {
    let mut all = Vec::new();
    let mut pos = 0;
    for &n in sizes {
        all.extend_from_slice(m.forward_batch(&tokens[pos..pos + n], pos, Logits::All).unwrap());
        pos += n;
    }
    assert_eq!(pos, tokens.len());
    all
}

/// max |a - b| / max |a|.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(d.is_finite() && scale > 0.0);
    d / scale
}

fn compare(m: &mut Model<'_>, tokens: &[u32], splits: &[&[usize]]) {
    let want = sequential(m, tokens);
    for sizes in splits {
        let got = batched(m, tokens, sizes);
        let d = rel_diff(&want, &got);
        eprintln!("batches {sizes:?}: max |Δlogit| / max |logit| = {d:.2e}");
        assert!(d < 1e-4, "batches {sizes:?}: relative difference {d}");
    }
}

#[test]
fn batched_attention_matches_token_by_token() {
    let bytes = small_model();
    let buf = aligned(&bytes);
    let ck = Checkpoint::parse(&bytemuck::cast_slice::<u128, u8>(&buf)[..bytes.len()]).unwrap();
    // max_batch 160: blocks of 64 tokens, so a batch spans several score blocks.
    let mut m = Model::new(&ck, ModelOptions { max_seq_len: 0, max_batch: 160, ..ModelOptions::default() }).unwrap();
    let tokens: Vec<u32> = rand_u8(200, 99).iter().map(|&b| b as u32 % 96).collect();
    compare(&mut m, &tokens, &[&[160, 40], &[1, 2, 3, 64, 65, 65], &[100, 1, 99], &[50, 50, 50, 50]]);
}

#[test]
fn batched_attention_small_batches() {
    // max_batch 4: score blocks of 4 rows, many calls at positions > 0.
    let bytes = small_model();
    let buf = aligned(&bytes);
    let ck = Checkpoint::parse(&bytemuck::cast_slice::<u128, u8>(&buf)[..bytes.len()]).unwrap();
    let mut m = Model::new(&ck, ModelOptions { max_seq_len: 0, max_batch: 4, ..ModelOptions::default() }).unwrap();
    let tokens: Vec<u32> = rand_u8(30, 5).iter().map(|&b| b as u32 % 96).collect();
    compare(&mut m, &tokens, &[&[4, 4, 4, 4, 4, 4, 4, 2], &[2, 3, 4, 4, 4, 4, 4, 4, 1]]);
}

/// A real checkpoint (`EDGE_TEST_PACK`, an `.edge` file; skipped when unset): 96 prompt
/// tokens prefilled at once and in chunks against decode. Use a dense pack (f16/f32): with
/// nested weights the activations are rounded to int8 before every product, so the
/// float-level differences of the two attention paths (sgemm vs dot products: summation
/// order) flip some of those roundings and grow over the layers (SmolLM2-135M: 2e-6 with f16
/// weights, a few % of the largest logit with 8-bit ones).
#[test]
fn batched_attention_real_model() {
    let Ok(path) = std::env::var("EDGE_TEST_PACK") else {
        eprintln!("EDGE_TEST_PACK unset: skipped");
        return;
    };
    let bytes = std::fs::read(path).unwrap();
    let buf = aligned(&bytes);
    let ck = Checkpoint::parse(&bytemuck::cast_slice::<u128, u8>(&buf)[..bytes.len()]).unwrap();
    let mut m = Model::new(&ck, ModelOptions { max_seq_len: 256, max_batch: 96, ..ModelOptions::default() }).unwrap();
    let tokens: Vec<u32> = (0..96u32).map(|i| (i * 7919 + 13) % 4000).collect();
    compare(&mut m, &tokens, &[&[96], &[40, 1, 55]]);
}

/// ulps between two finite floats of the same sign.
fn ulps(a: f32, b: f32) -> u32 {
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
}

#[test]
fn exp_fast_matches_libm() {
    // libm::expf is the reference. Normal results: within 2 ulp.
    let mut worst = (0u32, 0f32);
    let n = 2_000_000;
    for i in 0..=n {
        let x = -87.3 + (88.7 + 87.3) * i as f32 / n as f32;
        let (want, got) = (libm::expf(x), exp_fast(x));
        let u = ulps(want, got);
        if u > worst.0 {
            worst = (u, x);
        }
    }
    // Every float in [-1, 1] too.
    let mut b = 1f32.to_bits();
    while b > 0x3000_0000 {
        let x = f32::from_bits(b);
        for x in [x, -x] {
            let u = ulps(libm::expf(x), exp_fast(x));
            if u > worst.0 {
                worst = (u, x);
            }
        }
        b -= 97;
    }
    eprintln!("exp_fast: worst {} ulp at {}", worst.0, worst.1);
    assert!(worst.0 <= 2, "exp_fast off by {} ulp at {}", worst.0, worst.1);
    // Subnormal results: absolute error within a few subnormal steps.
    for i in 0..=10_000 {
        let x = -104.0 + 17.0 * i as f32 / 10_000.0;
        let (want, got) = (libm::expf(x), exp_fast(x));
        assert!((want - got).abs() <= 4.0 * f32::from_bits(1) + want * 3e-7, "x {x}: {got} vs {want}");
    }
    assert_eq!(exp_fast(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp_fast(-1e30), 0.0);
    assert_eq!(exp_fast(0.0), 1.0);
    assert_eq!(exp_fast(89.0), f32::INFINITY);
    assert_eq!(exp_fast(f32::INFINITY), f32::INFINITY);
    assert!(exp_fast(88.72).is_finite());
    assert!(exp_fast(f32::NAN).is_nan());
}

#[test]
fn softmax_matches_reference() {
    for len in [1usize, 2, 7, 8, 9, 63, 100, 1000] {
        let x: Vec<f32> = rand_u8(len, len as u64).iter().map(|&b| (b as f32 - 128.0) / 8.0).collect();
        let (mut a, mut b) = (x.clone(), x);
        softmax(&mut a);
        softmax_reference(&mut b);
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 1e-6 * q.max(1e-30) + 1e-12, "len {len}: {p} vs {q}");
        }
        assert!((a.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}
