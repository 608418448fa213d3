//! Every aarch64 table against the scalar reference, on random inputs of every length class:
//! columns of one group, many groups and a padded tail; 1, a few and more than 64 rows (from a
//! non-zero first row); 1, 2, 3, 7 and 64 tokens; group sizes 8 (the reference fallback), 32,
//! 64 and 128; codes covering all of 0..=255; all-zero activation blocks and large magnitudes.
//!
//! Tolerance: none. The integer group sums are exact and the kernels add the float terms in
//! the reference's order with its expression, so every output is bit-identical (compared
//! with `to_bits`). A CPU lacking a table's features prints "NOT tested" for it.

use super::unpack::{unpack32, Consts};
use crate::blocks::{self, pack_nested8_planes, GroupParams, NESTED8_VIEWS};
use crate::kernels::acts::QActs;
use crate::kernels::frame::{view_index, Kernels, Nested8};
use crate::kernels::reference;
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
        Nested8 { params: &self.params, planes, group_size: self.group_size, view_bits, row_stride: self.row_stride, repacked: None, low }
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

#[test]
fn detect_picks_the_best_available_table() {
    let best = Kernels::variants().into_iter().filter_map(|(_, k)| k).next_back().unwrap();
    let detected = Kernels::detect();
    assert_eq!(detected.name, best.name);
    std::eprintln!("aarch64 kernel table detected: {}", detected.name);
}
