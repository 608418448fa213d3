//! The one load path of every command that runs a model: open `--model` (packing it into the
//! cache when it is not an `.edge` file), parse it, read its config and architecture, choose its
//! views from the flags and price them from the tensor shapes, then build the [`Model`] at the
//! context and batch the command needs.
//!
//! Two steps, because a parsed checkpoint borrows the file's bytes:
//!
//! ```text
//! let file = session::open(&args.model)?;               // ModelFile: the mapped (or read) bytes
//! let loaded = Loaded::new(&file, &args.model)?;        // Checkpoint<'file>, config, views, footprint
//! let kv = KvSettings::from_args(&args.kv, ctx)?;       // --kv-bits, --kv-window, --kv-sink
//! let model = loaded.model(ctx, batch, kv)?;            // Model<'file>
//! ```

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use edge_runtime::arch::Arch;
use edge_runtime::kv::{KvFormat, KvWindow};
use edge_runtime::model::ModelOptions;
use edge_runtime::plan::{Footprint, ViewPlan};
use edge_runtime::{Checkpoint, Config, Model};

use crate::cli::{Device, KvArgs, ModelArgs};
use crate::loader::{self, ModelFile};
use crate::views::{self, Selection};

/// Resolve `args.model` to an `.edge` file (packing it into the cache if needed) and open it.
pub fn open(args: &ModelArgs) -> Result<ModelFile> {
    if let Device::Cuda(n) = args.device {
        bail!("{}", cuda_refusal(n));
    }
    loader::open_model(args)
}

/// Why `--device cuda:N` cannot run here, in one line that says what to do: the build has no
/// CUDA backend, or the machine no driver or GPU N, or (issue 19) the forward pass on CUDA is
/// not finished.
#[cfg(not(feature = "cuda"))]
fn cuda_refusal(_: usize) -> String {
    match edge_runtime::backend::Cuda::new() {
        Err(e) => e.to_string(),
        Ok(c) => match c {},
    }
}

#[cfg(feature = "cuda")]
fn cuda_refusal(n: usize) -> String {
    match edge_runtime::backend::cuda::device::Gpu::open(n) {
        Err(e) => e.to_string(),
        Ok(g) => format!(
            "CUDA: found {} (compute {}.{}) and built its kernels, but running a model on CUDA is not finished yet \
             (issue 19); run on the CPU (--device cpu)",
            g.name, g.capability.0, g.capability.1
        ),
    }
}

/// Open another model of the same command (`--kl-base`, `--baselines`) the way `args` opens
/// `--model`: packed with the same encoding and group size, mapped or read alike.
pub fn open_other(path: &Path, args: &ModelArgs) -> Result<ModelFile> {
    loader::open_path(path, args.pack_encoding, args.group_size, !args.no_mmap)
}

/// How a model's KV cache is kept: its format, and the window if it evicts (f16 and every
/// position by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvSettings {
    pub format: KvFormat,
    pub window: Option<KvWindow>,
}

impl KvSettings {
    /// The one format of `--kv-bits` (a list is for bench) and the window of `--kv-window` and
    /// `--kv-sink`, for a context of `ctx` positions.
    pub fn from_args(args: &KvArgs, ctx: usize) -> Result<Self> {
        let formats = args.formats();
        if formats.len() > 1 {
            bail!("--kv-bits takes one format here; a comma-separated list is for `edge-run bench`");
        }
        Self::with_format(args, formats[0], ctx)
    }

    /// `format` (one of `--kv-bits`) with the window of `args`, for a context of `ctx` positions.
    pub fn with_format(args: &KvArgs, format: KvFormat, ctx: usize) -> Result<Self> {
        let window = match (args.kv_window, args.kv_sink) {
            (None, None) => None,
            (None, Some(_)) => bail!("--kv-sink needs --kv-window: the sink is the part of a window that is always kept; add --kv-window N"),
            (Some(slots), sink) => {
                let sink = sink.unwrap_or(KvArgs::DEFAULT_SINK);
                if sink >= slots {
                    bail!(
                        "--kv-sink {sink} must be smaller than --kv-window {slots} (the window holds the sink and the recent positions); raise --kv-window or lower --kv-sink"
                    );
                }
                if slots > ctx {
                    bail!("--kv-window {slots} exceeds the context of {ctx} positions; lower --kv-window or raise --ctx");
                }
                Some(KvWindow { sink, slots })
            }
        };
        Ok(KvSettings { format, window })
    }

    /// The cache as the JSON reports give it, with `bytes` = [`Model::kv_bytes`] (total, per
    /// position over every layer).
    pub fn to_json(self, bytes: (usize, usize)) -> serde_json::Value {
        serde_json::json!({
            "format": self.format.name(),
            "keys": self.format.keys.bits(),
            "values": self.format.values.bits(),
            "bytes": bytes.0,
            "bytes_per_token": bytes.1,
            "window": self.window.map(|w| serde_json::json!({ "sink": w.sink, "slots": w.slots })),
        })
    }

    /// `f16`, `int8`, `k8v4` and the window: `f16, window 256 (sink 4)`.
    pub fn describe(self) -> String {
        let format = kv_format_name(self.format);
        match self.window {
            Some(w) => format!("{format}, window {} (sink {})", w.slots, w.sink),
            None => format,
        }
    }
}

/// A KV format in words: `f32`, `f16`, `int8`, `int4`, `k8v4`.
pub fn kv_format_name(f: KvFormat) -> String {
    match (f.keys.bits(), f.values.bits()) {
        (32, 32) => "f32".into(),
        (16, 16) => "f16".into(),
        (k, v) if k == v => format!("int{k}"),
        (k, v) => format!("k{k}v{v}"),
    }
}

/// A checkpoint parsed from its file, with its config, the views chosen for it and what they
/// cost.
pub struct Loaded<'f> {
    pub file: &'f ModelFile,
    pub ck: Checkpoint<'f>,
    pub config: Config,
    pub arch: &'static Arch,
    pub selection: Selection,
    /// Weight bytes at the views of `selection` (from shapes and group sizes; nothing is built).
    pub footprint: Footprint,
}

impl<'f> Loaded<'f> {
    /// Parse `file` and choose its views from the view flags of `args`.
    pub fn new(file: &'f ModelFile, args: &ModelArgs) -> Result<Self> {
        Self::with(file, |ck, arch, config| views::select(ck, arch, config, args, &file.path))
    }

    /// Parse `file` and take the views `choose` picks for it.
    pub fn with(
        file: &'f ModelFile,
        choose: impl FnOnce(&Checkpoint<'f>, &'static Arch, &Config) -> Result<Selection>,
    ) -> Result<Self> {
        let ck = file.parse()?;
        let at_path = |e: edge_runtime::Error| anyhow!("{}: {e}", file.path.display());
        let config = Config::from_checkpoint(&ck).map_err(at_path)?;
        let arch = edge_runtime::arch::of_checkpoint(&ck).map_err(at_path)?;
        let selection = choose(&ck, arch, &config)?;
        let footprint = Footprint::of(&ck, arch, &config, &selection.plan).map_err(at_path)?;
        Ok(Loaded { file, ck, config, arch, selection, footprint })
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// Weight bytes at the views of `plan`.
    pub fn footprint_of(&self, plan: &ViewPlan) -> Result<Footprint> {
        Footprint::of(&self.ck, self.arch, &self.config, plan).map_err(|e| anyhow!("{}: {e}", self.path().display()))
    }

    /// The model at the chosen views, with room for `max_seq_len` positions (or the window of
    /// `kv`) and forward passes of up to `max_batch` tokens, its KV cache kept as `kv` says.
    pub fn model(&self, max_seq_len: usize, max_batch: usize, kv: KvSettings) -> Result<Model<'f>> {
        let opts = ModelOptions { max_seq_len, max_batch, kv: kv.format, kv_window: kv.window };
        // Planes that repacked views stop reading leave the resident set as each is repacked.
        let release = |o: u64, l: u64| _ = self.file.bytes.release(o, l);
        Model::with_plan_releasing(&self.ck, opts, &self.selection.plan, &release)
            .map_err(|e| anyhow!("{}: {e}", self.path().display()))
    }
}
