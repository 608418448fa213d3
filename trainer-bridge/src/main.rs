//! `edge-pack`: turn a GGUF file, a Hugging Face folder or a llama2.c `.bin` into one `.edge`
//! checkpoint.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use edge_pack::{pack_file, PackOptions, PackReport, WeightEncoding};

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
    /// them at 8, 4, 3 or 2 bits.
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

The input format is detected from the contents: a GGUF file, a Hugging Face folder
(config.json + model.safetensors or a sharded index, F32/F16/BF16), or a llama2.c legacy
.bin. Norms are always stored as f32. The file is written to a temporary file beside the
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

    /// How matrices (embeddings and output head included) are stored.
    #[arg(short, long, value_enum, default_value_t = EncodingArg::F16)]
    encoding: EncodingArg,

    /// Weights per (scale, min) group along each row, for --encoding q8. A multiple of 8; rows
    /// that are not a whole number of groups are padded.
    #[arg(short, long, value_name = "N", default_value_t = 64)]
    group_size: u32,

    /// How q8 codes are chosen: `all-views` searches each group's range to minimise the error of
    /// the 8, 4, 3 and 2-bit views together (each against round-to-nearest at its width);
    /// `min-max` spans each group's min and max (best for the 8-bit view alone, faster).
    #[arg(long, value_enum, default_value_t = ObjectiveArg::AllViews)]
    objective: ObjectiveArg,

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
    let enc = match r.group_size {
        0 => r.encoding.name().to_string(),
        g => format!("{} (groups of {g})", r.encoding.name()),
    };
    format!(
        "Packed {}, {} parameters read from {}, as {enc} into {}: {} bytes, {} tensors, {}, {:.2} s.",
        r.name,
        r.n_params,
        r.source,
        r.output.display(),
        r.bytes,
        r.n_tensors,
        if r.has_tokenizer { "tokenizer embedded" } else { "no tokenizer (token ids only)" },
        r.seconds
    )
}

fn json(r: &PackReport) -> String {
    serde_json::json!({
        "output": r.output.display().to_string(),
        "bytes": r.bytes,
        "tensors": r.n_tensors,
        "seconds": r.seconds,
        "name": r.name,
        "source": r.source,
        "encoding": r.encoding.name(),
        "group_size": r.group_size,
        "params": r.n_params,
        "tokenizer": r.has_tokenizer,
    })
    .to_string()
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let output = cli.output.clone().unwrap_or_else(|| default_output(&cli.input));
    let opts = PackOptions {
        encoding: cli.encoding.into(),
        group_size: cli.group_size,
        tokenizer: cli.tokenizer.clone(),
        allow_no_tokenizer: cli.allow_no_tokenizer,
        force: cli.force,
        progress: !cli.quiet,
        objective: cli.objective.into(),
    };
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
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("edge-pack: error: internal error (please report): {}{at}", one_line(&msg));
        std::process::exit(1);
    }));
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
