//! What the dispatch table and every kernel implementation share: the table's type
//! ([`Kernels`]) with its function-pointer types, and the weights the kernels read
//! ([`Matrix`], [`Nested8`] with its [`Prepared`] forms).
//!
//! Everything below `kernels/` (the reference, the portable and vector code, the activation
//! quantizer, the per-architecture trees) imports from here, never from `dispatch` or the
//! products of `kernels/mod.rs`; `dispatch` imports them to fill the table, so no module
//! depends on its own dependents.

mod weights;

pub use weights::{Matrix, Nested8, Prepared, WeightView};

use crate::kv::KvView;
use super::acts::QActs;

/// Quantize `x` ((n, cols) row-major) into `acts` in blocks of `block` values (the contract of
/// [`super::acts`]; `aux` in this table's order).
pub type QuantizeActsFn = fn(x: &[f32], n: usize, cols: usize, block: usize, acts: &mut QActs);
/// Decode: `out[i] = row (first + i) · token 0 of acts` (see
/// [`super::reference::nested8_row_dot`]).
pub type Nested8MatvecFn = fn(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]);
/// Prefill: `out[t * len + i] = row (first + i) · token t`, `len = out.len() / acts.n`.
pub type Nested8MatmulFn = fn(w: &Nested8<'_>, acts: &QActs, first: usize, out: &mut [f32]);

/// The runs of a 2- to 6- or 8-bit view that a table's kernels read ([`Prepared::Runs`]): equal
/// to [`crate::blocks::repack_top`]`(view_bits, planes, numel)`, however it is computed.
pub type RepackFn = fn(view_bits: u8, planes: &[&[u8]], numel: usize) -> alloc::vec::Vec<u8>;

/// The low-nibble plane of an 8-bit view that a table's 8-bit kernels read
/// ([`Prepared::Nibbles`]): equal to [`crate::blocks::low_nibbles`]`(planes, numel)`.
pub type NibblesFn = fn(planes: &[&[u8]], numel: usize) -> alloc::vec::Vec<u8>;

/// SwiGLU's gate in place: see [`super::vector::swiglu`], the definition.
pub type SwigluFn = fn(gate: &mut [f32], up: &[f32]);
/// GeGLU's elementwise step (the same shape as [`SwigluFn`]).
pub type GegluFn = fn(gate: &mut [f32], up: &[f32]);

/// The causal softmax of a block of batched attention scores: see
/// [`super::vector::softmax_rows`], the definition.
pub type SoftmaxRowsFn = fn(s: &mut [f32], width: usize, first: usize);

/// Rows `first..first + out.len() / width` of a head's slice of a cache, read back as f32
/// (`width` columns each, packed): see [`super::vector::kv_rows`], the definition.
pub type KvRowsFn = fn(rows: crate::kv::KvRows<'_>, first: usize, width: usize, out: &mut [f32]);

/// Decode attention of one query head: see [`super::vector::attend_head`], the definition.
/// `kv` is the head's slice of one layer's cache ([`crate::kv::KvView::head`]); `scores` has one
/// float per filled slot.
pub type AttendHeadFn = fn(q: &[f32], kv: KvView<'_>, scale: f32, scores: &mut [f32], out: &mut [f32]);

/// Function pointers for every product the model runs.
#[derive(Clone, Copy)]
pub struct Kernels {
    /// What filled the table, e.g. `"scalar"`, `"avx2"`, `"neon+dotprod"`.
    pub name: &'static str,
    pub quantize_acts: QuantizeActsFn,
    /// Indexed by [`view_index`] (2, 3, 4, 5, 6, 8 bits).
    pub nested8_matvec: [Nested8MatvecFn; VIEW_SLOTS],
    pub nested8_matmul: [Nested8MatmulFn; VIEW_SLOTS],
    /// Set when this table's 2- to 6-bit kernels read [`Prepared::Runs`] (groups of a
    /// multiple of 32): [`Nested8::prepare`] makes the runs with it at load; its 8-bit kernels
    /// read runs too when `nibbles` is `None`.
    pub repack: Option<RepackFn>,
    /// Set when this table's 8-bit kernels read [`Prepared::Nibbles`] (groups of a multiple of
    /// 32): [`Nested8::prepare`] builds the plane with it at load.
    pub nibbles: Option<NibblesFn>,
    /// Decode attention of one head (f32; bit-identical in every table).
    pub attend_head: AttendHeadFn,
    /// SwiGLU's elementwise step (f32; bit-identical in every table).
    pub swiglu: SwigluFn,
    /// GeGLU's elementwise step, tanh GELU (f32; bit-identical in every table).
    pub geglu: GegluFn,
    /// The causal softmax of batched attention (f32; bit-identical in every table).
    pub softmax_rows: SoftmaxRowsFn,
    /// A cache's rows read back as f32 for batched attention (bit-identical in every table).
    pub kv_rows: KvRowsFn,
}

impl core::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Kernels").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Slots of the per-view arrays: one per [`crate::blocks::NESTED8_VIEWS`].
pub const VIEW_SLOTS: usize = crate::blocks::NESTED8_VIEWS.len();

/// Slot of a view in the per-view arrays (its place in [`crate::blocks::NESTED8_VIEWS`]; the
/// 8-bit slot for anything else).
pub fn view_index(view_bits: u8) -> usize {
    crate::blocks::NESTED8_VIEWS.iter().position(|&v| v == view_bits).unwrap_or(VIEW_SLOTS - 1)
}
