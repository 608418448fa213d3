//! Reading an `edge-qat` export: a Hugging Face folder whose quantized matrices are stored as
//! the trained 8-bit codes and f16 group parameters, with a manifest `edge-qat.json`:
//! ```text
//! model.safetensors   NAME          F32   tensors not quantized (norms)
//!                     NAME.qcodes   U8    [rows, padded_cols]      padding codes 0
//!                     NAME.qscale   F16   [rows, padded_cols / g]
//!                     NAME.qmin     F16   [rows, padded_cols / g]
//! edge-qat.json       {"format": "edge-qat", "version": 1, "group_size": g,
//!                      "cols": {NAME: cols}, "quantized": [NAME], "base": ..., "train": {...}}
//! ```
//! With `"group_params": "super"` in the manifest (absent: `"f16"`, the layout above) the group
//! parameters are super-blocks (`blocks.rs` `SuperParams`, `edge-pack --params super`) instead
//! of `.qscale` and `.qmin`: with `gpr = padded_cols / g` groups a row and `b = ceil(gpr / 8)`
//! blocks a row,
//! ```text
//!                     NAME.qd       F16   [rows, b]      each block's d    (scale = d * s)
//!                     NAME.qdmin    F16   [rows, b]      each block's dmin (min = dmin * m)
//!                     NAME.qs       U8    [rows, gpr]    each group's scale code, 0..63
//!                     NAME.qm       I8    [rows, gpr]    each group's minimum code, -32..31
//! ```
//! (NAME: the base model's Hugging Face names.) The packer stores exactly these codes and
//! parameters, never re-quantizing them: the QAT model was trained against them, so the
//! runtime's views must be the trained model's views. The folder is read by the Hugging Face
//! importer (`hf.rs`: config, name mapping, tokenizer), which hands the quantized parts here;
//! the rest of the model carries the 8-bit view of each quantized matrix as its values (what
//! self-sampled calibration runs, the profile being measured on the stored codes themselves).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use edge_runtime::arch::Arch;
use edge_runtime::blocks::{nested8_step_offset, GroupParams, ParamsRef, SuperParams};
use edge_runtime::Config;
use half::f16;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::Value;

use crate::quant::{NestedParams, ParamLayout};
use crate::source::{SourceModel, SourceTensor};

/// The manifest's file name; a folder holding it is an edge-qat export.
pub const MANIFEST: &str = "edge-qat.json";
/// The format version this reader understands.
pub const VERSION: u64 = 1;
/// Checkpoint metadata: the manifest's format, version, group size, base and `train` block.
pub const QAT_KEY: &str = "edge.qat";

/// The parts of a quantized tensor: its codes, then f16 pairs, then super-block parts.
const SUFFIXES: [&str; 7] = [".qcodes", ".qscale", ".qmin", ".qd", ".qdmin", ".qs", ".qm"];

/// The manifest's name for a parameter layout.
pub fn layout_name(l: ParamLayout) -> &'static str {
    match l {
        ParamLayout::F16 => "f16",
        ParamLayout::Super => "super",
    }
}

/// Whether `path` is an edge-qat export (a folder with [`MANIFEST`]).
pub fn is_export(path: &Path) -> bool {
    path.is_dir() && path.join(MANIFEST).is_file()
}

/// One quantized matrix as exported, under its canonical name, rows in the runtime's order.
#[derive(Debug, Clone)]
pub struct ImportedCodes {
    pub rows: usize,
    pub cols: usize,
    /// `cols` rounded up to whole groups.
    pub padded_cols: usize,
    /// `[rows, padded_cols]`.
    pub codes: Vec<u8>,
    /// `rows · padded_cols / group_size` groups, in the export's layout.
    pub params: NestedParams,
}

/// The three raw parts of one quantized tensor, as read from safetensors.
#[derive(Default)]
struct Parts {
    codes: Option<(Vec<usize>, Vec<u8>)>,
    scale: Option<(Vec<usize>, Vec<f16>)>,
    min: Option<(Vec<usize>, Vec<f16>)>,
    d: Option<(Vec<usize>, Vec<f16>)>,
    dmin: Option<(Vec<usize>, Vec<f16>)>,
    s: Option<(Vec<usize>, Vec<u8>)>,
    m: Option<(Vec<usize>, Vec<u8>)>,
}

/// An edge-qat export being read: its manifest, then its codes by canonical tensor name.
pub struct QatImport {
    dir: String,
    pub group_size: u32,
    /// How the export stores its group parameters (the manifest's `group_params`).
    pub params: ParamLayout,
    cols: BTreeMap<String, u64>,
    quantized: Vec<String>,
    /// `edge.qat` metadata (JSON).
    pub metadata: String,
    parts: BTreeMap<String, Parts>,
    /// Canonical name -> codes.
    pub codes: BTreeMap<String, ImportedCodes>,
}

impl QatImport {
    /// Read and check the manifest of the export at `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<QatImport> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read '{}'", path.display()))?;
        let m: Value =
            serde_json::from_str(&text).with_context(|| format!("'{}' is not valid JSON", path.display()))?;
        let at = path.display();
        match m.get("format").and_then(Value::as_str) {
            Some("edge-qat") => {}
            other => bail!("'{at}' has format {other:?}, not \"edge-qat\": is it an export of the edge-qat Python package?"),
        }
        match m.get("version").and_then(Value::as_u64) {
            Some(VERSION) => {}
            other => bail!(
                "'{at}' is edge-qat version {}, this edge-pack reads version {VERSION}: export with a matching edge-qat or update edge-pack",
                other.map_or("?".to_string(), |v| v.to_string())
            ),
        }
        let group_size = m
            .get("group_size")
            .and_then(Value::as_u64)
            .filter(|&g| g > 0 && g % 8 == 0 && g <= 1 << 16)
            .ok_or_else(|| anyhow!("'{at}': group_size must be a positive multiple of 8"))? as u32;
        let cols: BTreeMap<String, u64> = m
            .get("cols")
            .and_then(Value::as_object)
            .ok_or_else(|| anyhow!("'{at}' lacks 'cols' (the column count of each quantized tensor)"))?
            .iter()
            .map(|(k, v)| v.as_u64().filter(|&c| c > 0).map(|c| (k.clone(), c)).ok_or_else(|| anyhow!("'{at}': cols of '{k}' = {v} is not a positive integer")))
            .collect::<anyhow::Result<_>>()?;
        let quantized: Vec<String> = m
            .get("quantized")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("'{at}' lacks 'quantized' (the list of quantized tensors)"))?
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| anyhow!("'{at}': 'quantized' must list tensor names")))
            .collect::<anyhow::Result<_>>()?;
        let params = match m.get("group_params") {
            None => ParamLayout::F16,
            Some(v) => match v.as_str() {
                Some("f16") => ParamLayout::F16,
                Some("super") => ParamLayout::Super,
                _ => bail!("'{at}': group_params {v} is not \"f16\" or \"super\"; export with a matching edge-qat or update edge-pack"),
            },
        };
        if let Some(n) = quantized.iter().find(|n| !cols.contains_key(*n)) {
            bail!("'{at}' lists '{n}' as quantized but gives no cols for it");
        }
        let metadata = serde_json::json!({
            "format": "edge-qat",
            "version": VERSION,
            "group_size": group_size,
            "group_params": layout_name(params),
            "base": m.get("base").cloned().unwrap_or(Value::Null),
            "train": m.get("train").cloned().unwrap_or(Value::Null),
        })
        .to_string();
        Ok(QatImport {
            dir: dir.display().to_string(),
            group_size,
            params,
            cols,
            quantized,
            metadata,
            parts: BTreeMap::new(),
            codes: BTreeMap::new(),
        })
    }

    /// Take `hf_name` if it is a part of a quantized tensor (`.qcodes`, `.qscale`, `.qmin`).
    pub(crate) fn take(&mut self, hf_name: &str, view: &TensorView<'_>) -> anyhow::Result<bool> {
        let Some((base, suffix)) = SUFFIXES.iter().find_map(|s| hf_name.strip_suffix(s).map(|b| (b, *s))) else {
            return Ok(false);
        };
        if !self.quantized.iter().any(|q| q == base) {
            bail!("'{}' holds '{hf_name}' but {MANIFEST} does not list '{base}' as quantized", self.dir);
        }
        let shape = view.shape().to_vec();
        let p = self.parts.entry(base.to_owned()).or_default();
        let want = match suffix {
            ".qcodes" | ".qs" => Dtype::U8,
            ".qm" => Dtype::I8,
            _ => Dtype::F16,
        };
        if view.dtype() != want {
            bail!("tensor '{hf_name}' has dtype {:?}; an edge-qat export stores it as {want:?}", view.dtype());
        }
        let bytes = || (shape.clone(), view.data().to_vec());
        let halves =
            || (shape.clone(), view.data().chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect());
        let dup = match suffix {
            ".qcodes" => p.codes.replace(bytes()).is_some(),
            ".qs" => p.s.replace(bytes()).is_some(),
            ".qm" => p.m.replace(bytes()).is_some(),
            ".qscale" => p.scale.replace(halves()).is_some(),
            ".qmin" => p.min.replace(halves()).is_some(),
            ".qd" => p.d.replace(halves()).is_some(),
            _ => p.dmin.replace(halves()).is_some(),
        };
        if dup {
            bail!("tensor '{hf_name}' appears twice in '{}'", self.dir);
        }
        Ok(true)
    }

    /// Check every quantized tensor against the config and the manifest, keep its codes under
    /// its canonical name and put its 8-bit view into `found` as the tensor's values.
    pub(crate) fn finish(
        &mut self,
        arch: &Arch,
        config: &Config,
        found: &mut BTreeMap<String, SourceTensor>,
    ) -> anyhow::Result<()> {
        let g = self.group_size as usize;
        // Shapes from the architecture; a tied model still has the head's shape for an
        // export that quantized `lm_head` (the HF importer drops it after).
        let untied = Config { tied_embeddings: false, ..*config };
        let expected = arch.tensors(&untied);
        for hf in std::mem::take(&mut self.quantized) {
            let missing = |what: &str| anyhow!("'{}' lacks '{hf}{what}' of quantized tensor '{hf}'; re-export it", self.dir);
            let mut parts = self.parts.remove(&hf).ok_or_else(|| missing(".qcodes"))?;
            let (cshape, codes) = parts.codes.take().ok_or_else(|| missing(".qcodes"))?;
            let canon = arch
                .from_hf(&hf)
                .ok_or_else(|| anyhow!("'{}' quantizes '{hf}', which a {} model does not have", self.dir, arch.name))?;
            let shape = expected
                .iter()
                .find(|e| e.name == canon)
                .map(|e| e.shape.clone())
                .ok_or_else(|| anyhow!("'{}' quantizes '{hf}', which this {} config does not use", self.dir, arch.name))?;
            let [rows, cols] = shape[..] else {
                bail!("'{}' quantizes '{hf}', a vector of shape {shape:?}; only matrices are quantized", self.dir)
            };
            let (rows, cols) = (rows as usize, cols as usize);
            if self.cols[&hf] as usize != cols {
                bail!("{MANIFEST} gives '{hf}' {} cols, the config implies {cols}", self.cols[&hf]);
            }
            let padded = cols.div_ceil(g) * g;
            let groups = padded / g;
            if cshape != [rows, padded] {
                bail!("'{hf}.qcodes' has shape {cshape:?}, expected [{rows}, {padded}] ({cols} cols padded to groups of {g})");
            }
            if padded > cols {
                for (r, row) in codes.chunks(padded).enumerate() {
                    if let Some(j) = row[cols..].iter().position(|&c| c != 0) {
                        bail!("'{hf}.qcodes' has code {} in the padding of row {r} (column {}); padding codes must be 0", row[cols + j], cols + j);
                    }
                }
            }
            let params = self.params_of(&hf, &mut parts, rows, groups)?;
            let pr = params.as_ref();
            // The 8-bit view, by the runtime's contract.
            let mut data = Vec::with_capacity(rows * cols);
            for r in 0..rows {
                for c in 0..cols {
                    let (step, offset) = nested8_step_offset(pr.get(r * groups + c / g), 8);
                    data.push(codes[r * padded + c] as f32 * step + offset);
                }
            }
            if let Some(x) = data.iter().find(|x| !x.is_finite()) {
                bail!("the 8-bit view of '{hf}' overflows to {x}; its group parameters are out of range");
            }
            let t = SourceTensor { name: canon.clone(), shape: shape.clone(), data };
            if found.insert(canon.clone(), t).is_some() {
                bail!("'{}' holds both '{hf}' and its codes '{hf}.qcodes'; a quantized tensor is stored as codes only", self.dir);
            }
            self.codes.insert(canon, ImportedCodes { rows, cols, padded_cols: padded, codes, params });
        }
        if let Some(extra) = self.parts.keys().next() {
            bail!("'{}' holds codes of '{extra}', which {MANIFEST} does not list as quantized", self.dir);
        }
        Ok(())
    }

    /// The group parameters of quantized tensor `hf` (`rows` rows of `groups` groups) from its
    /// parts, in the manifest's layout, checked.
    fn params_of(&self, hf: &str, p: &mut Parts, rows: usize, groups: usize) -> anyhow::Result<NestedParams> {
        let dir = &self.dir;
        let layout = layout_name(self.params);
        let need = |part: &mut Option<(Vec<usize>, Vec<f16>)>, what: &str, width: usize| -> anyhow::Result<Vec<f16>> {
            let (shape, v) = part
                .take()
                .ok_or_else(|| anyhow!("'{dir}' lacks '{hf}.{what}' of quantized tensor '{hf}' ({layout} group parameters); re-export it"))?;
            if shape != [rows, width] {
                bail!("'{hf}.{what}' has shape {shape:?}, expected [{rows}, {width}]");
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                bail!("'{hf}.{what}' holds a non-finite value ({}) at entry {i}", v[i]);
            }
            Ok(v)
        };
        let need_codes = |part: &mut Option<(Vec<usize>, Vec<u8>)>, what: &str| -> anyhow::Result<Vec<u8>> {
            let (shape, v) = part
                .take()
                .ok_or_else(|| anyhow!("'{dir}' lacks '{hf}.{what}' of quantized tensor '{hf}' ({layout} group parameters); re-export it"))?;
            if shape != [rows, groups] {
                bail!("'{hf}.{what}' has shape {shape:?}, expected [{rows}, {groups}] (one code per group)");
            }
            Ok(v)
        };
        let params = match self.params {
            ParamLayout::F16 => {
                let scale = need(&mut p.scale, "qscale", groups)?;
                let min = need(&mut p.min, "qmin", groups)?;
                NestedParams::F16(scale.iter().zip(&min).map(|(&scale, &min)| GroupParams { scale, min }).collect())
            }
            ParamLayout::Super => {
                let per = SuperParams::per_row(groups);
                let d = need(&mut p.d, "qd", per)?;
                let dmin = need(&mut p.dmin, "qdmin", per)?;
                let s = need_codes(&mut p.s, "qs")?;
                let m: Vec<i8> = need_codes(&mut p.m, "qm")?.into_iter().map(|b| b as i8).collect();
                if let Some(i) = s.iter().position(|&c| c > SuperParams::S_MAX) {
                    bail!("'{hf}.qs' holds scale code {} at group {i}; scale codes are 0..{}", s[i], SuperParams::S_MAX);
                }
                if let Some(i) = m.iter().position(|c| !(SuperParams::M_MIN..=SuperParams::M_MAX).contains(c)) {
                    bail!("'{hf}.qm' holds minimum code {} at group {i}; minimum codes are {}..{}", m[i], SuperParams::M_MIN, SuperParams::M_MAX);
                }
                // A row's last block pads its missing groups with zero codes, as the packer does.
                let mut blocks = Vec::with_capacity(rows * per);
                for r in 0..rows {
                    for b in 0..per {
                        let (mut sb, mut mb) = ([0u8; SuperParams::GROUPS], [0i8; SuperParams::GROUPS]);
                        for j in 0..SuperParams::GROUPS.min(groups - b * SuperParams::GROUPS) {
                            let g = r * groups + b * SuperParams::GROUPS + j;
                            (sb[j], mb[j]) = (s[g], m[g]);
                        }
                        blocks.push(SuperParams::new(d[r * per + b], dmin[r * per + b], sb, mb));
                    }
                }
                NestedParams::Super { blocks, groups_per_row: groups }
            }
        };
        let stray = match self.params {
            ParamLayout::F16 => [(".qd", p.d.is_some()), (".qdmin", p.dmin.is_some()), (".qs", p.s.is_some()), (".qm", p.m.is_some())],
            ParamLayout::Super => [(".qscale", p.scale.is_some()), (".qmin", p.min.is_some()), ("", false), ("", false)],
        };
        if let Some((what, _)) = stray.iter().find(|(_, there)| *there) {
            bail!("'{dir}' holds '{hf}{what}', a part of the other group-parameter layout than its {MANIFEST} names ({layout}); re-export it");
        }
        Ok(params)
    }

    /// Put the q and k rows of the codes and parameters into the runtime's interleaved order,
    /// as the importer does with values (the one place that knows the permutation), and drop
    /// the codes of tensors the model no longer has (a tied head).
    pub(crate) fn interleave(&mut self, model_tensors: &[SourceTensor], config: &Config) -> anyhow::Result<()> {
        self.codes.retain(|name, _| model_tensors.iter().any(|t| &t.name == name));
        // Codes (< 256) and f16 values are exact in f32, so the permutation moves them unchanged.
        let as_f32 = |field: fn(&ImportedCodes) -> (usize, Vec<f32>)| -> Vec<SourceTensor> {
            self.codes
                .iter()
                .map(|(n, c)| {
                    let (w, data) = field(c);
                    SourceTensor { name: n.clone(), shape: vec![c.rows as u64, w as u64], data }
                })
                .collect()
        };
        let mut codes = as_f32(|c| (c.padded_cols, c.codes.iter().map(|&q| q as f32).collect()));
        // Either layout's parameters are whole per row: their bytes move as u16 words.
        let mut params = as_f32(|c| {
            let words = params_words(c.params.as_ref());
            (words.len() / c.rows, words)
        });
        for set in [&mut codes, &mut params] {
            crate::source::interleave_qk(set, config)?;
        }
        for (c, p) in codes.into_iter().zip(params) {
            let e = self.codes.get_mut(&c.name).expect("built from these codes");
            e.codes = c.data.iter().map(|&q| q as u8).collect();
            e.params = params_from_words(&e.params, &p.data);
        }
        Ok(())
    }
}

/// A tensor's stored group parameters as little-endian u16 words, each exact in an f32.
fn params_words(p: ParamsRef<'_>) -> Vec<f32> {
    p.bytes().chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as f32).collect()
}

/// Parameters in the layout of `like` from [`params_words`].
fn params_from_words(like: &NestedParams, words: &[f32]) -> NestedParams {
    let bytes: Vec<u8> = words.iter().flat_map(|&w| (w as u16).to_le_bytes()).collect();
    match like {
        NestedParams::F16(_) => NestedParams::F16(bytes.chunks_exact(GroupParams::SIZE).map(bytemuck::pod_read_unaligned).collect()),
        NestedParams::Super { groups_per_row, .. } => NestedParams::Super {
            blocks: bytes.chunks_exact(SuperParams::SIZE).map(bytemuck::pod_read_unaligned).collect(),
            groups_per_row: *groups_per_row,
        },
    }
}

/// Read the edge-qat export at `dir`: the model (each quantized matrix's values being its
/// 8-bit view) and the codes to pack.
pub fn load_qat(dir: &Path, tokenizer: Option<&Path>) -> anyhow::Result<(SourceModel, QatImport)> {
    let mut q = QatImport::open(dir)?;
    let mut model = crate::hf::load_hf_with(dir, tokenizer, Some(&mut q))?;
    model.source = model.source.replace("(Hugging Face safetensors)", "(edge-qat export)");
    Ok((model, q))
}

/// Write the nested codes of the `.edge` checkpoint at `pack` into `out` as an edge-qat export
/// without its Hugging Face config and tokenizer: `model.safetensors` (each nested matrix as
/// `NAME.qcodes` and its group parameters in the pack's layout, `.qscale` and `.qmin` or the
/// super-block parts; every other tensor as F32) and [`MANIFEST`], under
/// Hugging Face names and in rotate-half q/k order. The QAT trainer starts from it
/// (`python -m edge_qat.train --init-codes DIR`), so training can begin at a post-training
/// pack's codes (GPTQ's, say) rather than at min/max ones. Returns the matrices written.
pub fn export_codes(pack: &Path, out: &Path) -> anyhow::Result<usize> {
    use edge_runtime::blocks::nested8_code;
    use edge_runtime::format::{Encoding, SegmentKind};
    use safetensors::tensor::TensorView;

    let at = pack.display();
    crate::writable::check_dir(out, &["model.safetensors", MANIFEST], "--export-codes")?;
    let file = std::fs::File::open(pack).with_context(|| format!("cannot open '{at}'"))?;
    // SAFETY: the map is read-only and lives for this function; edge-pack never writes a
    // checkpoint in place (temporary file, then rename), so the bytes do not change under it.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map '{at}'"))?;
    let ck = edge_runtime::Checkpoint::parse(&bytes)
        .map_err(|e| anyhow!("'{at}' is not an .edge checkpoint edge-pack can read ({e}); give a file edge-pack wrote"))?;
    let arch = edge_runtime::arch::of_checkpoint(&ck).map_err(|e| anyhow!("'{at}': {e}"))?;
    let config = Config::from_checkpoint(&ck).map_err(|e| anyhow!("'{at}': {e}"))?;

    let mut group_size = None;
    let mut layout = None;
    let (mut codes, mut words, mut plain) = (vec![], vec![], vec![]);
    for t in &ck.tensors {
        t.verify().map_err(|e| anyhow!("'{at}': {e}; the file is damaged, pack it again"))?;
        let [rows, cols] = t.shape[..] else {
            plain.push(values_f32(t).with_context(|| format!("'{at}'"))?);
            continue;
        };
        let this = match t.encoding {
            Encoding::Nested8 => ParamLayout::F16,
            Encoding::Nested8Super => ParamLayout::Super,
            _ => {
                plain.push(values_f32(t).with_context(|| format!("'{at}'"))?);
                continue;
            }
        };
        if *layout.get_or_insert(this) != this {
            bail!("'{at}' mixes f16 and super-block group parameters; an edge-qat export has one layout");
        }
        let g = t.group_size as u64;
        if *group_size.get_or_insert(g) != g {
            bail!("'{at}' mixes group sizes ({} and {g}); an edge-qat export has one", group_size.unwrap_or(g));
        }
        let padded = edge_runtime::format::nested8_padded_cols(cols, g);
        let gpr = (padded / g) as usize;
        let seg = t.segment(SegmentKind::GroupParams).ok_or_else(|| anyhow!("'{at}': tensor '{}' has no group parameters", t.name))?;
        let params = match this {
            ParamLayout::F16 => NestedParams::F16(seg.bytes.chunks_exact(GroupParams::SIZE).map(bytemuck::pod_read_unaligned).collect()),
            ParamLayout::Super => NestedParams::Super {
                blocks: seg.bytes.chunks_exact(SuperParams::SIZE).map(bytemuck::pod_read_unaligned).collect(),
                groups_per_row: gpr,
            },
        };
        let planes: Vec<&[u8]> = t.planes().map(|s| s.bytes).collect();
        let n = (rows * padded) as usize;
        let tensor = |width: u64, data: Vec<f32>| SourceTensor { name: t.name.into(), shape: vec![rows, width], data };
        codes.push(tensor(padded, (0..n).map(|i| nested8_code(&planes, 8, i) as f32).collect()));
        let w = params_words(params.as_ref());
        words.push((tensor(w.len() as u64 / rows, w), params));
    }
    let (Some(group_size), Some(layout)) = (group_size, layout) else {
        bail!("'{at}' has no nested 8-bit matrices (it was packed as floats); pack the model with `-e q8` first");
    };
    // Codes (< 256) and u16 words are exact in f32, so the permutation moves them unchanged.
    let (mut words, like): (Vec<SourceTensor>, Vec<NestedParams>) = words.into_iter().unzip();
    for set in [&mut codes, &mut words, &mut plain] {
        crate::source::rotate_half_qk(set, &config)?;
    }

    let hf = |name: &str| arch.to_hf(name).ok_or_else(|| anyhow!("'{at}': tensor '{name}' has no Hugging Face name in a {} model", arch.name));
    let shape = |t: &SourceTensor| t.shape.iter().map(|&d| d as usize).collect::<Vec<usize>>();
    let mut blobs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![];
    let mut cols = serde_json::Map::new();
    let mut quantized = vec![];
    for ((c, w), like) in codes.iter().zip(&words).zip(&like) {
        let name = hf(&c.name)?;
        let logical = ck.tensors.iter().find(|t| t.name == c.name).map_or(0, |t| t.shape[1]);
        cols.insert(name.clone(), logical.into());
        quantized.push(Value::from(name.clone()));
        blobs.push((format!("{name}.qcodes"), Dtype::U8, shape(c), c.data.iter().map(|&q| q as u8).collect()));
        let rows = c.shape[0] as usize;
        let halves = |v: &mut dyn Iterator<Item = f16>| v.flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        match params_from_words(like, &w.data) {
            NestedParams::F16(p) => {
                let groups = p.len() / rows;
                blobs.push((format!("{name}.qscale"), Dtype::F16, vec![rows, groups], halves(&mut p.iter().map(|p| p.scale))));
                blobs.push((format!("{name}.qmin"), Dtype::F16, vec![rows, groups], halves(&mut p.iter().map(|p| p.min))));
            }
            NestedParams::Super { blocks, groups_per_row: gpr } => {
                let per = SuperParams::per_row(gpr);
                blobs.push((format!("{name}.qd"), Dtype::F16, vec![rows, per], halves(&mut blocks.iter().map(|b| b.d))));
                blobs.push((format!("{name}.qdmin"), Dtype::F16, vec![rows, per], halves(&mut blocks.iter().map(|b| b.dmin))));
                // Each row's groups, without its last block's padding.
                let group = |r: usize, k: usize| (&blocks[r * per + k / SuperParams::GROUPS], k % SuperParams::GROUPS);
                let s = (0..rows).flat_map(|r| (0..gpr).map(move |k| (r, k))).map(|(r, k)| { let (b, j) = group(r, k); b.s(j) }).collect();
                let m = (0..rows).flat_map(|r| (0..gpr).map(move |k| (r, k))).map(|(r, k)| { let (b, j) = group(r, k); b.m(j) as u8 }).collect();
                blobs.push((format!("{name}.qs"), Dtype::U8, vec![rows, gpr], s));
                blobs.push((format!("{name}.qm"), Dtype::I8, vec![rows, gpr], m));
            }
        }
    }
    // Gemma's norms are stored as 1 + w (the import's `hf_norm_minus_one`): back to w.
    if arch.hf_norm_minus_one {
        for t in plain.iter_mut().filter(|t| arch.locate(&t.name).is_some_and(|(_, s)| s.role == edge_runtime::arch::Role::Norm)) {
            t.data.iter_mut().for_each(|w| *w -= 1.0);
        }
    }
    for t in &plain {
        if let Some(name) = arch.to_hf(&t.name) {
            blobs.push((name, Dtype::F32, shape(t), bytemuck::cast_slice(&t.data).to_vec()));
        }
    }
    let views = blobs
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let st = safetensors::serialize(views, None)?;
    let manifest = serde_json::json!({
        "format": "edge-qat",
        "version": VERSION,
        "group_size": group_size,
        "group_params": layout_name(layout),
        "cols": cols,
        "quantized": quantized,
        "base": pack.display().to_string(),
        "train": Value::Null,
        "codes_of": ck.get_str(edge_runtime::format::keys::NAME).unwrap_or(""),
    });
    std::fs::create_dir_all(out).with_context(|| format!("cannot create '{}'", out.display()))?;
    crate::writable::write_atomic(&out.join("model.safetensors"), &st)?;
    // The manifest last: a folder is an export only once its tensors are whole.
    crate::writable::write_atomic(&out.join(MANIFEST), serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    Ok(quantized.len())
}

/// A dense tensor's values as f32 (norms are stored as f32; f16 and bf16 matrices widen exactly).
fn values_f32(t: &edge_runtime::format::TensorInfo<'_>) -> anyhow::Result<SourceTensor> {
    use edge_runtime::format::{Encoding, SegmentKind};
    let b = t.segment(SegmentKind::Values).map(|s| s.bytes).ok_or_else(|| anyhow!("tensor '{}' has no values", t.name))?;
    let data = match t.encoding {
        Encoding::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Encoding::F16 => b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Encoding::Bf16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Encoding::Nested8 | Encoding::Nested8Super => bail!("tensor '{}' is nested, not dense", t.name),
    };
    Ok(SourceTensor { name: t.name.into(), shape: t.shape.clone(), data })
}
