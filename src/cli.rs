//! Command-line arguments (clap derive).
//!
//! `edge-run` with no subcommand generates text (`edge-run -m MODEL -p PROMPT`), as llama.cpp's
//! `llama-cli` does; `eval` measures perplexity, `bench` speed, and `inspect` describes a
//! checkpoint.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use edge_pack::arg_values;
use edge_runtime::kv::KvFormat;

const EXAMPLES: &str = "\
Examples:
  # Generate from a prompt (a GGUF, Hugging Face folder or llama2.c .bin is packed once into a
  # cache, calibrated with a sensitivity profile; --pack-encoding f16 packs in seconds instead)
  edge-run -m SmolLM2-135M-Instruct.Q4_1.gguf -p \"Once upon a time\" -n 64

  # Greedy decoding, chat template, JSON output
  edge-run -m model.edge -p \"What is the capital of France?\" --chat --temp 0 --json

  # An int8 KV cache of 512 positions (4 sink + 508 recent): generation goes on past --ctx
  edge-run -m model.edge -p \"Once upon a time\" -n -1 --kv-bits 8 --kv-window 512

  # Perplexity on 4 windows of 512 tokens, as llama-perplexity computes it
  edge-run eval -m model.edge --data wiki.test.raw --ctx 512 --chunks 4

  # KL divergence of a 4-bit view against the full-precision checkpoint
  edge-run eval -m model-nested8.edge --bits 4 --kl-base model-f16.edge --data wiki.test.raw

  # Views chosen per layer: from a plan file, or from the sensitivity profile for a budget
  edge-run -m model-q8.edge --plan plan.toml -p \"Hello\"
  edge-run -m model-q8.edge --target-bits 3.5 -p \"Hello\"
  edge-run -m model-q8.edge --weight-budget 90MB -p \"Hello\"

  # Describe a checkpoint and verify every tensor checksum
  edge-run inspect model.edge --verify

Environment:
  EDGE_RUN_CACHE    where auto-packed models are cached (default $XDG_CACHE_HOME/edge-run,
                    else $HOME/.cache/edge-run)";

const EVAL_HELP: &str = "\
Examples:
  edge-run eval -m model.edge --data wiki.test.raw --ctx 512 --chunks 4
  edge-run eval -m model.edge --bits 4 --kl-base model.edge --data wiki.test.raw --json
  edge-run eval -m model-q8.edge --target-bits 3.5 --kl-base model-f16.edge --data wiki.test.raw
  edge-run eval --sweep -m model-q8.edge --kl-base model-f16.edge --data wiki.test.raw --chunks 8 \\
      --baselines rtn4.edge,rtn3.edge --budgets 2.5,3,3.5,4,5,6 --out sweep/
  edge-run eval --sweep -m qat.edge --compare ptq.edge --kl-base model-f32.edge \\
      --data held-out.txt --out sweep/      (two checkpoints of one model, view by view)

Compressibility score (--sweep):
  The area under the quality-vs-bits curve of the uniform views, normalised to [0, 1]:
      score = 1/6 * integral from b=2 to b=8 of exp(-KL(b)) db
  where KL(b) is the measured mean KL(P_base || P_view) in nats/token of the uniform b-bit view
  and the curve is piecewise linear through b = 2, 3, 4, 8 (trapezoid rule). 1 means every view
  is indistinguishable from the base; perfect 4- and 8-bit views with useless 2- and 3-bit ones
  (exp(-KL) = 0) score 0.75. sweep.json also gives the same area for top-1 agreement.";

const BENCH_HELP: &str = "\
Examples:
  edge-run bench -m model-q8.edge --bits 8,4,2 -t 1,2
  edge-run bench -m model.edge -p 128 -n 32 -r 3 --json
  edge-run bench -m model.edge -p 0 -n 128 --n-depth 4096 --kv-bits 16,8,4";

/// Run compressible LLMs on constrained devices.
#[derive(Debug, Parser)]
#[command(
    name = "edge-run",
    version,
    about = "Run compressible LLMs on constrained devices",
    long_about = "Run compressible LLMs on constrained devices.\n\n\
        With no subcommand, edge-run generates text from a prompt and streams it to stdout; \
        timings and memory go to stderr. `eval` measures perplexity (and KL divergence against \
        a base model), `inspect` describes a checkpoint.\n\n\
        MODEL is an .edge checkpoint, or a GGUF file, a Hugging Face folder or a llama2.c .bin, \
        which is packed once into a cache and reused: as nested 8-bit planes calibrated on text the \
        model samples itself, with the sensitivity profile --budget plans from (minutes the first \
        time; --pack-encoding f16 or q8 for a pack of seconds).",
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub generate: GenerateArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate text from a prompt (the default when no subcommand is given).
    #[command(visible_alias = "gen", after_help = EXAMPLES)]
    Generate(GenerateArgs),
    /// Measure perplexity on a text file, exactly as llama.cpp's llama-perplexity does.
    #[command(
        long_about = "Measure perplexity on a text file, exactly as llama.cpp's llama-perplexity does.\n\n\
            The file is read as is (bytes, CRLF kept) and tokenized whole (BOS only if the model \
            adds one). It is split into non-overlapping windows of --ctx tokens; each window is \
            run from position 0 and the second half of its positions is scored. With --kl-base, \
            the same windows run through a base model too and the KL divergence \
            KL(P_base || P_model) and top-1 agreement are reported.",
        after_help = EVAL_HELP
    )]
    Eval(EvalArgs),
    /// Measure prompt-processing and generation speed per view and thread count, like llama-bench.
    #[command(
        long_about = "Measure prompt-processing and generation speed per view and thread count, like llama.cpp's llama-bench.\n\n\
            For every view (--bits 8,6,5,4,3,2, or the one view --plan, --target-bits or --weight-budget picks), \
            every KV cache format (--kv-bits 16,8) and every thread count (-t 1,2), two tests run from an empty \
            context (or after --n-depth D prefilled positions: pp512@d4096, tg128@d4096) with fixed pseudo-random \
            tokens: ppN, one forward pass over N prompt tokens (logits of the last only), and tgN, N \
            single-token forward passes. Each runs once to warm up, then --repetitions times; the table \
            shows the median tokens/s ± the standard deviation, the view's weight bytes, the KV cache's bytes \
            per token, the kernel table and the peak RSS of each (view, KV format, threads) combination; \
            read/token is the weights a decoded token reads plus the KV cache at the depth.",
        after_help = BENCH_HELP
    )]
    Bench(BenchArgs),
    /// Describe a checkpoint: config, tokenizer, metadata, tensors, checksums. A GGUF file:
    /// its tensors by type and the bytes one decoded token reads.
    #[command(after_help = "Examples:\n  edge-run inspect model.edge\n  edge-run inspect model.edge --verify --json\n  edge-run inspect model.edge --verify --bits 4    # only what the 4-bit view reads\n  edge-run inspect model-Q4_0.gguf --json           # llama.cpp's file: bytes per type, per decoded token")]
    Inspect(InspectArgs),
    /// List the known boards (board-configs/*.toml, built in) and the one this machine is.
    #[command(after_help = "Examples:\n  edge-run boards\n  edge-run boards --json\n  edge-run -m model.edge --board rpi5-8gb -p \"Hello\"")]
    Boards(BoardsArgs),
}

/// How auto-packed weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PackEncoding {
    /// 32-bit floats (lossless, no views).
    F32,
    /// 16-bit floats (no views).
    F16,
    /// bfloat16 (no views).
    Bf16,
    /// 8-bit nested bit planes, views of 8, 6, 5, 4, 3 and 2 bits (--bits), no calibration and no
    /// sensitivity profile (`edge-pack -e q8`; seconds).
    #[value(name = "q8", alias = "nested8")]
    Nested8,
    /// q8 calibrated on text the model samples itself, with the sensitivity profile
    /// --budget, --target-bits and --weight-budget plan from (`edge-pack -e q8 --calibrate-self
    /// --gptq-view-weights 1,1,1,4`; minutes for a 135M model on two cores).
    #[value(name = "q8-cal", alias = "nested8-cal")]
    Nested8Cal,
}

impl PackEncoding {
    /// The flag's spelling (also hashed into the cache file's name).
    pub fn name(self) -> &'static str {
        match self {
            PackEncoding::F32 => "f32",
            PackEncoding::F16 => "f16",
            PackEncoding::Bf16 => "bf16",
            PackEncoding::Nested8 => "q8",
            PackEncoding::Nested8Cal => "q8-cal",
        }
    }
    pub fn to_pack(self) -> edge_pack::WeightEncoding {
        match self {
            PackEncoding::F32 => edge_pack::WeightEncoding::F32,
            PackEncoding::F16 => edge_pack::WeightEncoding::F16,
            PackEncoding::Bf16 => edge_pack::WeightEncoding::Bf16,
            PackEncoding::Nested8 | PackEncoding::Nested8Cal => edge_pack::WeightEncoding::Nested8,
        }
    }
    /// Whether the weights are stored in groups (so --group-size matters).
    pub fn grouped(self) -> bool {
        matches!(self, PackEncoding::Nested8 | PackEncoding::Nested8Cal)
    }
}

fn parse_bits(s: &str) -> Result<u8, String> {
    match s.trim().parse::<u8>() {
        Ok(b) if edge_runtime::blocks::is_nested8_view(b) => Ok(b),
        _ => Err(format!("'{s}' is not a view width; choose 2, 3, 4, 5, 6 or 8")),
    }
}

fn parse_target_bits(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(b) if b.is_finite() && b > 0.0 => Ok(b),
        _ => Err(format!("'{s}' is not an average bit width (a number such as 3.5)")),
    }
}

/// `10`, `10W`, `7.5 W`: watts, positive.
pub fn parse_watts(s: &str) -> Result<f64, String> {
    let t = s.trim().trim_end_matches(['W', 'w']).trim();
    match t.parse::<f64>() {
        Ok(w) if w.is_finite() && w > 0.0 => Ok(w),
        _ => Err(format!("'{s}' is not a power in watts; give a positive number like 10W or 7.5")),
    }
}

/// `90MB`, `1.5 GiB`, `123456` (bytes), case-insensitive.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = (t[..split].trim(), t[split..].trim());
    if num.is_empty() {
        return Err(format!("'{s}' is not a size (e.g. 90MB, 1.5GiB or a number of bytes)"));
    }
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("'{s}' has an unknown unit '{unit}'; use B, KB, MB, GB, KiB, MiB or GiB (e.g. 90MB)")),
    };
    match num.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v * mult < 1.8e19 => Ok((v * mult).round() as u64),
        _ => Err(format!("'{s}' is not a size (e.g. 90MB, 1.5GiB or a number of bytes)")),
    }
}

/// How many tokens generation may produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NPredict {
    Tokens(usize),
    /// `-n -1` (as llama.cpp's): until the end of text or a full context.
    UntilEnd,
}

impl NPredict {
    /// The most tokens to generate, if limited.
    pub fn limit(self) -> Option<usize> {
        match self {
            NPredict::Tokens(n) => Some(n),
            NPredict::UntilEnd => None,
        }
    }
}

impl std::fmt::Display for NPredict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NPredict::Tokens(n) => write!(f, "{n}"),
            NPredict::UntilEnd => f.write_str("-1"),
        }
    }
}

// Every number flag is parsed against its range here (edge_pack::arg_values words the
// messages, which edge-pack shares); a relation between flags, or to the model (--ctx above its
// trained context, --kv-window above --ctx), is checked where both are known.

/// The most tokens a count flag takes (--ctx, -n, -b, --kv-window, bench's -p, -n and -d): far
/// above any model's context, low enough that no sum of them overflows.
pub const MAX_TOKENS: usize = 1 << 24;
/// The most threads -t takes (beyond, the per-thread scratch alone would not fit).
pub const MAX_THREADS: usize = 1024;

fn tokens_in(s: &str, lo: usize, what: &str, hint: &str) -> Result<usize, String> {
    arg_values::whole(s, lo as u64, MAX_TOKENS as u64, what, hint).map(|n| n as usize)
}

fn parse_n_predict(s: &str) -> Result<NPredict, String> {
    match s.trim() {
        "-1" => Ok(NPredict::UntilEnd),
        // -n 0 reads the prompt and generates nothing, as in llama.cpp.
        _ => tokens_in(s, 0, "a number of tokens", ", or -1 to generate until the end of text or a full context").map(NPredict::Tokens),
    }
}

fn parse_threads(s: &str) -> Result<usize, String> {
    arg_values::whole(s, 1, MAX_THREADS as u64, "a thread count", "").map(|n| n as usize)
}

fn parse_ctx(s: &str) -> Result<usize, String> {
    tokens_in(s, 1, "a context size", " tokens")
}

/// eval's --ctx: a window scores its second half, so it needs a few positions.
fn parse_window(s: &str) -> Result<usize, String> {
    tokens_in(s, 4, "a window size", " tokens (512 is usual)")
}

fn parse_batch(s: &str) -> Result<usize, String> {
    tokens_in(s, 1, "a batch size", " tokens")
}

fn parse_chunks(s: &str) -> Result<usize, String> {
    tokens_in(s, 1, "a number of windows", "")
}

/// bench's -p, -n and -d.
fn parse_bench_tokens(s: &str) -> Result<usize, String> {
    tokens_in(s, 0, "a number of tokens", " (0 skips it)")
}

fn parse_repetitions(s: &str) -> Result<usize, String> {
    arg_values::whole(s, 1, 1000, "a number of repetitions", "").map(|n| n as usize)
}

fn parse_top_k(s: &str) -> Result<usize, String> {
    arg_values::whole(s, 0, u32::MAX as u64, "a top-k", " (0 = every token)").map(|n| n as usize)
}

fn parse_group_size(s: &str) -> Result<usize, String> {
    arg_values::group_size(s).map(|g| g as usize)
}

/// What runs the model (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// GPU `N` of the CUDA driver.
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

fn parse_device(s: &str) -> Result<Device, String> {
    let bad = || format!("'{s}' is not a device: cpu, cuda or cuda:N (N the GPU's number)");
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(Device::Cuda(n)),
            _ => Err(bad()),
        },
    }
}

fn parse_kv_bits(s: &str) -> Result<KvFormat, String> {
    KvFormat::parse(s).map_err(|e| e.to_string())
}

fn parse_kv_window(s: &str) -> Result<usize, String> {
    let hint = format!(" (the positions the KV cache keeps, more than --kv-sink, default {}; e.g. 512)", KvArgs::DEFAULT_SINK);
    tokens_in(s, 1, "a window size", &hint)
}

fn parse_kv_sink(s: &str) -> Result<usize, String> {
    tokens_in(s, 0, "a number of positions", " (less than --kv-window)")
}

fn parse_prob(s: &str) -> Result<f32, String> {
    arg_values::above_at_most(s, 0.0, 1.0, "a probability", " (1 = every token)").map(|p| p as f32)
}

fn parse_temp(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err(format!("'{s}' is not a temperature (a number >= 0; 0 = greedy)")),
    }
}

/// Where the model comes from and how it is loaded.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model: an .edge checkpoint, or a GGUF file, Hugging Face folder or llama2.c .bin
    /// (packed once into the cache, see EDGE_RUN_CACHE).
    #[arg(short = 'm', long, value_name = "PATH", required = true)]
    pub model: Option<PathBuf>,

    /// Read the checkpoint into memory instead of memory-mapping it.
    #[arg(long)]
    pub no_mmap: bool,

    /// Skip the check of the checkpoint's checksums that runs beside generation and eval (a
    /// thread hashes the stored planes the run reads and stops the run at a mismatch).
    #[arg(long)]
    pub no_verify: bool,

    /// View width in bits of nested-plane weights (2, 3, 4, 5, 6 or 8; default 8), the same for
    /// every tensor. Like every view flag, an error on a checkpoint without nested-plane tensors
    /// (f16, bf16, f32): pack with `--encoding q8` (edge-pack) or `--pack-encoding q8`.
    #[arg(long, value_name = "B", allow_negative_numbers = true, value_parser = parse_bits, help_heading = "Views")]
    pub bits: Option<u8>,

    /// Per-layer/per-tensor views from a TOML file: `default = 4` and a `[views]` table whose
    /// keys are layers ("blk.0"), tensor kinds ("ffn_down", "token_embd"), or tensor names
    /// ("blk.3.ffn_up.weight"), each = 2, 3, 4, 5, 6 or 8. The most specific key wins (name, then
    /// layer, then kind); tensors no key names take `default` (8 if absent).
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Views",
        conflicts_with_all = ["bits", "target_bits", "weight_budget"]
    )]
    pub plan: Option<PathBuf>,

    /// Choose views from the checkpoint's sensitivity profile (`edge-pack --calibrate`) for an
    /// average of BITS bits per weight (over every matrix, group scales included: the 2-bit
    /// view of group size 64 is 2.5). The plan is printed; see `runtime::plan` for the method.
    #[arg(
        long,
        value_name = "BITS",
        value_parser = parse_target_bits,
        allow_negative_numbers = true,
        help_heading = "Views",
        conflicts_with_all = ["bits", "weight_budget"]
    )]
    pub target_bits: Option<f64>,

    /// Choose views from the sensitivity profile so that the weights (norms included) take at
    /// most SIZE bytes: a number with B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB (of
    /// 1024), e.g. 90MB. A budget at or above the 8-bit view's size reads every unit at 8 bits.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, allow_hyphen_values = true, help_heading = "Views", conflicts_with = "bits")]
    pub weight_budget: Option<u64>,

    /// Weight encoding used when auto-packing a non-.edge model (once, into the cache). The
    /// default, q8-cal, is the one --budget, --target-bits and --weight-budget can plan from.
    #[arg(long, value_enum, default_value_t = PackEncoding::Nested8Cal, value_name = "ENC")]
    pub pack_encoding: PackEncoding,

    /// Group size used when auto-packing with a grouped encoding (q8, q8-cal): a multiple of 8.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = parse_group_size, allow_negative_numbers = true)]
    pub group_size: usize,

    /// Threads for matrix products (default: the --board's default_threads, else the physical cores this
    /// process may use).
    #[arg(short = 't', long, value_name = "N", value_parser = parse_threads, allow_negative_numbers = true)]
    pub threads: Option<usize>,

    /// Where the model runs: `cpu` (the default) or `cuda[:N]` (GPU N, default 0; needs a build
    /// with `--features cuda`, and the CUDA forward pass is not finished yet: issue 19).
    #[arg(long, value_name = "cpu|cuda[:N]", default_value = "cpu", value_parser = parse_device)]
    pub device: Device,

    /// The board this runs on: a known name (`edge-run boards` lists them) or a board TOML
    /// file. Gives the default thread count (when -t is not given); shown on the startup line
    /// and in --json.
    #[arg(long, value_name = "NAME|FILE")]
    pub board: Option<String>,
}

/// How the KV cache stores keys and values, and how many positions it keeps (generate, eval,
/// bench).
#[derive(Debug, Clone, Args)]
pub struct KvArgs {
    /// KV cache format: 16 (f16, llama.cpp's default), 8 or 4 (integer codes in groups of 32
    /// values with f16 scales: about half and a quarter of f16's bytes), 32 (f32), or keys and
    /// values apart as kXvY (e.g. k8v4: int8 keys, int4 values). bench: a comma-separated list,
    /// each measured. [default: 16; with --budget, chosen to fit]
    #[arg(long, value_name = "F", value_parser = parse_kv_bits, value_delimiter = ',', allow_negative_numbers = true, help_heading = "KV cache")]
    pub kv_bits: Vec<KvFormat>,

    /// Keep only N positions in the KV cache (StreamingLLM): the first S (--kv-sink) and the
    /// most recent N - S. Memory stays constant and generation continues past --ctx; N is at
    /// most --ctx.
    #[arg(long, value_name = "N", value_parser = parse_kv_window, help_heading = "KV cache", allow_negative_numbers = true)]
    pub kv_window: Option<usize>,

    /// With --kv-window: the first S positions (attention sinks) are always kept [default: 4].
    #[arg(long, value_name = "S", value_parser = parse_kv_sink, help_heading = "KV cache", allow_negative_numbers = true)]
    pub kv_sink: Option<usize>,
}

impl KvArgs {
    pub const DEFAULT_SINK: usize = 4;

    /// The formats of --kv-bits, each once, in the order given.
    pub fn formats(&self) -> Vec<KvFormat> {
        if self.kv_bits.is_empty() {
            return vec![KvFormat::default()];
        }
        let mut out: Vec<KvFormat> = Vec::new();
        for f in &self.kv_bits {
            if !out.contains(f) {
                out.push(*f);
            }
        }
        out
    }
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Model: an .edge checkpoint, or a GGUF file, Hugging Face folder or llama2.c .bin
    /// (packed once into the cache, see EDGE_RUN_CACHE).
    #[arg(short = 'm', long, value_name = "PATH", required = true)]
    pub model: Option<PathBuf>,

    /// Read the checkpoint into memory instead of memory-mapping it.
    #[arg(long)]
    pub no_mmap: bool,

    /// View widths to measure, comma-separated (2, 3, 4, 5, 6, 8), each the same for every tensor
    /// (default: the 8-bit view, or the dense weights).
    #[arg(long, value_name = "B,..", value_delimiter = ',', value_parser = parse_bits, allow_negative_numbers = true, help_heading = "Views")]
    pub bits: Vec<u8>,

    /// Measure the views of a plan file instead (see `edge-run --help`).
    #[arg(long, value_name = "FILE", help_heading = "Views", conflicts_with_all = ["bits", "target_bits", "weight_budget"])]
    pub plan: Option<PathBuf>,

    /// Measure the plan the sensitivity profile picks for an average of BITS bits per weight.
    #[arg(
        long,
        value_name = "BITS",
        value_parser = parse_target_bits,
        allow_negative_numbers = true,
        help_heading = "Views",
        conflicts_with_all = ["bits", "weight_budget"]
    )]
    pub target_bits: Option<f64>,

    /// Measure the plan the sensitivity profile picks for a weight budget (e.g. 90MB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, allow_hyphen_values = true, help_heading = "Views", conflicts_with = "bits")]
    pub weight_budget: Option<u64>,

    /// Measure the plan `edge-run --budget SIZE` makes for a process of SIZE bytes at this
    /// bench's context (depth + tokens) and batch: views from the sensitivity profile and the
    /// KV format (unless --kv-bits names it).
    #[arg(
        long,
        value_name = "SIZE",
        value_parser = parse_size,
        allow_hyphen_values = true,
        help_heading = "Views",
        conflicts_with_all = ["bits", "weight_budget", "plan", "target_bits"]
    )]
    pub budget: Option<u64>,

    /// Weight encoding used when auto-packing a non-.edge model (once, into the cache). The
    /// default, q8-cal, is the one --budget, --target-bits and --weight-budget can plan from.
    #[arg(long, value_enum, default_value_t = PackEncoding::Nested8Cal, value_name = "ENC")]
    pub pack_encoding: PackEncoding,

    /// Group size used when auto-packing with a grouped encoding (q8, q8-cal): a multiple of 8.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = parse_group_size, allow_negative_numbers = true)]
    pub group_size: usize,

    /// Thread counts to measure, comma-separated (default: the --board's default_threads, else the physical
    /// cores).
    #[arg(short = 't', long, value_name = "N,..", value_delimiter = ',', value_parser = parse_threads, allow_negative_numbers = true)]
    pub threads: Vec<usize>,

    /// Where the model runs: `cpu` (the default) or `cuda[:N]` (as `edge-run --device`).
    #[arg(long, value_name = "cpu|cuda[:N]", default_value = "cpu", value_parser = parse_device)]
    pub device: Device,

    /// The board this runs on: a known name (`edge-run boards` lists them) or a board TOML
    /// file. Gives the default thread count (when -t is not given); shown on the startup line
    /// and in --json.
    #[arg(long, value_name = "NAME|FILE")]
    pub board: Option<String>,

    /// The power sensor for joules per token (as `edge-run --power-sensor`); default: the first
    /// found, and without one no J/token column.
    #[arg(long, value_name = "SPEC", help_heading = "Energy")]
    pub power_sensor: Option<String>,

    /// Energy sweep: needs a sensor; measures J/token of every view and KV format given
    /// (--bits 8,6,4 --kv-bits 16,8,4) and writes energy.json and energy.svg (tokens/s
    /// against J/token, predicted KL in the labels) into DIR.
    #[arg(long, value_name = "DIR", help_heading = "Energy")]
    pub energy: Option<PathBuf>,

    /// Prompt tokens of the prefill test (0 = skip it).
    #[arg(short = 'p', long, default_value_t = 512, value_name = "N", value_parser = parse_bench_tokens, allow_negative_numbers = true)]
    pub n_prompt: usize,

    /// Generated tokens of the decode test (0 = skip it).
    #[arg(short = 'n', long, default_value_t = 128, value_name = "N", value_parser = parse_bench_tokens, allow_negative_numbers = true)]
    pub n_gen: usize,

    /// Run the tests after D positions were prefilled (llama-bench's -d): `tg128@d4096` attends
    /// over the KV cache of D positions every token; the context is sized for D + the longer
    /// test (--n-prompt or --n-gen).
    #[arg(short = 'd', long, default_value_t = 0, value_name = "D", value_parser = parse_bench_tokens, allow_negative_numbers = true)]
    pub n_depth: usize,

    #[command(flatten)]
    pub kv: KvArgs,

    /// Measured repetitions of each test, after one warm-up run.
    #[arg(short = 'r', long, default_value_t = 5, value_name = "N", value_parser = parse_repetitions, allow_negative_numbers = true)]
    pub repetitions: usize,

    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Prompt text.
    #[arg(short = 'p', long, value_name = "TEXT", conflicts_with_all = ["file", "prompt_ids"])]
    pub prompt: Option<String>,

    /// Read the prompt from a file.
    #[arg(short = 'f', long, value_name = "FILE", conflicts_with = "prompt_ids")]
    pub file: Option<PathBuf>,

    /// Prompt as token ids ("1 2 3" or "1,2,3"), for checkpoints without a tokenizer; the output
    /// is then token ids too.
    #[arg(long, value_name = "IDS", allow_hyphen_values = true)]
    pub prompt_ids: Option<String>,

    /// Number of tokens to generate (0: read the prompt only); -1: until the end of text (EOS) or a full
    /// context (--ctx; with --kv-window: until the end of text).
    #[arg(
        short = 'n',
        long = "n-predict",
        visible_alias = "tokens",
        default_value_t = NPredict::Tokens(128),
        value_name = "N",
        value_parser = parse_n_predict,
        allow_negative_numbers = true
    )]
    pub n_predict: NPredict,

    /// Sampling temperature; 0 = greedy (argmax).
    #[arg(long, visible_alias = "temperature", default_value_t = 0.8, value_name = "T", value_parser = parse_temp, allow_negative_numbers = true)]
    pub temp: f32,

    /// Sample only from the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 40, value_name = "K", value_parser = parse_top_k, allow_negative_numbers = true)]
    pub top_k: usize,

    /// Sample from the smallest set of tokens whose probability reaches P (1.0 = all).
    #[arg(long, default_value_t = 0.95, value_name = "P", value_parser = parse_prob, allow_negative_numbers = true)]
    pub top_p: f32,

    /// Random seed (default: random; the seed used is reported).
    #[arg(short = 's', long, value_name = "S", value_parser = arg_values::seed, allow_negative_numbers = true)]
    pub seed: Option<u64>,

    /// Wrap the prompt in the checkpoint's chat template as a user message.
    #[arg(long)]
    pub chat: bool,

    /// System message for --chat.
    #[arg(long, value_name = "TEXT", requires = "chat")]
    pub system: Option<String>,

    /// Context size in tokens, prompt + generated [default: 2048, or the model's trained
    /// context if smaller].
    #[arg(short = 'c', long, value_name = "N", value_parser = parse_ctx, allow_negative_numbers = true)]
    pub ctx: Option<usize>,

    /// Plan the whole process to fit SIZE bytes of memory (e.g. 150MB, 1.5GiB): weights from
    /// the sensitivity profile, KV format, prefill batch and context are chosen together and
    /// the plan is printed. Replaces --weight-budget, --bits, --plan and --target-bits.
    #[arg(
        long,
        value_name = "SIZE",
        value_parser = parse_size,
        allow_hyphen_values = true,
        help_heading = "Views",
        conflicts_with_all = ["weight_budget", "bits", "plan", "target_bits", "kv_window"]
    )]
    pub budget: Option<u64>,

    /// Prompt tokens processed per forward pass during prefill.
    #[arg(short = 'b', long = "batch-size", default_value_t = 64, value_name = "N", value_parser = parse_batch, allow_negative_numbers = true)]
    pub batch: usize,

    /// Do not fit the run to the memory free on this device. Without --budget (and without
    /// flags that choose views or the KV cache), a checkpoint with a sensitivity profile is
    /// planned like --budget for MemAvailable less a reserve (the --board's share and margin),
    /// or the cgroup's limit when that is lower.
    #[arg(long, help_heading = "Memory")]
    pub no_fit: bool,

    /// Do not watch memory while generating. With a plan (--budget, or fitted to free memory)
    /// a controller reads the resident set, MemAvailable, the cgroup and PSI between tokens and
    /// steps down (lower views of the least sensitive layers, then KV precision, then a KV
    /// window) when the device runs short, and back up when memory returns; each step is a
    /// line on stderr and an event in --json.
    #[arg(long, help_heading = "Memory")]
    pub no_control: bool,

    /// Hold the board's power to WATTS (e.g. 10W; a moving average over 1 s): threads (pinned
    /// to cores, big ones first), a pause after each token and, with the memory controller's
    /// ladder, views and KV precision are set by a closed loop on the power sensor's readings;
    /// each change is a line on stderr and an event in --json. Needs a sensor (see
    /// --power-sensor).
    #[arg(long, value_name = "WATTS", value_parser = parse_watts, help_heading = "Power", allow_hyphen_values = true)]
    pub power: Option<f64>,

    /// A file holding the power budget (e.g. "10W"), re-read every second while generating, so
    /// a battery manager or a thermal script can change it at run time; it gives the starting
    /// budget when --power is not given. A bad or missing file keeps the budget, with a warning.
    #[arg(long, value_name = "PATH", help_heading = "Power")]
    pub power_budget_file: Option<std::path::PathBuf>,

    /// The power sensor: rapl, ina3221, rpi5, battery, nvml, board (the --board's rails) or
    /// file:PATH (watts or joules in a file, re-read at every sample). Default: the first found;
    /// when one is found, energy per token (prefill and decode) is reported.
    #[arg(long, value_name = "SPEC", help_heading = "Power")]
    pub power_sensor: Option<String>,

    #[command(flatten)]
    pub kv: KvArgs,

    /// Keep generating after the end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,

    /// Print special tokens (e.g. <|im_end|>) in the output text.
    #[arg(long)]
    pub special: bool,

    /// Print one JSON object (text, token ids, timings, memory) instead of streaming.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Text file to evaluate on (read as is, e.g. wikitext-2-raw/wiki.test.raw).
    #[arg(short = 'd', long, value_name = "FILE", required = true)]
    pub data: PathBuf,

    /// --data holds token ids (whitespace- or comma-separated, or a JSON array), used as they
    /// are: for models without a tokenizer, e.g. sequences sampled from the full-precision
    /// model (`edge-run --prompt-ids 1 --temp 1 --ignore-eos --json` gives them).
    #[arg(long)]
    pub token_ids: bool,

    /// Window size in tokens; the second half of each window is scored.
    #[arg(short = 'c', long, default_value_t = 512, value_name = "N", value_parser = parse_window, allow_negative_numbers = true)]
    pub ctx: usize,

    /// Evaluate at most N windows (default: every full window of the file).
    #[arg(long, value_name = "N", value_parser = parse_chunks, allow_negative_numbers = true)]
    pub chunks: Option<usize>,

    /// Tokens per forward pass (default: min(ctx, 512)).
    #[arg(short = 'b', long = "batch-size", value_name = "N", value_parser = parse_batch, allow_negative_numbers = true)]
    pub batch: Option<usize>,

    /// Base model (checkpoint or any model path) to compare against: reports
    /// KL(P_base || P_model), top-1 agreement and the base's perplexity.
    #[arg(long, value_name = "PATH")]
    pub kl_base: Option<PathBuf>,

    /// View width of the base model's nested-plane weights (default 8).
    #[arg(long, value_name = "B", allow_negative_numbers = true, value_parser = parse_bits, requires = "kl_base")]
    pub kl_base_bits: Option<u8>,

    /// Plan the evaluated model as `edge-run --budget SIZE` would for a process of SIZE bytes
    /// at this --ctx and --batch-size (views from the sensitivity profile, KV format), so a
    /// budget's plan is judged like a view (the --kl-base model is not counted).
    #[arg(
        long,
        value_name = "SIZE",
        value_parser = parse_size,
        allow_hyphen_values = true,
        help_heading = "Views",
        conflicts_with_all = ["weight_budget", "bits", "plan", "target_bits", "kv_window", "sweep"]
    )]
    pub budget: Option<u64>,

    /// The power sensor for joules per token (as `edge-run --power-sensor`); default: the first
    /// found, and without one no energy is reported.
    #[arg(long, value_name = "SPEC", help_heading = "Energy")]
    pub power_sensor: Option<String>,

    /// The KV cache of the evaluated model (the --kl-base model keeps f16 and every position).
    #[command(flatten)]
    pub kv: KvArgs,

    /// Print one JSON object instead of text (with --sweep: the object sweep.json holds).
    #[arg(long)]
    pub json: bool,

    /// Instead of scoring windows, run all of --data's tokens in one sequence from position 0
    /// (text: tokenized, BOS first when the model adds one; --token-ids: the ids as given) and
    /// write every position's logits to FILE as a .npy array (f32, [tokens, vocab]), at the
    /// views --bits or --plan choose: to compare with another implementation, e.g. the
    /// edge-qat PyTorch model's fake-quantized logits (EDGE_RUN_KERNELS=float runs the nested
    /// weights against f32 activations).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["sweep", "kl_base", "chunks"])]
    pub logits_out: Option<PathBuf>,

    /// The degradation sweep: on the same windows, evaluate the --kl-base model, the uniform
    /// 8/6/5/4/3/2-bit views of --model (and of every --compare checkpoint), every --baselines
    /// file and the plans the sensitivity
    /// profile picks for each of --budgets; print a table, write sweep.json and sweep.svg into
    /// --out, and report the compressibility score (see the section below).
    #[arg(
        long,
        help_heading = "Sweep",
        requires = "kl_base",
        conflicts_with_all = ["bits", "plan", "target_bits", "weight_budget"]
    )]
    pub sweep: bool,

    /// Checkpoints to compare in the sweep (comma-separated), e.g. round-to-nearest baselines
    /// from `edge-pack --rtn-baseline` (their weight bytes are the ones they record).
    #[arg(long, value_name = "FILES", value_delimiter = ',', requires = "sweep", help_heading = "Sweep")]
    pub baselines: Vec<PathBuf>,

    /// Other nested checkpoints of the same model (comma-separated), each swept at every
    /// uniform view beside --model on the same windows, with its own compressibility score and
    /// its own line on the plot: e.g. the post-training pack against a quantization-aware trained
    /// one (`edge-pack EXPORT/`).
    #[arg(long, value_name = "FILES", value_delimiter = ',', requires = "sweep", help_heading = "Sweep")]
    pub compare: Vec<PathBuf>,

    /// Average bits per weight of the profile-chosen plans in the sweep (comma-separated).
    #[arg(
        long,
        value_name = "BITS",
        value_delimiter = ',',
        value_parser = parse_target_bits,
        allow_negative_numbers = true,
        default_value = "2.5,3,3.5,4,5,6",
        requires = "sweep",
        help_heading = "Sweep"
    )]
    pub budgets: Vec<f64>,

    /// Weight-byte budgets of more profile-chosen plans in the sweep (comma-separated sizes
    /// like --weight-budget's), e.g. the sizes of llama.cpp files to compare at equal bytes.
    #[arg(long, value_name = "SIZES", value_delimiter = ',', value_parser = parse_size, allow_hyphen_values = true, requires = "sweep", help_heading = "Sweep")]
    pub byte_budgets: Vec<u64>,

    /// Folder for sweep.json and sweep.svg (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".", requires = "sweep", help_heading = "Sweep")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// The .edge checkpoint (or GGUF file) to describe.
    #[arg(value_name = "MODEL", required_unless_present = "model_opt")]
    pub model: Option<PathBuf>,

    /// The checkpoint, as an option (same as MODEL).
    #[arg(short = 'm', long = "model", value_name = "PATH", conflicts_with = "model")]
    pub model_opt: Option<PathBuf>,

    /// Verify the checksum of every tensor segment (reads the whole file).
    #[arg(long)]
    pub verify: bool,

    /// With --verify: check only the segments the B-bit view reads (nested tensors' group
    /// parameters and first planes; every segment of other tensors), so verifying a 2-bit view
    /// reads about a quarter of the nested bytes.
    #[arg(long, value_name = "B", allow_negative_numbers = true, value_parser = parse_bits, requires = "verify")]
    pub bits: Option<u8>,

    /// Read the file into memory instead of memory-mapping it.
    #[arg(long)]
    pub no_mmap: bool,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct BoardsArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}
