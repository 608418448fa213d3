//! The CUDA backend's kernels against the scalar reference (`--features cuda`).
//!
//! Three kinds of test, each saying loudly what it could not do here:
//! - on any machine: opening the GPU where no driver is installed is a clear error, not a panic;
//! - where NVRTC loads (`libnvrtc.so` on the library path; a CPU-only host can get it with
//!   `pip install nvidia-cuda-nvrtc-cu12`): every kernel compiles to PTX, so a syntax or type
//!   error in `runtime/src/backend/cuda/kernels/` fails here without a GPU;
//! - on a machine with an NVIDIA GPU (`targets/cuda/run.sh`): every kernel against the
//!   reference on random inputs of every shape class and every view; without a GPU they pass
//!   after printing that nothing was checked.
#![cfg(feature = "cuda")]

mod support;
use support::{rand_f32, rand_u8};

use edge_runtime::backend::cuda::device::{self, Gpu};
use edge_runtime::blocks::{pack_nested8_planes, GroupParams, NESTED8_VIEWS};
use edge_runtime::kernels::{acts, reference, tokens, Nested8, QActs};
use half::f16;

/// GPU 0, or `None` after saying loudly why the test checks nothing here.
fn gpu(test: &str) -> Option<Gpu> {
    match Gpu::open(0) {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("\n*** {test}: NO GPU FOUND, NOTHING CHECKED: {e} ***\n");
            None
        }
    }
}

#[test]
fn without_a_driver_opening_the_gpu_says_so() {
    if device::driver_present() {
        eprintln!("\n*** a CUDA driver is installed here: the no-driver error is not exercised ***\n");
        return;
    }
    let e = Gpu::open(0).unwrap_err().to_string();
    assert!(e.contains("no NVIDIA driver was found"), "{e}");
    assert!(e.contains("--device cpu"), "{e}");
}

#[test]
fn every_kernel_compiles_with_nvrtc() {
    if !device::nvrtc_present() {
        eprintln!("\n*** NVRTC (libnvrtc.so) NOT FOUND: the kernels were NOT compiled; put its folder on LD_LIBRARY_PATH ***\n");
        assert!(device::compile(None).unwrap_err().to_string().contains("NVRTC"));
        return;
    }
    // Jetson Xavier, Jetson Orin, and a discrete Hopper.
    for arch in ["compute_72", "compute_87", "compute_90"] {
        let ptx = device::compile(Some(arch)).unwrap_or_else(|e| panic!("{arch}: {e}")).to_src();
        for f in edge_runtime::backend::cuda::sources::ENTRY_POINTS {
            assert!(ptx.contains(&format!(".entry {f}(")), "{arch}: no entry {f} in the PTX");
        }
        assert!(ptx.contains("dp4a"), "{arch}: the nested products do not use dp4a");
    }
}

/// A random nested tensor: (params, planes) of rows x padded codes.
fn nested(rows: usize, padded: usize, group: usize, seed: u64) -> (Vec<GroupParams>, [Vec<u8>; 6]) {
    let codes = rand_u8(rows * padded, seed);
    let params = (0..rows * padded / group)
        .map(|g| GroupParams { scale: f16::from_f32(0.004 + (g % 7) as f32 * 1e-3), min: f16::from_f32(-0.5 + (g % 5) as f32 * 0.01) })
        .collect();
    (params, pack_nested8_planes(&codes))
}

#[test]
fn nested_products_match_the_reference_at_every_view() {
    let Some(g) = gpu("nested_products_match_the_reference_at_every_view") else { return };
    // (rows, cols, group, tokens): one group, a ragged last group, more groups than a warp's
    // lanes, rows not a multiple of a block's 4 warps; 1 token (matvec), a partial tile, two
    // tiles and a tail (matmul).
    let shapes: [(usize, usize, usize, usize); 5] = [(4, 32, 32, 1), (7, 50, 32, 3), (33, 1100, 32, 9), (64, 576, 64, 17), (5, 4096, 128, 1)];
    for (si, &(rows, cols, group, n)) in shapes.iter().enumerate() {
        let padded = cols.div_ceil(group) * group;
        let (params, planes) = nested(rows, padded, group, si as u64);
        let x = rand_f32(n * cols, 100 + si as u64);
        let mut qa = QActs::default();
        acts::quantize_reference(&x, n, cols, group, &mut qa);
        let refs: [&[u8]; 6] = core::array::from_fn(|p| planes[p].as_slice());
        for view in NESTED8_VIEWS {
            let m = g.upload_nested8(&params, &refs, rows, padded, group, view).unwrap();
            let got = g.nested8_product(&m, &qa).unwrap();
            let w = Nested8 { params: (&params).into(), planes: refs, group_size: group, view_bits: view, row_stride: padded, repacked: None, low: None };
            for t in 0..n {
                for r in 0..rows {
                    let want = reference::nested8_row_dot(&w, r, &qa, t);
                    let have = got[t * rows + r];
                    // Integer sums are exact; only the float sum over groups is reordered.
                    let tol = 1e-5 * want.abs().max(1.0) * (padded / group) as f32;
                    assert!((want - have).abs() <= tol, "shape {si} view {view} token {t} row {r}: {have} vs {want}");
                }
            }
        }
    }
}

#[test]
fn activations_quantize_bit_identically() {
    let Some(g) = gpu("activations_quantize_bit_identically") else { return };
    for &(n, cols, block) in &[(1, 32, 32), (3, 50, 32), (2, 1100, 64), (1, 4096, 128)] {
        let mut x = rand_f32(n * cols, cols as u64);
        x[0] = 0.5 / 127.0 * 3.0; // a value near a rounding tie
        let mut want = QActs::default();
        acts::quantize_reference(&x, n, cols, block, &mut want);
        let (q, d, s) = g.quantize(&x, n, cols, block).unwrap();
        assert_eq!(q, want.q[..n * want.padded_cols], "q ({n}, {cols}, {block})");
        assert_eq!(d, want.d[..n * want.blocks()], "d ({n}, {cols}, {block})");
        assert_eq!(s, want.sum[..n * want.blocks()], "sum ({n}, {cols}, {block})");
    }
}

fn close(what: &str, have: &[f32], want: &[f32], tol: f32) {
    assert_eq!(have.len(), want.len(), "{what}");
    for (i, (h, w)) in have.iter().zip(want).enumerate() {
        assert!((h - w).abs() <= tol * w.abs().max(1.0), "{what}[{i}]: {h} vs {w}");
    }
}

#[test]
fn elementwise_kernels_match_the_host() {
    let Some(g) = gpu("elementwise_kernels_match_the_host") else { return };
    for &(n, dim) in &[(1, 64), (3, 576), (2, 1000)] {
        let x = rand_f32(n * dim, 1);
        let w = rand_f32(dim, 2);
        let mut want = vec![0.0; n * dim];
        tokens::rmsnorm(&mut want, &x, &w, 1e-5);
        close("rmsnorm", &g.rmsnorm(&x, &w, 1e-5).unwrap(), &want, 1e-5);

        let up = rand_f32(n * dim, 3);
        let (mut sw, mut ge) = (x.clone(), x.clone());
        tokens::swiglu(&mut sw, &up);
        tokens::geglu(&mut ge, &up);
        close("swiglu", &g.glu("swiglu", &x, &up).unwrap(), &sw, 1e-5);
        close("geglu", &g.glu("geglu", &x, &up).unwrap(), &ge, 1e-5);

        let mut sm = x.clone();
        for row in sm.chunks_mut(dim) {
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let z: f32 = row.iter().map(|v| (v - m).exp()).sum();
            row.iter_mut().for_each(|v| *v = (*v - m).exp() / z);
        }
        close("softmax", &g.softmax(&x, dim).unwrap(), &sm, 1e-5);
    }
}

#[test]
fn rope_matches_the_host() {
    let Some(g) = gpu("rope_matches_the_host") else { return };
    let (n, head_dim, q_dim, kv_dim) = (3, 64, 9 * 64, 3 * 64);
    let (q, k) = (rand_f32(n * q_dim, 4), rand_f32(n * kv_dim, 5));
    let cos: Vec<f32> = (0..n * head_dim / 2).map(|i| (i as f32 * 0.1).cos()).collect();
    let sin: Vec<f32> = (0..n * head_dim / 2).map(|i| (i as f32 * 0.1).sin()).collect();
    let (mut wq, mut wk) = (q.clone(), k.clone());
    tokens::rope(&mut wq, &mut wk, head_dim, &cos, &sin);
    close("rope q", &g.rope(&q, q_dim, head_dim, &cos, &sin).unwrap(), &wq, 1e-5);
    close("rope k", &g.rope(&k, kv_dim, head_dim, &cos, &sin).unwrap(), &wk, 1e-5);
}

#[test]
fn f16_attention_matches_a_host_softmax() {
    let Some(g) = gpu("f16_attention_matches_a_host_softmax") else { return };
    // (len, n, window): decode, prefill of a whole prompt, prefill with a sliding window.
    for &(len, n, window) in &[(37, 1, 0), (20, 20, 0), (300, 5, 64)] {
        let (n_heads, head_dim, group) = (9, 64, 3);
        let kv_dim = n_heads / group * head_dim;
        let q = rand_f32(n * n_heads * head_dim, 6);
        let to16 = |v: Vec<f32>| v.into_iter().map(|x| f16::from_f32(x).to_bits()).collect::<Vec<u16>>();
        let (k, v) = (to16(rand_f32(len * kv_dim, 7)), to16(rand_f32(len * kv_dim, 8)));
        let scale = 1.0 / (head_dim as f32).sqrt();
        let got = g.attend_f16(&q, &k, &v, (len, n, n_heads, head_dim, group, kv_dim), scale, window).unwrap();
        let f = |b: u16| f16::from_bits(b).to_f32();
        for t in 0..n {
            let pos = len - n + t;
            let lo = if window > 0 { (pos + 1).saturating_sub(window) } else { 0 };
            for h in 0..n_heads {
                let qh = &q[(t * n_heads + h) * head_dim..][..head_dim];
                let kvh = h / group * head_dim;
                let s: Vec<f64> = (lo..=pos)
                    .map(|p| (0..head_dim).map(|i| qh[i] as f64 * f(k[p * kv_dim + kvh + i]) as f64).sum::<f64>() * scale as f64)
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for i in 0..head_dim {
                    let want: f64 = (lo..=pos).zip(&s).map(|(p, x)| (x - m).exp() / z * f(v[p * kv_dim + kvh + i]) as f64).sum();
                    let have = got[(t * n_heads + h) * head_dim + i];
                    assert!((have as f64 - want).abs() < 1e-4, "len {len} token {t} head {h} dim {i}: {have} vs {want}");
                }
            }
        }
    }
}
