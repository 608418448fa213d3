//! The KV cache: each layer's keys and values, stored in slots, in f32, f16, int8 or int4.
//!
//! Storage is one buffer per layer and tensor (keys, values), addressed by explicit offsets as
//! in llama2.c: slot `s` of a layer starts at `s * kv_dim` values. A *slot* is where a position
//! is kept. Without a window every position has its own slot (`slot = position`); with a
//! window ([`KvCache::set_window`], StreamingLLM's sink + recent positions) the first `sink`
//! positions keep theirs and later ones cycle through the remaining slots, so the cache stays
//! the same size however long generation runs.
//!
//! Formats ([`KvBits`]), per tensor, each row of `kv_dim` values cut into groups of
//! [`KV_GROUP`] (a row is one token, so every group is complete when the token is stored):
//! - `F32`, `F16`: the values;
//! - `Q8`: `c = round(x / d)` in -127..=127 with `d = amax / 127` per group (f16);
//! - `Q4`: `c = round((x - m) / d)` in 0..=15 with `m` and `d = (max' - m) / 15` per group
//!   (both f16) from the group's range, narrowed where clipping its extremes lowers the squared
//!   error, two codes a byte, low nibble first.
//!
//! A stored value reads back as [`KvRows::row_into`] defines (`c · d`, `c · d + m`: a product
//! then a sum, never fused), the one definition every attention kernel reproduces.
//!
//! Integer formats store each head's slice multiplied by a normalized Walsh-Hadamard matrix
//! ([`KvBits::rotated`]; QuaRot's trick): keys rotated by RoPE have a few channels far larger
//! than the rest, and a group's step follows its largest value, so the rotation spreads them
//! over every channel first. Attention rotates the query the same way (scores are unchanged:
//! `Hq · Hk = q · k`) and rotates its output back (`H Σ p_j H v_j = Σ p_j v_j`).
//!
//! Attention reads a layer's filled slots through a [`KvView`]; the order of slots does not
//! matter to decode attention, and batched attention runs only while `slot = position`.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::error::{Error, Result};
use crate::kernels::acts::round_half_even;
use crate::kernels::vector::hadamard_heads;

/// Values per quantization group of a cache row.
pub const KV_GROUP: usize = 32;

/// How one of the cache's tensors stores its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvBits {
    F32,
    F16,
    Q8,
    Q4,
}

impl KvBits {
    /// Every format, widest first.
    pub const ALL: [KvBits; 4] = [KvBits::F32, KvBits::F16, KvBits::Q8, KvBits::Q4];

    /// The format of `bits` bits a value (32, 16, 8, 4).
    pub fn from_bits(bits: u32) -> Option<KvBits> {
        match bits {
            32 => Some(KvBits::F32),
            16 => Some(KvBits::F16),
            8 => Some(KvBits::Q8),
            4 => Some(KvBits::Q4),
            _ => None,
        }
    }

    /// Bits of a code (32, 16, 8, 4).
    pub fn bits(self) -> u32 {
        match self {
            KvBits::F32 => 32,
            KvBits::F16 => 16,
            KvBits::Q8 => 8,
            KvBits::Q4 => 4,
        }
    }

    /// Whether rows are stored rotated by the Walsh-Hadamard matrix (the integer formats; see
    /// the module).
    pub fn rotated(self) -> bool {
        matches!(self, KvBits::Q8 | KvBits::Q4)
    }

    /// Bytes of one row of `dim` values, group parameters included.
    pub fn row_bytes(self, dim: usize) -> usize {
        let groups = dim.div_ceil(KV_GROUP);
        match self {
            KvBits::F32 => 4 * dim,
            KvBits::F16 => 2 * dim,
            KvBits::Q8 => dim + 2 * groups,
            KvBits::Q4 => dim.div_ceil(2) + 4 * groups,
        }
    }
}

/// The formats of the keys and of the values: `--kv-bits 16`, `8`, `4` (both) or `k8v4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvFormat {
    pub keys: KvBits,
    pub values: KvBits,
}

impl Default for KvFormat {
    /// f16 keys and values (llama.cpp's default).
    fn default() -> Self {
        KvFormat { keys: KvBits::F16, values: KvBits::F16 }
    }
}

impl KvFormat {
    /// Both tensors in `bits`.
    pub fn uniform(bits: KvBits) -> Self {
        KvFormat { keys: bits, values: bits }
    }

    /// `"32"`, `"16"`, `"8"`, `"4"` (keys and values) or `"k<bits>v<bits>"` (e.g. `k8v4`).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::InvalidArgument {
            what: format!("KV format {s:?}: use 16 (f16), 8 or 4 (integer codes), 32 (f32), or a pair such as k8v4"),
        };
        let bits = |t: &str| t.parse::<u32>().ok().and_then(KvBits::from_bits).ok_or_else(bad);
        let t = s.trim().to_ascii_lowercase();
        if let Some(rest) = t.strip_prefix('k') {
            let (k, v) = rest.split_once('v').ok_or_else(bad)?;
            return Ok(KvFormat { keys: bits(k)?, values: bits(v)? });
        }
        Ok(KvFormat::uniform(bits(&t)?))
    }

    /// `16` for a uniform format, `k8v4` for a pair (what [`KvFormat::parse`] reads).
    pub fn name(self) -> String {
        if self.keys == self.values {
            format!("{}", self.keys.bits())
        } else {
            format!("k{}v{}", self.keys.bits(), self.values.bits())
        }
    }

    /// Bytes a position takes in one layer (keys and values of `kv_dim` values each).
    pub fn bytes_per_position(self, kv_dim: usize) -> usize {
        self.keys.row_bytes(kv_dim) + self.values.row_bytes(kv_dim)
    }
}

/// One tensor's rows in one layer.
#[derive(Debug, Clone)]
enum Store {
    F32(Vec<f32>),
    F16(Vec<u16>),
    /// Codes (slots, kv_dim); scales `d` as f16 bits (slots, groups).
    Q8 { codes: Vec<i8>, scales: Vec<u16> },
    /// Codes two a byte (slots, kv_dim / 2); `(d, m)` as f16 bits (slots, groups, 2).
    Q4 { codes: Vec<u8>, scales: Vec<u16> },
}

impl Store {
    fn new(bits: KvBits, slots: usize, dim: usize) -> Store {
        let groups = dim.div_ceil(KV_GROUP);
        match bits {
            KvBits::F32 => Store::F32(vec![0.0; slots * dim]),
            KvBits::F16 => Store::F16(vec![0; slots * dim]),
            KvBits::Q8 => Store::Q8 { codes: vec![0; slots * dim], scales: vec![0; slots * groups] },
            KvBits::Q4 => Store::Q4 { codes: vec![0; slots * dim.div_ceil(2)], scales: vec![0; slots * groups * 2] },
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Store::F32(v) => 4 * v.len(),
            Store::F16(v) => 2 * v.len(),
            Store::Q8 { codes, scales } => codes.len() + 2 * scales.len(),
            Store::Q4 { codes, scales } => codes.len() + 2 * scales.len(),
        }
    }

    /// Slot `from` of `src` (a store of the same format and row width `dim`) into slot `to`, as
    /// stored: a re-layout moves rows without reading them back and quantizing them again.
    fn copy_slot(&mut self, to: usize, src: &Store, from: usize, dim: usize) {
        fn row<T: Copy>(dst: &mut [T], src: &[T], to: usize, from: usize, n: usize) {
            dst[to * n..(to + 1) * n].copy_from_slice(&src[from * n..(from + 1) * n]);
        }
        let groups = dim.div_ceil(KV_GROUP);
        match (self, src) {
            (Store::F32(d), Store::F32(s)) => row(d, s, to, from, dim),
            (Store::F16(d), Store::F16(s)) => row(d, s, to, from, dim),
            (Store::Q8 { codes, scales }, Store::Q8 { codes: sc, scales: ss }) => {
                row(codes, sc, to, from, dim);
                row(scales, ss, to, from, groups);
            }
            (Store::Q4 { codes, scales }, Store::Q4 { codes: sc, scales: ss }) => {
                row(codes, sc, to, from, dim.div_ceil(2));
                row(scales, ss, to, from, 2 * groups);
            }
            _ => unreachable!("a re-layout keeps each store's format"),
        }
    }

    /// Encode `x` (dim values) into slot `slot`.
    fn put(&mut self, slot: usize, x: &[f32]) {
        let dim = x.len();
        let groups = dim.div_ceil(KV_GROUP);
        match self {
            Store::F32(v) => v[slot * dim..(slot + 1) * dim].copy_from_slice(x),
            Store::F16(v) => {
                for (o, &a) in v[slot * dim..(slot + 1) * dim].iter_mut().zip(x) {
                    *o = f16::from_f32(a).to_bits();
                }
            }
            Store::Q8 { codes, scales } => {
                let c = &mut codes[slot * dim..(slot + 1) * dim];
                for (g, (xg, cg)) in x.chunks(KV_GROUP).zip(c.chunks_mut(KV_GROUP)).enumerate() {
                    scales[slot * groups + g] = quantize_q8(xg, cg);
                }
            }
            Store::Q4 { codes, scales } => {
                let half_dim = dim.div_ceil(2);
                let c = &mut codes[slot * half_dim..(slot + 1) * half_dim];
                for (g, (xg, cg)) in x.chunks(KV_GROUP).zip(c.chunks_mut(KV_GROUP / 2)).enumerate() {
                    let (d, m) = quantize_q4(xg, cg);
                    scales[2 * (slot * groups + g)] = d;
                    scales[2 * (slot * groups + g) + 1] = m;
                }
            }
        }
    }

    /// Slots `0..len` as attention reads them (rows of `dim` values).
    fn rows(&self, len: usize, dim: usize) -> KvRows<'_> {
        let groups = dim.div_ceil(KV_GROUP);
        let data = match self {
            Store::F32(v) => RowData::F32(&v[..len * dim]),
            Store::F16(v) => RowData::F16(&v[..len * dim]),
            Store::Q8 { codes, scales } => RowData::Q8 { codes: &codes[..len * dim], scales: &scales[..len * groups] },
            Store::Q4 { codes, scales } => {
                RowData::Q4 { codes: &codes[..len * dim.div_ceil(2)], scales: &scales[..len * groups * 2] }
            }
        };
        KvRows { data, dim, offset: 0 }
    }
}

/// `d = amax / 127` rounded to f16, `c = round(x / d)`; returns `d`'s bits. A zero group has
/// `d = 0` and zero codes.
fn quantize_q8(x: &[f32], c: &mut [i8]) -> u16 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = f16::from_f32(amax / 127.0);
    let df = d.to_f32();
    let id = if df > 0.0 { 1.0 / df } else { 0.0 };
    for (o, &v) in c.iter_mut().zip(x) {
        *o = round_half_even(v * id).clamp(-127.0, 127.0) as i8;
    }
    d.to_bits()
}

/// `c = round((x - m) / d)` in 0..=15 with `m` and `d` (both rounded to f16) from the range
/// `[min, max]` narrowed by the fraction of [`Q4_CLIP`] that gives the least squared error (the
/// values outside clamp to the ends: 16 levels serve the bulk of a group better than its two
/// extremes), two codes a byte (low nibble first); returns `(d, m)`'s bits.
fn quantize_q4(x: &[f32], c: &mut [u8]) -> (u16, u16) {
    let (lo, hi) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let params = |clip: f32| {
        let cut = (hi - lo) * clip * 0.5;
        let m = f16::from_f32(lo + cut);
        let d = f16::from_f32((hi - cut - m.to_f32()).max(0.0) / 15.0);
        (m, d)
    };
    let code = |v: f32, mf: f32, id: f32| round_half_even((v - mf) * id).clamp(0.0, 15.0);
    let error = |(m, d): (f16, f16)| {
        let (mf, df) = (m.to_f32(), d.to_f32());
        let id = if df > 0.0 { 1.0 / df } else { 0.0 };
        x.iter()
            .map(|&v| {
                let e = code(v, mf, id) * df + mf - v;
                e * e
            })
            .sum::<f32>()
    };
    // Each candidate's error once: this search is most of the cost of requantizing a cache.
    let first = params(0.0);
    let (m, d) = Q4_CLIP
        .iter()
        .map(|&f| params(f))
        .fold((first, error(first)), |best, p| {
            let e = error(p);
            if e < best.1 { (p, e) } else { best }
        })
        .0;
    let (mf, df) = (m.to_f32(), d.to_f32());
    let id = if df > 0.0 { 1.0 / df } else { 0.0 };
    c.fill(0);
    for (i, &v) in x.iter().enumerate() {
        c[i / 2] |= (code(v, mf, id) as u8) << (4 * (i % 2));
    }
    (d.to_bits(), m.to_bits())
}

/// Fractions of a group's range that int4 may clip off (half at each end), tried in turn.
const Q4_CLIP: [f32; 5] = [0.04, 0.08, 0.12, 0.16, 0.2];

/// Store `x` in `slot` of `store` (format `bits`), rotated first when the format rotates
/// (`row`: room for it).
fn put_row(store: &mut Store, bits: KvBits, slot: usize, x: &[f32], head_dim: usize, row: &mut [f32]) {
    if bits.rotated() {
        row.copy_from_slice(x);
        hadamard_heads(row, head_dim);
        store.put(slot, row);
    } else {
        store.put(slot, x);
    }
}

/// A tensor's rows as stored (see [`KvRows`]).
#[derive(Debug, Clone, Copy)]
pub enum RowData<'c> {
    F32(&'c [f32]),
    F16(&'c [u16]),
    Q8 { codes: &'c [i8], scales: &'c [u16] },
    Q4 { codes: &'c [u8], scales: &'c [u16] },
}

/// Rows of one tensor of one layer as stored: `dim` values a row (kv_dim), read from column
/// `offset` on (a head's slice, [`KvView::head`]).
#[derive(Debug, Clone, Copy)]
pub struct KvRows<'c> {
    pub data: RowData<'c>,
    /// Values per row (kv_dim).
    pub dim: usize,
    /// First column read (a multiple of [`KV_GROUP`] for integer formats).
    pub offset: usize,
}

impl<'c> KvRows<'c> {
    pub fn bits(&self) -> KvBits {
        match self.data {
            RowData::F32(_) => KvBits::F32,
            RowData::F16(_) => KvBits::F16,
            RowData::Q8 { .. } => KvBits::Q8,
            RowData::Q4 { .. } => KvBits::Q4,
        }
    }

    /// The f32 rows (row `j` at `j * dim + offset`), when stored as f32.
    pub fn as_f32(&self) -> Option<&'c [f32]> {
        match self.data {
            RowData::F32(v) => Some(&v[self.offset..]),
            _ => None,
        }
    }

    /// Columns `offset..offset + out.len()` of row `j`, as f32: the definition of what a stored
    /// value reads back as (f16 widened exactly; `c · d`; `c · d + m`).
    #[inline(always)]
    pub fn row_into(&self, j: usize, out: &mut [f32]) {
        let (dim, off, n) = (self.dim, self.offset, out.len());
        let groups = dim.div_ceil(KV_GROUP);
        match self.data {
            RowData::F32(v) => out.copy_from_slice(&v[j * dim + off..][..n]),
            RowData::F16(v) => {
                let h: &[f16] = bytemuck::cast_slice(&v[j * dim + off..][..n]);
                h.convert_to_f32_slice(out);
            }
            RowData::Q8 { codes, scales } => {
                let c = &codes[j * dim + off..][..n];
                for (g, (og, cg)) in out.chunks_mut(KV_GROUP).zip(c.chunks(KV_GROUP)).enumerate() {
                    let d = f16::from_bits(scales[j * groups + off / KV_GROUP + g]).to_f32();
                    for (o, &q) in og.iter_mut().zip(cg) {
                        *o = q as f32 * d;
                    }
                }
            }
            RowData::Q4 { codes, scales } => {
                let c = &codes[(j * dim + off) / 2..][..n.div_ceil(2)];
                for (g, og) in out.chunks_mut(KV_GROUP).enumerate() {
                    let at = 2 * (j * groups + off / KV_GROUP + g);
                    let (d, m) = (f16::from_bits(scales[at]).to_f32(), f16::from_bits(scales[at + 1]).to_f32());
                    for (i, o) in og.iter_mut().enumerate() {
                        let k = g * KV_GROUP + i;
                        let q = (c[k / 2] >> (4 * (k % 2))) & 15;
                        *o = q as f32 * d + m;
                    }
                }
            }
        }
    }

    /// The rows from row `first` on (row `j` of the result is row `first + j`).
    pub fn from_row(self, first: usize) -> KvRows<'c> {
        let (dim, groups) = (self.dim, self.dim.div_ceil(KV_GROUP));
        let data = match self.data {
            RowData::F32(v) => RowData::F32(&v[first * dim..]),
            RowData::F16(v) => RowData::F16(&v[first * dim..]),
            RowData::Q8 { codes, scales } => RowData::Q8 { codes: &codes[first * dim..], scales: &scales[first * groups..] },
            // Two codes a byte: a row is whole bytes, as kv_dim is even (whole groups).
            RowData::Q4 { codes, scales } => RowData::Q4 { codes: &codes[first * dim / 2..], scales: &scales[2 * first * groups..] },
        };
        KvRows { data, ..self }
    }

    /// The same rows from column `offset + by` on.
    pub fn shifted(self, by: usize) -> KvRows<'c> {
        KvRows { offset: self.offset + by, ..self }
    }
}

/// One layer's filled slots, as attention reads them.
#[derive(Debug, Clone, Copy)]
pub struct KvView<'c> {
    /// (len, kv_dim) keys after RoPE.
    pub keys: KvRows<'c>,
    /// (len, kv_dim) values.
    pub values: KvRows<'c>,
    /// Filled slots.
    pub len: usize,
}

impl<'c> KvView<'c> {
    /// The columns of kv head slice `offset..` (a head's keys and values start `offset`
    /// values into every slot).
    pub fn head(self, offset: usize) -> KvView<'c> {
        KvView { keys: self.keys.shifted(offset), values: self.values.shifted(offset), len: self.len }
    }

    /// The slots from `first` on (a sliding-window layer's reach).
    pub fn from_row(self, first: usize) -> KvView<'c> {
        assert!(first < self.len, "slot {first} of {}", self.len);
        KvView { keys: self.keys.from_row(first), values: self.values.from_row(first), len: self.len - first }
    }
}

/// StreamingLLM's eviction: the first `sink` positions and the most recent `slots - sink`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvWindow {
    pub sink: usize,
    /// Slots in all (sink included).
    pub slots: usize,
}

/// Keys and values of every layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// (keys, values) of each layer.
    layers: Vec<(Store, Store)>,
    format: KvFormat,
    slots: usize,
    kv_dim: usize,
    /// Values per head (the rotation's size).
    head_dim: usize,
    window: Option<KvWindow>,
    /// A row being rotated before it is stored (kv_dim).
    row: Vec<f32>,
}

impl KvCache {
    /// A cache of `slots` positions per layer for `n_layers` layers of `kv_dim` values in
    /// `format`, for heads of `head_dim` values (a power of two when the format rotates,
    /// [`KvBits::rotated`]).
    pub fn with_format(n_layers: usize, slots: usize, kv_dim: usize, head_dim: usize, format: KvFormat) -> Self {
        let layers = (0..n_layers)
            .map(|_| (Store::new(format.keys, slots, kv_dim), Store::new(format.values, slots, kv_dim)))
            .collect();
        KvCache { layers, format, slots, kv_dim, head_dim, window: None, row: vec![0.0; kv_dim] }
    }

    /// Slots each layer holds.
    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    pub fn format(&self) -> KvFormat {
        self.format
    }

    pub fn window(&self) -> Option<KvWindow> {
        self.window
    }

    /// The slot that holds position `pos`: its own without a window (if the cache has room),
    /// else the sink's or the next one of the cycling recent slots.
    pub fn slot_of(&self, pos: usize) -> Option<usize> {
        match self.window {
            Some(w) if pos >= w.sink => Some(w.sink + (pos - w.sink) % (w.slots - w.sink)),
            _ => (pos < self.slots).then_some(pos),
        }
    }

    /// Filled slots once positions `0..end` are stored.
    pub fn filled(&self, end: usize) -> usize {
        end.min(self.slots)
    }

    /// Whether positions `pos..pos + n` each get the slot of the same number (so a batch of
    /// them can attend causally in slot order).
    pub fn in_order(&self, pos: usize, n: usize) -> bool {
        pos + n <= self.slots
    }

    /// Store `k` and `v` (kv_dim each) of position `pos` in layer `layer`.
    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) -> Result<()> {
        let slot = self.slot_of(pos).ok_or_else(|| Error::InvalidArgument {
            what: format!(
                "position {pos} is beyond the KV cache of {} positions; use a larger --ctx, or --kv-window to keep only recent positions",
                self.slots
            ),
        })?;
        let f = self.layer_format(layer);
        let (ks, vs) = &mut self.layers[layer];
        put_row(ks, f.keys, slot, &k[..self.kv_dim], self.head_dim, &mut self.row);
        put_row(vs, f.values, slot, &v[..self.kv_dim], self.head_dim, &mut self.row);
        Ok(())
    }

    /// Store only the keys of slot `slot` (the sink's keys re-rotated, see the model).
    pub fn store_keys(&mut self, layer: usize, slot: usize, k: &[f32]) {
        let keys = self.layer_format(layer).keys;
        put_row(&mut self.layers[layer].0, keys, slot, &k[..self.kv_dim], self.head_dim, &mut self.row);
    }

    /// The keys (`values` false) or values of slot `slot` as given to [`KvCache::store`], up to
    /// the format's rounding (rotated back where the format rotates), into `out` (kv_dim).
    pub fn row_of(&self, layer: usize, slot: usize, values: bool, out: &mut [f32]) {
        let view = self.view(layer, slot + 1);
        let f = self.layer_format(layer);
        let (rows, bits) = if values { (view.values, f.values) } else { (view.keys, f.keys) };
        rows.row_into(slot, out);
        if bits.rotated() {
            hadamard_heads(out, self.head_dim);
        }
    }

    /// Layer `layer`'s first `len` slots.
    pub fn view(&self, layer: usize, len: usize) -> KvView<'_> {
        assert!(len <= self.slots, "{len} slots in a cache of {}", self.slots);
        let (ks, vs) = &self.layers[layer];
        KvView { keys: ks.rows(len, self.kv_dim), values: vs.rows(len, self.kv_dim), len }
    }

    /// Bytes of storage.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|(k, v)| k.bytes() + v.bytes()).sum()
    }

    /// Bytes a position takes over all layers.
    pub fn bytes_per_position(&self) -> usize {
        (0..self.layers.len()).map(|l| self.layer_format(l).bytes_per_position(self.kv_dim)).sum()
    }

    /// The format layer `layer` keeps: the cache's, but during a change made a layer at a time
    /// ([`KvCache::set_layer_format`]) the layers not yet changed keep the old one.
    pub fn layer_format(&self, layer: usize) -> KvFormat {
        let (ks, vs) = &self.layers[layer];
        KvFormat { keys: ks.rows(0, self.kv_dim).bits(), values: vs.rows(0, self.kv_dim).bits() }
    }

    /// Re-encode the cache in `format`, layer by layer (the old layer's memory is freed before
    /// the next is converted): every value stored for positions `0..end` is read back
    /// ([`KvRows::row_into`]) and quantized again; slots not yet filled are left zero. Meant
    /// for stepping down (f16 -> int8 -> int4); stepping up keeps the values lost.
    pub fn set_format(&mut self, format: KvFormat, end: usize) {
        for layer in 0..self.layers.len() {
            self.set_layer_format(layer, format, end);
        }
    }

    /// [`KvCache::set_format`] of one layer (a change spread over several calls, so that no
    /// call takes long); the cache's format is `format` once every layer has it.
    pub fn set_layer_format(&mut self, layer: usize, format: KvFormat, end: usize) {
        let (slots, dim, hd) = (self.slots, self.kv_dim, self.head_dim);
        let filled = self.filled(end);
        let mut row = vec![0f32; dim];
        let (ks, vs) = &mut self.layers[layer];
        for (store, bits) in [(ks, format.keys), (vs, format.values)] {
            let was = store.rows(0, dim).bits();
            if was == bits {
                continue;
            }
            let mut new = Store::new(bits, slots, dim);
            let old = store.rows(slots, dim);
            for s in 0..filled {
                old.row_into(s, &mut row);
                if was.rotated() != bits.rotated() {
                    hadamard_heads(&mut row, hd);
                }
                new.put(s, &row);
            }
            *store = new;
        }
        if (0..self.layers.len()).all(|l| self.layer_format(l) == format) {
            self.format = format;
        }
    }

    /// Keep the first `sink` positions and the most recent ones in `slots` slots from now on;
    /// `end` is the number of positions stored so far. A smaller cache is re-laid out (the
    /// positions that no longer fit are dropped) and the memory freed.
    pub fn set_window(&mut self, window: KvWindow, end: usize) -> Result<()> {
        if window.sink >= window.slots || window.slots == 0 {
            return Err(Error::InvalidArgument {
                what: format!("KV window of {} slots with a sink of {}: the window must be larger than the sink", window.slots, window.sink),
            });
        }
        let dim = self.kv_dim;
        let old_slot = |p: usize| self.slot_of(p);
        // Positions the new layout keeps: the sink, then the most recent that fit.
        let recent = window.slots - window.sink;
        let keep: Vec<(usize, usize)> = (0..end)
            .filter(|&p| p < window.sink || p + recent >= end)
            .filter_map(|p| old_slot(p).map(|s| (p, s)))
            .collect();
        let new_slot = |p: usize| if p < window.sink { p } else { window.sink + (p - window.sink) % recent };
        for (ks, vs) in self.layers.iter_mut() {
            for store in [ks, vs] {
                let bits = store.rows(0, dim).bits();
                let mut new = Store::new(bits, window.slots, dim);
                for &(p, s) in &keep {
                    new.copy_slot(new_slot(p), store, s, dim);
                }
                *store = new;
            }
        }
        self.slots = window.slots;
        self.window = Some(window);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_and_positions_do_not_overlap() {
        let mut c = KvCache::with_format(2, 3, 4, 4, KvFormat::uniform(KvBits::F32));
        c.store(0, 2, &[1.0; 4], &[2.0; 4]).unwrap();
        c.store(1, 0, &[3.0; 4], &[4.0; 4]).unwrap();
        assert!(c.store(0, 3, &[0.0; 4], &[0.0; 4]).is_err());
        let v = c.view(0, 3);
        assert_eq!(&v.keys.as_f32().unwrap()[8..12], &[1.0; 4]);
        assert_eq!(&v.values.as_f32().unwrap()[..8], &[0.0; 8]);
        assert_eq!(c.view(1, 1).values.as_f32().unwrap(), &[4.0; 4]);
        assert_eq!(c.slot_of(3), None);
        assert_eq!(c.bytes(), 2 * 2 * 3 * 4 * 4);
    }

    fn sample(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| libm::sinf((i as f32 + 1.0) * 0.37 * seed as f32) * (1.0 + (i % 7) as f32)).collect()
    }

    #[test]
    fn formats_parse_and_name() {
        assert_eq!(KvFormat::parse("16").unwrap(), KvFormat::default());
        let p = KvFormat::parse("k8v4").unwrap();
        assert_eq!((p.keys, p.values), (KvBits::Q8, KvBits::Q4));
        assert_eq!(p.name(), "k8v4");
        assert_eq!(KvFormat::parse("8").unwrap().name(), "8");
        for bad in ["", "7", "k8", "k8v3", "v4", "16bit"] {
            assert!(KvFormat::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_format_reads_back_within_its_step() {
        let dim = 96;
        let x = sample(dim, 3);
        for bits in KvBits::ALL {
            let mut c = KvCache::with_format(1, 2, dim, 32, KvFormat::uniform(bits));
            c.store(0, 1, &x, &x).unwrap();
            // As stored: the rows rotated for the integer formats.
            let mut stored = x.clone();
            if bits.rotated() {
                hadamard_heads(&mut stored, 32);
            }
            let mut back = vec![0f32; dim];
            c.view(0, 2).keys.row_into(1, &mut back);
            for (g, (xg, bg)) in stored.chunks(KV_GROUP).zip(back.chunks(KV_GROUP)).enumerate() {
                let (lo, hi) = xg.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                let amax = lo.abs().max(hi.abs());
                let tol = match bits {
                    KvBits::F32 => 0.0,
                    KvBits::F16 => amax * 1e-3,
                    KvBits::Q8 => amax / 127.0 * 0.51 + amax * 1e-3,
                    KvBits::Q4 => (hi - lo) / 15.0 * 0.51 + amax * 2e-3,
                };
                for (a, b) in xg.iter().zip(bg) {
                    assert!((a - b).abs() <= tol, "{bits:?} group {g}: {a} read back as {b} (tolerance {tol})");
                }
            }
            // A head's slice reads the same values as the whole row.
            let mut part = vec![0f32; 32];
            c.view(0, 2).head(64).keys.row_into(1, &mut part);
            assert_eq!(&part[..], &back[64..96]);
            assert_eq!(c.bytes(), 2 * 2 * bits.row_bytes(dim));
            // Rotated back, the values given.
            let mut given = vec![0f32; dim];
            c.row_of(0, 1, true, &mut given);
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let tol = amax * [0.0, 1e-3, 0.03, 0.25][KvBits::ALL.iter().position(|&b| b == bits).unwrap()];
            for (a, b) in x.iter().zip(&given) {
                assert!((a - b).abs() <= tol, "{bits:?}: {a} came back as {b}");
            }
        }
    }

    #[test]
    fn window_keeps_exactly_sink_and_recent() {
        let dim = 32;
        let mut c = KvCache::with_format(1, 6, dim, dim, KvFormat::uniform(KvBits::F32));
        c.set_window(KvWindow { sink: 2, slots: 6 }, 0).unwrap();
        for p in 0..20 {
            let k = vec![p as f32; dim];
            c.store(0, p, &k, &k).unwrap();
        }
        // Positions 0, 1 (sink) and 16..20 (the last 4).
        let mut held: Vec<usize> = (0..6).map(|s| c.view(0, 6).keys.as_f32().unwrap()[s * dim] as usize).collect();
        held.sort();
        assert_eq!(held, [0, 1, 16, 17, 18, 19]);
        // Shrinking keeps the sink and the most recent that fit.
        c.set_window(KvWindow { sink: 2, slots: 4 }, 20).unwrap();
        let mut held: Vec<usize> = (0..4).map(|s| c.view(0, 4).keys.as_f32().unwrap()[s * dim] as usize).collect();
        held.sort();
        assert_eq!(held, [0, 1, 18, 19]);
        assert_eq!(c.bytes(), 2 * 4 * 4 * dim);
        assert!(c.set_window(KvWindow { sink: 4, slots: 4 }, 20).is_err());
    }

    #[test]
    fn stepping_down_requantizes_and_frees() {
        let dim = 64;
        let mut c = KvCache::with_format(2, 8, dim, 32, KvFormat::default());
        for p in 0..8 {
            let x = sample(dim, p as u32 + 1);
            c.store(1, p, &x, &x).unwrap();
        }
        let f16_bytes = c.bytes();
        let mut want = vec![0f32; dim];
        c.row_of(1, 5, true, &mut want);
        c.set_format(KvFormat::uniform(KvBits::Q8), 8);
        assert!(c.bytes() < f16_bytes * 6 / 10, "{} of {f16_bytes}", c.bytes());
        let mut got = vec![0f32; dim];
        c.row_of(1, 5, true, &mut got);
        let amax = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in want.iter().zip(&got) {
            assert!((a - b).abs() <= amax / 127.0, "{a} vs {b}");
        }
        c.set_format(KvFormat::parse("k8v4").unwrap(), 8);
        assert_eq!(c.bytes(), 2 * 8 * (KvBits::Q8.row_bytes(dim) + KvBits::Q4.row_bytes(dim)));
    }

    #[test]
    fn a_window_moves_rows_as_stored() {
        let dim = 64;
        for bits in KvBits::ALL {
            let mut c = KvCache::with_format(1, 40, dim, 32, KvFormat::uniform(bits));
            for p in 0..40 {
                let x = sample(dim, p as u32 + 7);
                c.store(0, p, &x, &x).unwrap();
            }
            let read = |c: &KvCache, p: usize| {
                let mut out = vec![0f32; dim];
                c.view(0, c.slots).values.row_into(c.slot_of(p).unwrap(), &mut out);
                out
            };
            // Positions the window of 4 sink + 12 recent keeps: 0..4 and 28..40.
            let kept: Vec<usize> = (0..4).chain(28..40).collect();
            let before: Vec<Vec<f32>> = kept.iter().map(|&p| read(&c, p)).collect();
            c.set_window(KvWindow { sink: 4, slots: 16 }, 40).unwrap();
            for (&p, want) in kept.iter().zip(&before) {
                let got = read(&c, p);
                assert!(got.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()), "{bits:?}: position {p} changed");
            }
        }
    }

}
