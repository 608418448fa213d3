//! Quantizers of the packer: the nested 8-bit codes (plain min/max, or scales and clipping
//! searched to minimise the error of every view at once) and the round-to-nearest baseline.
//!
//! Every reconstruction here goes through `edge_runtime::blocks` (the contract), so what the
//! packer optimises is exactly what the runtime computes.

use edge_runtime::blocks::{nested8_step_offset, GroupParams, NESTED8_VIEWS};
use half::f16;

/// How nested codes are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NestedObjective {
    /// Group min/max, codes rounded to nearest: best for the 8-bit view alone.
    MinMax,
    /// Search clipping of the group range to minimise the summed relative error of the
    /// 8, 4, 3 and 2-bit views (each view's squared error divided by its error under MinMax).
    #[default]
    AllViews,
}

/// Round-to-nearest codes for `w` given f16 parameters.
fn codes_for(w: &[f32], p: GroupParams, codes: &mut [u8]) {
    let scale = p.scale.to_f32();
    let min = p.min.to_f32();
    for (c, &x) in codes.iter_mut().zip(w) {
        *c = if scale > 0.0 { ((x - min) / scale).round().clamp(0.0, 255.0) as u8 } else { 0 };
    }
}

/// f16 parameters spanning `[lo, hi]` with 255 steps (rounded to nearest f16; weights just
/// outside the span saturate).
fn params_for(lo: f32, hi: f32) -> GroupParams {
    let min = f16::from_f32(lo);
    let scale = f16::from_f32((hi - min.to_f32()) / 255.0);
    GroupParams { scale, min }
}

/// f16 parameters whose 8-bit span covers `[lo, hi]`: min rounded down and scale up, so every
/// weight is within `scale / 2` of its 8-bit reconstruction.
fn covering_params(lo: f32, hi: f32) -> GroupParams {
    let mut min = f16::from_f32(lo);
    if min.to_f32() > lo {
        min = f16::from_bits(next_down(min.to_bits()));
    }
    if hi <= min.to_f32() {
        return GroupParams { scale: f16::ZERO, min };
    }
    let mut scale = f16::from_f32((hi - min.to_f32()) / 255.0);
    while scale.to_f32() * 255.0 + min.to_f32() < hi {
        scale = f16::from_bits(scale.to_bits() + 1);
    }
    GroupParams { scale, min }
}

/// The bits of the next f16 below the finite f16 with bits `b`.
fn next_down(b: u16) -> u16 {
    if b & 0x7fff == 0 {
        0x8001 // below ±0: the smallest negative subnormal
    } else if b & 0x8000 == 0 {
        b - 1
    } else {
        b + 1
    }
}

fn sq_err(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| ((x - y) * (x - y)) as f64).sum()
}

/// Squared error of each view of codes `q` under `p`, in [`NESTED8_VIEWS`] order (2, 3, 4, 8).
pub fn view_errors(w: &[f32], p: GroupParams, q: &[u8]) -> [f64; 4] {
    let mut e = [0f64; 4];
    for (k, &bits) in NESTED8_VIEWS.iter().enumerate() {
        let (step, offset) = nested8_step_offset(p, bits);
        let drop = 8 - bits;
        e[k] = w
            .iter()
            .zip(q)
            .map(|(&x, &c)| {
                let d = x - ((c >> drop) as f32 * step + offset);
                (d * d) as f64
            })
            .sum();
    }
    e
}

/// Quantize one group: returns its parameters and fills `codes`.
pub fn quantize_group(w: &[f32], objective: NestedObjective, codes: &mut [u8]) -> GroupParams {
    let lo = w.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if objective == NestedObjective::MinMax || hi <= lo {
        let p = covering_params(lo, hi);
        codes_for(w, p, codes);
        return p;
    }
    let base = params_for(lo, hi);
    codes_for(w, base, codes);
    let base_err = view_errors(w, base, codes);
    // Each view's error is measured against what round-to-nearest at that width achieves on
    // this group, so no view is sacrificed for another.
    let mut rtn = [0f64; 4];
    let mut tmp = vec![0f32; w.len()];
    for (k, &bits) in NESTED8_VIEWS.iter().enumerate() {
        rtn_fake_quant(w, bits, w.len(), &mut tmp);
        rtn[k] = sq_err(w, &tmp).max(f64::MIN_POSITIVE);
    }
    let score = |e: [f64; 4]| (0..4).map(|k| e[k] / rtn[k]).sum::<f64>();
    let mut best = (score(base_err), base);
    let range = hi - lo;
    let mut trial = vec![0u8; w.len()];
    // Move either end of the range in steps of 2.5%: inwards clips (clipped weights saturate
    // at code 0 or 255), outwards moves the bucket centres of the low views.
    for a in -2i32..=8 {
        for b in -2i32..=8 {
            if a == 0 && b == 0 {
                continue;
            }
            let p = params_for(lo + range * 0.025 * a as f32, hi - range * 0.025 * b as f32);
            codes_for(w, p, &mut trial);
            let s = score(view_errors(w, p, &trial));
            if s < best.0 {
                best = (s, p);
            }
        }
    }
    codes_for(w, best.1, codes);
    best.1
}

/// Round-to-nearest baseline: asymmetric `bits`-bit quantization per group with f16
/// (scale, min) from the group's min and max; returns the reconstructed weights.
pub fn rtn_fake_quant(w: &[f32], bits: u8, group: usize, out: &mut [f32]) {
    let levels = ((1u32 << bits) - 1) as f32;
    for (wg, og) in w.chunks(group).zip(out.chunks_mut(group)) {
        let lo = wg.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = wg.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let min = f16::from_f32(lo).to_f32();
        let scale = f16::from_f32((hi - min) / levels).to_f32();
        for (o, &x) in og.iter_mut().zip(wg) {
            let q = if scale > 0.0 { ((x - min) / scale).round().clamp(0.0, levels) } else { 0.0 };
            *o = q * scale + min;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauss(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        let mut u = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n).map(|_| ((-2.0 * u().ln()).sqrt() * (std::f64::consts::TAU * u()).cos()) as f32 * 0.02).collect()
    }

    fn rtn_err(w: &[f32], bits: u8, g: usize) -> f64 {
        let mut o = vec![0f32; w.len()];
        rtn_fake_quant(w, bits, g, &mut o);
        w.iter().zip(&o).map(|(a, b)| ((a - b) * (a - b)) as f64).sum()
    }

    #[test]
    fn all_views_search_beats_round_to_nearest_at_every_width() {
        for g in [32usize, 64, 128] {
            let w = gauss(g * 512, g as u64);
            let mut e = [0f64; 4];
            let mut e_mm = [0f64; 4];
            let mut codes = vec![0u8; g];
            for wg in w.chunks(g) {
                let p = quantize_group(wg, NestedObjective::AllViews, &mut codes);
                let v = view_errors(wg, p, &codes);
                let p2 = quantize_group(wg, NestedObjective::MinMax, &mut codes);
                let v2 = view_errors(wg, p2, &codes);
                for k in 0..4 {
                    e[k] += v[k];
                    e_mm[k] += v2[k];
                }
            }
            for (k, &bits) in NESTED8_VIEWS.iter().enumerate() {
                let r = rtn_err(&w, bits, g);
                eprintln!("g={g} {bits}-bit: all-views {:.3e}  minmax {:.3e}  rtn {:.3e}  ratio {:.3}", e[k], e_mm[k], r, e[k] / r);
                assert!(e[k] < r, "g={g} {bits}-bit view: {} is not below round-to-nearest {}", e[k], r);
            }
        }
    }
}
