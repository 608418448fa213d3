//! CI's short fuzz run: each target for a fixed number of executions from its real seeds
//! (`EDGE_FUZZ_EXECS` overrides the count, `EDGE_FUZZ_SECS` bounds the time instead; the long
//! run is `benches/fuzz-long.sh`). A crash fails the test naming the target and the saved input;
//! a hang over 10 s ends the process the same way.

use edge_fuzz::{check, targets as t, LimitAlloc};

#[global_allocator]
static ALLOC: LimitAlloc = LimitAlloc;

#[test]
fn fuzz_edge() {
    check("edge", t::edge_seeds(), 3000, t::edge);
}

#[test]
fn fuzz_edge_fixed() {
    check("edge_fixed", t::edge_seeds(), 3000, t::edge_fixed);
}

#[test]
fn fuzz_gguf() {
    check("gguf", t::gguf_seeds(), 40000, t::gguf);
}

#[test]
fn fuzz_gguf_tokenizer() {
    check("gguf_tokenizer", t::gguf_seeds(), 20000, t::gguf_tokenizer);
}

#[test]
fn fuzz_sentencepiece() {
    check("sentencepiece", vec![t::seed_file("llama2c/tokenizer.model")], 1000, t::sentencepiece);
}

#[test]
fn fuzz_llama2c() {
    check("llama2c", vec![t::seed_file("llama2c/stories260K.bin")], 500, t::llama2c);
}

#[test]
fn fuzz_hf_config() {
    check("hf_config", t::hf_config_seeds(), 1000, t::hf_config);
}

#[test]
fn fuzz_safetensors() {
    check("safetensors", t::safetensors_seeds(), 500, t::safetensors);
}

/// Found by `edge_fixed` (seed 1): a corrupt dimension in the config made `Cpu::new` allocate
/// 5.9 GB before the tensors were bound and found not to match; `Model::build` now checks the
/// stored shapes against the config first.
#[test]
fn regression_edge_fixed_oom_in_backend_new() {
    let data = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/regressions/edge_fixed-oom-f31ef01a182681c8")).unwrap();
    let outcome = edge_fuzz::replay(t::edge_fixed, &data);
    assert!(!outcome.starts_with("model: ok"), "{outcome}");
}

/// Found by the long run of `hf_config` (10^7 executions, seed 1): `num_hidden_layers` =
/// 9,999,930 made `load_hf` allocate the tensor list (6.5 GB) before finding the tensors missing;
/// a config's layer count is now bounded (`config::MAX_LAYERS`) where it is read.
#[test]
fn regression_hf_config_oom_in_the_tensor_list() {
    let data = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/regressions/hf_config-oom-0f1c30612f66df22")).unwrap();
    let outcome = edge_fuzz::replay(t::hf_config, &data);
    assert!(outcome.contains("num_hidden_layers") && outcome.contains("4096"), "{outcome}");
}
