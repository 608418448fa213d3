//! Quantizers of the packer: the nested 8-bit codes (plain min/max, or scales and clipping
//! searched to minimise the error of every view at once) and the round-to-nearest baseline.
//!
//! Every reconstruction here goes through `edge_runtime::blocks` (the contract), so what the
//! packer optimises is exactly what the runtime computes.

use anyhow::bail;
use edge_runtime::blocks::{nested8_quantize, nested8_step_offset, Affine, GroupParams, ParamsRef, SuperParams};
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

/// Nearest codes for `w` given a group's parameters: the contract's [`nested8_quantize`].
pub fn codes_for(w: &[f32], p: impl Into<Affine>, codes: &mut [u8]) {
    let p = p.into();
    for (c, &x) in codes.iter_mut().zip(w) {
        *c = nested8_quantize(x, p);
    }
}

/// How a nested tensor's group parameters are stored (`Encoding::Nested8` or `Nested8Super`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ParamLayout {
    /// An f16 (scale, min) per group.
    #[default]
    F16,
    /// 6-bit codes under an f16 pair per 8 groups ([`SuperParams`]).
    Super,
}

/// How a nested tensor's codes are chosen and its group parameters stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NestedCoding {
    pub objective: NestedObjective,
    pub layout: ParamLayout,
}

/// A nested tensor's group parameters, in either layout.
#[derive(Debug, Clone, PartialEq)]
pub enum NestedParams {
    F16(Vec<GroupParams>),
    /// [`SuperParams::per_row`] blocks per row of `groups_per_row` groups.
    Super { blocks: Vec<SuperParams>, groups_per_row: usize },
}

impl NestedParams {
    pub fn as_ref(&self) -> ParamsRef<'_> {
        match self {
            NestedParams::F16(p) => ParamsRef::F16(p),
            NestedParams::Super { blocks, groups_per_row } => ParamsRef::Super { blocks, groups_per_row: *groups_per_row },
        }
    }
}

/// The 8-bit span `[min, min + 255 scale]` of f16 parameters.
pub fn span_of(p: GroupParams) -> (f32, f32) {
    let a = Affine::from(p);
    (a.min, a.min + 255.0 * a.scale)
}

/// The least f16 at or above `x >= 0`.
fn f16_up(x: f32) -> f16 {
    let h = f16::from_f32(x);
    if h.to_f32() < x {
        f16::from_bits(h.to_bits() + 1)
    } else {
        h
    }
}

/// Group codes `(s, m)` under a super-block's `(d, dmin)` for the wanted span `[lo, hi]`: the
/// minimum code rounded down (`dmin · m <= lo` unless it saturates at -32), then the least
/// scale code whose span from there reaches `hi` (saturating at 63; 1 at least when `d > 0`).
pub fn super_codes(lo: f32, hi: f32, d: f16, dmin: f16) -> (u8, i8) {
    let (d, dmin) = (d.to_f32(), dmin.to_f32());
    let m = if dmin > 0.0 { (lo / dmin).floor().clamp(SuperParams::M_MIN as f32, SuperParams::M_MAX as f32) } else { 0.0 };
    let need = (hi - dmin * m) / 255.0;
    let s = if d > 0.0 { (need / d).ceil().clamp(1.0, SuperParams::S_MAX as f32) } else { 0.0 };
    (s as u8, m as i8)
}

/// The super-block for groups whose wanted 8-bit spans are `spans` (at most 8; missing groups
/// get zero codes): `dmin` puts the largest minimum's code at 31 in magnitude (f16 rounded to
/// nearest), then `d` (f16 rounded up) lets the widest span from its coded minimum fit 63 scale
/// steps, so no weight inside its span clips. The same choice as `ptq_study`'s `sb6` variant.
pub fn super_params(spans: &[(f32, f32)]) -> SuperParams {
    assert!(spans.len() <= SuperParams::GROUPS);
    let big = spans.iter().map(|s| s.0.abs()).fold(0f32, f32::max);
    let dmin = if big > 0.0 { f16::from_f32(big / SuperParams::M_MAX as f32) } else { f16::ZERO };
    let need = spans
        .iter()
        .map(|&(lo, hi)| {
            let (_, m) = super_codes(lo, hi, f16::ZERO, dmin);
            (hi - dmin.to_f32() * m as f32) / 255.0
        })
        .fold(0f32, f32::max);
    let d = if need > 0.0 { f16_up(need / SuperParams::S_MAX as f32) } else { f16::ZERO };
    let (mut s, mut m) = ([0u8; 8], [0i8; 8]);
    for (j, &(lo, hi)) in spans.iter().enumerate() {
        (s[j], m[j]) = super_codes(lo, hi, d, dmin);
    }
    SuperParams::new(d, dmin, s, m)
}

/// Super-blocks over a tensor's rows of `groups_per_row` groups from each group's wanted f16
/// parameters (row-major).
pub fn super_blocks(wanted: &[GroupParams], groups_per_row: usize) -> Vec<SuperParams> {
    wanted
        .chunks(groups_per_row)
        .flat_map(|row| row.chunks(SuperParams::GROUPS))
        .map(|c| super_params(&c.iter().map(|&p| span_of(p)).collect::<Vec<_>>()))
        .collect()
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

fn inv_scale(p: Affine) -> f32 {
    let scale = p.scale;
    if scale > 0.0 {
        1.0 / scale
    } else {
        0.0
    }
}

/// Nearest 8-bit codes under `p`, exactly as the range search evaluates them.
fn search_codes(w: &[f32], p: impl Into<Affine>, codes: &mut [u8]) {
    let p = p.into();
    let (min, inv) = (p.min, inv_scale(p));
    for (c, &x) in codes.iter_mut().zip(w) {
        *c = search_code(x, min, inv) as u8;
    }
}

/// Squared error of each view (2, 3, 4, 8) of the codes [`search_codes`] picks under `p`,
/// without storing the codes. Eight independent lanes, so that it vectorizes.
fn search_errors(w: &[f32], p: GroupParams) -> [f32; 4] {
    let (min, inv) = (p.min.to_f32(), inv_scale(p.into()));
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

/// [`quantize_nested8`] in either parameter layout. With [`ParamLayout::Super`] each group's
/// wanted parameters (as the objective chooses them) are coded into super-blocks
/// ([`super_blocks`]) and the codes chosen again under the coded parameters, the way the
/// objective chooses codes (nearest, or the range search's rounding).
pub fn quantize_nested(
    name: &str,
    data: &[f32],
    cols: usize,
    group: usize,
    coding: NestedCoding,
) -> anyhow::Result<(NestedParams, Vec<u8>)> {
    let NestedCoding { objective, layout } = coding;
    let (wanted, mut codes) = quantize_nested8(name, data, cols, group, objective)?;
    if layout == ParamLayout::F16 {
        return Ok((NestedParams::F16(wanted), codes));
    }
    let padded = codes.len() / (data.len() / cols);
    let groups_per_row = padded / group;
    let blocks = super_blocks(&wanted, groups_per_row);
    let params = ParamsRef::Super { blocks: &blocks, groups_per_row };
    for (r, wrow) in data.chunks(cols).enumerate() {
        for (g, wg) in wrow.chunks(group).enumerate() {
            let first = r * padded + g * group;
            let p = params.get(first / group);
            let cg = &mut codes[first..first + wg.len()];
            match objective {
                NestedObjective::MinMax => codes_for(wg, p, cg),
                NestedObjective::AllViews => search_codes(wg, p, cg),
            }
        }
    }
    Ok((NestedParams::Super { blocks, groups_per_row }, codes))
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

    #[test]
    fn super_blocks_code_every_wanted_span() {
        // One block of wildly different groups (a tiny one, a zero one, positive and negative
        // minima), then a partial block.
        let spans = [(-0.5f32, 0.4f32), (-0.001, 0.002), (0.0, 0.0), (0.1, 0.3), (-0.02, -0.01), (-1.3, 0.9), (0.5, 0.6), (-0.2, 0.25)];
        let mut wanted: Vec<GroupParams> = spans.iter().map(|&(lo, hi)| covering_params(lo, hi)).collect();
        wanted.extend([covering_params(-0.03, 0.05), covering_params(-0.07, 0.01)]);
        // One row of 10 groups: two blocks, the second holding two.
        let supers = super_blocks(&wanted, 10);
        assert_eq!(supers.len(), 2);
        let params = ParamsRef::Super { blocks: &supers, groups_per_row: 10 };
        for (g, &p) in wanted.iter().enumerate() {
            let (lo, hi) = span_of(p);
            let a = params.get(g);
            let (s, m) = (supers[g / 8].s(g % 8), supers[g / 8].m(g % 8));
            assert!(s <= SuperParams::S_MAX && (SuperParams::M_MIN..=SuperParams::M_MAX).contains(&m));
            assert!(a.min <= lo, "group {g}: coded minimum {} above {lo}", a.min);
            assert!(a.min + 255.0 * a.scale >= hi - 1e-6 * (hi - lo).abs(), "group {g}: span ends at {} below {hi}", a.min + 255.0 * a.scale);
            // A weight in the wanted span is coded without clipping: within half a step.
            for x in [lo, hi, 0.5 * (lo + hi)] {
                let q = nested8_quantize(x, a);
                assert!((q as f32 * a.scale + a.min - x).abs() <= 0.5 * a.scale * 1.0001 + 1e-9, "group {g}: {x} coded as {q}");
            }
        }
        // The missing groups of the partial block are zero.
        assert!((2..8).all(|j| supers[1].s(j) == 0 && supers[1].m(j) == 0));
    }

    #[test]
    fn super_blocks_of_32_beat_f16_groups_of_64_at_equal_bytes() {
        // Rows whose groups differ in spread (the per-group ranges the 6-bit codes must follow).
        let (rows, cols) = (64, 512);
        let mut w = gauss(rows * cols, 7);
        for (i, x) in w.iter_mut().enumerate() {
            *x *= 1.0 + 3.0 * ((i / 32) % 5) as f32 / 4.0;
        }
        for objective in [NestedObjective::MinMax, NestedObjective::AllViews] {
            let (pf, cf) = quantize_nested("w", &w, cols, 64, NestedCoding { objective, layout: ParamLayout::F16 }).unwrap();
            let (ps, cs) = quantize_nested("w", &w, cols, 32, NestedCoding { objective, layout: ParamLayout::Super }).unwrap();
            assert_eq!(pf.as_ref().bytes().len(), ps.as_ref().bytes().len(), "the same parameter bytes");
            let err = |p: ParamsRef<'_>, c: &[u8], group: usize, bits: u8| -> f64 {
                let mut out = vec![0f32; w.len()];
                let planes = edge_runtime::blocks::pack_nested8_planes(c);
                let refs: Vec<&[u8]> = planes.iter().map(|p| p.as_slice()).collect();
                edge_runtime::blocks::dequant_nested8(p, &refs, group, bits, 0, &mut out);
                sq_err(&w, &out)
            };
            for bits in [2u8, 3, 4, 5, 6, 8] {
                let (f, s) = (err(pf.as_ref(), &cf, 64, bits), err(ps.as_ref(), &cs, 32, bits));
                eprintln!("{objective:?} {bits}-bit: super/32 {s:.4e} f16/64 {f:.4e} ({:.3})", s / f);
                assert!(s < f, "{objective:?} at {bits} bits: super-blocks of 32 {s} against f16 groups of 64 {f}");
            }
        }
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

