//! Quantizers of the packer: the nested 8-bit codes (plain min/max, or scales and clipping
//! searched to minimise the error of every view at once) and the round-to-nearest baseline.
//!
//! Every reconstruction here goes through `edge_runtime::blocks` (the contract), so what the
//! packer optimises is exactly what the runtime computes.

use anyhow::bail;
use edge_runtime::blocks::{nested8_quantize, nested8_step_offset, GroupParams};
use half::f16;

/// The views the packer's code choice weighs (the range search and GPTQ's joint objective):
/// 2, 3, 4 and 8 bits. The 5- and 6-bit views lie between the 4- and the 8-bit ones (their
/// buckets nest inside the 4-bit view's and contain the 8-bit view's codes), so they are not
/// weighed on their own.
pub const OBJECTIVE_VIEWS: [u8; 4] = [2, 3, 4, 8];

/// How nested codes are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NestedObjective {
    /// Group min/max, codes rounded to nearest: best for the 8-bit view alone.
    MinMax,
    /// Search clipping of the group range to minimise the summed relative error of every view:
    /// the [`OBJECTIVE_VIEWS`] are weighed (each view's squared error divided by its error
    /// under MinMax), the 5- and 6-bit views lying between them.
    #[default]
    AllViews,
}

/// Nearest codes for `w` given f16 parameters: the contract's [`nested8_quantize`].
pub fn codes_for(w: &[f32], p: GroupParams, codes: &mut [u8]) {
    for (c, &x) in codes.iter_mut().zip(w) {
        *c = nested8_quantize(x, p);
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
/// weight is within `scale / 2` of its 8-bit reconstruction. The min/max objective's choice, and
/// the initial parameters of the Python trainer (`trainer-bridge/python`, which mirrors it).
pub fn covering_params(lo: f32, hi: f32) -> GroupParams {
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

#[cfg(test)]
fn sq_err(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| ((x - y) * (x - y)) as f64).sum()
}

/// Squared error of each view of codes `q` under `p`, in [`OBJECTIVE_VIEWS`] order (2, 3, 4, 8).
pub fn view_errors(w: &[f32], p: GroupParams, q: &[u8]) -> [f64; 4] {
    let mut e = [0f64; 4];
    for (k, &bits) in OBJECTIVE_VIEWS.iter().enumerate() {
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

/// `(w - min) / scale` (by one multiplication with the f32 reciprocal) clamped to `[0, 255]`
/// and rounded to the nearest integer (ties to even) by adding 2^23: the low 8 bits of the
/// sum's bit pattern are the code. Branch-free, so the search vectorizes.
#[inline(always)]
fn search_code(x: f32, min: f32, inv: f32) -> i32 {
    ((((x - min) * inv).clamp(0.0, 255.0) + 8_388_608.0).to_bits() & 0xff) as i32
}

fn inv_scale(p: GroupParams) -> f32 {
    let scale = p.scale.to_f32();
    if scale > 0.0 {
        1.0 / scale
    } else {
        0.0
    }
}

/// Nearest 8-bit codes under `p`, exactly as the range search evaluates them.
fn search_codes(w: &[f32], p: GroupParams, codes: &mut [u8]) {
    let (min, inv) = (p.min.to_f32(), inv_scale(p));
    for (c, &x) in codes.iter_mut().zip(w) {
        *c = search_code(x, min, inv) as u8;
    }
}

/// Squared error of each view (2, 3, 4, 8) of the codes [`search_codes`] picks under `p`,
/// without storing the codes. Eight independent lanes, so that it vectorizes.
fn search_errors(w: &[f32], p: GroupParams) -> [f32; 4] {
    let (min, inv) = (p.min.to_f32(), inv_scale(p));
    let so: [(f32, f32); 4] = OBJECTIVE_VIEWS.map(|b| nested8_step_offset(p, b));
    let mut acc = [[0f32; 8]; 4];
    let chunks = w.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        let mut q = [0i32; 8];
        for j in 0..8 {
            q[j] = search_code(c[j], min, inv);
        }
        for k in 0..4 {
            let (step, offset) = so[k];
            let drop = 8 - OBJECTIVE_VIEWS[k] as i32;
            for j in 0..8 {
                let d = c[j] - ((q[j] >> drop) as f32 * step + offset);
                acc[k][j] += d * d;
            }
        }
    }
    for (j, &x) in rest.iter().enumerate() {
        let q = search_code(x, min, inv);
        for k in 0..4 {
            let (step, offset) = so[k];
            let d = x - ((q >> (8 - OBJECTIVE_VIEWS[k] as i32)) as f32 * step + offset);
            acc[k][j] += d * d;
        }
    }
    acc.map(|a| a.iter().sum())
}

/// Round-to-nearest squared error of `w` as one group at each view width (2, 3, 4, 8): the
/// yardstick each view's error is divided by in the all-views search.
fn rtn_errors(w: &[f32]) -> [f32; 4] {
    let lo = w.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let min = f16::from_f32(lo).to_f32();
    OBJECTIVE_VIEWS.map(|bits| {
        let levels = ((1u32 << bits) - 1) as f32;
        let scale = f16::from_f32((hi - min) / levels).to_f32();
        let e: f32 = w
            .iter()
            .map(|&x| {
                let q = if scale > 0.0 { ((x - min) / scale).round().clamp(0.0, levels) } else { 0.0 };
                let d = x - (q * scale + min);
                d * d
            })
            .sum();
        e.max(f32::MIN_POSITIVE)
    })
}

/// The all-views score of `p` on `w`: each view's squared error relative to round-to-nearest
/// at that width (`inv_rtn` = the reciprocals of [`rtn_errors`]), summed over the views.
fn all_views_score(w: &[f32], p: GroupParams, inv_rtn: &[f32; 4]) -> f32 {
    let e = search_errors(w, p);
    (0..4).map(|k| e[k] * inv_rtn[k]).sum()
}

/// Parameters of the all-views search for one group: the ends of the range `[lo, hi]` moved
/// outwards (moves the bucket centres of the low views) or inwards (clips), searched coarse to
/// fine: a grid with steps of 2.5% of the range from 0 to 10% outwards at either end (25
/// points), then the 8 neighbours of the best point at 1.25%. On SmolLM2-135M and stories260K
/// weights the best point of a dense search almost never clips (the low views' bucket centres
/// sit inside the range), and this search scores better than the earlier exhaustive one over
/// -5%..+20% in steps of 2.5% (121 points) with 33.
pub fn all_views_params(w: &[f32]) -> GroupParams {
    all_views_params_grid(w, &COARSE, 1)
}

/// Coarse moves of either end, in units of 1.25% of the range (negative = outwards).
const COARSE: [i32; 5] = [-8, -6, -4, -2, 0];

fn all_views_params_grid(w: &[f32], coarse: &[i32], refine: i32) -> GroupParams {
    let lo = w.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if hi <= lo {
        return covering_params(lo, hi);
    }
    let inv_rtn = rtn_errors(w).map(|e| 1.0 / e);
    let range = hi - lo;
    // a, b: how far each end moves inwards, in units of 1.25% of the range.
    let at = |a: i32, b: i32| params_for(lo + range * 0.0125 * a as f32, hi - range * 0.0125 * b as f32);
    let mut best = (f32::INFINITY, 0i32, 0i32);
    for &a in coarse {
        for &b in coarse {
            let s = all_views_score(w, at(a, b), &inv_rtn);
            if s < best.0 {
                best = (s, a, b);
            }
        }
    }
    let mut d = refine;
    while d >= 1 {
        let (_, ca, cb) = best;
        for da in -1..=1 {
            for db in -1..=1 {
                if da == 0 && db == 0 {
                    continue;
                }
                let (a, b) = (ca + da * d, cb + db * d);
                let s = all_views_score(w, at(a, b), &inv_rtn);
                if s < best.0 {
                    best = (s, a, b);
                }
            }
        }
        d /= 2;
    }
    at(best.1, best.2)
}

/// The parameters `objective` chooses for a group (codes are then the nearest to each weight).
pub fn group_params(w: &[f32], objective: NestedObjective) -> GroupParams {
    let lo = w.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if objective == NestedObjective::MinMax || hi <= lo {
        covering_params(lo, hi)
    } else {
        all_views_params(w)
    }
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
    let p = all_views_params(w);
    search_codes(w, p, codes);
    p
}

/// Quantize row-major `data` (rows of `cols`) to nested 8-bit codes in groups of `group`
/// along each row, each row padded to whole groups (padding codes 0; the last group of a row
/// may hold fewer real weights). Returns the per-group parameters and the padded codes.
pub fn quantize_nested8(
    name: &str,
    data: &[f32],
    cols: usize,
    group: usize,
    objective: NestedObjective,
) -> anyhow::Result<(Vec<GroupParams>, Vec<u8>)> {
    if group == 0 || !group.is_multiple_of(8) || cols == 0 {
        bail!("group size {group} is not a positive multiple of 8 (tensor '{name}')");
    }
    let f16_max = f16::MAX.to_f32();
    if let Some(x) = data.iter().find(|x| !x.is_finite() || x.abs() > f16_max / 2.0) {
        bail!("tensor '{name}' holds {x}, beyond the f16 range of 8-bit parameters; use --encoding bf16 or f32");
    }
    let padded = edge_runtime::format::nested8_padded_cols(cols as u64, group as u64) as usize;
    let rows = data.len() / cols;
    let groups_per_row = padded / group;
    let mut params = vec![GroupParams { scale: f16::ZERO, min: f16::ZERO }; rows * groups_per_row];
    let mut codes = vec![0u8; rows * padded];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(rows.max(1));
    let rows_per = rows.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let chunks = params
            .chunks_mut(rows_per * groups_per_row)
            .zip(codes.chunks_mut(rows_per * padded))
            .zip(data.chunks(rows_per * cols));
        for ((p, c), w) in chunks {
            s.spawn(move || {
                for ((prow, crow), wrow) in
                    p.chunks_mut(groups_per_row).zip(c.chunks_mut(padded)).zip(w.chunks(cols))
                {
                    for ((pg, cg), wg) in prow.iter_mut().zip(crow.chunks_mut(group)).zip(wrow.chunks(group)) {
                        *pg = quantize_group(wg, objective, &mut cg[..wg.len()]);
                    }
                }
            });
        }
    });
    Ok((params, codes))
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

    /// The exhaustive all-views search (every pair of moves of 2.5% from -5% to +20%): the
    /// reference the coarse-to-fine search is checked against.
    fn quantize_group_exhaustive(w: &[f32], codes: &mut [u8]) -> GroupParams {
        let lo = w.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if hi <= lo {
            let p = covering_params(lo, hi);
            codes_for(w, p, codes);
            return p;
        }
        let base = params_for(lo, hi);
        codes_for(w, base, codes);
        let base_err = view_errors(w, base, codes);
        let mut rtn = [0f64; 4];
        let mut tmp = vec![0f32; w.len()];
        for (k, &bits) in OBJECTIVE_VIEWS.iter().enumerate() {
            rtn_fake_quant(w, bits, w.len(), &mut tmp);
            rtn[k] = sq_err(w, &tmp).max(f64::MIN_POSITIVE);
        }
        let score = |e: [f64; 4]| (0..4).map(|k| e[k] / rtn[k]).sum::<f64>();
        let mut best = (score(base_err), base);
        let range = hi - lo;
        let mut trial = vec![0u8; w.len()];
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

    #[test]
    fn coarse_to_fine_search_scores_at_least_as_well_as_the_exhaustive_one() {
        let score = |w: &[f32], p: GroupParams, q: &[u8]| {
            let e = view_errors(w, p, q);
            let mut o = vec![0f32; w.len()];
            (0..4)
                .map(|k| {
                    rtn_fake_quant(w, OBJECTIVE_VIEWS[k], w.len(), &mut o);
                    e[k] / sq_err(w, &o).max(1e-30)
                })
                .sum::<f64>()
        };
        for g in [32usize, 64, 128] {
            let w = gauss(g * 300, 100 + g as u64);
            let (mut new, mut old) = (0f64, 0f64);
            let mut q = vec![0u8; g];
            for wg in w.chunks(g) {
                let p = quantize_group(wg, NestedObjective::AllViews, &mut q);
                new += score(wg, p, &q);
                let p = quantize_group_exhaustive(wg, &mut q);
                old += score(wg, p, &q);
            }
            eprintln!("g={g}: coarse-to-fine {new:.3}, exhaustive {old:.3}");
            assert!(new <= old, "g={g}: {new} > {old}");
        }
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
            for (k, &bits) in OBJECTIVE_VIEWS.iter().enumerate() {
                let r = rtn_err(&w, bits, g);
                eprintln!("g={g} {bits}-bit: all-views {:.3e}  minmax {:.3e}  rtn {:.3e}  ratio {:.3}", e[k], e_mm[k], r, e[k] / r);
                assert!(e[k] < r, "g={g} {bits}-bit view: {} is not below round-to-nearest {}", e[k], r);
            }
        }
    }
}

