//! stories260K through both importers: same model, same packed logits, and the llama2.c oracle.

#[path = "common/pack_util.rs"]
mod pack_util;

use edge_pack::hf::load_hf;
use edge_pack::llama2c::load_llama2c;
use edge_pack::{pack_model, PackOptions, SourceFormat, WeightEncoding};
use pack_util::*;

#[test]
fn formats_are_detected() {
    if !have_models() {
        return;
    }
    assert_eq!(edge_pack::detect_format(&stories_bin()).unwrap(), SourceFormat::Llama2c);
    assert_eq!(edge_pack::detect_format(&stories_hf()).unwrap(), SourceFormat::HuggingFace);
    // A GGUF release folder (config.json and tokenizer.json beside one .gguf, no safetensors)
    // stands for its GGUF file.
    let smollm = models_dir().join("smollm2-135m-instruct-q4_1");
    assert_eq!(edge_pack::detect_format(&smollm).unwrap(), SourceFormat::Gguf);
    assert_eq!(edge_pack::resolve_input(&smollm).unwrap(), smollm.join("SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert_eq!(edge_pack::resolve_input(&stories_hf()).unwrap(), stories_hf());
}

#[test]
fn hf_and_llama2c_give_the_same_model() {
    if !have_models() {
        return;
    }
    let a = load_llama2c(&stories_bin(), None).unwrap();
    let b = load_hf(&stories_hf(), None).unwrap();
    assert_eq!(a.config, b.config);
    let c = a.config;
    assert_eq!(
        (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size, c.max_seq_len),
        (64, 172, 5, 8, 4, 8, 512, 512)
    );
    assert!(c.tied_embeddings);
    assert_eq!((c.norm_eps, c.rope_theta), (1e-5, 10000.0));
    assert_eq!((a.bos_token_id, a.eos_token_id), (Some(1), Some(2)));
    assert_eq!((b.bos_token_id, b.eos_token_id), (Some(1), Some(2)));
    assert!(a.tokenizer_json.is_none() && b.tokenizer_json.is_none());

    assert_eq!(a.tensors.len(), 47);
    let names_a: Vec<_> = a.tensors.iter().map(|t| &t.name).collect();
    let names_b: Vec<_> = b.tensors.iter().map(|t| &t.name).collect();
    assert_eq!(names_a, names_b);
    for (ta, tb) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!(ta.shape, tb.shape, "{}", ta.name);
        let d = max_abs_diff(&ta.data, &tb.data);
        assert!(d < 1e-6, "tensor {} differs by {d}", ta.name);
    }
}

#[test]
fn unpermute_is_needed_for_q_and_k() {
    // Guard against a vacuous comparison: the HF file really is in rotate-half order.
    if !have_models() {
        return;
    }
    let a = load_llama2c(&stories_bin(), None).unwrap();
    let b = load_hf(&stories_hf(), None).unwrap();
    let q =
        |m: &edge_pack::SourceModel| m.tensors.iter().find(|t| t.name == "blk.0.attn_q.weight").unwrap().data.clone();
    let c = a.config;
    let permuted_back = {
        // Apply the HF permutation to the interleaved rows; it must differ from them.
        let data = q(&a);
        let cols = c.dim;
        let (hd, half) = (c.head_dim, c.head_dim / 2);
        let mut out = vec![0f32; data.len()];
        for h in 0..c.n_heads {
            for i in 0..half {
                for p in 0..2 {
                    let src = h * hd + 2 * i + p;
                    let dst = h * hd + p * half + i;
                    out[dst * cols..(dst + 1) * cols].copy_from_slice(&data[src * cols..(src + 1) * cols]);
                }
            }
        }
        out
    };
    assert!(max_abs_diff(&q(&a), &permuted_back) > 1e-3);
    assert_eq!(edge_pack::hf::unpermute_rotary(&permuted_back, c.n_heads, c.head_dim, c.dim), q(&b));
}

#[test]
fn packed_f32_logits_agree_and_greedy_matches_llama2c_oracle() {
    if !have_models() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let opts = PackOptions { encoding: WeightEncoding::F32, allow_no_tokenizer: true, ..Default::default() };
    let from_bin = dir.path().join("bin.edge");
    let from_hf = dir.path().join("hf.edge");
    pack_model(&load_llama2c(&stories_bin(), None).unwrap(), &from_bin, &opts).unwrap();
    pack_model(&load_hf(&stories_hf(), None).unwrap(), &from_hf, &opts).unwrap();

    let oracle = stories_oracle();
    assert_eq!(oracle.len(), 61, "run.c -n 61 from BOS generates 61 tokens");
    let (ids_bin, logits_bin) = greedy(read_bytes(&from_bin).as_bytes(), 1, oracle.len(), None);
    let (ids_hf, logits_hf) = greedy(read_bytes(&from_hf).as_bytes(), 1, oracle.len(), None);
    for (pos, (la, lb)) in logits_bin.iter().zip(&logits_hf).enumerate() {
        let d = max_abs_diff(la, lb);
        assert!(d < 1e-4, "position {pos}: logits differ by {d}");
    }
    assert_eq!(ids_bin, oracle, "llama2.c import vs run.c greedy oracle");
    assert_eq!(ids_hf, oracle, "Hugging Face import vs run.c greedy oracle");
}

#[test]
fn packed_f16_still_follows_the_oracle_closely() {
    if !have_models() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f16.edge");
    let opts = PackOptions { encoding: WeightEncoding::F16, allow_no_tokenizer: true, ..Default::default() };
    edge_pack::pack_file(&stories_bin(), &out, &opts).unwrap();
    // Teacher-forced on the oracle sequence, f16 weights pick the same argmax almost everywhere.
    let oracle = stories_oracle();
    let mut seq = vec![1u32];
    seq.extend(&oracle[..oracle.len() - 1]);
    let logits = logits_for(read_bytes(&out).as_bytes(), &seq, None);
    let agree = logits.iter().zip(&oracle).filter(|(l, &o)| argmax(l) == o).count();
    assert!(agree >= oracle.len() - 2, "f16 argmax agrees with the oracle at {agree}/{} positions", oracle.len());
}
