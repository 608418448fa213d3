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
//! let model = loaded.model(ctx, batch)?;                // Model<'file>
//! ```

use std::path::Path;

use anyhow::{anyhow, Result};
use edge_runtime::arch::Arch;
use edge_runtime::model::ModelOptions;
use edge_runtime::plan::{Footprint, ViewPlan};
use edge_runtime::{Checkpoint, Config, Model};

use crate::cli::ModelArgs;
use crate::loader::{self, ModelFile};
use crate::views::{self, Selection};

/// Resolve `args.model` to an `.edge` file (packing it into the cache if needed) and open it.
pub fn open(args: &ModelArgs) -> Result<ModelFile> {
    loader::open_model(args)
}

/// Open another model of the same command (`--kl-base`, `--baselines`) the way `args` opens
/// `--model`: packed with the same encoding and group size, mapped or read alike.
pub fn open_other(path: &Path, args: &ModelArgs) -> Result<ModelFile> {
    loader::open_path(path, args.pack_encoding, args.group_size, !args.no_mmap)
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

    /// The model at the chosen views, with room for `max_seq_len` positions and forward passes
    /// of up to `max_batch` tokens.
    pub fn model(&self, max_seq_len: usize, max_batch: usize) -> Result<Model<'f>> {
        let opts = ModelOptions { max_seq_len, max_batch, ..ModelOptions::default() };
        // Planes that repacked views stop reading leave the resident set as each is repacked.
        let release = |o: u64, l: u64| _ = self.file.bytes.release(o, l);
        Model::with_plan_releasing(&self.ck, opts, &self.selection.plan, &release)
            .map_err(|e| anyhow!("{}: {e}", self.path().display()))
    }
}
