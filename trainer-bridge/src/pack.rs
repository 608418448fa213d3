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
use edge_runtime::blocks::{pack_nested8_planes, ParamsRef};
use crate::quant::{NestedCoding, NestedParams, ParamLayout};
use edge_runtime::format::{keys, CheckpointWriter, Encoding, MetaValue, TensorData};
use edge_runtime::Checkpoint;
use half::{bf16, f16};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};

use crate::calibrate::{self, AlignedBytes, CalibrationOptions, CalibrationSource, GptqFactor, GptqTarget};
use crate::qat::QatImport;
use crate::source::{SourceModel, SourceTensor};
use crate::source_detect::{self, SourceFormat};

/// How linear weights (and embeddings) are stored. Norms are always f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightEncoding {
    F32,
    #[default]
    F16,
    Bf16,
    /// 8-bit codes as nested bit planes (views of 8/6/5/4/3/2 bits).
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
    /// How q8 group parameters are stored.
    pub params: ParamLayout,
    /// Calibrate (q8 only): GPTQ-style codes from calibration activations and the
    /// sensitivity profile (`edge.sensitivity`).
    pub calibration: Option<CalibrationOptions>,
    /// Write the round-to-nearest baseline at these bits instead (f16 values that are
    /// `rtn_fake_quant`ed per group of `group_size` along each row; `edge.baseline`).
    pub rtn_baseline: Option<u8>,
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
            params: ParamLayout::F16,
            calibration: None,
            rtn_baseline: None,
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
    /// How the group parameters of nested tensors are stored.
    pub params: ParamLayout,
    /// Number of weights.
    pub n_params: u64,
    /// Whether a tokenizer was embedded.
    pub has_tokenizer: bool,
    /// What a calibrated pack did (`None` without calibration).
    pub calibration: Option<CalibrationReport>,
    /// The `edge.baseline` JSON of a round-to-nearest baseline.
    pub baseline: Option<String>,
    /// Seconds spent per phase, in order.
    pub timings: Vec<(&'static str, f64)>,
}

/// What calibration did.
#[derive(Debug, Clone)]
pub struct CalibrationReport {
    /// The calibration tokens (source, sequences x length, seed).
    pub description: String,
    pub tokens: usize,
    /// Tokens the profile was measured on.
    pub profile_tokens: usize,
    /// The GPTQ target, and how many matrices it quantized.
    pub gptq: GptqTarget,
    pub gptq_matrices: usize,
    /// Units profiled.
    pub units: usize,
}

/// Check that `model` has exactly the tensors its architecture implies for its config, with
/// matching shapes and data lengths and only finite values.
pub fn validate_model(model: &SourceModel) -> anyhow::Result<()> {
    let c = &model.config;
    if c.n_heads == 0 || c.n_kv_heads == 0 || !c.n_heads.is_multiple_of(c.n_kv_heads) || !c.head_dim.is_multiple_of(2) {
        bail!("inconsistent attention config: {} heads, {} kv heads, head_dim {}", c.n_heads, c.n_kv_heads, c.head_dim);
    }
    let expected = model.arch.tensors(c);
    for e in &expected {
        let (name, shape) = (&e.name, &e.shape);
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
        if !expected.iter().any(|e| e.name == t.name) {
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

/// Encode one tensor: vectors (norms) as f32, matrices per `encoding`.
pub fn encode_tensor(
    t: &SourceTensor,
    encoding: WeightEncoding,
    group_size: u32,
    objective: crate::quant::NestedObjective,
) -> anyhow::Result<TensorData> {
    encode_tensor_with(t, encoding, group_size, objective, ParamLayout::F16, None)
}

/// [`encode_tensor`], with nested codes chosen by GPTQ when `gptq` gives the factor of the
/// tensor's input Hessian and the target.
pub fn encode_tensor_with(
    t: &SourceTensor,
    encoding: WeightEncoding,
    group_size: u32,
    objective: crate::quant::NestedObjective,
    layout: ParamLayout,
    gptq: Option<(&GptqFactor, GptqTarget)>,
) -> anyhow::Result<TensorData> {
    let is_matrix = t.shape.len() == 2;
    let enc = if is_matrix { encoding } else { WeightEncoding::F32 };
    let mut group = 0u32;
    let mut encoding = enc.encoding();
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
            let (params, codes) = match gptq {
                Some((f, target)) if target != GptqTarget::Off => {
                    calibrate::gptq_nested8(&t.name, &t.data, cols, group_size as usize, f, target, NestedCoding { objective, layout })?
                }
                _ => crate::quant::quantize_nested(&t.name, &t.data, cols, group_size as usize, NestedCoding { objective, layout })?,
            };
            if let NestedParams::Super { .. } = params {
                encoding = Encoding::Nested8Super;
            }
            nested8_segments(params.as_ref(), &codes)
        }
    };
    Ok(TensorData {
        name: t.name.clone(),
        encoding,
        shape: t.shape.clone(),
        group_size: group,
        segments,
    })
}

/// The segments of a nested 8-bit tensor: its group parameters, then its planes.
fn nested8_segments(params: ParamsRef<'_>, codes: &[u8]) -> Vec<Vec<u8>> {
    let mut segs = Vec::with_capacity(7);
    // Both layouts are plain little-endian f16 and byte fields (`blocks.rs`).
    segs.push(params.bytes().to_vec());
    segs.extend(pack_nested8_planes(codes));
    segs
}

/// Refuse options that would not store an edge-qat export's codes as they are.
fn check_qat_options(q: &QatImport, opts: &PackOptions) -> anyhow::Result<()> {
    if opts.rtn_baseline.is_some() {
        bail!("--rtn-baseline re-quantizes the weights; an edge-qat export is packed as its trained codes (pack its base model for a baseline)");
    }
    if opts.encoding != WeightEncoding::Nested8 {
        bail!("an edge-qat export holds 8-bit codes: pack it as q8 (drop --encoding {}, q8 is its default)", opts.encoding.name());
    }
    if opts.params != q.params {
        let (theirs, ours) = (crate::qat::layout_name(q.params), crate::qat::layout_name(opts.params));
        bail!("the edge-qat export's group parameters are {theirs} as trained; storing them as {ours} would re-quantize the codes: drop --params (or pass --params {theirs})");
    }
    if opts.group_size != q.group_size {
        bail!("the edge-qat export's codes are in groups of {}, not {}: drop --group-size (or pass -g {})", q.group_size, opts.group_size, q.group_size);
    }
    if let Some(co) = &opts.calibration {
        if co.gptq != GptqTarget::Off {
            bail!("GPTQ would re-quantize the edge-qat export's trained codes: pass --gptq off (its default) to measure only the sensitivity profile");
        }
    }
    Ok(())
}

fn check_output(output: &Path, force: bool) -> anyhow::Result<()> {
    if output.is_dir() {
        bail!("output '{}' is a folder; give a file name such as model.edge", output.display());
    }
    if output.exists() && !force {
        bail!("output '{}' already exists; pass --force to overwrite it", output.display());
    }
    // A folder that cannot take the file fails now, not after minutes of packing.
    crate::writable::check_file(output, "output")
}

/// The metadata every checkpoint of `model` carries.
fn base_writer(model: &SourceModel, tokenizer_json: Option<&str>) -> CheckpointWriter {
    let c = &model.config;
    let mut w = CheckpointWriter::new();
    w.set_meta(keys::ARCH, MetaValue::Str(model.arch.name));
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
    if c.local.any() {
        w.set_meta(keys::SLIDING_WINDOW, MetaValue::U64(c.local.window as u64));
        w.set_meta(keys::SLIDING_WINDOW_PATTERN, MetaValue::U64(c.local.period as u64));
        w.set_meta(keys::ROPE_THETA_LOCAL, MetaValue::F32(c.local.rope_theta));
    }
    if let Some(s) = c.attn_scale {
        w.set_meta(keys::ATTN_SCALE, MetaValue::F32(s));
    }
    if let Some(t) = tokenizer_json {
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
    w
}

/// `model`'s tensors in canonical order.
fn canonical_tensors(model: &SourceModel) -> Vec<&SourceTensor> {
    model
        .arch
        .tensors(&model.config)
        .into_iter()
        .map(|e| model.tensors.iter().find(|t| t.name == e.name).expect("checked by validate_model"))
        .collect()
}

/// A full-precision copy of `model` in memory (f32 below 50M parameters, else f16 when every
/// value fits it): what calibration samples from and takes activations of.
pub fn full_precision_in_memory(model: &SourceModel) -> anyhow::Result<AlignedBytes> {
    let n: usize = model.tensors.iter().map(|t| t.data.len()).sum();
    let fits_f16 = model.tensors.iter().all(|t| t.data.iter().all(|x| x.abs() <= f16::MAX.to_f32()));
    let enc = if n < 50_000_000 || !fits_f16 { WeightEncoding::F32 } else { WeightEncoding::F16 };
    let mut w = base_writer(model, None);
    for t in canonical_tensors(model) {
        w.add_tensor(encode_tensor(t, enc, 0, crate::quant::NestedObjective::MinMax)?).map_err(|e| anyhow!("{e}"))?;
    }
    AlignedBytes::from_writer(&w)
}

/// Apply the round-to-nearest baseline to every row of a matrix (groups of `group` along the
/// row, the last one possibly shorter, as the nested pack groups them).
pub fn rtn_rows(data: &[f32], cols: usize, bits: u8, group: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for (row, o) in data.chunks(cols).zip(out.chunks_mut(cols)) {
        crate::quant::rtn_fake_quant(row, bits, group, o);
    }
    out
}

/// The bytes the weights of `model` would take as a `bits`-bit round-to-nearest format:
/// every matrix at `bits` per weight plus 4 bytes (f16 scale and min) per group of `group`
/// along each row, norms as f32.
pub fn rtn_weight_bytes(model: &SourceModel, bits: u8, group: usize) -> u64 {
    model
        .tensors
        .iter()
        .map(|t| match t.shape.as_slice() {
            [rows, cols] => (rows * cols * bits as u64).div_ceil(8) + 4 * rows * cols.div_ceil(group as u64),
            _ => 4 * t.data.len() as u64,
        })
        .sum()
}

/// A progress bar on stderr (hidden unless `show`), cleared when dropped.
fn progress_bar(show: bool) -> ProgressBar {
    if show {
        // Cleared when dropped too, so an error message is not left under a stale bar.
        ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr()).with_finish(ProgressFinish::AndClear)
    } else {
        ProgressBar::hidden()
    }
}

fn phase(bar: &ProgressBar, msg: &'static str, len: u64, unit: &str) {
    bar.set_style(
        ProgressStyle::with_template(&format!("{{msg:>9}} [{{bar:40}}] {{pos}}/{{len}} {unit} ({{elapsed}}, ETA {{eta}})"))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(msg);
    bar.set_length(len);
    bar.set_position(0);
}

/// Encode `model` and write it atomically to `output`.
pub fn pack_model(model: &SourceModel, output: &Path, opts: &PackOptions) -> anyhow::Result<PackReport> {
    pack_model_with(model, None, output, opts)
}

/// [`pack_model`]; the matrices `imported` holds codes of (an edge-qat export, `qat.rs`) are
/// stored as those codes, never re-quantized.
pub fn pack_model_with(
    model: &SourceModel,
    imported: Option<&QatImport>,
    output: &Path,
    opts: &PackOptions,
) -> anyhow::Result<PackReport> {
    if let Some(q) = imported {
        check_qat_options(q, opts)?;
    }
    let start = Instant::now();
    let grouped = opts.encoding == WeightEncoding::Nested8 || opts.rtn_baseline.is_some();
    if grouped {
        crate::arg_values::group_size(&opts.group_size.to_string()).map_err(|e| anyhow!(e))?;
    }
    if grouped {
        // A group wider than a row pads every row of that matrix to the group: a file many times
        // larger for nothing.
        let narrowest = model.arch.tensors(&model.config).into_iter().filter(|t| t.spec.takes_views() && t.shape.len() == 2).min_by_key(|t| t.shape[1]);
        if let Some(t) = narrowest.filter(|t| t.shape[1] < opts.group_size as u64) {
            bail!(
                "group size {} is wider than the rows of '{}' ({} columns): every row would be padded to {} codes; use a group size of at most {}",
                opts.group_size,
                t.name,
                t.shape[1],
                opts.group_size,
                t.shape[1] / 8 * 8
            );
        }
    }
    if opts.calibration.is_some() && opts.encoding != WeightEncoding::Nested8 {
        bail!("calibration needs the q8 encoding (nested bit planes), not {}", opts.encoding.name());
    }
    if opts.params != ParamLayout::F16 && opts.encoding != WeightEncoding::Nested8 {
        bail!("--params super codes the group parameters of q8 weights; {} weights have none (add --encoding q8)", opts.encoding.name());
    }
    if let Some(b) = opts.rtn_baseline {
        if !edge_runtime::blocks::is_nested8_view(b) {
            bail!("the round-to-nearest baseline takes 2, 3, 4, 5, 6 or 8 bits, not {b}");
        }
        if opts.calibration.is_some() || opts.encoding == WeightEncoding::Nested8 {
            bail!("the round-to-nearest baseline is written as f16 values; it takes neither q8 nor calibration");
        }
    }
    if let Some(co) = &opts.calibration {
        if let CalibrationSource::File(p) = &co.source {
            calibrate::check_calibration_file(p)?;
        }
        if !(co.damp > 0.0 && co.damp.is_finite()) {
            bail!("GPTQ dampening {} is invalid: give a positive fraction of the Hessian's mean diagonal, e.g. 0.1", co.damp);
        }
        if co.tokens == 0 || co.seq_len < 2 {
            bail!("calibration needs at least one sequence of 2 or more tokens");
        }
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

    let bar = progress_bar(opts.progress);
    let mut timings = Vec::new();
    let mut lap = Instant::now();
    let mut tick = |name: &'static str, timings: &mut Vec<(&'static str, f64)>| {
        timings.push((name, lap.elapsed().as_secs_f64()));
        lap = Instant::now();
    };
    let c = &model.config;

    // Calibration: tokens, then (for GPTQ) the Hessians of a full-precision pass.
    let mut calib = None;
    if let Some(co) = &opts.calibration {
        let fp = full_precision_in_memory(model)?;
        let fp_ck = Checkpoint::parse(fp.as_bytes()).map_err(|e| anyhow!("{e}"))?;
        let set = match &co.source {
            CalibrationSource::File(p) => calibrate::tokenize_file(
                p,
                tokenizer_json.as_deref(),
                model.bos_token_id,
                model.add_bos,
                c,
                co,
            )?,
            CalibrationSource::SelfSampled => {
                phase(&bar, "sampling", co.tokens as u64, "tokens");
                calibrate::sample_self(&fp_ck, model.bos_token_id, co, |n| bar.inc(n as u64))?
            }
            CalibrationSource::Tokens(set) => {
                if set.sequences.iter().all(|s| s.is_empty()) {
                    bail!("no calibration tokens given");
                }
                if let Some(&bad) = set.sequences.iter().flatten().find(|&&t| t as usize >= c.vocab_size) {
                    bail!("calibration token {bad} is outside the vocabulary of {}", c.vocab_size);
                }
                set.clone()
            }
        };
        tick("calibration tokens", &mut timings);
        let hessians = if co.gptq != GptqTarget::Off {
            phase(&bar, "observing", set.n_tokens() as u64, "tokens");
            let h = calibrate::collect_hessians(&fp_ck, &set.sequences, !c.tied_embeddings, |n| bar.inc(n as u64))?;
            tick("activation statistics", &mut timings);
            Some(h)
        } else {
            None
        };
        calib = Some((co, set, hessians));
    }

    let tensors = canonical_tensors(model);
    phase(&bar, "encoding", tensors.len() as u64, "tensors");
    let mut w = base_writer(model, tokenizer_json.as_deref());
    let mut n_params = 0u64;
    let mut gptq_matrices = 0;
    // The factor of the last input site: q/k/v (and gate/up) share one.
    let mut factor: Option<((Option<usize>, usize), GptqFactor)> = None;
    let mut done_layer: Option<usize> = None;
    for t in tensors {
        n_params += t.data.len() as u64;
        let td = if let Some(c) = imported.and_then(|q| q.codes.get(&t.name)) {
            TensorData {
                name: t.name.clone(),
                encoding: match c.params {
                    NestedParams::F16(_) => Encoding::Nested8,
                    NestedParams::Super { .. } => Encoding::Nested8Super,
                },
                shape: t.shape.clone(),
                group_size: opts.group_size,
                segments: nested8_segments(c.params.as_ref(), &c.codes),
            }
        } else if let Some(bits) = opts.rtn_baseline.filter(|_| t.shape.len() == 2) {
            let cols = t.shape[1] as usize;
            let q = SourceTensor { name: t.name.clone(), shape: t.shape.clone(), data: rtn_rows(&t.data, cols, bits, opts.group_size as usize) };
            encode_tensor(&q, WeightEncoding::F16, 0, opts.objective)?
        } else {
            let mut gptq = None;
            if let Some((co, _, Some(h))) = &mut calib {
                let layer = calibrate::tensor_site(&t.name).and_then(|(l, _)| l);
                if let (Some(prev), Some(l)) = (done_layer, layer) {
                    if l != prev {
                        h.drop_layer(prev);
                    }
                }
                done_layer = layer.or(done_layer);
                if let (Some(key), Some((hm, n))) = (calibrate::tensor_site(&t.name), h.for_tensor(&t.name)) {
                    if factor.as_ref().map(|(k, _)| *k) != Some(key) {
                        let mut f =
                            GptqFactor::new(hm, n, co.damp).map_err(|e| anyhow!("tensor '{}': {e}", t.name))?;
                        f.view_weights = co.view_weights;
                        factor = Some((key, f));
                    }
                    gptq = factor.as_ref().map(|(_, f)| (f, co.gptq));
                }
            }
            gptq_matrices += gptq.is_some() as usize;
            encode_tensor_with(t, opts.encoding, opts.group_size, opts.objective, opts.params, gptq)?
        };
        w.add_tensor(td).map_err(|e| anyhow!("{e}"))?;
        bar.inc(1);
    }
    drop(factor);
    tick("encoding", &mut timings);

    let mut baseline = None;
    if let Some(bits) = opts.rtn_baseline {
        let json = serde_json::json!({
            "method": "rtn",
            "bits": bits,
            "group_size": opts.group_size,
            "weight_bytes": rtn_weight_bytes(model, bits, opts.group_size as usize),
        })
        .to_string();
        w.set_meta("edge.baseline", MetaValue::Str(&json));
        baseline = Some(json);
    }
    if let Some(q) = imported {
        w.set_meta(crate::qat::QAT_KEY, MetaValue::Str(&q.metadata));
    }

    // The profile, measured on the encoded checkpoint in memory; then the file is written once.
    let mut calibration = None;
    if let Some((co, set, _)) = calib {
        let bytes = AlignedBytes::from_writer(&w)?;
        let ck = Checkpoint::parse(bytes.as_bytes()).map_err(|e| anyhow!("{e}"))?;
        let available = set.n_tokens();
        let longest = set.sequences.iter().map(|s| s.len()).max().unwrap_or(0);
        let m = co
            .profile_tokens
            .unwrap_or_else(|| crate::sensitivity::default_profile_tokens(model.arch, c, longest, available))
            .min(available);
        let windows = set.profile_windows(m);
        let n_windows = windows.len();
        let profile_tokens: usize = windows.iter().map(|w| w.len()).sum();
        let units = model.arch.plan_units(c);
        phase(&bar, "profiling", units.len() as u64, "units");
        let measured = crate::sensitivity::measure(&ck, &windows, |_| bar.inc(1))?;
        let description =
            format!("{}; profile on {} x {} tokens", set.description, n_windows, windows.first().map_or(0, |w| w.len()));
        let profile = crate::sensitivity::Profile::new(description, profile_tokens, &measured);
        w.set_meta(crate::sensitivity::SENSITIVITY_KEY, MetaValue::Str(&profile.to_json()));
        tick("profile", &mut timings);
        calibration = Some(CalibrationReport {
            description: set.description.clone(),
            tokens: available,
            profile_tokens,
            gptq: co.gptq,
            gptq_matrices,
            units: units.len(),
        });
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
    tick("writing", &mut timings);

    Ok(PackReport {
        output: output.to_path_buf(),
        bytes,
        n_tensors: w.tensors().len(),
        seconds: start.elapsed().as_secs_f64(),
        name: model.name.clone(),
        source: model.source.clone(),
        encoding: opts.encoding,
        group_size: if grouped { opts.group_size } else { 0 },
        params: opts.params,
        n_params,
        has_tokenizer: tokenizer_json.is_some(),
        calibration,
        baseline,
        timings,
    })
}

/// Read `input` (any supported format) and pack it to `output`.
pub fn pack_file(input: &Path, output: &Path, opts: &PackOptions) -> anyhow::Result<PackReport> {
    // Fail fast, before reading a large model.
    if source_detect::detect_format(input)? == SourceFormat::Edge {
        bail!("'{}' is already an .edge checkpoint; nothing to pack (run it with edge-run)", input.display());
    }
    check_output(output, opts.force)?;
    if let Some(CalibrationOptions { source: CalibrationSource::File(p), .. }) = &opts.calibration {
        calibrate::check_calibration_file(p)?;
    }
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(input), std::fs::canonicalize(output)) {
        if a == b {
            bail!("output '{}' is the input; choose another output file", output.display());
        }
    }
    let resolved = source_detect::resolve_input(input)?;
    if crate::qat::is_export(&resolved) {
        let (model, q) = crate::qat::load_qat(&resolved, opts.tokenizer.as_deref())?;
        return pack_model_with(&model, Some(&q), output, opts);
    }
    let model = source_detect::load_source(input, opts.tokenizer.as_deref())?;
    pack_model(&model, output, opts)
}
