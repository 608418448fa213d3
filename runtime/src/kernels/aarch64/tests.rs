//! Every aarch64 table against the scalar reference, on random inputs of every length class:
//! columns of one group, many groups and a padded tail; 1, a few and more than 64 rows (from a
//! non-zero first row); 1, 2, 3, 7 and 64 tokens; group sizes 8 (the reference fallback), 32,
//! 64 and 128; codes covering all of 0..=255; all-zero activation blocks and large magnitudes.
//! Attention over the KV cache (`attend_head`, `kv_rows`) against [`vector`]'s definitions:
//! every pair of formats, heads of 1 to 8 groups (and float heads with no whole group), cache
//! lengths of every count modulo 4 and 8, every head of a row, rows read from a first one on,
//! every f16 bit pattern as a value and as a scale, and a windowed cache.
//!
//! Tolerance: none. The integer group sums are exact and the kernels add the float terms in
//! the reference's order with its expression, so every output is bit-identical (compared
//! with `to_bits`). A CPU lacking a table's features prints "NOT tested" for it.

use super::unpack::{unpack32, Consts};
use crate::blocks::{self, pack_nested8_planes, GroupParams, NESTED8_VIEWS};
use crate::kernels::acts::QActs;
use crate::kernels::frame::{view_index, Kernels, Nested8};
use crate::kernels::{reference, vector};
use crate::kv::{KvBits, KvCache, KvFormat, KvRows, KvView, KvWindow, RowData, KV_GROUP};
use alloc::vec::Vec;
use core::arch::aarch64::*;
use half::f16;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Codes, params and planes of a (rows, cols) nested tensor padded to whole groups.
struct Tensor {
    params: Vec<GroupParams>,
    planes: [Vec<u8>; 6],
    row_stride: usize,
    group_size: usize,
}

impl Tensor {
    fn new(rows: usize, cols: usize, group_size: usize, rng: &mut Rng) -> Tensor {
        let row_stride = cols.div_ceil(group_size) * group_size;
        let mut codes = alloc::vec![0u8; rows * row_stride];
        for r in 0..rows {
            for c in 0..cols {
                // Every code value appears: a running counter mixed with random codes.
                let i = r * cols + c;
                codes[r * row_stride + c] = if i % 2 == 0 { (i / 2 % 256) as u8 } else { rng.next() as u8 };
            }
        }
        let params = (0..rows * row_stride / group_size)
            .map(|_| GroupParams {
                scale: f16::from_f32(0.001 + 0.02 * rng.f32().abs()),
                min: f16::from_f32(-rng.f32().abs()),
            })
            .collect();
        Tensor { params, planes: pack_nested8_planes(&codes), row_stride, group_size }
    }

    fn view(&self, view_bits: u8) -> Nested8<'_> {
        let n = blocks::nested8_planes_for_view(view_bits).unwrap();
        let mut planes: [&[u8]; 6] = [&[]; 6];
        for (p, plane) in planes.iter_mut().zip(&self.planes).take(n) {
            *p = plane;
        }
        // The 8-bit kernels read the nibble plane, as `Nested8::prepare` builds it.
        let low = (view_bits == 8).then(|| alloc::sync::Arc::from(blocks::low_nibbles(&planes, self.planes[0].len() * 4)));
        Nested8 { params: (&self.params).into(), planes, group_size: self.group_size, view_bits, row_stride: self.row_stride, repacked: None, low }
    }
}

/// (n, cols) activations: random, with an all-zero block, a block of large magnitudes and one
/// of tiny ones, and values that land exactly on .5 after scaling (round half to even).
fn activations(n: usize, cols: usize, block: usize, rng: &mut Rng) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n * cols).map(|_| rng.f32()).collect();
    for t in 0..n {
        let row = &mut x[t * cols..(t + 1) * cols];
        let blocks = cols.div_ceil(block);
        let b = (t + 1) % blocks;
        let hi = ((b + 1) * block).min(cols);
        match t % 4 {
            0 => row[b * block..hi].fill(0.0),
            1 => row[b * block..hi].iter_mut().for_each(|v| *v *= 3.0e30),
            2 => row[b * block..hi].iter_mut().for_each(|v| *v *= 1.0e-30),
            _ => {
                // amax 127 (id = 1): x.5 values are ties.
                for (j, v) in row[b * block..hi].iter_mut().enumerate() {
                    *v = if j == 0 { 127.0 } else { (j % 40) as f32 - 19.5 };
                }
            }
        }
    }
    x
}

fn simd_variants() -> Vec<(&'static str, Kernels)> {
    let mut v = Vec::new();
    for (name, k) in Kernels::variants() {
        if matches!(name, "scalar" | "portable") {
            continue;
        }
        match k {
            Some(k) => v.push((name, k)),
            None => std::eprintln!("kernel table {name}: not available on this CPU: NOT tested"),
        }
    }
    assert!(!v.is_empty(), "no aarch64 table available (NEON is baseline on aarch64 Linux)");
    v
}

fn assert_acts_eq(name: &str, got: &QActs, want: &QActs) {
    assert_eq!((got.n, got.padded_cols, got.block), (want.n, want.padded_cols, want.block), "{name}: shape");
    assert_eq!(got.q, want.q, "{name}: q");
    assert_eq!(got.sum, want.sum, "{name}: sums");
    let bits = |d: &[f32]| d.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got.d), bits(&want.d), "{name}: scales");
}

fn assert_out_eq(what: &str, got: &[f32], want: &[f32]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.to_bits() == w.to_bits(), "{what}: output {i}: got {g}, reference {w}");
    }
}

#[test]
fn unpack_rebuilds_every_view_code() {
    let mut rng = Rng(7);
    let t = Tensor::new(1, 256, 32, &mut rng);
    for v in NESTED8_VIEWS {
        let w = t.view(v);
        let planes: [*const u8; 5] = super::nested8::sources(&w).map(|s| s.as_ptr());
        for chunk in 0..8 {
            let mut got = [[0i8; 16]; 4];
            // SAFETY: NEON is baseline on aarch64 Linux; the planes hold 256 codes and the
            // chunk starts at 32 * chunk < 256.
            unsafe {
                let i = chunk * 32;
                let q = match v {
                    2 => unpack32::<2>(&planes, i, &Consts::new::<2>()),
                    3 => unpack32::<3>(&planes, i, &Consts::new::<3>()),
                    4 => unpack32::<4>(&planes, i, &Consts::new::<4>()),
                    5 => unpack32::<5>(&planes, i, &Consts::new::<5>()),
                    6 => unpack32::<6>(&planes, i, &Consts::new::<6>()),
                    _ => unpack32::<8>(&planes, i, &Consts::new::<8>()),
                };
                for (g, q) in got.iter_mut().zip(q) {
                    vst1q_s8(g.as_mut_ptr(), q);
                }
            }
            for j in 0..32 {
                let i = chunk * 32 + j;
                let code = blocks::nested8_code(&w.planes, v, i) as i8;
                let (top, low) = (got[j / 16][j % 16], got[2 + j / 16][j % 16]);
                if v == 8 {
                    assert_eq!((top, low), (code >> 4 & 15, code & 15), "view 8 code {i}");
                } else {
                    assert_eq!((top, low), (code, 0), "view {v} code {i}");
                }
            }
        }
    }
}

#[test]
fn quantize_acts_matches_reference() {
    let mut rng = Rng(11);
    for (name, k) in simd_variants() {
        for block in [8, 32, 64, 128] {
            for cols in [block, 5 * block, 3 * block - 5, 7] {
                for n in [1, 2, 3] {
                    let x = activations(n, cols, block, &mut rng);
                    let mut want = QActs::default();
                    reference::quantize_acts(&x, n, cols, block, &mut want);
                    let mut got = QActs::default();
                    (k.quantize_acts)(&x, n, cols, block, &mut got);
                    assert_acts_eq(&std::format!("{name} block {block} cols {cols} n {n}"), &got, &want);
                }
            }
        }
    }
}

/// (group size, cols, rows, first row): one group, many groups, a padded tail; 1, a few and
/// more than 64 rows.
const SHAPES: [(usize, usize, usize, usize); 9] = [
    (8, 20, 3, 0),
    (32, 32, 1, 0),
    (32, 224, 5, 2),
    (32, 90, 67, 1),
    (64, 64, 3, 0),
    (64, 571, 4, 1),
    (64, 192, 70, 3),
    (128, 128, 2, 0),
    (128, 635, 9, 2),
];

#[test]
fn matvec_matches_reference() {
    let mut rng = Rng(3);
    let variants = simd_variants();
    for (gs, cols, rows, first) in SHAPES {
        let t = Tensor::new(first + rows, cols, gs, &mut rng);
        let x = activations(1, cols, gs, &mut rng);
        let mut acts = QActs::default();
        reference::quantize_acts(&x, 1, cols, gs, &mut acts);
        for v in NESTED8_VIEWS {
            let w = t.view(v);
            let mut want = alloc::vec![0f32; rows];
            reference::nested8_matvec(&w, &acts, first, &mut want);
            for (name, k) in &variants {
                let mut kacts = QActs::default();
                (k.quantize_acts)(&x, 1, cols, gs, &mut kacts);
                let mut got = alloc::vec![f32::NAN; rows];
                (k.nested8_matvec[view_index(v)])(&w, &kacts, first, &mut got);
                let what = std::format!("{name} matvec view {v} group {gs} cols {cols} rows {rows}");
                assert_out_eq(&what, &got, &want);
                // Activations without this table's `aux` copy: the natural-order path only.
                let mut got = alloc::vec![f32::NAN; rows];
                (k.nested8_matvec[view_index(v)])(&w, &acts, first, &mut got);
                assert_out_eq(&std::format!("{what}, reference activations"), &got, &want);
            }
        }
    }
}

#[test]
fn matmul_matches_reference() {
    let mut rng = Rng(5);
    let variants = simd_variants();
    for (gs, cols, rows, first) in SHAPES {
        let t = Tensor::new(first + rows, cols, gs, &mut rng);
        for n in [1, 2, 3, 7, 64] {
            if n == 64 && rows * cols > 4000 {
                continue; // the reference is slow under qemu; 64 tokens run on the smaller shapes
            }
            let x = activations(n, cols, gs, &mut rng);
            let mut acts = QActs::default();
            reference::quantize_acts(&x, n, cols, gs, &mut acts);
            for v in NESTED8_VIEWS {
                let w = t.view(v);
                let mut want = alloc::vec![0f32; n * rows];
                reference::nested8_matmul(&w, &acts, first, &mut want);
                for (name, k) in &variants {
                    let mut kacts = QActs::default();
                    (k.quantize_acts)(&x, n, cols, gs, &mut kacts);
                    let mut got = alloc::vec![f32::NAN; n * rows];
                    (k.nested8_matmul[view_index(v)])(&w, &kacts, first, &mut got);
                    let what = std::format!("{name} matmul view {v} group {gs} cols {cols} rows {rows} tokens {n}");
                    assert_out_eq(&what, &got, &want);
                    // Activations quantized by the reference table (no `aux` copy) give the same.
                    let mut got = alloc::vec![f32::NAN; n * rows];
                    (k.nested8_matmul[view_index(v)])(&w, &acts, first, &mut got);
                    assert_out_eq(&std::format!("{what}, reference activations"), &got, &want);
                }
            }
        }
    }
}

/// One cache tensor as stored, random: `rows` rows of `dim` values in `bits` (codes covering
/// every value, f16 values and scales of either sign and size, a zero scale now and then).
struct KvTensor {
    bits: KvBits,
    dim: usize,
    floats: Vec<f32>,
    halves: Vec<u16>,
    q8: Vec<i8>,
    q4: Vec<u8>,
    scales: Vec<u16>,
}

impl KvTensor {
    fn new(bits: KvBits, rows: usize, dim: usize, rng: &mut Rng) -> KvTensor {
        let groups = dim.div_ceil(KV_GROUP);
        let mut t = KvTensor { bits, dim, floats: Vec::new(), halves: Vec::new(), q8: Vec::new(), q4: Vec::new(), scales: Vec::new() };
        let mut half = |scale: f32| f16::from_f32(scale * rng.f32()).to_bits();
        match bits {
            KvBits::F32 => t.floats = (0..rows * dim).map(|_| rng.f32()).collect(),
            KvBits::F16 => t.halves = (0..rows * dim).map(|_| half(1.5)).collect(),
            KvBits::Q8 => {
                t.scales = (0..rows * groups).map(|g| if g % 7 == 3 { 0 } else { half(0.02) & 0x7FFF }).collect();
                t.q8 = (0..rows * dim).map(|_| rng.next() as i8).collect();
            }
            KvBits::Q4 => {
                // (d, m) pairs: d >= 0, m of either sign.
                t.scales = (0..2 * rows * groups).map(|i| if i % 2 == 0 { half(0.15) & 0x7FFF } else { half(1.0) }).collect();
                t.q4 = (0..rows * dim.div_ceil(2)).map(|_| rng.next() as u8).collect();
            }
        }
        t
    }

    /// The first `n` rows, exactly as the cache hands them out (no slack after the last one).
    fn rows(&self, n: usize) -> KvRows<'_> {
        let (dim, groups) = (self.dim, self.dim.div_ceil(KV_GROUP));
        let data = match self.bits {
            KvBits::F32 => RowData::F32(&self.floats[..n * dim]),
            KvBits::F16 => RowData::F16(&self.halves[..n * dim]),
            KvBits::Q8 => RowData::Q8 { codes: &self.q8[..n * dim], scales: &self.scales[..n * groups] },
            KvBits::Q4 => RowData::Q4 { codes: &self.q4[..n * dim.div_ceil(2)], scales: &self.scales[..2 * n * groups] },
        };
        KvRows { data, dim, offset: 0 }
    }
}

fn bits_of(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `attend_head` of every table against [`vector::attend_head`], scores and output bit for bit.
fn assert_attend_eq(what: &str, variants: &[(&'static str, Kernels)], q: &[f32], kv: KvView<'_>) {
    let hd = q.len();
    // A scores buffer longer than the cache: the entries use its first kv.len only.
    let run = |f: crate::kernels::frame::AttendHeadFn| {
        let (mut scores, mut out) = (alloc::vec![f32::NAN; kv.len + 3], alloc::vec![f32::NAN; hd]);
        f(q, kv, 0.125, &mut scores, &mut out);
        (bits_of(&scores), bits_of(&out))
    };
    let want = run(vector::attend_head);
    for (name, k) in variants {
        let got = run(k.attend_head);
        assert!(got.0 == want.0, "{name} attend_head scores: {what}");
        assert!(got.1 == want.1, "{name} attend_head output: {what}");
    }
}

/// `kv_rows` of every table against [`vector::kv_rows`]: rows `first..` of `rows` (`width`
/// columns) into an output of `out_len` floats.
fn assert_kv_rows_eq(what: &str, variants: &[(&'static str, Kernels)], rows: KvRows<'_>, first: usize, width: usize, out_len: usize) {
    let read = |f: crate::kernels::frame::KvRowsFn| {
        let mut out = alloc::vec![f32::NAN; out_len];
        f(rows, first, width, &mut out);
        bits_of(&out)
    };
    let want = read(vector::kv_rows);
    for (name, k) in variants {
        assert!(read(k.kv_rows) == want, "{name} kv_rows: {what}, first {first}, width {width}, {out_len} floats");
    }
}

/// Cache lengths: every count modulo 4 and 8, one position, more than 64 and 128.
const KV_LENGTHS: [usize; 12] = [1, 2, 3, 4, 5, 7, 8, 9, 33, 64, 100, 130];

#[test]
fn attend_head_matches_definition() {
    let mut rng = Rng(0xA77E_2D01);
    let variants = simd_variants();
    for keys in KvBits::ALL {
        for values in KvBits::ALL {
            let float = |b: KvBits| matches!(b, KvBits::F32 | KvBits::F16);
            // Integer codes come in groups of 32: heads of whole groups (1, 2, 3, 4 and 8, so
            // both column blocks of the mix); float caches also take other widths (the
            // definition's fallback).
            let dims: &[usize] = if float(keys) && float(values) { &[32, 64, 96, 128, 256, 48, 13] } else { &[32, 64, 96, 128, 256] };
            for &hd in dims {
                // Three heads a row; the cache's rows are read from each head's offset.
                let kv_dim = 3 * hd;
                let max_n = KV_LENGTHS[KV_LENGTHS.len() - 1];
                let (kt, vt) = (KvTensor::new(keys, max_n, kv_dim, &mut rng), KvTensor::new(values, max_n, kv_dim, &mut rng));
                for n in KV_LENGTHS {
                    if hd == 256 && n > 33 && !(keys == values && n == max_n) {
                        continue; // the reference is slow under qemu; the widest heads at fewer lengths
                    }
                    let q: Vec<f32> = (0..hd).map(|_| 2.0 * rng.f32()).collect();
                    let view = KvView { keys: kt.rows(n), values: vt.rows(n), len: n };
                    for head in [0, 1, 2] {
                        let what = std::format!("keys {keys:?}, values {values:?}, head {head} of {hd}, {n} positions");
                        assert_attend_eq(&what, &variants, &q, view.head(head * hd));
                    }
                }
            }
        }
    }
}

#[test]
fn kv_rows_match_definition() {
    let mut rng = Rng(0x4B56_0001);
    let variants = simd_variants();
    for bits in KvBits::ALL {
        let widths: &[usize] = if matches!(bits, KvBits::F32 | KvBits::F16) { &[32, 64, 96, 128, 256, 48, 13] } else { &[32, 64, 96, 128, 256] };
        for &hd in widths {
            let kv_dim = 3 * hd;
            for n in [1usize, 2, 3, 7, 8, 33, 100] {
                let t = KvTensor::new(bits, n, kv_dim, &mut rng);
                for head in [0, 1, 2] {
                    let rows = t.rows(n).shifted(head * hd);
                    let what = std::format!("{bits:?}, head {head} of {hd}, {n} rows");
                    for first in [0, 1, n / 2, n - 1].into_iter().filter(|&f| f < n) {
                        let left = n - first;
                        // Every row left, fewer, and an output with a partial row at its end.
                        for m in [left, left.div_ceil(2), 1] {
                            assert_kv_rows_eq(&what, &variants, rows, first, hd, m * hd);
                        }
                        assert_kv_rows_eq(&what, &variants, rows, first, hd, left * hd - hd / 2);
                    }
                    // A whole row of every head at once.
                    assert_kv_rows_eq(&what, &variants, t.rows(n), 0, kv_dim, n * kv_dim);
                }
            }
        }
    }
}

/// Every f16 bit pattern (zeros, subnormals, infinities, NaNs) read back as a value and as a
/// scale: the widening is `half::f16::to_f32` bit for bit.
#[test]
fn kv_rows_widen_every_f16() {
    let variants = simd_variants();
    let (dim, n) = (256usize, 256usize); // 65536 values
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let want: Vec<u32> = all.iter().map(|&h| f16::from_bits(h).to_f32().to_bits()).collect();
    let rows = KvRows { data: RowData::F16(&all), dim, offset: 0 };
    for (name, k) in &variants {
        let mut out = alloc::vec![f32::NAN; n * dim];
        (k.kv_rows)(rows, 0, dim, &mut out);
        assert!(bits_of(&out) == want, "{name} kv_rows: f16 widening");
    }
    assert_kv_rows_eq("every f16", &variants, rows, 0, dim, n * dim);
    // Every pattern as an int8 scale (codes 1, -1, 0, 127 by turns) and as int4's d and m.
    let dim = 2 * KV_GROUP;
    let groups = all.len();
    let codes: Vec<i8> = (0..groups / 2 * dim).map(|i| [1, -1, 0, 127][i % 4]).collect();
    let q8 = KvRows { data: RowData::Q8 { codes: &codes, scales: &all }, dim, offset: 0 };
    assert_kv_rows_eq("int8, every f16 scale", &variants, q8, 0, dim, groups / 2 * dim);
    // int4 adds `c · d + m` where both may be NaN: which NaN's payload an operation on two
    // NaNs returns is not specified in Rust (LLVM may swap the operands of the sum), so there
    // any NaN is taken for any other; every other value is compared bit for bit.
    let nibbles: Vec<u8> = (0..groups / 4 * dim / 2).map(|i| (i * 37) as u8).collect();
    let q4 = KvRows { data: RowData::Q4 { codes: &nibbles, scales: &all }, dim, offset: 0 };
    let read = |f: crate::kernels::frame::KvRowsFn| {
        let mut out = alloc::vec![0f32; groups / 4 * dim];
        f(q4, 0, dim, &mut out);
        out.iter().map(|x| if x.is_nan() { f32::NAN.to_bits() } else { x.to_bits() }).collect::<Vec<_>>()
    };
    let want = read(vector::kv_rows);
    for (name, k) in &variants {
        assert!(read(k.kv_rows) == want, "{name} kv_rows: int4, every f16 (d, m)");
    }
}

/// A cache filled through `KvCache` (quantized and rotated as the model stores it), with a
/// window whose recent slots have wrapped around: every head, every pair of stored formats.
#[test]
fn attend_head_matches_definition_on_a_windowed_cache() {
    let mut rng = Rng(0x3D0E_11A5);
    let variants = simd_variants();
    let (hd, heads, slots) = (64usize, 2usize, 37usize);
    let kv_dim = heads * hd;
    for format in ["16", "8", "4", "k8v4", "k4v8", "k16v4", "k32v8", "k4v32"] {
        let format = KvFormat::parse(format).unwrap();
        let mut cache = KvCache::with_format(1, slots, kv_dim, hd, format);
        cache.set_window(KvWindow { sink: 4, slots }, 0).unwrap();
        let mut stored = 0;
        for end in [1usize, 5, 36, 37, 38, 90] {
            for p in stored..end {
                let k: Vec<f32> = (0..kv_dim).map(|_| 3.0 * rng.f32()).collect();
                let v: Vec<f32> = (0..kv_dim).map(|_| rng.f32()).collect();
                cache.store(0, p, &k, &v).unwrap();
            }
            stored = end;
            let n = cache.filled(end);
            let q: Vec<f32> = (0..hd).map(|_| rng.f32()).collect();
            for head in 0..heads {
                let view = cache.view(0, n).head(head * hd);
                let what = std::format!("KV {}, window of {slots} after {end} positions, head {head}", format.name());
                assert_attend_eq(&what, &variants, &q, view);
                assert_kv_rows_eq(&what, &variants, view.keys, 1.min(n - 1), hd, (n - 1.min(n - 1)) * hd);
                assert_kv_rows_eq(&what, &variants, view.values, 0, hd, n * hd);
            }
        }
    }
}

#[test]
fn detect_picks_the_best_available_table() {
    let best = Kernels::variants().into_iter().filter_map(|(_, k)| k).next_back().unwrap();
    let detected = Kernels::detect();
    assert_eq!(detected.name, best.name);
    std::eprintln!("aarch64 kernel table detected: {}", detected.name);
}
