//! The `.edge` checkpoint: one file holding a model's config, tokenizer, metadata and weights.
//!
//! `docs/FORMAT.md` is the human-readable specification; this module is the executable one.
//! The reader is zero-copy over a byte slice (an mmap or an aligned in-memory buffer): every
//! offset, length, count and shape is checked before use, and no count read from the file is
//! trusted for an allocation until it has been bounded by the bytes that would hold it.
//!
//! Layout (all integers little-endian):
//! ```text
//! [header: 128 bytes][metadata section][tensor table][pad to 64][tensor data, each segment 64-aligned]
//! ```

mod read;
mod tensor_blocks;
#[cfg(feature = "std")]
mod write;

pub use read::{Checkpoint, MetaValue, Segment, TensorInfo};
#[cfg(feature = "std")]
pub use write::{CheckpointWriter, TensorData};

/// First 8 bytes of every checkpoint.
pub const MAGIC: [u8; 8] = *b"EDGERUN\0";
/// The format version this build writes and reads. Version 2 split the 8-bit code's low
/// nibble into planes of bits 3, 2 and 1..0, adding the 5- and 6-bit views (version 1 files
/// are re-packed with `edge-pack`).
pub const VERSION: u32 = 2;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 128;
/// Alignment of the data section and of every segment inside it (a cache line; also enough for
/// any SIMD load and for `f32`/`f16` views).
pub const DATA_ALIGN: u64 = 64;
/// Most dimensions a tensor may have.
pub const MAX_DIMS: usize = 4;
/// Most segments a tensor may have.
pub const MAX_SEGMENTS: usize = 16;

/// The checksum used for the header, the metadata, the tensor table and every segment.
pub fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// How a tensor's values are stored. The encoding fixes which segments a tensor has and how
/// long each must be, given its shape and group size (see [`expected_segments`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Encoding {
    /// IEEE binary32, row-major. Used for norms.
    F32 = 0,
    /// IEEE binary16, row-major.
    F16 = 1,
    /// bfloat16, row-major.
    Bf16 = 2,
    /// 8-bit codes stored as nested bit planes with per-group (scale, min) in f16.
    /// A `k`-bit view (k in 2, 3, 4, 5, 6, 8) reads only a prefix of the planes; see [`crate::blocks`].
    Nested8 = 3,
    /// The same planes, with the group parameters as 6-bit codes under an f16 pair per 8 groups
    /// ([`crate::blocks::SuperParams`]).
    Nested8Super = 4,
}

impl Encoding {
    pub fn from_u8(id: u8) -> Option<Self> {
        match id {
            0 => Some(Encoding::F32),
            1 => Some(Encoding::F16),
            2 => Some(Encoding::Bf16),
            3 => Some(Encoding::Nested8),
            4 => Some(Encoding::Nested8Super),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::F32 => "f32",
            Encoding::F16 => "f16",
            Encoding::Bf16 => "bf16",
            Encoding::Nested8 => "nested8",
            Encoding::Nested8Super => "nested8-super",
        }
    }

    /// Whether the encoding stores values in groups along the last dimension.
    pub fn is_grouped(self) -> bool {
        matches!(self, Encoding::Nested8 | Encoding::Nested8Super)
    }
}

/// What a segment of a tensor's bytes holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SegmentKind {
    /// Plain values (dense encodings).
    Values = 0,
    /// Per-group quantization parameters ([`crate::blocks::GroupParams`] per group, or
    /// [`crate::blocks::SuperParams`] per 8 groups).
    GroupParams = 1,
    /// One bit plane (or a run of adjacent bit positions) of the nested codes.
    Plane = 2,
}

impl SegmentKind {
    pub fn from_u8(id: u8) -> Option<Self> {
        match id {
            0 => Some(SegmentKind::Values),
            1 => Some(SegmentKind::GroupParams),
            2 => Some(SegmentKind::Plane),
            _ => None,
        }
    }
}

/// Description of one segment a tensor must have: its kind, how many bit positions it holds
/// (planes only) and its exact byte length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSpec {
    pub kind: SegmentKind,
    /// For planes: the number of adjacent bit positions packed in this plane. 0 otherwise.
    pub bits: u8,
    /// For planes: the lowest bit position of the code held by this plane. 0 otherwise.
    pub shift: u8,
    pub len: u64,
}

/// The segments a tensor of `encoding`, `shape` and `group_size` must have, in file order.
/// Returns `None` when the combination is invalid (e.g. a row not divisible into groups) or
/// the byte count would overflow.
pub fn expected_segments(
    encoding: Encoding,
    shape: &[u64],
    group_size: u32,
) -> Option<heapless_segments::Specs> {
    let numel = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
    let mut out = heapless_segments::Specs::new();
    let dense = |bytes_per: u64| -> Option<SegmentSpec> {
        Some(SegmentSpec { kind: SegmentKind::Values, bits: 0, shift: 0, len: numel.checked_mul(bytes_per)? })
    };
    match encoding {
        Encoding::F32 => out.push(dense(4)?),
        Encoding::F16 | Encoding::Bf16 => out.push(dense(2)?),
        Encoding::Nested8 | Encoding::Nested8Super => {
            let cols = *shape.last()?;
            let g = group_size as u64;
            // Every plane of a group fills whole bytes; a row whose length is not a multiple
            // of the group is padded to one (padding codes are 0 and never read).
            if g == 0 || !g.is_multiple_of(8) {
                return None;
            }
            let padded = numel / cols * nested8_padded_cols(cols, g);
            out.push(SegmentSpec {
                kind: SegmentKind::GroupParams,
                bits: 0,
                shift: 0,
                len: nested8_params_bytes(encoding, numel / cols, nested8_padded_cols(cols, g) / g)?,
            });
            for plane in crate::blocks::NESTED8_PLANES {
                out.push(SegmentSpec {
                    kind: SegmentKind::Plane,
                    bits: plane.bits,
                    shift: plane.shift,
                    len: padded.checked_mul(plane.bits as u64)? / 8,
                });
            }
        }
    }
    Some(out)
}

/// Bytes of the group-parameter segment of a nested tensor of `rows` rows of `groups_per_row`
/// groups.
pub fn nested8_params_bytes(encoding: Encoding, rows: u64, groups_per_row: u64) -> Option<u64> {
    use crate::blocks::{GroupParams, SuperParams};
    match encoding {
        Encoding::Nested8Super => rows.checked_mul(groups_per_row.div_ceil(SuperParams::GROUPS as u64))?.checked_mul(SuperParams::SIZE as u64),
        _ => rows.checked_mul(groups_per_row)?.checked_mul(GroupParams::SIZE as u64),
    }
}

/// Codes stored per row of a nested tensor with `cols` columns: rounded up to whole groups.
pub fn nested8_padded_cols(cols: u64, group_size: u64) -> u64 {
    cols.div_ceil(group_size) * group_size
}

/// A tiny fixed-capacity list, so `expected_segments` needs no allocation.
pub mod heapless_segments {
    use super::{SegmentSpec, MAX_SEGMENTS};

    #[derive(Debug, Clone, Copy)]
    pub struct Specs {
        items: [Option<SegmentSpec>; MAX_SEGMENTS],
        len: usize,
    }

    impl Specs {
        pub(crate) fn new() -> Self {
            Specs { items: [None; MAX_SEGMENTS], len: 0 }
        }
        pub(crate) fn push(&mut self, s: SegmentSpec) {
            // MAX_SEGMENTS bounds every encoding defined above; exceeding it is a bug here.
            self.items[self.len] = Some(s);
            self.len += 1;
        }
        pub fn len(&self) -> usize {
            self.len
        }
        pub fn is_empty(&self) -> bool {
            self.len == 0
        }
        pub fn iter(&self) -> impl Iterator<Item = SegmentSpec> + '_ {
            self.items[..self.len].iter().flatten().copied()
        }
    }
}

/// Metadata value type ids.
pub(crate) mod meta_type {
    pub const U64: u8 = 0;
    pub const I64: u8 = 1;
    pub const F32: u8 = 2;
    pub const F64: u8 = 3;
    pub const BOOL: u8 = 4;
    pub const STR: u8 = 5;
    pub const BYTES: u8 = 6;
}

/// Well-known metadata keys.
pub mod keys {
    pub const ARCH: &str = "general.architecture";
    pub const NAME: &str = "general.name";
    pub const SOURCE: &str = "general.source";
    pub const PACKED_BY: &str = "general.packed_by";
    pub const DIM: &str = "llama.embedding_length";
    pub const HIDDEN_DIM: &str = "llama.feed_forward_length";
    pub const N_LAYERS: &str = "llama.block_count";
    pub const N_HEADS: &str = "llama.attention.head_count";
    pub const N_KV_HEADS: &str = "llama.attention.head_count_kv";
    pub const HEAD_DIM: &str = "llama.attention.head_dim";
    pub const VOCAB_SIZE: &str = "llama.vocab_size";
    pub const CONTEXT_LENGTH: &str = "llama.context_length";
    pub const NORM_EPS: &str = "llama.attention.layer_norm_rms_epsilon";
    pub const ROPE_THETA: &str = "llama.rope.freq_base";
    pub const TIED_EMBEDDINGS: &str = "llama.tied_embeddings";
    /// Positions a sliding-window layer sees (absent or 0: no such layers).
    pub const SLIDING_WINDOW: &str = "llama.attention.sliding_window";
    /// In every this many layers, all but the last are sliding-window ones.
    pub const SLIDING_WINDOW_PATTERN: &str = "llama.attention.sliding_window_pattern";
    pub const ROPE_THETA_LOCAL: &str = "llama.rope.freq_base_swa";
    /// The attention's query scale (absent: 1 / sqrt(head_dim)).
    pub const ATTN_SCALE: &str = "llama.attention.scale";
    pub const TOKENIZER_JSON: &str = "tokenizer.huggingface.json";
    pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";
    pub const BOS_ID: &str = "tokenizer.bos_token_id";
    pub const EOS_ID: &str = "tokenizer.eos_token_id";
    pub const ADD_BOS: &str = "tokenizer.add_bos_token";
}
