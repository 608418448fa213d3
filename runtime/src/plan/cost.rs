//! What a view costs: the bytes a tensor reads at each view, from its encoding, shape and group
//! size alone (the format's segment layout, [`crate::format::expected_segments`]), and the
//! weight bytes of a whole plan. Nothing here builds a kernel or touches a weight.

use alloc::format;

use super::ViewPlan;
use crate::arch::{Arch, Role};
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
        Encoding::Nested8 | Encoding::Nested8Super => {
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

/// Weight bytes of a model at a plan's views: what it holds, and what decoding one token reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Footprint {
    /// Bytes every weight reads, norms included (what `weight_bytes` reports everywhere).
    pub weight_bytes: u64,
    /// Bytes of the matrices alone (embedding, linear layers, output head), group scales included.
    pub matrix_bytes: u64,
    /// Weights of those matrices.
    pub matrix_weights: u64,
    /// Weight bytes one decoded token reads: every matrix at its view (a tied output head is the
    /// token embedding, read whole), the norms, but of an untied token embedding only the one
    /// row the token looks up. Decode speed is bounded by memory bandwidth / this.
    pub decode_bytes: u64,
}

impl Footprint {
    /// The footprint of `plan` on checkpoint `ck` (architecture `arch`, config `c`).
    pub fn of(ck: &Checkpoint<'_>, arch: &Arch, c: &Config, plan: &ViewPlan) -> Result<Footprint> {
        Self::tally(arch, c, plan, |name, bits| tensor_view_bytes(ck, name, bits))
    }

    /// The footprint of `plan` with `bytes(name, bits)` the bytes of tensor `name` at view
    /// `bits` (`None`: dense, or the encoding's default).
    fn tally(arch: &Arch, c: &Config, plan: &ViewPlan, bytes: impl Fn(&str, Option<u8>) -> Result<u64>) -> Result<Footprint> {
        let mut fp = Footprint { weight_bytes: 0, matrix_bytes: 0, matrix_weights: 0, decode_bytes: 0 };
        for t in arch.tensors(c) {
            let bits = if t.spec.takes_views() { plan.bits_for(&t.name) } else { None };
            let b = bytes(&t.name, bits)?;
            fp.weight_bytes += b;
            // `arch.tensors` lists no head when it is tied: the embedding is then read whole
            // by the head's product, and its row lookup reads nothing more.
            fp.decode_bytes += if t.spec.role == Role::Embedding && !c.tied_embeddings {
                b.div_ceil(t.shape[0].max(1))
            } else {
                b
            };
            if t.spec.takes_views() {
                fp.matrix_bytes += b;
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
        // Super-block parameters: 16 bytes per 8 groups of a row, the row's last block padded.
        // 3 rows of 576 in groups of 32 (18 groups: 3 blocks a row) and of 512 (16: 2 blocks).
        let sup = |cols: u64, b| view_bytes(Encoding::Nested8Super, &[3, cols], 32, Some(b)).unwrap();
        assert_eq!(sup(576, 4), 3 * 3 * 16 + 3 * 576 * 4 / 8);
        assert_eq!(sup(512, 2), 3 * 2 * 16 + 3 * 512 * 2 / 8);
        assert_eq!(view_bytes(Encoding::Nested8Super, &[3, 512], 64, Some(8)), Some(3 * 16 + 3 * 512));
    }

    use crate::arch::config::tests::tiny as config;

    /// The footprint of `plan` on a llama of `config(tied)` whose matrices are nested in groups
    /// of 32 and whose norms are f32.
    fn footprint(tied: bool, plan: &ViewPlan) -> Footprint {
        let arch = &crate::arch::LLAMA;
        let c = config(tied);
        let tensors = arch.tensors(&c);
        Footprint::tally(arch, &c, plan, |name, bits| {
            let t = tensors.iter().find(|t| t.name == name).unwrap();
            let (enc, g) = if t.spec.takes_views() { (Encoding::Nested8, 32) } else { (Encoding::F32, 0) };
            Ok(view_bytes(enc, &t.shape, g, bits).unwrap())
        })
        .unwrap()
    }

    #[test]
    fn decode_reads_one_row_of_an_untied_embedding() {
        // Per layer: q, o 64x64; k, v 32x64; gate, up 128x64; down 64x128 = 36,864 weights.
        // Embedding and head 96x64 = 6,144 each. Norms: 5 x 64 f32 = 1,280 bytes.
        // Nested at group 32: a 4-byte (scale, min) per 32 weights plus the view's planes.
        let at = |weights: u64, bits: u64| weights / 32 * 4 + weights * bits / 8;
        let norms = 5 * 64 * 4;
        let plan = ViewPlan { default_bits: Some(4), overrides: alloc::vec![("token_embd".into(), 8)] };

        let untied = footprint(false, &plan);
        let (layers, embd, head) = (at(2 * 36_864, 4), at(6_144, 8), at(6_144, 4));
        assert_eq!(untied.weight_bytes, layers + embd + head + norms);
        assert_eq!(untied.matrix_bytes, layers + embd + head);
        assert_eq!(untied.matrix_weights, 2 * 36_864 + 2 * 6_144);
        // One row of 64 codes at 8 bits and its two groups' parameters.
        assert_eq!(embd / 96, 64 + 2 * 4);
        assert_eq!(untied.decode_bytes, layers + 72 + head + norms);

        // Tied: no head; the embedding is the head, read whole (at its own view).
        let tied = footprint(true, &plan);
        assert_eq!(tied.weight_bytes, layers + embd + norms);
        assert_eq!(tied.decode_bytes, tied.weight_bytes);

        // Lower views read fewer bytes per token; the 8-bit untied model reads 8.5 bits per
        // weight of every matrix but the embedding.
        let at8 = footprint(false, &ViewPlan::default());
        assert!(untied.decode_bytes < at8.decode_bytes);
        assert_eq!(at8.decode_bytes, at(2 * 36_864 + 6_144, 8) + 72 + norms);
    }
}
