//! Encoding a [`SourceModel`] and writing the `.edge` file.
//!
//! Norms are always stored as f32. Every matrix (embeddings and output head included) is
//! stored per [`WeightEncoding`]: dense f32/f16/bf16, or nested 8-bit planes
//! ([`WeightEncoding::Nested8`]) quantized per group of `group_size` weights along a row:
//! ```text
//! min_h   = largest f16 <= min(group)
//! scale_h = smallest f16 >= (max(group) - min_h) / 255        (0 when the group is constant)
//! q       = clamp(round((w - min_h) / scale_h), 0, 255)
//! ```
//! Rounding `min` down and `scale` up keeps every weight inside `[min_h, min_h + 255*scale_h]`,
//! so the 8-bit view `q*scale_h + min_h` is within `scale_h/2` of every source weight.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail};
use edge_runtime::blocks::{pack_nested8_planes, GroupParams};
use edge_runtime::format::{keys, CheckpointWriter, Encoding, MetaValue, TensorData};
use edge_runtime::Config;
use half::{bf16, f16};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};

use crate::source::{SourceModel, SourceTensor};

/// How linear weights (and embeddings) are stored. Norms are always f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightEncoding {
    F32,
    #[default]
    F16,
    Bf16,
    /// 8-bit codes as nested bit planes (views of 8/4/3/2 bits).
    Nested8,
}

impl WeightEncoding {
    /// The name the CLI uses (`f32`, `f16`, `bf16`, `q8`).
    pub fn name(self) -> &'static str {
        match self {
            WeightEncoding::F32 => "f32",
            WeightEncoding::F16 => "f16",
            WeightEncoding::Bf16 => "bf16",
            WeightEncoding::Nested8 => "q8",
        }
    }

    /// The checkpoint encoding of matrices.
    pub fn encoding(self) -> Encoding {
        match self {
            WeightEncoding::F32 => Encoding::F32,
            WeightEncoding::F16 => Encoding::F16,
            WeightEncoding::Bf16 => Encoding::Bf16,
            WeightEncoding::Nested8 => Encoding::Nested8,
        }
    }
}

impl std::str::FromStr for WeightEncoding {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => WeightEncoding::F32,
            "f16" => WeightEncoding::F16,
            "bf16" => WeightEncoding::Bf16,
            "q8" | "nested8" => WeightEncoding::Nested8,
            _ => bail!("unknown encoding '{s}' (choose f32, f16, bf16 or q8)"),
        })
    }
}

#[derive(Debug, Clone)]
pub struct PackOptions {
    pub encoding: WeightEncoding,
    /// Group size of grouped encodings (multiple of 8 dividing every row).
    pub group_size: u32,
    /// A `tokenizer.json` to embed instead of the one found with the model.
    pub tokenizer: Option<PathBuf>,
    /// Pack even without a tokenizer (the checkpoint then runs on token ids only).
    pub allow_no_tokenizer: bool,
    /// Replace an existing output file.
    pub force: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// How nested codes are chosen (q8 only).
    pub objective: crate::quant::NestedObjective,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            encoding: WeightEncoding::F16,
            group_size: 64,
            tokenizer: None,
            allow_no_tokenizer: false,
            force: false,
            progress: false,
            objective: crate::quant::NestedObjective::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PackReport {
    pub output: PathBuf,
    pub bytes: u64,
    pub n_tensors: usize,
    pub seconds: f64,
    /// Model name (from the source).
    pub name: String,
    /// Where the model came from (file name and format).
    pub source: String,
    pub encoding: WeightEncoding,
    /// Group size of grouped encodings; 0 for dense ones.
    pub group_size: u32,
    /// Number of weights.
    pub n_params: u64,
    /// Whether a tokenizer was embedded.
    pub has_tokenizer: bool,
}

/// The tensors a model of `config` has, canonical names and shapes, in file order.
pub fn expected_tensors(config: &Config) -> Vec<(String, Vec<u64>)> {
    let c = config;
    let (d, h, v) = (c.dim as u64, c.hidden_dim as u64, c.vocab_size as u64);
    let (q, kv) = (c.q_dim() as u64, c.kv_dim() as u64);
    let mut out = vec![("token_embd.weight".to_string(), vec![v, d])];
    for l in 0..c.n_layers {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        out.push((n("attn_norm"), vec![d]));
        out.push((n("attn_q"), vec![q, d]));
        out.push((n("attn_k"), vec![kv, d]));
        out.push((n("attn_v"), vec![kv, d]));
        out.push((n("attn_output"), vec![d, q]));
        out.push((n("ffn_norm"), vec![d]));
        out.push((n("ffn_gate"), vec![h, d]));
        out.push((n("ffn_up"), vec![h, d]));
        out.push((n("ffn_down"), vec![d, h]));
    }
    out.push(("output_norm.weight".to_string(), vec![d]));
    if !c.tied_embeddings {
        out.push(("output.weight".to_string(), vec![v, d]));
    }
    out
}

/// Check that `model` has exactly the tensors its config implies, with matching shapes and
/// data lengths and only finite values.
pub fn validate_model(model: &SourceModel) -> anyhow::Result<()> {
    let c = &model.config;
    if c.n_heads == 0 || c.n_kv_heads == 0 || c.n_heads % c.n_kv_heads != 0 || c.head_dim % 2 != 0 {
        bail!("inconsistent attention config: {} heads, {} kv heads, head_dim {}", c.n_heads, c.n_kv_heads, c.head_dim);
    }
    let expected = expected_tensors(c);
    for (name, shape) in &expected {
        let t = model
            .tensors
            .iter()
            .find(|t| &t.name == name)
            .ok_or_else(|| anyhow!("model '{}' lacks tensor '{name}'", model.name))?;
        if &t.shape != shape {
            bail!("tensor '{name}' has shape {:?}, the model config implies {shape:?}", t.shape);
        }
    }
    for (i, t) in model.tensors.iter().enumerate() {
        if !expected.iter().any(|(n, _)| n == &t.name) {
            bail!("model '{}' has tensor '{}', which its config does not use", model.name, t.name);
        }
        if model.tensors[..i].iter().any(|u| u.name == t.name) {
            bail!("tensor '{}' appears twice", t.name);
        }
        let numel: u64 = t.shape.iter().product();
        if numel != t.data.len() as u64 {
            bail!("tensor '{}' has {} values, its shape {:?} needs {numel}", t.name, t.data.len(), t.shape);
        }
        if let Some(i) = t.data.iter().position(|x| !x.is_finite()) {
            bail!("tensor '{}' holds a non-finite value ({}) at index {i}", t.name, t.data[i]);
        }
    }
    Ok(())
}

/// Quantize row-major `data` (rows of `cols`) to nested 8-bit codes in groups of `group`
/// along each row, each row padded to whole groups (padding codes 0; the last group of a row
/// may hold fewer real weights). Returns the per-group parameters and the padded codes.
pub fn quantize_nested8(
    name: &str,
    data: &[f32],
    cols: usize,
    group: usize,
    objective: crate::quant::NestedObjective,
) -> anyhow::Result<(Vec<GroupParams>, Vec<u8>)> {
    if group == 0 || group % 8 != 0 || cols == 0 {
        bail!("group size {group} is not a positive multiple of 8 (tensor '{name}')");
    }
    let f16_max = f16::MAX.to_f32();
    if let Some(x) = data.iter().find(|x| !x.is_finite() || x.abs() > f16_max / 2.0) {
        bail!("tensor '{name}' holds {x}, beyond the f16 range of 8-bit parameters; use --encoding bf16 or f32");
    }
    let padded = edge_runtime::format::nested8_padded_cols(cols as u64, group as u64) as usize;
    let rows = data.len() / cols;
    let groups_per_row = padded / group;
    let mut params = vec![GroupParams { scale: f16::ZERO, min: f16::ZERO }; rows * groups_per_row];
    let mut codes = vec![0u8; rows * padded];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(rows.max(1));
    let rows_per = rows.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let chunks = params
            .chunks_mut(rows_per * groups_per_row)
            .zip(codes.chunks_mut(rows_per * padded))
            .zip(data.chunks(rows_per * cols));
        for ((p, c), w) in chunks {
            s.spawn(move || {
                for ((prow, crow), wrow) in
                    p.chunks_mut(groups_per_row).zip(c.chunks_mut(padded)).zip(w.chunks(cols))
                {
                    for ((pg, cg), wg) in prow.iter_mut().zip(crow.chunks_mut(group)).zip(wrow.chunks(group)) {
                        *pg = crate::quant::quantize_group(wg, objective, &mut cg[..wg.len()]);
                    }
                }
            });
        }
    });
    Ok((params, codes))
}

/// Encode one tensor: vectors (norms) as f32, matrices per `encoding`.
pub fn encode_tensor(
    t: &SourceTensor,
    encoding: WeightEncoding,
    group_size: u32,
    objective: crate::quant::NestedObjective,
) -> anyhow::Result<TensorData> {
    let is_matrix = t.shape.len() == 2;
    let enc = if is_matrix { encoding } else { WeightEncoding::F32 };
    let mut group = 0u32;
    let segments = match enc {
        WeightEncoding::F32 => vec![t.data.iter().flat_map(|x| x.to_le_bytes()).collect()],
        WeightEncoding::F16 => {
            let max = f16::MAX.to_f32();
            if let Some(x) = t.data.iter().find(|x| x.abs() > max) {
                bail!("tensor '{}' holds {x}, beyond the f16 range; use --encoding bf16 or f32", t.name);
            }
            vec![t.data.iter().flat_map(|&x| f16::from_f32(x).to_bits().to_le_bytes()).collect()]
        }
        WeightEncoding::Bf16 => vec![t.data.iter().flat_map(|&x| bf16::from_f32(x).to_bits().to_le_bytes()).collect()],
        WeightEncoding::Nested8 => {
            group = group_size;
            let cols = *t.shape.last().unwrap_or(&0) as usize;
            let (params, codes) = quantize_nested8(&t.name, &t.data, cols, group_size as usize, objective)?;
            let mut segs = Vec::with_capacity(5);
            segs.push(
                params
                    .iter()
                    .flat_map(|p| {
                        let mut b = [0u8; 4];
                        b[..2].copy_from_slice(&p.scale.to_bits().to_le_bytes());
                        b[2..].copy_from_slice(&p.min.to_bits().to_le_bytes());
                        b
                    })
                    .collect(),
            );
            segs.extend(pack_nested8_planes(&codes));
            segs
        }
    };
    Ok(TensorData {
        name: t.name.clone(),
        encoding: enc.encoding(),
        shape: t.shape.clone(),
        group_size: group,
        segments,
    })
}

fn check_output(output: &Path, force: bool) -> anyhow::Result<()> {
    if output.is_dir() {
        bail!("output '{}' is a folder; give a file name such as model.edge", output.display());
    }
    if output.exists() && !force {
        bail!("output '{}' already exists; pass --force to overwrite it", output.display());
    }
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            bail!("the folder of output '{}' does not exist", output.display());
        }
    }
    Ok(())
}

/// Encode `model` and write it atomically to `output`.
pub fn pack_model(model: &SourceModel, output: &Path, opts: &PackOptions) -> anyhow::Result<PackReport> {
    let start = Instant::now();
    let grouped = opts.encoding == WeightEncoding::Nested8;
    if grouped && (opts.group_size == 0 || opts.group_size % 8 != 0) {
        bail!("group size {} is invalid: it must be a positive multiple of 8", opts.group_size);
    }
    check_output(output, opts.force)?;
    validate_model(model)?;

    // Tokenizer: the override wins, else the one found with the model.
    let tokenizer_json = match &opts.tokenizer {
        Some(p) => Some(crate::tokenizer::read_tokenizer_json(p)?),
        None => model.tokenizer_json.clone(),
    };
    match &tokenizer_json {
        None if !opts.allow_no_tokenizer => bail!(
            "no tokenizer found for '{}': pass --tokenizer tokenizer.json, or --allow-no-tokenizer to pack a model that runs on token ids only",
            model.name
        ),
        Some(json) => {
            let tok: tokenizers::Tokenizer =
                json.parse().map_err(|e| anyhow!("the tokenizer of '{}' does not load: {e}", model.name))?;
            let n = tok.get_vocab_size(true);
            if n > model.config.vocab_size {
                bail!(
                    "the tokenizer has {n} tokens but the model's vocabulary is {}; is it the model's tokenizer?",
                    model.config.vocab_size
                );
            }
        }
        None => {}
    }

    let bar = if opts.progress {
        // Cleared when dropped too, so an error message is not left under a stale bar.
        ProgressBar::with_draw_target(Some(model.tensors.len() as u64), ProgressDrawTarget::stderr())
            .with_finish(ProgressFinish::AndClear)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg:>9} [{bar:40}] {pos}/{len} tensors")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message("encoding");

    let c = &model.config;
    let mut w = CheckpointWriter::new();
    w.set_meta(keys::ARCH, MetaValue::Str("llama"));
    w.set_meta(keys::NAME, MetaValue::Str(&model.name));
    w.set_meta(keys::SOURCE, MetaValue::Str(&model.source));
    let packed_by = format!("edge-pack {}", env!("CARGO_PKG_VERSION"));
    w.set_meta(keys::PACKED_BY, MetaValue::Str(&packed_by));
    for (key, v) in [
        (keys::DIM, c.dim),
        (keys::HIDDEN_DIM, c.hidden_dim),
        (keys::N_LAYERS, c.n_layers),
        (keys::N_HEADS, c.n_heads),
        (keys::N_KV_HEADS, c.n_kv_heads),
        (keys::HEAD_DIM, c.head_dim),
        (keys::VOCAB_SIZE, c.vocab_size),
        (keys::CONTEXT_LENGTH, c.max_seq_len),
    ] {
        w.set_meta(key, MetaValue::U64(v as u64));
    }
    w.set_meta(keys::NORM_EPS, MetaValue::F32(c.norm_eps));
    w.set_meta(keys::ROPE_THETA, MetaValue::F32(c.rope_theta));
    w.set_meta(keys::TIED_EMBEDDINGS, MetaValue::Bool(c.tied_embeddings));
    if let Some(t) = &tokenizer_json {
        w.set_meta(keys::TOKENIZER_JSON, MetaValue::Str(t));
    }
    if let Some(t) = &model.chat_template {
        w.set_meta(keys::CHAT_TEMPLATE, MetaValue::Str(t));
    }
    if let Some(b) = model.bos_token_id {
        w.set_meta(keys::BOS_ID, MetaValue::U64(b as u64));
    }
    if let Some(e) = model.eos_token_id {
        w.set_meta(keys::EOS_ID, MetaValue::U64(e as u64));
    }
    w.set_meta(keys::ADD_BOS, MetaValue::Bool(model.add_bos));

    // Canonical order, whatever order the importer produced.
    let mut n_params = 0u64;
    for (name, _) in expected_tensors(c) {
        let t = model.tensors.iter().find(|t| t.name == name).expect("checked by validate_model");
        n_params += t.data.len() as u64;
        w.add_tensor(encode_tensor(t, opts.encoding, opts.group_size, opts.objective)?).map_err(|e| anyhow!("{e}"))?;
        bar.inc(1);
    }

    bar.set_message("writing");
    bar.set_style(
        ProgressStyle::with_template("{msg:>9} [{bar:40}] {bytes}/{total_bytes}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_position(0);
    let bytes = w
        .write_file(output, opts.force, |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .map_err(|e| anyhow!("cannot write '{}': {e}", output.display()))?;
    bar.finish_and_clear();

    Ok(PackReport {
        output: output.to_path_buf(),
        bytes,
        n_tensors: w.tensors().len(),
        seconds: start.elapsed().as_secs_f64(),
        name: model.name.clone(),
        source: model.source.clone(),
        encoding: opts.encoding,
        group_size: if grouped { opts.group_size } else { 0 },
        n_params,
        has_tokenizer: tokenizer_json.is_some(),
    })
}

/// Read `input` (any supported format) and pack it to `output`.
pub fn pack_file(input: &Path, output: &Path, opts: &PackOptions) -> anyhow::Result<PackReport> {
    // Fail fast, before reading a large model.
    if crate::detect_format(input)? == crate::SourceFormat::Edge {
        bail!("'{}' is already an .edge checkpoint; nothing to pack (run it with edge-run)", input.display());
    }
    check_output(output, opts.force)?;
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(input), std::fs::canonicalize(output)) {
        if a == b {
            bail!("output '{}' is the input; choose another output file", output.display());
        }
    }
    let model = crate::load_source(input, opts.tokenizer.as_deref())?;
    pack_model(&model, output, opts)
}
