//! A checkpoint tensor as the kernels take it: its segments found and cast to their element
//! types, its shape read as rows and columns ([`TensorBlocks`]).

use alloc::format;

use super::{nested8_padded_cols, Encoding, SegmentKind, TensorInfo};
use crate::blocks::{ParamsRef, TensorBlocks};
use crate::error::{Error, Result};

impl<'a> TensorInfo<'a> {
    /// `(rows, cols, blocks)` of this tensor: a matrix, or a 1-D tensor as a single row. Errors
    /// when it has more dimensions, lacks a segment its encoding needs, or a segment is not
    /// aligned for its element type.
    pub fn blocks(&self) -> Result<(usize, usize, TensorBlocks<'a>)> {
        let (rows, cols) = match self.shape.as_slice() {
            [c] => (1u64, *c),
            [r, c] => (*r, *c),
            _ => return Err(Error::Corrupt { what: format!("tensor '{}' is not a matrix", self.name) }),
        };
        let (rows, cols) = (rows as usize, cols as usize);
        let segment = |kind: SegmentKind, what: &str| {
            self.segment(kind)
                .map(|s| s.bytes)
                .ok_or_else(|| Error::Corrupt { what: format!("tensor '{}' has no {what}", self.name) })
        };
        let blocks = match self.encoding {
            Encoding::F32 => TensorBlocks::F32(cast(self.name, segment(SegmentKind::Values, "values")?)?),
            Encoding::F16 => TensorBlocks::F16(cast(self.name, segment(SegmentKind::Values, "values")?)?),
            Encoding::Bf16 => TensorBlocks::Bf16(cast(self.name, segment(SegmentKind::Values, "values")?)?),
            Encoding::Nested8 | Encoding::Nested8Super => {
                let params = segment(SegmentKind::GroupParams, "group params")?;
                let mut planes: [&[u8]; 6] = [&[]; 6];
                for (slot, plane) in planes.iter_mut().zip(self.planes()) {
                    *slot = plane.bytes;
                }
                let group_size = self.group_size as usize;
                if group_size == 0 {
                    return Err(Error::Corrupt { what: format!("tensor '{}' has a group size of 0", self.name) });
                }
                let row_stride = nested8_padded_cols(cols as u64, group_size as u64) as usize;
                let params = match self.encoding {
                    Encoding::Nested8Super => ParamsRef::Super { blocks: cast(self.name, params)?, groups_per_row: row_stride / group_size },
                    _ => ParamsRef::F16(cast(self.name, params)?),
                };
                TensorBlocks::Nested8 { params, planes, group_size, row_stride }
            }
        };
        Ok((rows, cols, blocks))
    }
}

impl TensorInfo<'_> {
    /// Index of the first stored value that is NaN or infinite (for nested codes, of the first
    /// group whose scale or minimum is), or `None`. Reads the whole tensor: a diagnosis, not a
    /// check for every load.
    pub fn first_non_finite(&self) -> Result<Option<usize>> {
        let (_, _, blocks) = self.blocks()?;
        Ok(match blocks {
            TensorBlocks::F32(v) => v.iter().position(|x| !x.is_finite()),
            TensorBlocks::F16(v) => v.iter().position(|x| !x.is_finite()),
            TensorBlocks::Bf16(v) => v.iter().position(|x| !x.is_finite()),
            TensorBlocks::Nested8 { params, .. } => params.first_non_finite(),
        })
    }
}

/// `bytes` as a slice of `T`, or [`Error::Misaligned`] naming the tensor.
fn cast<'a, T: bytemuck::Pod>(name: &str, bytes: &'a [u8]) -> Result<&'a [T]> {
    bytemuck::try_cast_slice(bytes).map_err(|_| Error::Misaligned { what: format!("tensor '{name}'"), align: core::mem::align_of::<T>() })
}
