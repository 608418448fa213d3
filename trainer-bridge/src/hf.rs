//! Hugging Face folder reader: `config.json`, `model.safetensors` (or sharded with
//! `model.safetensors.index.json`), `tokenizer.json`, `tokenizer_config.json`. The
//! architecture is the one whose class (`LlamaForCausalLM`, `Qwen2ForCausalLM`) the config names.
//!
//! Hugging Face stores the q and k projections (and their biases) with their rows permuted for
//! the "rotate half" RoPE formulation; they are un-permuted here to the interleaved order every
//! other source (and the runtime) uses ([`unpermute_rotary`]). A Llama 3 `rope_scaling` becomes
//! the per-frequency divisors `rope_freqs.weight`, computed here once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use edge_runtime::arch::{self, Activation, Arch, Kind, Role};
use edge_runtime::config::{LocalLayers, MAX_LAYERS};
use edge_runtime::Config;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

pub use crate::source::unpermute_rotary;
use crate::source::{SourceModel, SourceTensor};

fn parse_tokenizer(text: &str) -> anyhow::Result<tokenizers::Tokenizer> {
    text.parse::<tokenizers::Tokenizer>().map_err(|e| anyhow!("{e}"))
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read '{}'", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("'{}' is not valid JSON", path.display()))
}

/// A token id that may be given as an integer or a list of integers (the first is used).
fn token_id(v: Option<&Value>) -> Option<u32> {
    match v? {
        Value::Number(n) => n.as_u64().and_then(|x| u32::try_from(x).ok()),
        Value::Array(a) => token_id(a.first()),
        _ => None,
    }
}

/// A special token given in `tokenizer_config.json` as a string or as `{"content": ...}`.
fn token_text(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content").and_then(Value::as_str),
        _ => None,
    }
}

struct HfConfig {
    arch: &'static Arch,
    config: Config,
    /// Llama 3 scaling's per-frequency RoPE divisors.
    rope_freqs: Option<Vec<f32>>,
    bos: Option<u32>,
    eos: Option<u32>,
    name: Option<String>,
}

fn parse_config(path: &Path, cfg: &Value) -> anyhow::Result<HfConfig> {
    let arch = cfg
        .get("architectures")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .map(str::to_owned);
    let model_type = cfg.get("model_type").and_then(Value::as_str);
    let classes = || arch::ARCHS.iter().flat_map(|a| a.hf_classes.iter().copied()).collect::<Vec<_>>().join(", ");
    let found = match (arch.as_deref(), model_type) {
        (Some(c), _) => arch::ARCHS.iter().copied().find(|a| a.hf_classes.contains(&c)),
        (None, Some(t)) => arch::ARCHS.iter().copied().find(|a| a.hf_model_type == t),
        (None, None) => bail!(
            "'{}' names no architecture (no 'architectures' or 'model_type'): edge-pack reads {}",
            path.display(),
            classes()
        ),
    };
    let Some(arch) = found else {
        let a = arch.as_deref().or(model_type).unwrap_or("?");
        bail!("unsupported architecture '{a}' in '{}': edge-pack reads {}", path.display(), classes());
    };
    let gemma = arch.name == arch::GEMMA3.name;
    let (act_key, act_want) = match arch.activation {
        Activation::Silu => ("hidden_act", &["silu"][..]),
        Activation::GeluTanh => ("hidden_activation", &["gelu_pytorch_tanh", "gelu_tanh"][..]),
    };
    if let Some(act) = cfg.get(act_key).and_then(Value::as_str) {
        if !act_want.contains(&act) {
            bail!("unsupported activation '{act}' in '{}': a {} model runs {}", path.display(), arch.name, act_want[0]);
        }
    }
    for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
        if cfg.get(key).is_some_and(|v| !v.is_null()) {
            bail!("'{}' sets {key}: logit softcapping is not supported by edge-run", path.display());
        }
    }
    for key in ["attention_bias", "mlp_bias"] {
        if cfg.get(key).and_then(Value::as_bool) == Some(true) {
            bail!("'{}' sets {key}: models with bias terms are not supported", path.display());
        }
    }
    if cfg.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
        bail!("'{}' sets use_sliding_window: sliding-window attention is not supported for {}", path.display(), arch.name);
    }
    // Sliding layers are Gemma's alone (its `layer_types` are read below).
    if !gemma {
        let layer_types = cfg.get("layer_types").and_then(Value::as_array);
        if let Some(t) = layer_types.and_then(|l| l.iter().find(|t| t.as_str() != Some("full_attention"))) {
            bail!("'{}' has a layer of type {t}: edge-run runs full-attention layers only for {}", path.display(), arch.name);
        }
    }
    // RoPE: `rope_theta` (and Gemma's `rope_local_base_freq`), or transformers 5's
    // `rope_parameters` (one set, or one per layer type: Gemma's full and sliding layers).
    let rope_params = cfg.get("rope_parameters").filter(|v| !v.is_null());
    let per_type = rope_params.and_then(|r| r.get("full_attention").or_else(|| r.get("sliding_attention"))).is_some();
    let at = format!("'{}'", path.display());
    let scaling_set = cfg.get("rope_scaling").filter(|v| !v.is_null()).or(if per_type { None } else { rope_params });
    let rope_scaling = crate::rope_scaling::from_hf(scaling_set, &at)?;
    if rope_scaling.is_some() && !arch.has(Kind::RopeFreqs) {
        bail!("'{}' sets a llama3 rope_scaling, which edge-run does not implement for {}", path.display(), arch.name);
    }
    for set in ["full_attention", "sliding_attention"].iter().filter_map(|k| rope_params.filter(|_| per_type)?.get(*k)) {
        if crate::rope_scaling::from_hf(Some(set), &at)?.is_some() {
            bail!("'{}' sets a llama3 rope scaling per layer type, which edge-run does not implement", path.display());
        }
    }
    let theta_of = |set: &str, key: &str| -> Option<f64> {
        match rope_params {
            Some(r) if per_type => r.get(set)?.get("rope_theta")?.as_f64(),
            Some(r) if set == "full_attention" => r.get("rope_theta")?.as_f64(),
            _ => cfg.get(key)?.as_f64(),
        }
    };
    let u = |key: &str| -> anyhow::Result<Option<usize>> {
        match cfg.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|&x| x > 0 && x <= 1 << 24)
                .map(|x| Some(x as usize))
                .ok_or_else(|| anyhow!("'{}': '{key}' = {v} is not a valid size", path.display())),
        }
    };
    let need =
        |key: &str| -> anyhow::Result<usize> { u(key)?.ok_or_else(|| anyhow!("'{}' lacks '{key}'", path.display())) };
    let f = |key: &str, default: f32| -> anyhow::Result<f32> {
        match cfg.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .map(|x| x as f32)
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| anyhow!("'{}': '{key}' = {v} is not a positive number", path.display())),
        }
    };
    let dim = need("hidden_size")?;
    let n_heads = need("num_attention_heads")?;
    let n_kv_heads = u("num_key_value_heads")?.unwrap_or(n_heads);
    let head_dim = match u("head_dim")? {
        Some(h) => h,
        None => {
            if dim % n_heads != 0 {
                bail!("'{}': hidden_size {dim} is not divisible by {n_heads} heads", path.display());
            }
            dim / n_heads
        }
    };
    if n_heads % n_kv_heads != 0 || head_dim % 2 != 0 {
        bail!(
            "'{}': inconsistent attention config ({n_heads} heads, {n_kv_heads} kv heads, head_dim {head_dim})",
            path.display()
        );
    }
    let n_layers = need("num_hidden_layers")?;
    if n_layers > MAX_LAYERS {
        bail!(
            "'{}': num_hidden_layers = {n_layers}, more than the {MAX_LAYERS} layers edge-run accepts; is the config corrupt?",
            path.display()
        );
    }
    let positive = |key: &str, v: Option<f64>, default: f32| -> anyhow::Result<f32> {
        match v {
            None => Ok(default),
            Some(x) if x.is_finite() && x > 0.0 => Ok(x as f32),
            Some(x) => bail!("'{}': '{key}' = {x} is not a positive number", path.display()),
        }
    };
    let rope_theta = positive("rope_theta", theta_of("full_attention", "rope_theta"), 10000.0)?;
    let local = match (gemma, u("sliding_window")?) {
        (true, Some(window)) => {
            let local: Vec<bool> = match cfg.get("layer_types").and_then(Value::as_array) {
                Some(types) => types.iter().map(|t| t.as_str() == Some("sliding_attention")).collect(),
                None => {
                    // Older configs: every `sliding_window_pattern`-th layer is global.
                    let p = u("sliding_window_pattern")?.or(u("_sliding_window_pattern")?).unwrap_or(6);
                    (0..n_layers).map(|l| (l + 1) % p != 0).collect()
                }
            };
            if local.len() != n_layers {
                bail!("'{}': layer_types names {} layers, num_hidden_layers is {n_layers}", path.display(), local.len());
            }
            let period = crate::gguf::period_of(&local).ok_or_else(|| {
                anyhow!("'{}': layer_types is not a repeating pattern of sliding layers ending in a full one; edge-run cannot run it", path.display())
            })?;
            let theta = positive("rope_local_base_freq", theta_of("sliding_attention", "rope_local_base_freq"), 10000.0)?;
            LocalLayers { window, period, rope_theta: theta }
        }
        _ => LocalLayers::NONE,
    };
    let attn_scale = match (gemma, cfg.get("query_pre_attn_scalar").and_then(Value::as_f64)) {
        (true, Some(q)) if q.is_finite() && q > 0.0 => Some((1.0 / q.sqrt()) as f32),
        (true, Some(q)) => bail!("'{}': query_pre_attn_scalar = {q} is not a positive number", path.display()),
        _ => None,
    };
    let config = Config {
        dim,
        hidden_dim: need("intermediate_size")?,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        vocab_size: need("vocab_size")?,
        max_seq_len: u("max_position_embeddings")?.unwrap_or(2048),
        norm_eps: f("rms_norm_eps", 1e-6)?,
        rope_theta,
        // Gemma ties by default.
        tied_embeddings: cfg.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(gemma),
        local,
        attn_scale,
        rope_freq_factors: rope_scaling.is_some(),
    };
    let rope_freqs = rope_scaling.map(|p| p.freq_factors(config.rope_theta as f64, head_dim));
    // `_name_or_path` is a hub id or a local path; its last component names the model.
    let name = cfg
        .get("_name_or_path")
        .and_then(Value::as_str)
        .and_then(|s| s.trim_end_matches('/').rsplit('/').next())
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let (bos, eos) = (token_id(cfg.get("bos_token_id")), token_id(cfg.get("eos_token_id")));
    Ok(HfConfig { arch, config, rope_freqs, bos, eos, name })
}

/// Where a Hugging Face tensor goes.
enum Mapped {
    Canonical(String),
    /// Present in some checkpoints, not needed (e.g. cached rotary frequencies).
    Ignored,
}

/// Cached rotary frequencies some checkpoints store in every layer (`model.layers.{l}.` first).
const ROTARY_INV_FREQ: &str = "self_attn.rotary_emb.inv_freq";

fn map_name(arch: &Arch, hf: &str) -> Option<Mapped> {
    if let Some(canonical) = arch.from_hf(hf) {
        return Some(Mapped::Canonical(canonical));
    }
    let (layer, part) = hf.strip_prefix("model.").unwrap_or(hf).strip_prefix("layers.")?.split_once('.')?;
    (layer.parse::<usize>().is_ok() && part == ROTARY_INV_FREQ).then_some(Mapped::Ignored)
}

fn to_f32(name: &str, dtype: Dtype, bytes: &[u8]) -> anyhow::Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => {
            bytes.chunks_exact(2).map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect()
        }
        Dtype::BF16 => {
            bytes.chunks_exact(2).map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect()
        }
        other => {
            bail!("tensor '{name}' has dtype {other:?}, which edge-pack cannot read (F32, F16 and BF16 are supported)")
        }
    })
}

/// The safetensors files of the folder: one `model.safetensors`, or the shards an index names.
fn weight_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let v = read_json(&index)?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| anyhow!("'{}' has no 'weight_map'", index.display()))?;
        let mut files: Vec<String> = Vec::new();
        for f in map.values() {
            let f = f.as_str().ok_or_else(|| anyhow!("'{}': weight_map values must be file names", index.display()))?;
            if f.contains('/') || f.contains('\\') || f == ".." {
                bail!("'{}' names a shard outside the folder: '{f}'", index.display());
            }
            if !files.iter().any(|g| g == f) {
                files.push(f.to_owned());
            }
        }
        files.sort();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    if dir.join("pytorch_model.bin").exists() || dir.join("pytorch_model.bin.index.json").exists() {
        bail!(
            "'{}' holds PyTorch .bin weights; edge-pack reads safetensors (convert with transformers: \
             model.save_pretrained(dir, safe_serialization=True))",
            dir.display()
        );
    }
    bail!("'{}' has no model.safetensors or model.safetensors.index.json", dir.display())
}

/// Read a Hugging Face model folder. `tokenizer` overrides the folder's `tokenizer.json`.
pub fn load_hf(dir: &Path, tokenizer: Option<&Path>) -> anyhow::Result<SourceModel> {
    load_hf_with(dir, tokenizer, None)
}

/// [`load_hf`], handing the quantized parts of an edge-qat export to `qat` (`qat.rs`).
pub(crate) fn load_hf_with(
    dir: &Path,
    tokenizer: Option<&Path>,
    mut qat: Option<&mut crate::qat::QatImport>,
) -> anyhow::Result<SourceModel> {
    let config_path = dir.join("config.json");
    let cfg = read_json(&config_path)?;
    let HfConfig { arch, mut config, rope_freqs, bos, eos, name } = parse_config(&config_path, &cfg)?;

    let mut found: BTreeMap<String, SourceTensor> = BTreeMap::new();
    for file in weight_files(dir)? {
        let f = std::fs::File::open(&file).with_context(|| format!("cannot open '{}'", file.display()))?;
        // SAFETY: read-only map of a file we only read while it is mapped; a concurrent
        // truncation by another process is outside what any mmap reader can defend against.
        let map = unsafe { memmap2::Mmap::map(&f) }.with_context(|| format!("cannot map '{}'", file.display()))?;
        let st = SafeTensors::deserialize(&map)
            .map_err(|e| anyhow!("'{}' is not a valid safetensors file: {e}", file.display()))?;
        for (hf_name, view) in st.iter() {
            if let Some(q) = qat.as_deref_mut() {
                if q.take(hf_name, &view)? {
                    continue;
                }
            }
            let canon = match map_name(arch, hf_name) {
                Some(Mapped::Canonical(c)) => c,
                Some(Mapped::Ignored) => continue,
                None => bail!(
                    "'{}' holds tensor '{hf_name}', which a {} model does not have; is this a variant edge-pack does not support?",
                    file.display(),
                    arch.name
                ),
            };
            let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
            let data = to_f32(hf_name, view.dtype(), view.data())?;
            if found.insert(canon.clone(), SourceTensor { name: canon, shape, data }).is_some() {
                bail!("tensor '{hf_name}' appears twice in the safetensors files of '{}'", dir.display());
            }
        }
    }

    if let Some(q) = qat.as_deref_mut() {
        q.finish(arch, &config, &mut found)?;
    }

    // Tied output head: by the config flag, or because the checkpoint has none.
    let head = arch::tensor_name(Kind::Output, None);
    if config.tied_embeddings {
        found.remove(&head);
    } else if !found.contains_key(&head) {
        // Absent from config.json: tying is what a folder without a head means. Stated false: the
        // head is missing from the files, and tying would run a different model without a word.
        if cfg.get("tie_word_embeddings").and_then(Value::as_bool) == Some(false) {
            bail!(
                "'{}' says tie_word_embeddings: false but its safetensors hold no lm_head.weight: the download is incomplete (fetch the missing file) or the config is wrong",
                dir.display()
            );
        }
        config.tied_embeddings = true;
    }

    if let Some(f) = rope_freqs {
        let name = arch::tensor_name(Kind::RopeFreqs, None);
        found.insert(name.clone(), SourceTensor { name, shape: vec![f.len() as u64], data: f });
    }
    // Gemma's norms compute x * (1 + w): store 1 + w, so the runtime's RMSNorm stays x * w.
    if arch.hf_norm_minus_one {
        for e in arch.tensors(&config).iter().filter(|e| e.spec.role == Role::Norm) {
            if let Some(t) = found.get_mut(&e.name) {
                t.data.iter_mut().for_each(|w| *w += 1.0);
            }
        }
    }

    // Order the tensors canonically; missing, extra or misshapen ones are errors.
    let mut tensors = Vec::with_capacity(found.len());
    for e in arch.tensors(&config) {
        let (name, shape) = (e.name, e.shape);
        let t = found.remove(&name).ok_or_else(|| anyhow!("'{}' lacks tensor '{name}'", dir.display()))?;
        if t.shape != shape {
            bail!("tensor '{name}' has shape {:?}, the config implies {shape:?}", t.shape);
        }
        tensors.push(t);
    }
    if let Some(extra) = found.keys().next() {
        bail!("'{}' has tensor '{extra}' beyond the {} layers its config declares", dir.display(), config.n_layers);
    }
    // Rotate-half q and k rows (and biases, per-head norms) -> interleaved.
    crate::source::interleave_qk(&mut tensors, &config)?;
    if let Some(q) = qat {
        q.interleave(&tensors, &config)?;
    }

    // Tokenizer, chat template, special tokens.
    let tok_path = match tokenizer {
        Some(p) => Some(p.to_path_buf()),
        None => Some(dir.join("tokenizer.json")).filter(|p| p.is_file()),
    };
    let tokenizer_json = tok_path.as_deref().map(crate::tokenizer::read_tokenizer_json).transpose()?;
    let parsed_tok = tokenizer_json.as_deref().map(parse_tokenizer).transpose()?;
    let tok_cfg_path = dir.join("tokenizer_config.json");
    let tok_cfg = if tok_cfg_path.is_file() { Some(read_json(&tok_cfg_path)?) } else { None };
    let gen_cfg_path = dir.join("generation_config.json");
    let gen_cfg = if gen_cfg_path.is_file() { read_json(&gen_cfg_path).ok() } else { None };

    let chat_template = match tok_cfg.as_ref().and_then(|c| c.get("chat_template")) {
        Some(Value::String(s)) => Some(s.clone()),
        // Older files: a list of named templates; take the default one.
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    };
    let chat_template = match chat_template {
        Some(t) => Some(t),
        None => {
            let p = dir.join("chat_template.jinja");
            if p.is_file() {
                Some(std::fs::read_to_string(&p).with_context(|| format!("cannot read '{}'", p.display()))?)
            } else {
                None
            }
        }
    };
    let by_text = |key: &str| -> Option<u32> {
        let text = token_text(tok_cfg.as_ref()?.get(key))?;
        parsed_tok.as_ref()?.token_to_id(text)
    };
    let gen = |key: &str| token_id(gen_cfg.as_ref()?.get(key));
    let bos_token_id = bos.or_else(|| gen("bos_token_id")).or_else(|| by_text("bos_token"));
    let eos_token_id = eos.or_else(|| gen("eos_token_id")).or_else(|| by_text("eos_token"));
    let add_bos = match tok_cfg.as_ref().and_then(|c| c.get("add_bos_token")).and_then(Value::as_bool) {
        Some(b) => b,
        // No explicit flag: does the tokenizer's post-processor put BOS first?
        None => match (&parsed_tok, bos_token_id) {
            (Some(t), Some(b)) => t.encode("a", true).map(|e| e.get_ids().first() == Some(&b)).unwrap_or(false),
            _ => false,
        },
    };

    let folder = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let folder_name = folder.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    Ok(SourceModel {
        arch,
        config,
        tensors,
        tokenizer_json,
        chat_template,
        bos_token_id,
        eos_token_id,
        add_bos,
        name: name.unwrap_or_else(|| folder_name.clone()),
        source: format!("{folder_name} (Hugging Face safetensors)"),
    })
}
