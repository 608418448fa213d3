//! The packer: round trips, encodings, the nested 8-bit quantizer, bad inputs (library and CLI).

#[path = "common/pack_util.rs"]
mod pack_util;

use std::path::{Path, PathBuf};
use std::process::Command;

use edge_pack::hf::load_hf;
use edge_pack::llama2c::load_llama2c;
use edge_pack::quant::quantize_nested8;
use edge_pack::quant::{NestedObjective, ParamLayout};
use edge_pack::{pack_file, pack_model, PackOptions, WeightEncoding};
use edge_runtime::format::{keys, Encoding};
use edge_runtime::kernels::WeightView;
use edge_runtime::load::CheckpointBytes;
use edge_runtime::Checkpoint;
use pack_util::*;

fn opts(encoding: WeightEncoding) -> PackOptions {
    PackOptions { encoding, allow_no_tokenizer: true, ..Default::default() }
}

/// The oracle sequence with BOS first: a realistic token stream for teacher forcing.
fn stories_tokens() -> Vec<u32> {
    let mut seq = vec![1u32];
    seq.extend(&stories_oracle()[..60]);
    seq
}

// ---------------------------------------------------------------- round trips and encodings

#[test]
fn round_trip_parses_verifies_and_carries_metadata() {
    if !have_models() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer.json");
    std::fs::write(&tok, TINY_TOKENIZER).unwrap();
    let out = dir.path().join("s.edge");
    let o = PackOptions { tokenizer: Some(tok), ..Default::default() };
    let report = pack_file(&stories_bin(), &out, &o).unwrap();
    assert_eq!(report.n_tensors, 47);
    assert_eq!(report.n_params, 260_032);
    assert_eq!(report.bytes, std::fs::metadata(&out).unwrap().len());
    assert!(report.has_tokenizer);

    let bytes = CheckpointBytes::map(&out).unwrap();
    let ck = Checkpoint::parse(bytes.as_bytes()).unwrap();
    ck.verify().unwrap();
    assert_eq!(ck.get_str(keys::ARCH), Some("llama"));
    assert_eq!(ck.get_str(keys::PACKED_BY), Some(concat!("edge-pack ", env!("CARGO_PKG_VERSION"))));
    assert_eq!(ck.get_str(keys::NAME), Some("stories260K"));
    assert_eq!(ck.get_str(keys::SOURCE), Some("stories260K.bin (llama2.c)"));
    for (k, v) in [
        (keys::DIM, 64),
        (keys::HIDDEN_DIM, 172),
        (keys::N_LAYERS, 5),
        (keys::N_HEADS, 8),
        (keys::N_KV_HEADS, 4),
        (keys::HEAD_DIM, 8),
        (keys::VOCAB_SIZE, 512),
        (keys::CONTEXT_LENGTH, 512),
        (keys::BOS_ID, 1),
        (keys::EOS_ID, 2),
    ] {
        assert_eq!(ck.get_u64(k), Some(v), "{k}");
    }
    assert_eq!(ck.get_f32(keys::NORM_EPS), Some(1e-5));
    assert_eq!(ck.get_f32(keys::ROPE_THETA), Some(10000.0));
    assert_eq!(ck.get_bool(keys::TIED_EMBEDDINGS), Some(true));
    assert_eq!(ck.get_bool(keys::ADD_BOS), Some(true));
    assert_eq!(ck.get_str(keys::TOKENIZER_JSON), Some(TINY_TOKENIZER));
    assert!(ck.tensor("output.weight").is_none(), "tied: no output head stored");
    for t in &ck.tensors {
        let want = if t.shape.len() == 1 { Encoding::F32 } else { Encoding::F16 };
        assert_eq!(t.encoding, want, "{}", t.name);
    }
    // And the loaded model equals the source.
    let src = load_llama2c(&stories_bin(), None).unwrap();
    let c = edge_runtime::Config::from_checkpoint(&ck).unwrap();
    assert_eq!(c, src.config);
}

#[test]
fn f16_and_bf16_logits_stay_close_to_f32() {
    if !have_models() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = load_llama2c(&stories_bin(), None).unwrap();
    let mut logits = Vec::new();
    for enc in [WeightEncoding::F32, WeightEncoding::F16, WeightEncoding::Bf16] {
        let out = dir.path().join(format!("{}.edge", enc.name()));
        pack_model(&model, &out, &opts(enc)).unwrap();
        logits.push(logits_for(read_bytes(&out).as_bytes(), &stories_tokens(), None));
    }
    let worst =
        |other: &Vec<Vec<f32>>| logits[0].iter().zip(other).map(|(a, b)| max_abs_diff(a, b)).fold(0.0f32, f32::max);
    let (d16, dbf16) = (worst(&logits[1]), worst(&logits[2]));
    eprintln!("max |logit diff| vs f32: f16 {d16}, bf16 {dbf16}");
    assert!(d16 > 0.0, "f16 encoding must actually round the weights");
    let scale = logits[0].iter().flatten().fold(0.0f32, |m, x| m.max(x.abs()));
    eprintln!("largest |logit| {scale}");
    assert!(d16 < 0.01 * scale, "f16 logits differ from f32 by {d16}");
    assert!(dbf16 < 0.1 * scale, "bf16 logits differ from f32 by {dbf16}");
}

#[test]
fn mmap_and_read_give_identical_logits() {
    if !have_models() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.edge");
    pack_file(&stories_hf(), &out, &opts(WeightEncoding::F16)).unwrap();
    let mapped = CheckpointBytes::map(&out).unwrap();
    let owned = CheckpointBytes::read(&out).unwrap();
    assert!(matches!(mapped, CheckpointBytes::Mapped(_)) && matches!(owned, CheckpointBytes::Owned { .. }));
    assert_eq!(mapped.as_bytes(), owned.as_bytes());
    let a = logits_for(mapped.as_bytes(), &stories_tokens(), None);
    let b = logits_for(owned.as_bytes(), &stories_tokens(), None);
    assert_eq!(a, b);
}

// ---------------------------------------------------------------- nested 8-bit codes

/// Dequantize every nested tensor at 8 bits and check each weight is within half a step.
fn check_nested8_within_half_step(ck: &Checkpoint<'_>, model: &edge_pack::SourceModel, group: u32, encoding: Encoding) {
    let mut checked = 0;
    for src in &model.tensors {
        let t = ck.tensor(&src.name).unwrap();
        if src.shape.len() == 1 {
            assert_eq!(t.encoding, Encoding::F32, "norm {} must stay f32", src.name);
            let m = edge_runtime::backend::cpu::matrix(t, None).unwrap();
            let mut row = vec![0f32; m.cols];
            m.dequant_row(0, &mut row);
            assert_eq!(row, src.data, "norm {} must be exact", src.name);
            continue;
        }
        assert_eq!(t.encoding, encoding, "{}", src.name);
        assert_eq!(t.group_size, group);
        let m = edge_runtime::backend::cpu::matrix(t, Some(8)).unwrap();
        let WeightView::Nested8(edge_runtime::kernels::Nested8 { params, .. }) = m.view else { panic!("not nested") };
        assert_eq!(params.groups(), src.data.len() / group as usize);
        let mut row = vec![0f32; m.cols];
        for r in 0..m.rows {
            m.dequant_row(r, &mut row);
            for (c, &got) in row.iter().enumerate() {
                let i = r * m.cols + c;
                let w = src.data[i];
                let p = params.get(i / group as usize);
                let scale = p.scale;
                // Half a step, plus the f32 rounding of `q * scale + min`.
                let tol = 0.5 * scale + 4.0 * f32::EPSILON * (w.abs() + p.min.abs() + 255.0 * scale);
                assert!(
                    (got - w).abs() <= tol,
                    "{} [{r}, {c}]: source {w}, 8-bit view {got}, scale {scale}, min {}",
                    src.name,
                    p.min
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0);
}

#[test]
fn nested8_every_weight_within_half_a_step() {
    let dir = tempfile::tempdir().unwrap();
    let (f16, sup) = (ParamLayout::F16, ParamLayout::Super);
    for (seed, tied, group, params) in [(1, true, 64u32, f16), (2, false, 32, f16), (3, false, 8, f16), (4, true, 16, f16), (5, false, 32, sup), (6, true, 8, sup)] {
        let model = synthetic_model(seed, tied);
        let out = dir.path().join(format!("q8-{seed}.edge"));
        let o = PackOptions { group_size: group, objective: NestedObjective::MinMax, params, ..opts(WeightEncoding::Nested8) };
        let report = pack_model(&model, &out, &o).unwrap();
        assert_eq!(report.group_size, group);
        let bytes = read_bytes(&out);
        let ck = Checkpoint::parse(bytes.as_bytes()).unwrap();
        ck.verify().unwrap();
        let encoding = if params == sup { Encoding::Nested8Super } else { Encoding::Nested8 };
        check_nested8_within_half_step(&ck, &model, group, encoding);
    }
}

#[test]
fn nested8_models_run_at_every_view_and_track_f32() {
    let dir = tempfile::tempdir().unwrap();
    let model = synthetic_model(7, false);
    let f32_out = dir.path().join("f32.edge");
    let q8_out = dir.path().join("q8.edge");
    pack_model(&model, &f32_out, &opts(WeightEncoding::F32)).unwrap();
    pack_model(&model, &q8_out, &PackOptions { group_size: 32, ..opts(WeightEncoding::Nested8) }).unwrap();
    let tokens: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % 96).collect();
    let reference = logits_for(read_bytes(&f32_out).as_bytes(), &tokens, None);
    let scale = reference.iter().flatten().fold(0.0f32, |m, x| m.max(x.abs()));
    eprintln!("largest |logit| {scale}");
    let q8 = read_bytes(&q8_out);
    let mut last = 0.0;
    for view in [8u8, 6, 5, 4, 3, 2] {
        let l = logits_for(q8.as_bytes(), &tokens, Some(view));
        let d = reference.iter().zip(&l).map(|(a, b)| max_abs_diff(a, b)).fold(0.0f32, f32::max);
        assert!(l.iter().flatten().all(|x| x.is_finite()), "{view}-bit view gives non-finite logits");
        eprintln!("{view}-bit view: max |logit diff| vs f32 {d}");
        if view == 8 {
            // The runtime multiplies nested weights with int8 activations (one scale per group
            // of 32), whose rounding dominates the 8-bit view's error on this random model
            // (5.7% of the largest logit; 2.0% for the weights alone, EDGE_RUN_KERNELS=float).
            assert!(d < 0.1 * scale, "8-bit view differs from f32 by {d}");
        }
        assert!(d >= last * 0.5, "fewer bits should not be much more accurate");
        last = d;
    }
}

#[test]
fn nested8_quantizer_edge_cases() {
    let cases: Vec<(&str, Vec<f32>)> = vec![
        ("zeros", vec![0.0; 16]),
        ("constant f16-exact", vec![0.5; 16]),
        ("constant not f16-exact", vec![0.1; 16]),
        ("constant negative", vec![-3.3; 16]),
        ("far from zero", (0..16).map(|i| 1000.0 + i as f32 / 32.0).collect()),
        ("tiny range", (0..16).map(|i| 1.0 + i as f32 * 1e-6).collect()),
        ("subnormal", (0..16).map(|i| i as f32 * 1e-7).collect()),
        ("wide", (0..16).map(|i| -30000.0 + i as f32 * 4000.0).collect()),
        ("two values", (0..16).map(|i| if i % 2 == 0 { -1.0 } else { 1.0 }).collect()),
    ];
    for (what, data) in cases {
        let (params, codes) = quantize_nested8(what, &data, 16, 8, NestedObjective::MinMax).unwrap();
        assert_eq!(params.len(), 2);
        for (i, (&w, &q)) in data.iter().zip(&codes).enumerate() {
            let p = params[i / 8];
            let (s, m) = (p.scale.to_f32(), p.min.to_f32());
            assert!(p.scale.is_finite() && p.min.is_finite() && s >= 0.0, "{what}: params {p:?}");
            let got = q as f32 * s + m;
            let tol = 0.5 * s + 4.0 * f32::EPSILON * (w.abs() + m.abs() + 255.0 * s);
            assert!((got - w).abs() <= tol, "{what}[{i}]: {w} -> q {q} -> {got} (scale {s}, min {m})");
        }
    }
    // Exactly representable constants come back exactly.
    let (p, c) = quantize_nested8("c", &[0.5; 8], 8, 8, NestedObjective::MinMax).unwrap();
    assert_eq!((p[0].scale.to_f32(), p[0].min.to_f32(), c[0]), (0.0, 0.5, 0));
    // Out of the f16 range: a clear error, not infinities.
    let e = quantize_nested8("big", &[1e6; 8], 8, 8, NestedObjective::MinMax).unwrap_err().to_string();
    assert!(e.contains("f16 range"), "{e}");
}

#[test]
fn f16_encoding_refuses_values_beyond_its_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = synthetic_model(9, true);
    model.tensors[3].data[5] = 1e6;
    let out = dir.path().join("x.edge");
    let e = pack_model(&model, &out, &opts(WeightEncoding::F16)).unwrap_err().to_string();
    assert!(e.contains("beyond the f16 range"), "{e}");
    assert!(!out.exists());
    // bf16 and f32 hold it.
    pack_model(&model, &out, &opts(WeightEncoding::Bf16)).unwrap();
}

// ---------------------------------------------------------------- Hugging Face folders

/// Name, raw bytes, shape and dtype of a tensor to write to a shard.
type ShardTensor = (String, Vec<u8>, Vec<usize>, safetensors::Dtype);

/// Write a sharded copy of stories260K-hf: first shard F16, second BF16, plus extras.
fn sharded_copy(dir: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(stories_hf().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut originals = Vec::new();
    let mut shards: [Vec<ShardTensor>; 2] = [Vec::new(), Vec::new()];
    for (i, name) in names.iter().enumerate() {
        let v = st.tensor(name).unwrap();
        assert_eq!(v.dtype(), safetensors::Dtype::F32);
        let data: Vec<f32> = v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let shard = i % 2;
        let raw: Vec<u8> = if shard == 0 {
            data.iter().flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes()).collect()
        } else {
            data.iter().flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes()).collect()
        };
        let dt = if shard == 0 { safetensors::Dtype::F16 } else { safetensors::Dtype::BF16 };
        originals.push((name.clone(), v.shape().to_vec(), data));
        shards[shard].push((name.clone(), raw, v.shape().to_vec(), dt));
    }
    let mut map = serde_json::Map::new();
    for (s, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", s + 1);
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = shard
            .iter()
            .map(|(n, raw, shape, dt)| {
                (n.clone(), safetensors::tensor::TensorView::new(*dt, shape.clone(), raw).unwrap())
            })
            .collect();
        std::fs::write(dir.join(&file), safetensors::serialize(views, None).unwrap()).unwrap();
        for (n, ..) in shard {
            map.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::copy(stories_hf().join("config.json"), dir.join("config.json")).unwrap();
    originals
}

#[test]
fn hf_sharded_f16_bf16_with_tokenizer_and_chat_template() {
    if !have_models() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    sharded_copy(dir.path());
    std::fs::write(dir.path().join("tokenizer.json"), TINY_TOKENIZER).unwrap();
    let tok_cfg = serde_json::json!({
        "add_bos_token": false,
        "bos_token": "<s>",
        "eos_token": {"content": "</s>"},
        "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), tok_cfg.to_string()).unwrap();

    let m = load_hf(dir.path(), None).unwrap();
    let reference = load_hf(&stories_hf(), None).unwrap();
    assert_eq!(m.config, reference.config);
    assert_eq!(m.tokenizer_json.as_deref(), Some(TINY_TOKENIZER));
    assert_eq!(m.chat_template.as_deref(), Some("{% for m in messages %}{{ m['content'] }}{% endfor %}"));
    assert!(!m.add_bos);
    assert_eq!((m.bos_token_id, m.eos_token_id), (Some(1), Some(2)));
    // Every weight is its 16-bit rounding (the un-permute only moves rows).
    for (a, b) in m.tensors.iter().zip(&reference.tensors) {
        assert_eq!(a.name, b.name);
        let worst = a.data.iter().zip(&b.data).map(|(x, y)| (x - y).abs() / y.abs().max(1e-3)).fold(0.0f32, f32::max);
        assert!(worst <= 1.0 / 128.0, "{}: relative error {worst}", a.name);
    }

    // Packing embeds the folder's tokenizer and template.
    let out = dir.path().join("m.edge");
    pack_file(dir.path(), &out, &PackOptions::default()).unwrap();
    let bytes = read_bytes(&out);
    let ck = Checkpoint::parse(bytes.as_bytes()).unwrap();
    assert_eq!(ck.get_str(keys::TOKENIZER_JSON), Some(TINY_TOKENIZER));
    assert_eq!(ck.get_str(keys::CHAT_TEMPLATE), m.chat_template.as_deref());
    assert_eq!(ck.get_bool(keys::ADD_BOS), Some(false));
}

#[test]
fn hf_unsupported_dtype_names_the_tensor() {
    if !have_models() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(stories_hf().join("config.json"), dir.path().join("config.json")).unwrap();
    let raw = vec![0u8; 512 * 64 * 4];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![512, 64], &raw).unwrap();
    let file = safetensors::serialize([("model.embed_tokens.weight", view)], None).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), file).unwrap();
    let e = format!("{:#}", load_hf(dir.path(), None).unwrap_err());
    assert!(e.contains("model.embed_tokens.weight") && e.contains("I32"), "{e}");
}

// ---------------------------------------------------------------- bad inputs (library)

struct Bad {
    dir: tempfile::TempDir,
}

impl Bad {
    fn new() -> Self {
        Bad { dir: tempfile::tempdir().unwrap() }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn text_file(&self) -> PathBuf {
        let p = self.path("notes.bin");
        std::fs::write(&p, "Once upon a time there was a text file, not a model.\n".repeat(50)).unwrap();
        p
    }
    fn truncated_llama2c(&self) -> PathBuf {
        let p = self.path("stories260K-truncated.bin");
        let bytes = std::fs::read(stories_bin()).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 1000]).unwrap();
        p
    }
    fn gpt2_folder(&self) -> PathBuf {
        let p = self.path("gpt2");
        std::fs::create_dir(&p).unwrap();
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(stories_hf().join("config.json")).unwrap()).unwrap();
        cfg["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
        cfg["model_type"] = serde_json::json!("gpt2");
        std::fs::write(p.join("config.json"), cfg.to_string()).unwrap();
        std::fs::copy(stories_hf().join("model.safetensors"), p.join("model.safetensors")).unwrap();
        p
    }
    fn assert_no_temp_files(&self) {
        assert_eq!(temp_files(self.dir.path()), Vec::<String>::new(), "temporary files left behind");
    }
}

fn pack_err(input: &Path, output: &Path, o: &PackOptions) -> String {
    let existed = output.exists();
    let e = pack_file(input, output, o).expect_err("packing must fail");
    assert!(existed || !output.exists(), "failed pack created {}", output.display());
    format!("{e:#}")
}

#[test]
fn bad_inputs_give_clear_errors_and_leave_nothing_behind() {
    if !have_models() {
        return;
    }
    let b = Bad::new();
    let out = b.path("out.edge");
    let o = opts(WeightEncoding::F16);

    let e = pack_err(&b.text_file(), &out, &o);
    assert!(e.contains("is not a model edge-pack can read") && e.contains("llama2.c .bin"), "{e}");

    let empty = b.path("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let e = pack_err(&empty, &out, &o);
    assert!(e.contains("is not a model edge-pack can read"), "{e}");

    let trunc = b.truncated_llama2c();
    let e = pack_err(&trunc, &out, &o);
    assert!(e.contains("truncated or not a llama2.c checkpoint") && e.contains("1055540 bytes"), "{e}");
    let e = format!("{:#}", load_llama2c(&trunc, None).unwrap_err());
    assert!(e.contains("truncated or not a llama2.c checkpoint"), "{e}");

    let e = pack_err(&b.gpt2_folder(), &out, &o);
    assert!(e.contains("unsupported architecture 'GPT2LMHeadModel'"), "{e}");

    // A config that says the head is untied, over files that hold none: an incomplete download.
    let untied = b.path("untied-no-head");
    std::fs::create_dir(&untied).unwrap();
    std::fs::copy(stories_hf().join("model.safetensors"), untied.join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(stories_hf().join("config.json")).unwrap()).unwrap();
    cfg["tie_word_embeddings"] = serde_json::Value::Bool(false);
    std::fs::write(untied.join("config.json"), cfg.to_string()).unwrap();
    let e = pack_err(&untied, &out, &o);
    assert!(e.contains("tie_word_embeddings: false") && e.contains("no lm_head.weight"), "{e}");

    let empty_dir = b.path("empty-dir");
    std::fs::create_dir(&empty_dir).unwrap();
    let e = pack_err(&empty_dir, &out, &o);
    assert!(e.contains("without config.json"), "{e}");

    let e = pack_err(&b.path("does-not-exist.bin"), &out, &o);
    assert!(e.contains("does-not-exist.bin"), "{e}");

    // Missing tokenizer without the flag.
    let strict = PackOptions { allow_no_tokenizer: false, ..o.clone() };
    let e = pack_err(&stories_bin(), &out, &strict);
    assert!(e.contains("no tokenizer found for 'stories260K'") && e.contains("--allow-no-tokenizer"), "{e}");
    // A tokenizer that is not the model's (32000-ish tokens for a 512-token model).
    let smol_tok = models_dir().join("smollm2-135m-instruct-q4_1/tokenizer.json");
    if smol_tok.is_file() {
        let wrong = PackOptions { tokenizer: Some(smol_tok), ..o.clone() };
        let e = pack_err(&stories_bin(), &out, &wrong);
        assert!(e.contains("tokens but the model's vocabulary is 512"), "{e}");
    }
    let not_json = b.text_file();
    let e = pack_err(&stories_bin(), &out, &PackOptions { tokenizer: Some(not_json), ..o.clone() });
    assert!(e.contains("not a valid Hugging Face tokenizer.json"), "{e}");

    // Group sizes.
    let q8 = |g| PackOptions { group_size: g, ..opts(WeightEncoding::Nested8) };
    let e = pack_err(&stories_bin(), &out, &q8(12));
    assert!(e.contains("group size 12 is invalid"), "{e}");
    // Rows that are not a whole number of groups (stories260K's hidden size is 172) are
    // padded: the pack works and runs at every view.
    pack_file(&stories_bin(), &out, &PackOptions { force: true, ..q8(64) }).unwrap();
    let bytes = edge_runtime::load::CheckpointBytes::read(&out).unwrap();
    let ck = edge_runtime::Checkpoint::parse(bytes.as_bytes()).unwrap();
    ck.verify().unwrap();
    for bits in [2u8, 3, 4, 8] {
        let opts = edge_runtime::model::ModelOptions { max_seq_len: 0, max_batch: 4, ..edge_runtime::model::ModelOptions::default() };
        let mut m = edge_runtime::Model::with_plan(&ck, opts, &edge_runtime::plan::ViewPlan::uniform(bits)).unwrap();
        assert!(m.forward(1, 0).unwrap().iter().all(|v| v.is_finite()));
    }
    std::fs::remove_file(&out).unwrap();

    // An .edge input.
    let packed = b.path("packed.edge");
    pack_file(&stories_bin(), &packed, &o).unwrap();
    let e = pack_err(&packed, &out, &o);
    assert!(e.contains("already an .edge checkpoint"), "{e}");

    // Output exists: refused, and the existing file is untouched; --force replaces it.
    let exists = b.path("exists.edge");
    std::fs::write(&exists, b"precious").unwrap();
    let e = pack_err(&stories_bin(), &exists, &o);
    assert!(e.contains("already exists") && e.contains("--force"), "{e}");
    assert_eq!(std::fs::read(&exists).unwrap(), b"precious");
    let e = format!("{:#}", pack_model(&load_llama2c(&stories_bin(), None).unwrap(), &exists, &o).unwrap_err());
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(std::fs::read(&exists).unwrap(), b"precious");
    pack_file(&stories_bin(), &exists, &PackOptions { force: true, ..o.clone() }).unwrap();
    Checkpoint::parse(read_bytes(&exists).as_bytes()).unwrap().verify().unwrap();

    // The output is a folder / in a missing folder.
    let e = pack_err(&stories_bin(), &empty_dir, &PackOptions { force: true, ..o.clone() });
    assert!(e.contains("is a folder"), "{e}");
    let e = pack_err(&stories_bin(), &b.path("no/such/dir/x.edge"), &o);
    assert!(e.contains("does not exist"), "{e}");

    assert!(!out.exists());
    b.assert_no_temp_files();
}

// ---------------------------------------------------------------- the CLI

fn cli(args: &[&std::ffi::OsStr], cwd: &Path) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_edge-pack")).args(args).current_dir(cwd).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// A failed run: status 1, nothing on stdout, exactly one line on stderr.
fn assert_cli_error(args: &[&std::ffi::OsStr], cwd: &Path, needle: &str) {
    let (code, stdout, stderr) = cli(args, cwd);
    assert_eq!(code, 1, "args {args:?}: stderr {stderr}");
    assert_eq!(stdout, "", "args {args:?}");
    assert_eq!(stderr.lines().count(), 1, "one line expected, got: {stderr}");
    assert!(stderr.starts_with("edge-pack: error: "), "{stderr}");
    assert!(stderr.contains(needle), "expected '{needle}' in: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "{stderr}");
}

macro_rules! os {
    ($($a:expr),* $(,)?) => { [$(std::ffi::OsStr::new($a)),*] };
}

#[test]
fn cli_packs_with_default_output_summary_and_json() {
    if !have_models() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = stories_bin();
    let (code, stdout, stderr) = cli(&os![bin.as_os_str(), "--allow-no-tokenizer"], dir.path());
    assert_eq!(code, 0, "{stderr}");
    let out = dir.path().join("stories260K.edge");
    assert!(out.is_file(), "default output is <stem>.edge in the current folder");
    let size = std::fs::metadata(&out).unwrap().len();
    assert!(
        stdout.contains("stories260K.edge")
            && stdout.contains(&format!("{size} bytes"))
            && stdout.contains("47 tensors"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 1);

    // A folder input is named after the folder; --json gives one object; -q silences the bar.
    let hf = stories_hf();
    let (code, stdout, stderr) =
        cli(&os![hf.as_os_str(), "--allow-no-tokenizer", "--json", "-q", "--encoding", "bf16"], dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr, "");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["output"], "stories260K-hf.edge");
    assert_eq!(v["encoding"], "bf16");
    assert_eq!(v["tensors"], 47);
    assert_eq!(v["bytes"].as_u64().unwrap(), std::fs::metadata(dir.path().join("stories260K-hf.edge")).unwrap().len());
    assert!(v["seconds"].as_f64().unwrap() >= 0.0);

    // Super-block parameters: groups of 32 by default, said in the report and in the file.
    let (code, stdout, stderr) =
        cli(&os![hf.as_os_str(), "--allow-no-tokenizer", "--json", "-q", "-e", "q8", "--params", "super", "-o", "s.edge"], dir.path());
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!((v["encoding"].as_str(), v["group_size"].as_u64(), v["group_params"].as_str()), (Some("q8"), Some(32), Some("super")));
    let sb = read_bytes(&dir.path().join("s.edge"));
    let ck = Checkpoint::parse(sb.as_bytes()).unwrap();
    assert_eq!(ck.tensor("blk.0.attn_q.weight").unwrap().encoding, Encoding::Nested8Super);

    // -q alone prints nothing; -o and --force work.
    let o = dir.path().join("q.edge");
    let (code, stdout, stderr) =
        cli(&os![bin.as_os_str(), "--allow-no-tokenizer", "-q", "-o", o.as_os_str(), "-e", "f32"], dir.path());
    assert_eq!((code, stdout.as_str(), stderr.as_str()), (0, "", ""));
    let (code, ..) =
        cli(&os![bin.as_os_str(), "--allow-no-tokenizer", "-q", "-o", o.as_os_str(), "--force"], dir.path());
    assert_eq!(code, 0);
    assert!(temp_files(dir.path()).is_empty());
}

#[test]
fn cli_help_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, _) = cli(&os!["--help"], dir.path());
    assert_eq!(code, 0);
    for needle in
        ["--encoding", "--group-size", "--params", "--tokenizer", "--allow-no-tokenizer", "--force", "--json", "Examples:"]
    {
        assert!(stdout.contains(needle), "--help lacks {needle}");
    }
    let (code, stdout, _) = cli(&os!["--version"], dir.path());
    assert_eq!(code, 0);
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn cli_bad_inputs_fail_with_one_line() {
    if !have_models() {
        return;
    }
    let b = Bad::new();
    let cwd = b.dir.path();
    let bin = stories_bin();
    let text = b.text_file();
    assert_cli_error(&os![text.as_os_str()], cwd, "is not a model edge-pack can read");
    let trunc = b.truncated_llama2c();
    assert_cli_error(&os![trunc.as_os_str(), "--allow-no-tokenizer"], cwd, "truncated or not a llama2.c checkpoint");
    let gpt2 = b.gpt2_folder();
    assert_cli_error(&os![gpt2.as_os_str(), "--allow-no-tokenizer"], cwd, "unsupported architecture 'GPT2LMHeadModel'");
    assert_cli_error(&os![bin.as_os_str()], cwd, "no tokenizer found");
    assert_cli_error(&os![bin.as_os_str(), "--allow-no-tokenizer", "-e", "q8", "-g", "12"], cwd, "group size 12 is invalid");
    // stories260K's rows are 64 wide: a group of 4096 would pad each to 4096 codes.
    assert_cli_error(&os![bin.as_os_str(), "--allow-no-tokenizer", "-e", "q8", "-g", "4096"], cwd, "is wider than the rows of");
    assert_cli_error(&os![bin.as_os_str(), "--encoding", "q5"], cwd, "q5");
    assert_cli_error(&os![bin.as_os_str(), "--allow-no-tokenizer", "--params", "super", "-e", "f16"], cwd, "--params super codes the group parameters of q8");
    assert_cli_error(&os![bin.as_os_str(), "--params", "k6"], cwd, "k6");
    assert_cli_error(&os!["--bogus"], cwd, "--bogus");
    assert_cli_error(&os![], cwd, "INPUT");

    let exists = b.path("exists.edge");
    std::fs::write(&exists, b"precious").unwrap();
    assert_cli_error(&os![bin.as_os_str(), "--allow-no-tokenizer", "-o", exists.as_os_str()], cwd, "already exists");
    assert_eq!(std::fs::read(&exists).unwrap(), b"precious");

    let packed = b.path("packed.edge");
    pack_file(&bin, &packed, &opts(WeightEncoding::F16)).unwrap();
    assert_cli_error(&os![packed.as_os_str(), "-o", "x.edge"], cwd, "already an .edge checkpoint");

    assert!(!cwd.join("stories260K.edge").exists());
    b.assert_no_temp_files();
}

/// Every number flag has a range, checked while the arguments are parsed (one line, exit 1,
/// before the input is read), and an output folder that cannot take the file fails before the
/// pack, not after minutes of calibration.
#[test]
fn cli_number_flags_and_unwritable_outputs_fail_before_packing() {
    if !have_models() {
        return;
    }
    let b = Bad::new();
    let cwd = b.dir.path();
    let bin = stories_bin();
    let cases: &[(&[&str], &str)] = &[
        (&["-e", "q8", "-g", "0"], "group size 0 is invalid: it must be a positive multiple of 8"),
        (&["-e", "q8", "-g", "-64"], "group size -64 is invalid"),
        (&["-e", "q8", "-g", "131072"], "at most 65536"),
        (&["--calibrate-self", "--calibrate-tokens", "5"], "'5' is not a number of tokens; give a whole number from 16 to 1000000"),
        (&["--calibrate-self", "--calibrate-seq-len", "-1"], "'-1' is not a number of tokens"),
        (&["--calibrate-self", "--profile-tokens", "0"], "'0' is not a number of tokens"),
        (&["--calibrate-self", "--calibrate-seed", "-1"], "'-1' is not a seed"),
        (&["--calibrate-self", "--gptq-damp", "nan"], "'nan' is not a dampening; give a number above 0 and at most 10"),
        (&["--calibrate-self", "--gptq-damp", "0"], "'0' is not a dampening"),
        (&["--calibrate-self", "--gptq-damp", "-0.1"], "'-0.1' is not a dampening"),
        (&["--calibrate-self", "--gptq-view-weights", "1,1,1,inf"], "is not four weights"),
        (&["--rtn-baseline", "7"], "'7'"),
    ];
    for (extra, want) in cases {
        let mut args = vec![bin.as_os_str(), "--allow-no-tokenizer".as_ref()];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        assert_cli_error(&args, cwd, want);
    }
    // -o inside a file; in a read-only folder (a read-only tmpfs: root writes through
    // permission bits), refused before the (calibrated, minutes-long) pack starts.
    let file = b.path("a-file");
    std::fs::write(&file, b"x").unwrap();
    let inside = file.join("m.edge");
    assert_cli_error(&os![bin.as_os_str(), "--allow-no-tokenizer", "-o", inside.as_os_str()], cwd, "which is a file, not a folder");
    let ro = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs"]).arg(ro.path()).status().is_ok_and(|s| s.success());
    if mounted {
        let out = ro.path().join("m.edge");
        let r = cli(&os![bin.as_os_str(), "--allow-no-tokenizer", "--calibrate-self", "-o", out.as_os_str()], cwd);
        let _ = Command::new("umount").arg(ro.path()).status();
        assert_eq!(r.0, 1, "{}", r.2);
        // The error alone: no calibration or packing progress before it.
        assert_eq!(r.2.lines().count(), 1, "{}", r.2);
        assert!(r.2.contains("cannot write output") && r.2.contains("Read-only file system") && r.2.contains("choose a writable folder"), "{}", r.2);
    } else {
        eprintln!("SKIPPED: cannot mount a read-only tmpfs here (not root?); the read-only output is untested");
    }
    b.assert_no_temp_files();
}

#[test]
#[cfg(unix)]
fn cli_write_failure_removes_the_temporary_file() {
    if !have_models() {
        return;
    }
    // A file-size limit makes the write fail half way (EFBIG once SIGXFSZ is ignored).
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("big.edge");
    let o = Command::new("sh")
        .arg("-c")
        .arg(r#"trap "" XFSZ; ulimit -f 64; exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_edge-pack"))
        .args([
            stories_bin().as_os_str(),
            "--allow-no-tokenizer".as_ref(),
            "-o".as_ref(),
            out.as_os_str(),
            "-q".as_ref(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("edge-pack: error: cannot write"), "{stderr}");
    assert!(!out.exists());
    assert_eq!(temp_files(dir.path()), Vec::<String>::new());
}

#[test]
fn an_interrupted_pack_leaves_no_file_and_the_next_clears_stale_ones() {
    if !have_models() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    // A temporary file of a process that no longer runs (ids stop below 2^22 on Linux).
    let stale = out.path().join(".old.edge.tmp-4194305");
    std::fs::write(&stale, b"half a pack").unwrap();
    // f32: the largest file, so the write is long enough to be caught in the middle.
    let target = out.path().join("smollm.edge");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_edge-pack"))
        .args([models_dir().join("smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf").to_str().unwrap(), "-e", "f32", "-q", "-o", target.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let tmp_name = format!(".smollm.edge.tmp-{}", child.id());
    let started = std::time::Instant::now();
    while !out.path().join(&tmp_name).exists() {
        if child.try_wait().unwrap().is_some() || started.elapsed().as_secs() > 120 {
            eprintln!("SKIPPED: the pack finished before its temporary file was seen; nothing to interrupt");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    // SIGINT, as Ctrl-C sends it.
    std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("interrupted"), "{}", String::from_utf8_lossy(&o.stderr));
    let left: Vec<String> = std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!stale.exists(), "the stale temporary file was not removed");
}

#[test]
fn a_full_disk_is_a_clear_error_and_leaves_nothing() {
    if !have_models() {
        return;
    }
    // A 256 KiB file system: stories260K's f32 checkpoint (1 MB) cannot fit.
    let d = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"]).arg(d.path()).status().is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: cannot mount a small tmpfs here (not root?); the full-disk error is untested");
        return;
    }
    let out = d.path().join("m.edge");
    let bin = stories_bin();
    let r = cli(&os![bin.as_os_str(), "--allow-no-tokenizer", "-e", "f32", "-o", out.as_os_str()], d.path());
    let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    let _ = Command::new("umount").arg(d.path()).status();
    assert_eq!(r.0, 1, "{}", r.2);
    assert!(r.2.contains("No space left on device") && r.2.contains("the disk is full"), "{}", r.2);
    assert!(left.is_empty(), "left behind: {left:?}");
}
