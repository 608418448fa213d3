//! `edge-pack`: turn a GGUF file, a Hugging Face folder or a llama2.c `.bin` into one `.edge`
//! checkpoint.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use edge_pack::calibrate::{CalibrationOptions, CalibrationSource};
use edge_pack::{pack_file, PackOptions, PackReport, WeightEncoding};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ParamsArg {
    F16,
    Super,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ObjectiveArg {
    AllViews,
    MinMax,
}

impl From<ObjectiveArg> for edge_pack::quant::NestedObjective {
    fn from(o: ObjectiveArg) -> Self {
        match o {
            ObjectiveArg::AllViews => edge_pack::quant::NestedObjective::AllViews,
            ObjectiveArg::MinMax => edge_pack::quant::NestedObjective::MinMax,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EncodingArg {
    /// 16-bit floats (half the size of f32, near-lossless).
    F16,
    /// 32-bit floats (lossless, largest).
    F32,
    /// bfloat16 (f32's range at 16 bits; coarser than f16).
    Bf16,
    /// 8-bit codes in nested bit planes with per-group f16 scale and min; the runtime can read
    /// them at 8, 6, 5, 4, 3 or 2 bits.
    Q8,
}

impl From<EncodingArg> for WeightEncoding {
    fn from(e: EncodingArg) -> Self {
        match e {
            EncodingArg::F16 => WeightEncoding::F16,
            EncodingArg::F32 => WeightEncoding::F32,
            EncodingArg::Bf16 => WeightEncoding::Bf16,
            EncodingArg::Q8 => WeightEncoding::Nested8,
        }
    }
}

const EXAMPLES: &str = "\
Examples:
  edge-pack SmolLM2-135M-Instruct.Q4_1.gguf
      -> SmolLM2-135M-Instruct.Q4_1.edge (f16) in the current folder
  edge-pack ./stories260K-hf --allow-no-tokenizer -o stories.edge --encoding f32
  edge-pack stories260K.bin --tokenizer tok512.json --encoding q8 --group-size 32
  edge-pack model-dir --json -q > report.json
  edge-pack SmolLM2-135M-Instruct.Q4_1.gguf --calibrate-self -o smollm2-q8.edge
      -> nested q8 with GPTQ from 1024 self-sampled tokens and a sensitivity profile
  edge-pack stories260K.bin --allow-no-tokenizer --rtn-baseline 4 -o rtn4.edge
  edge-pack ./qat-out --calibrate-self -o smollm2-qat.edge
      -> an edge-qat export's trained codes as they are, with a sensitivity profile
  edge-pack smollm2.edge --export-codes gptq-codes/
      -> a pack's codes as an edge-qat export (no config), for `edge_qat.train --init-codes`

The input format is detected from the contents: a GGUF file, a Hugging Face folder
(config.json + model.safetensors or a sharded index, F32/F16/BF16; with edge-qat.json, an
edge-qat export whose 8-bit codes are packed as they are), or a llama2.c legacy .bin. Norms are always stored as f32. The file is written to a temporary file beside the
output and renamed into place, so a failed run never leaves a partial checkpoint.

Exit status: 0 on success, 1 on any error (one line on stderr: `edge-pack: error: ...`).";

/// Pack a Llama-family model into a single .edge checkpoint for edge-run.
#[derive(Debug, Parser)]
#[command(name = "edge-pack", version, about, after_help = EXAMPLES)]
struct Cli {
    /// The model: a .gguf file, a Hugging Face folder, or a llama2.c .bin.
    #[arg(value_name = "INPUT")]
    input: PathBuf,

    /// Where to write the checkpoint [default: <input name>.edge in the current folder].
    #[arg(short, long, value_name = "OUTPUT")]
    output: Option<PathBuf>,

    /// How matrices (embeddings and output head included) are stored [default: f16; q8 with
    /// --calibrate or --calibrate-self].
    #[arg(short, long, value_enum)]
    encoding: Option<EncodingArg>,

    /// Weights per (scale, min) group along each row, for --encoding q8. A multiple of 8, up to
    /// 65536 and no wider than the narrowest rows; rows that are not a whole number of groups are
    /// padded [default: 64; an edge-qat export's own].
    #[arg(short, long, value_name = "N", value_parser = edge_pack::arg_values::group_size, allow_negative_numbers = true)]
    group_size: Option<u32>,

    /// How q8 codes are chosen: `all-views` searches each group's range to minimise the error of
    /// every view together (the 8-, 4-, 3- and 2-bit views are weighed, each against
    /// round-to-nearest at its width; the 6- and 5-bit views lie between the 8- and 4-bit ones);
    /// `min-max` spans each group's min and max (best for the 8-bit view alone, faster).
    #[arg(long, value_enum, default_value_t = ObjectiveArg::AllViews)]
    objective: ObjectiveArg,

    /// How q8 group parameters are stored: `f16`, an f16 scale and minimum per group (0.5 bits a
    /// weight at groups of 64, 1.0 at 32); `super`, 6-bit codes under an f16 pair per 8 groups,
    /// as llama.cpp's K-quants (0.5 bits a weight at groups of 32, 0.25 at 64): smaller groups,
    /// better at every view, for the same bytes. With `super`, --group-size defaults to 32.
    /// [default: f16; an edge-qat export's own]
    #[arg(long, value_enum)]
    params: Option<ParamsArg>,

    /// Calibrate on windows of this text file (implies --encoding q8): GPTQ-style codes from its
    /// activations, and the per-layer sensitivity profile stored in the checkpoint. Never the
    /// evaluation text (a file named wiki.test.raw is refused).
    #[arg(long, value_name = "FILE", group = "calib")]
    calibrate: Option<PathBuf>,

    /// Calibrate on sequences sampled from the model itself (temperature 1, from BOS; needs no
    /// dataset or tokenizer). Implies --encoding q8.
    #[arg(long, group = "calib")]
    calibrate_self: bool,

    /// Calibration tokens in all (split into sequences of --calibrate-seq-len).
    #[arg(long, value_name = "N", default_value_t = edge_pack::calibrate::DEFAULT_TOKENS, requires = "calib", allow_negative_numbers = true, value_parser = |s: &str| tokens(s, 16))]
    calibrate_tokens: usize,

    /// Length of each calibration sequence (capped at the model's context).
    #[arg(long, value_name = "N", default_value_t = edge_pack::calibrate::DEFAULT_SEQ_LEN, requires = "calib", allow_negative_numbers = true, value_parser = |s: &str| tokens(s, 8))]
    calibrate_seq_len: usize,

    /// Seed of --calibrate-self's sampling.
    #[arg(long, value_name = "S", default_value_t = 0, requires = "calib", value_parser = edge_pack::arg_values::seed, allow_negative_numbers = true)]
    calibrate_seed: u64,

    /// Calibration tokens the sensitivity profile is measured on (5 forward passes over them per
    /// layer, one per view from 2 to 6 bits; the same for the embedding and an untied head)
    /// [default: as many as about 4 TFLOP of forward passes allow, at least one calibration
    /// sequence: 256 for SmolLM2-135M (a few minutes on two cores), all of them for small
    /// models].
    #[arg(long, value_name = "N", requires = "calib", allow_negative_numbers = true, value_parser = |s: &str| tokens(s, 1))]
    profile_tokens: Option<usize>,

    /// GPTQ: `joint` compensates the rounding error of every view at once (a compensated copy
    /// of each row per view, codes chosen for the least summed error); `2`, `3`, `4` or `8`
    /// compensates that view alone (the others get worse: codes are shared); `off` keeps the
    /// all-views quantizer and only measures the profile [default: joint; off for an edge-qat
    /// export, whose trained codes are stored as they are].
    #[arg(long, value_name = "TARGET", requires = "calib", value_parser = ["joint", "off", "2", "3", "4", "8"])]
    gptq: Option<String>,

    /// GPTQ's dampening of the Hessian, as a fraction of its mean diagonal (0.1: GPTQ's usual
    /// 0.01 overfits the ~1000 calibration tokens of a default run).
    #[arg(long, value_name = "F", default_value_t = edge_pack::calibrate::DEFAULT_DAMP, requires = "calib", value_parser = parse_damp, allow_negative_numbers = true)]
    gptq_damp: f64,

    /// Weights of the 2-, 3-, 4- and 8-bit views' errors in `--gptq joint`'s code choice,
    /// comma-separated (each view's error in its own steps; the 5- and 6-bit views lie between
    /// the 4- and the 8-bit ones). A larger last weight favours the 8-bit view (and the 6-bit
    /// one) at some cost to the 4- and 5-bit views: `1,1,1,4` keeps SmolLM2-135M's 8-bit view
    /// within 0.5% of f16 (docs/RESULTS.md).
    #[arg(long, value_name = "W2,W3,W4,W8", default_value = "1,1,1,1", value_parser = parse_view_weights, requires = "calib", allow_negative_numbers = true)]
    gptq_view_weights: ViewWeights,

    /// Write the plain round-to-nearest baseline at BITS (2, 3, 4, 5, 6 or 8) instead: an f16
    /// checkpoint whose matrices are quantized and dequantized per group of --group-size along
    /// each row, with its would-be size in metadata (edge.baseline).
    #[arg(long, value_name = "BITS", value_parser = ["2", "3", "4", "5", "6", "8"], conflicts_with = "calib")]
    rtn_baseline: Option<String>,

    /// Instead of packing, write the nested codes of the .edge checkpoint INPUT into folder DIR
    /// as an edge-qat export without config or tokenizer (Hugging Face names, rotate-half q/k
    /// rows): quantization-aware training can then start from a post-training pack's codes
    /// (`python -m edge_qat.train --init-codes DIR`), e.g. GPTQ's.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["output", "encoding", "group_size", "calib", "rtn_baseline", "tokenizer", "force"])]
    export_codes: Option<PathBuf>,

    /// Embed this tokenizer.json instead of the one found with the model.
    #[arg(short, long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,

    /// Pack without a tokenizer when none is found (the checkpoint then runs on token ids only).
    #[arg(long)]
    allow_no_tokenizer: bool,

    /// Overwrite OUTPUT if it exists.
    #[arg(short, long)]
    force: bool,

    /// Print the result as one JSON object on stdout instead of a sentence.
    #[arg(long)]
    json: bool,

    /// No progress bar and no summary (errors are still reported; --json output still printed).
    #[arg(short, long)]
    quiet: bool,
}

/// `<input name>.edge` in the current folder.
fn default_output(input: &Path) -> PathBuf {
    let resolved;
    let p = if input.file_name().is_none() {
        // `.`, `..` or `/`: name it after the folder it resolves to.
        resolved = std::fs::canonicalize(input).unwrap_or_else(|_| input.to_path_buf());
        &resolved
    } else {
        input
    };
    let stem = if p.is_dir() { p.file_name() } else { p.file_stem() };
    let stem =
        stem.map(|s| s.to_string_lossy().into_owned()).filter(|s| !s.is_empty()).unwrap_or_else(|| "model".into());
    PathBuf::from(format!("{stem}.edge"))
}

fn summary(r: &PackReport) -> String {
    let enc = match (r.group_size, &r.baseline) {
        (0, _) => r.encoding.name().to_string(),
        (g, Some(_)) => format!("a round-to-nearest baseline in f16 (groups of {g})"),
        (g, None) if r.params == edge_pack::quant::ParamLayout::Super => {
            format!("{} (groups of {g}, parameters in super-blocks of 8 groups)", r.encoding.name())
        }
        (g, None) => format!("{} (groups of {g})", r.encoding.name()),
    };
    let mut s = format!(
        "Packed {}, {} parameters read from {}, as {enc} into {}: {} bytes, {} tensors, {}, {:.2} s.",
        r.name,
        r.n_params,
        r.source,
        r.output.display(),
        r.bytes,
        r.n_tensors,
        if r.has_tokenizer { "tokenizer embedded" } else { "no tokenizer (token ids only)" },
        r.seconds
    );
    if let Some(c) = &r.calibration {
        let gptq = match c.gptq {
            edge_pack::calibrate::GptqTarget::Off => "no GPTQ".to_string(),
            t => format!("GPTQ (target {}) on {} matrices", t.name(), c.gptq_matrices),
        };
        s.push_str(&format!(
            " Calibrated on {} tokens ({}); {gptq}; sensitivity profile of {} units on {} tokens.",
            c.tokens, c.description, c.units, c.profile_tokens
        ));
    }
    if let Some(b) = &r.baseline {
        s.push_str(&format!(" Baseline: {b}."));
    }
    s
}

fn json(r: &PackReport) -> String {
    let calibration = r.calibration.as_ref().map(|c| {
        serde_json::json!({
            "description": c.description,
            "tokens": c.tokens,
            "profile_tokens": c.profile_tokens,
            "units": c.units,
            "gptq": c.gptq.name(),
            "gptq_matrices": c.gptq_matrices,
        })
    });
    let baseline: Option<serde_json::Value> = r.baseline.as_deref().and_then(|b| serde_json::from_str(b).ok());
    let timings: serde_json::Map<String, serde_json::Value> =
        r.timings.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect();
    serde_json::json!({
        "calibration": calibration,
        "baseline": baseline,
        "timings": timings,
        "output": r.output.display().to_string(),
        "bytes": r.bytes,
        "tensors": r.n_tensors,
        "seconds": r.seconds,
        "name": r.name,
        "source": r.source,
        "encoding": r.encoding.name(),
        "group_size": r.group_size,
        "group_params": match r.params {
            edge_pack::quant::ParamLayout::F16 => "f16",
            edge_pack::quant::ParamLayout::Super => "super",
        },
        "params": r.n_params,
        "tokenizer": r.has_tokenizer,
    })
    .to_string()
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(dir) = &cli.export_codes {
        let t0 = std::time::Instant::now();
        let n = edge_pack::qat::export_codes(&cli.input, dir)?;
        if cli.json {
            println!("{}", serde_json::json!({"export_codes": dir, "matrices": n, "seconds": t0.elapsed().as_secs_f64()}));
        } else if !cli.quiet {
            eprintln!("edge-pack: wrote the codes of {n} matrices of {} to {}", cli.input.display(), dir.display());
        }
        return Ok(());
    }
    let output = cli.output.clone().unwrap_or_else(|| default_output(&cli.input));
    let calibrating = cli.calibrate.is_some() || cli.calibrate_self;
    // An edge-qat export (trained 8-bit codes): q8 in its groups, no GPTQ, unless told otherwise
    // (the packer refuses what contradicts the codes).
    let resolved = edge_pack::resolve_input(&cli.input)?;
    let qat = edge_pack::qat::is_export(&resolved).then(|| edge_pack::qat::QatImport::open(&resolved)).transpose()?;
    let encoding: WeightEncoding = match cli.encoding {
        Some(e) => e.into(),
        None if calibrating || (qat.is_some() && cli.rtn_baseline.is_none()) => WeightEncoding::Nested8,
        None => WeightEncoding::F16,
    };
    if calibrating && encoding != WeightEncoding::Nested8 {
        anyhow::bail!("--calibrate and --calibrate-self need --encoding q8 (the default with them), not {}", encoding.name());
    }
    let rtn_baseline = cli.rtn_baseline.as_deref().map(|b| b.parse::<u8>().expect("checked by clap"));
    if rtn_baseline.is_some() && encoding != WeightEncoding::F16 {
        anyhow::bail!("--rtn-baseline writes an f16 checkpoint; it takes no --encoding {}", encoding.name());
    }
    let calibration = calibrating.then(|| {
        let source = match &cli.calibrate {
            Some(p) => CalibrationSource::File(p.clone()),
            None => CalibrationSource::SelfSampled,
        };
        let mut c = CalibrationOptions::new(source);
        c.tokens = cli.calibrate_tokens;
        c.seq_len = cli.calibrate_seq_len;
        c.seed = cli.calibrate_seed;
        c.profile_tokens = cli.profile_tokens;
        let default_gptq = if qat.is_some() { "off" } else { "joint" };
        c.gptq = cli.gptq.as_deref().unwrap_or(default_gptq).parse().expect("checked by clap");
        c.damp = cli.gptq_damp;
        c.view_weights = cli.gptq_view_weights.0;
        c
    });
    let opts = PackOptions {
        encoding,
        calibration,
        rtn_baseline,
        group_size: cli.group_size.unwrap_or(match (&qat, cli.params) {
            (Some(q), _) => q.group_size,
            (None, Some(ParamsArg::Super)) => 32,
            (None, _) => 64,
        }),
        params: match (cli.params, &qat) {
            (Some(ParamsArg::F16), _) => edge_pack::quant::ParamLayout::F16,
            (Some(ParamsArg::Super), _) => edge_pack::quant::ParamLayout::Super,
            (None, Some(q)) => q.params,
            (None, None) => edge_pack::quant::ParamLayout::F16,
        },
        tokenizer: cli.tokenizer.clone(),
        allow_no_tokenizer: cli.allow_no_tokenizer,
        force: cli.force,
        progress: !cli.quiet,
        objective: cli.objective.into(),
    };
    let out_dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    edge_pack::interrupt::watch(&out_dir);
    let report = pack_file(&cli.input, &output, &opts)?;
    let mut out = std::io::stdout().lock();
    let text = if cli.json {
        json(&report)
    } else if cli.quiet {
        return Ok(());
    } else {
        summary(&report)
    };
    writeln!(out, "{text}").context("cannot write to stdout")?;
    Ok(())
}

/// One line, whatever the error contains.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn main() -> ExitCode {
    // A bug must still end in one line and exit status 1, not a backtrace.
    edge_pack::install_one_line_panic_hook("edge-pack");
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // clap's message is "error: ..." (maybe continued on indented lines), then a blank
            // line, tips and usage: keep the message, drop the rest.
            let rendered = e.to_string();
            let msg: Vec<&str> = rendered.lines().take_while(|l| !l.trim().is_empty()).collect();
            let msg = msg.join(" ");
            let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
            eprintln!("edge-pack: error: {} (see edge-pack --help)", one_line(msg));
            return ExitCode::from(1);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-pack: error: {}", one_line(&format!("{e:#}")));
            ExitCode::from(1)
        }
    }
}

/// The calibration's token counts: at least `lo`, at most a million (hours of GPTQ on two cores).
fn tokens(s: &str, lo: u64) -> Result<usize, String> {
    edge_pack::arg_values::whole(s, lo, 1_000_000, "a number of tokens", "").map(|n| n as usize)
}

/// `--gptq-damp`: above 0 (an undamped Hessian of ~1000 tokens may not factor) and at most 10
/// (beyond, GPTQ's compensation is all but gone).
fn parse_damp(s: &str) -> Result<f64, String> {
    edge_pack::arg_values::above_at_most(s, 0.0, 10.0, "a dampening", " (a fraction of the Hessian's mean diagonal; 0.1 is the default)")
}

/// `--gptq-view-weights`: four finite weights >= 0, not all zero.
#[derive(Debug, Clone, Copy)]
struct ViewWeights([f32; 4]);

fn parse_view_weights(s: &str) -> Result<ViewWeights, String> {
    let w: Vec<f32> = s.split(',').map(|x| x.trim().parse::<f32>()).collect::<Result<_, _>>().map_err(|_| format!("'{s}' is not four comma-separated numbers"))?;
    match <[f32; 4]>::try_from(w) {
        Ok(w) if w.iter().all(|x| x.is_finite() && *x >= 0.0) && w.iter().any(|x| *x > 0.0) => Ok(ViewWeights(w)),
        _ => Err(format!("'{s}' is not four weights >= 0 (for the 2-, 3-, 4- and 8-bit views), not all zero")),
    }
}
