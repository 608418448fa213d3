//! f32 routines written so that they vectorize (eight independent lanes, no calls): sums,
//! maxima, `exp`, softmax, and the decode attention of one query head, which the dispatch table
//! serves ([`super::frame::Kernels::attend_head`]): [`attend_head`] is its definition, and a SIMD
//! table's entry is the same code compiled with that table's features (`head_body` is
//! always inlined), so it is bit-identical: Rust never fuses a multiply and an add, and the
//! lanes are written out, so wider registers change no operation and no order.

/// f32 dot product with eight independent partial sums, so the compiler may use SIMD lanes.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, a_tail) = a.split_at(a.len() / 8 * 8);
    let (b8, b_tail) = b[..a.len()].split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in a_tail.iter().zip(b_tail) {
        s += x * y;
    }
    s
}

/// `Σ f(x[i])` with eight independent partial sums, so the loop vectorizes.
#[inline(always)]
pub(crate) fn sum_lanes(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let (x8, tail) = x.split_at(x.len() / 8 * 8);
    for c in x8.chunks_exact(8) {
        for k in 0..8 {
            acc[k] += f(c[k]);
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|&v| f(v)).sum::<f32>()
}

/// Largest element (`-inf` for an empty slice), with eight lanes so the loop vectorizes.
#[inline(always)]
fn max_lanes(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let (x8, tail) = x.split_at(x.len() / 8 * 8);
    for c in x8.chunks_exact(8) {
        for k in 0..8 {
            acc[k] = if c[k] > acc[k] { c[k] } else { acc[k] };
        }
    }
    acc.iter().chain(tail).copied().fold(f32::NEG_INFINITY, f32::max)
}

/// `e^x` in plain f32 arithmetic that vectorizes (no calls, no table, no branches): Cephes'
/// `expf`. `x = n ln2 + r` with `n = round(x / ln2)` (the 1.5·2^23 trick, which also yields
/// the integer) and `|r| <= ln2 / 2` (ln2 in two parts, Cody-Waite), `e^r` by a degree-7
/// polynomial, then `2^n` as two exact power-of-two factors so subnormal results and the
/// overflow to `inf` come out right. Within 2 ulp of `libm::expf` (the reference; see
/// `runtime/tests/attention.rs`) for normal results; `x < -104` gives 0, `x > 88.8` `inf`.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // 0.693359375: few mantissa bits, so n * LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    let xc = x.clamp(-104.0, 88.8); // NaN stays NaN
    let t = xc * LOG2E + ROUND; // round to nearest: n in the low mantissa bits
    let n = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32); // -150..=128
    let nf = t - ROUND;
    let r = xc - nf * LN2_HI - nf * LN2_LO;
    let mut p = 1.987_569_2e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
    let y = p * r * r + r + 1.0;
    let n1 = n >> 1; // two factors 2^n1 * 2^(n - n1), each a normal float
    let s1 = f32::from_bits(((n1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((n - n1 + 127) as u32) << 23);
    let e = y * s1 * s2;
    if x < -104.0 {
        0.0
    } else {
        e
    }
}

/// SwiGLU's gate in place: `gate[i] = silu(gate[i]) · up[i]`, `silu(g) = g / (1 + e^-g)` with
/// [`exp_fast`], each operation in this order.
#[inline(always)]
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp_fast(-*g)) * u;
    }
}

/// GeGLU's gate in place: `gate[i] = gelu(gate[i]) · up[i]` with GELU's tanh approximation
/// `0.5 g (1 + tanh(√(2/π) (g + 0.044715 g³)))`, computed as `g / (1 + e^-t)` with
/// `t = 2√(2/π) g (1 + 0.044715 g²)` (the same function: `(1 + tanh u) / 2 = σ(2u)`), with
/// [`exp_fast`], each operation in this order, so it vectorizes as [`swiglu`] does.
#[inline(always)]
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    const TWO_SQRT_2_OVER_PI: f32 = 1.595_769; // 2 · √(2/π)
    const A: f32 = 0.044_715;
    for (g, u) in gate.iter_mut().zip(up) {
        let x = *g;
        let t = TWO_SQRT_2_OVER_PI * x * (1.0 + A * x * x);
        *g = x / (1.0 + exp_fast(-t)) * u;
    }
}

/// `1 / rms(x)`, with `eps` inside the root.
#[inline(always)]
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ss = sum_lanes(x, |v| v * v) / x.len() as f32;
    1.0 / libm::sqrtf(ss + eps)
}

/// `out = x / rms(x) * weight`, one token's row.
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let inv = inv_rms(x, eps);
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * inv);
    }
}

/// [`rmsnorm`] of `x` in place (the same operations, so the same bits).
pub fn rmsnorm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let inv = inv_rms(x, eps);
    for (v, w) in x.iter_mut().zip(weight) {
        *v = w * (*v * inv);
    }
}

/// Rotate adjacent pairs `(2i, 2i+1)` of every head of `x` (one token's row) by the angles
/// whose cosines and sines are `cos` and `sin` (head_dim / 2 each).
pub fn rope(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..head_dim / 2 {
            let (a, b) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = a * cos[i] - b * sin[i];
            head[2 * i + 1] = a * sin[i] + b * cos[i];
        }
    }
}

/// In-place numerically stable softmax: subtract the max, [`exp_fast`], normalize.
#[inline(always)]
pub fn softmax(x: &mut [f32]) {
    let inv = 1.0 / softmax_unnormalized(x);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// [`softmax`] without the division: `x[i] = e^(x[i] - max)` in place, returning `Σ x[i]`. The
/// sum is taken in the same pass as the exponentials (one pass over the row fewer), in eight
/// lanes like [`sum_lanes`] and in the same order, so `softmax` is unchanged bit for bit.
#[inline(always)]
fn softmax_unnormalized(x: &mut [f32]) -> f32 {
    let max = max_lanes(x);
    let mut acc = [0f32; 8];
    let (x8, tail) = x.split_at_mut(x.len() / 8 * 8);
    for c in x8.chunks_exact_mut(8) {
        for k in 0..8 {
            c[k] = exp_fast(c[k] - max);
            acc[k] += c[k];
        }
    }
    let mut tail_sum = 0.0;
    for v in tail.iter_mut() {
        *v = exp_fast(*v - max);
        tail_sum += *v;
    }
    acc.iter().sum::<f32>() + tail_sum
}

/// Each `head_dim` slice of `x` times the normalized Walsh-Hadamard matrix `H / sqrt(head_dim)`
/// (in place; `head_dim` a power of two). `H` is symmetric and orthogonal once normalized, so
/// applying it twice gives `x` back (up to rounding), and `(Hq) · (Hk) = q · k`.
pub fn hadamard_heads(x: &mut [f32], head_dim: usize) {
    assert!(head_dim.is_power_of_two());
    let norm = 1.0 / libm::sqrtf(head_dim as f32);
    for head in x.chunks_exact_mut(head_dim) {
        let mut h = 1;
        while h < head_dim {
            for block in head.chunks_exact_mut(2 * h) {
                let (a, b) = block.split_at_mut(h);
                for (x, y) in a.iter_mut().zip(b.iter_mut()) {
                    let (u, v) = (*x, *y);
                    *x = u + v;
                    *y = u - v;
                }
            }
            h *= 2;
        }
        for v in head.iter_mut() {
            *v *= norm;
        }
    }
}

/// The causal softmax of a (rows, width) block of attention scores `s`: row `r` sees positions
/// `0..first + r`; softmax over those, 0 for the rest.
#[inline(always)]
pub fn softmax_rows(s: &mut [f32], width: usize, first: usize) {
    for (r, row) in s.chunks_exact_mut(width).enumerate() {
        let seen = (first + r).min(width);
        softmax(&mut row[..seen]);
        row[seen..].fill(0.0);
    }
}

/// The reference softmax: max subtracted, `libm::expf`, sequential sum (what [`softmax`]
/// replaced; kept for tests).
pub fn softmax_reference(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = libm::expf(*v - max);
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// `[dot(q, k[i]) for i in 0..4]`, bit for bit, with the four dependency chains
/// interleaved.
#[inline(always)]
fn dot4(q: &[f32], k: [&[f32]; 4]) -> [f32; 4] {
    let n = q.len() / 8 * 8;
    let mut acc = [[0f32; 8]; 4];
    let ks = k[0][..n].chunks_exact(8).zip(k[1][..n].chunks_exact(8)).zip(k[2][..n].chunks_exact(8)).zip(k[3][..n].chunks_exact(8));
    for (x, (((k0, k1), k2), k3)) in q[..n].chunks_exact(8).zip(ks) {
        for l in 0..8 {
            acc[0][l] += x[l] * k0[l];
            acc[1][l] += x[l] * k1[l];
            acc[2][l] += x[l] * k2[l];
            acc[3][l] += x[l] * k3[l];
        }
    }
    let mut out = [0f32; 4];
    for ((o, a), k) in out.iter_mut().zip(&acc).zip(&k) {
        *o = a.iter().sum::<f32>();
        for (x, y) in q[n..].iter().zip(&k[n..]) {
            *o += x * y;
        }
    }
    out
}

/// One query head's attention for the token at the last cached position: `scores[j] =
/// scale · q · k_j` for `j < scores.len()`, softmax, `out = Σ_j scores[j] · v_j`. Row `j` of
/// the cache is `keys[j · stride..][..q.len()]` (likewise `values`).
#[inline(always)]
pub(crate) fn head_body(q: &[f32], keys: &[f32], values: &[f32], stride: usize, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    head_check(q, keys, values, stride, scores, out);
    head_scores(q, keys, stride, scale, 0, scores);
    head_mix(values, stride, scores, out);
}

/// The shapes [`head_body`] needs (so that its loops index in bounds).
#[inline(always)]
pub(crate) fn head_check(q: &[f32], keys: &[f32], values: &[f32], stride: usize, scores: &[f32], out: &[f32]) {
    let (hd, n) = (q.len(), scores.len());
    assert!(out.len() == hd && n > 0 && keys.len() >= (n - 1) * stride + hd && values.len() >= (n - 1) * stride + hd);
}

/// `scores[j] = scale · dot(q, k_j)` for positions `from..`: four at a time through [`dot4`]
/// (each still exactly [`dot`]), then one at a time.
#[inline(always)]
pub(crate) fn head_scores(q: &[f32], keys: &[f32], stride: usize, scale: f32, from: usize, scores: &mut [f32]) {
    let hd = q.len();
    let krow = |j: usize| &keys[j * stride..][..hd];
    let n = scores.len();
    let quads = from + (n - from) / 4 * 4;
    for j in (from..quads).step_by(4) {
        let d = dot4(q, [krow(j), krow(j + 1), krow(j + 2), krow(j + 3)]);
        for (s, d) in scores[j..j + 4].iter_mut().zip(d) {
            *s = d * scale;
        }
    }
    for (j, s) in scores.iter_mut().enumerate().skip(quads) {
        *s = dot(q, krow(j)) * scale;
    }
}

/// Softmax of `scores`, then `out = Σ_j scores[j] · v_j`, added in position order.
#[inline(always)]
pub(crate) fn head_mix(values: &[f32], stride: usize, scores: &mut [f32], out: &mut [f32]) {
    let hd = out.len();
    let vrow = |j: usize| &values[j * stride..][..hd];
    softmax(scores);
    out.fill(0.0);
    let quads = scores.len() / 4 * 4;
    for j in (0..quads).step_by(4) {
        let a = [scores[j], scores[j + 1], scores[j + 2], scores[j + 3]];
        let rows = vrow(j).iter().zip(vrow(j + 1)).zip(vrow(j + 2)).zip(vrow(j + 3));
        for (o, (((v0, v1), v2), v3)) in out.iter_mut().zip(rows) {
            *o = *o + a[0] * v0 + a[1] * v1 + a[2] * v2 + a[3] * v3;
        }
    }
    for (j, &a) in scores.iter().enumerate().skip(quads) {
        for (o, v) in out.iter_mut().zip(vrow(j)) {
            *o += a * v;
        }
    }
}

/// Most head dimension the stored-form path serves (Gemma's 256).
pub const MAX_HEAD_DIM: usize = 256;

/// [`head_body`] over a cache in any stored form ([`crate::kv::KvBits`]): rows are read back
/// ([`crate::kv::KvRows::row_into`]) four at a time into a small buffer, and the arithmetic is
/// `head_body`'s in the same order (scores four at a time through [`dot4`], then one at a time;
/// values mixed four at a time), so an f32 cache gives the same bits either way. No copy of
/// more than four rows is made.
#[inline(always)]
pub(crate) fn head_body_stored(q: &[f32], kv: crate::kv::KvView<'_>, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    let (hd, n) = (q.len(), kv.len);
    assert!(hd <= MAX_HEAD_DIM && out.len() == hd && scores.len() == n && n > 0);
    let mut buf = [0f32; 4 * MAX_HEAD_DIM];
    let quads = n / 4 * 4;
    for j in (0..quads).step_by(4) {
        let rows = four_rows(&mut buf, hd, |r, row| kv.keys.row_into(j + r, row));
        let d = dot4(q, rows);
        for (s, d) in scores[j..j + 4].iter_mut().zip(d) {
            *s = d * scale;
        }
    }
    for (j, s) in scores.iter_mut().enumerate().skip(quads) {
        kv.keys.row_into(j, &mut buf[..hd]);
        *s = dot(q, &buf[..hd]) * scale;
    }
    softmax(scores);
    out.fill(0.0);
    for j in (0..quads).step_by(4) {
        let [v0, v1, v2, v3] = four_rows(&mut buf, hd, |r, row| kv.values.row_into(j + r, row));
        let a = [scores[j], scores[j + 1], scores[j + 2], scores[j + 3]];
        for (o, (((v0, v1), v2), v3)) in out.iter_mut().zip(v0.iter().zip(v1).zip(v2).zip(v3)) {
            *o = *o + a[0] * v0 + a[1] * v1 + a[2] * v2 + a[3] * v3;
        }
    }
    for (j, &a) in scores.iter().enumerate().skip(quads) {
        kv.values.row_into(j, &mut buf[..hd]);
        for (o, v) in out.iter_mut().zip(&buf[..hd]) {
            *o += a * v;
        }
    }
}

/// Four rows of `hd` floats filled by `fill(r, row)` in `buf`, as slices.
#[inline(always)]
fn four_rows(buf: &mut [f32], hd: usize, mut fill: impl FnMut(usize, &mut [f32])) -> [&[f32]; 4] {
    for (r, row) in buf[..4 * hd].chunks_exact_mut(hd).enumerate() {
        fill(r, row);
    }
    let (a, rest) = buf.split_at(hd);
    let (b, rest) = rest.split_at(hd);
    let (c, rest) = rest.split_at(hd);
    [a, b, c, &rest[..hd]]
}

/// Rows `first..` of `rows` read back as f32 ([`crate::kv::KvRows::row_into`]), `width`
/// columns each, packed into `out` (as many rows as it holds).
pub fn kv_rows(rows: crate::kv::KvRows<'_>, first: usize, width: usize, out: &mut [f32]) {
    for (j, row) in out.chunks_exact_mut(width).enumerate() {
        rows.row_into(first + j, row);
    }
}

/// The reference entry of [`super::frame::Kernels::attend_head`]: `head_body` (an f32 cache,
/// read in place) or `head_body_stored` (any other form) compiled for the baseline target.
pub fn attend_head(q: &[f32], kv: crate::kv::KvView<'_>, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    let scores = &mut scores[..kv.len];
    match (kv.keys.as_f32(), kv.values.as_f32()) {
        (Some(k), Some(v)) => head_body(q, k, v, kv.keys.dim, scale, scores, out),
        _ => head_body_stored(q, kv, scale, scores, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot4_is_four_dots_bit_for_bit() {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let mut r = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        for len in [1usize, 7, 8, 9, 63, 64, 65, 128] {
            let q: Vec<f32> = (0..len).map(|_| r()).collect();
            let k: Vec<Vec<f32>> = (0..4).map(|_| (0..len).map(|_| r()).collect()).collect();
            let got = dot4(&q, [&k[0], &k[1], &k[2], &k[3]]);
            for (g, k) in got.iter().zip(&k) {
                assert_eq!(g.to_bits(), dot(&q, k).to_bits(), "length {len}");
            }
        }
    }
}
