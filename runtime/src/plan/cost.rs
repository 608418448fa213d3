//! What a view costs: the bytes a tensor reads at each view, from its encoding, shape and group
//! size alone (the format's segment layout, [`crate::format::expected_segments`]), and the
//! weight bytes of a whole plan. Nothing here builds a kernel or touches a weight.

use alloc::format;

use super::ViewPlan;
use crate::arch::Arch;
use crate::blocks::nested8_planes_for_view;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::format::{expected_segments, Checkpoint, Encoding, SegmentKind};

/// Bytes a tensor of `encoding`, `shape` and `group_size` reads at view `bits` (`None`: 8):
/// a nested tensor's group parameters and the planes of the view; every byte of a dense one
/// (dense tensors have no views). `None` for an impossible combination.
pub fn view_bytes(encoding: Encoding, shape: &[u64], group_size: u32, bits: Option<u8>) -> Option<u64> {
    let segments = expected_segments(encoding, shape, group_size)?;
    match encoding {
        Encoding::Nested8 => {
            let planes = nested8_planes_for_view(bits.unwrap_or(8))?;
            let params = segments.iter().filter(|s| s.kind == SegmentKind::GroupParams).map(|s| s.len).sum::<u64>();
            Some(params + segments.iter().filter(|s| s.kind == SegmentKind::Plane).take(planes).map(|s| s.len).sum::<u64>())
        }
        Encoding::F32 | Encoding::F16 | Encoding::Bf16 => Some(segments.iter().map(|s| s.len).sum()),
    }
}

/// [`view_bytes`] of checkpoint tensor `name`.
pub fn tensor_view_bytes(ck: &Checkpoint<'_>, name: &str, bits: Option<u8>) -> Result<u64> {
    let t = ck.tensor(name).ok_or_else(|| Error::MissingTensor { name: name.into() })?;
    view_bytes(t.encoding, &t.shape, t.group_size, bits).ok_or_else(|| Error::InvalidArgument {
        what: format!(
            "tensor '{name}' ({}) has no {}-bit view (choose 2, 3, 4, 5, 6 or 8)",
            t.encoding.name(),
            bits.unwrap_or(8)
        ),
    })
}

/// Weight bytes of a model at a plan's views.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Footprint {
    /// Bytes every weight reads, norms included (what `weight_bytes` reports everywhere).
    pub weight_bytes: u64,
    /// Bytes of the matrices alone (embedding, linear layers, output head), group scales included.
    pub matrix_bytes: u64,
    /// Weights of those matrices.
    pub matrix_weights: u64,
}

impl Footprint {
    /// The footprint of `plan` on checkpoint `ck` (architecture `arch`, config `c`).
    pub fn of(ck: &Checkpoint<'_>, arch: &Arch, c: &Config, plan: &ViewPlan) -> Result<Footprint> {
        let mut fp = Footprint { weight_bytes: 0, matrix_bytes: 0, matrix_weights: 0 };
        for t in arch.tensors(c) {
            let bits = if t.spec.takes_views() { plan.bits_for(&t.name) } else { None };
            let bytes = tensor_view_bytes(ck, &t.name, bits)?;
            fp.weight_bytes += bytes;
            if t.spec.takes_views() {
                fp.matrix_bytes += bytes;
                fp.matrix_weights += t.shape.iter().product::<u64>();
            }
        }
        Ok(fp)
    }

    /// Average bits per matrix weight (group scales included, norms excluded).
    pub fn bits_per_weight(&self) -> f64 {
        self.bits_for(self.matrix_bytes)
    }

    /// Bits per matrix weight that `bytes` of matrices amount to.
    pub fn bits_for(&self, bytes: u64) -> f64 {
        8.0 * bytes as f64 / self.matrix_weights.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_views_read_a_prefix_of_the_planes() {
        // 4 rows of 100 columns in groups of 64: padded to 128 codes a row, 8 groups.
        let at = |b| view_bytes(Encoding::Nested8, &[4, 100], 64, Some(b)).unwrap();
        let params = 8 * 4;
        let codes = 4 * 128;
        assert_eq!(at(2), params + codes * 2 / 8);
        assert_eq!(at(3), params + codes * 3 / 8);
        assert_eq!(at(6), params + codes * 6 / 8);
        assert_eq!(at(8), params + codes);
        assert_eq!(view_bytes(Encoding::Nested8, &[4, 100], 64, None), Some(at(8)));
        assert_eq!(view_bytes(Encoding::Nested8, &[4, 100], 64, Some(7)), None);
        assert_eq!(view_bytes(Encoding::F16, &[4, 100], 0, Some(2)), Some(800));
        assert_eq!(view_bytes(Encoding::F32, &[100], 0, None), Some(400));
    }
}
