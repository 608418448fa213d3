//! Single-thread throughput of the nested8 kernel tables (not a test):
//! `cargo run --release -p edge-runtime --example kernel_speed [-- scalar]`
//!
//! Decode: quantize one token + matvec over all rows, GB/s of weight bytes the view reads.
//! Prefill: quantize n tokens + matmul in tiles of 64 rows (as `kernels::matmul` calls it),
//! GFLOP/s (2 · rows · cols · n); the model estimate uses n = 512 (pp512). Then the per-token decode time of every matrix of
//! SmolLM2-135M (30 layers + the tied head) at each view. Fastest of several runs (shared machine).
//! `VIEWS=4,5,6,8` in the environment measures only those views; `NO_PREFILL=1` only decode;
//! `COLD=1` adds the decode of a matrix larger than the caches; `GROUP=128` sets the group size (default 64);
//! `SUPER=1` stores the group parameters in super-blocks (`blocks::SuperParams`) instead of f16 pairs.

use std::time::Instant;

use edge_runtime::blocks::{pack_nested8_planes, GroupParams, ParamsRef, SuperParams, NESTED8_VIEWS};
use edge_runtime::kernels::dispatch::view_index;
use edge_runtime::kernels::{Kernels, Nested8, QActs};
use half::f16;

struct Tensor {
    params: Vec<GroupParams>,
    supers: Option<Vec<SuperParams>>,
    planes: [Vec<u8>; 6],
    stride: usize,
}

fn tensor(rows: usize, cols: usize, group: usize) -> Tensor {
    let stride = cols.div_ceil(group) * group;
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let codes: Vec<u8> = (0..rows * stride)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 56) as u8
        })
        .collect();
    let params = (0..rows * stride / group)
        .map(|g| GroupParams { scale: f16::from_f32(0.01 + (g % 7) as f32 * 1e-3), min: f16::from_f32(-1.0) })
        .collect();
    let supers = std::env::var("SUPER").is_ok().then(|| {
        let blocks = rows * SuperParams::per_row(stride / group);
        (0..blocks)
            .map(|b| SuperParams::new(f16::from_f32(1e-3), f16::from_f32(1.0 / 32.0), core::array::from_fn(|j| (10 + (b + j) % 7) as u8), [-32; 8]))
            .collect()
    });
    Tensor { params, supers, planes: pack_nested8_planes(&codes), stride }
}

/// The view with the form table `k` reads, as a load for it makes (the runs at 2, 3 and 4
/// bits, the nibble plane at 8), unless `PLANES` is set in the environment (then the 2-, 3- and
/// 4-bit kernels read the planes).
fn view<'t>(k: &Kernels, t: &'t Tensor, group: usize, bits: u8) -> Nested8<'t> {
    let refs: Vec<&[u8]> = t.planes.iter().map(|p| p.as_slice()).collect();
    let params = match &t.supers {
        Some(s) => ParamsRef::Super { blocks: s, groups_per_row: t.stride / group },
        None => ParamsRef::F16(&t.params),
    };
    let w = Nested8::stored(params, &refs, group, bits, t.stride).expect("a valid view");
    if std::env::var("PLANES").is_ok() && bits <= 4 {
        w
    } else {
        w.prepare(k)
    }
}

fn view_bytes(w: &Nested8<'_>) -> usize {
    w.params.bytes().len() + w.planes.iter().map(|p| p.len()).sum::<usize>()
}

/// The fastest run: the machine is shared, and a run that another process preempted says
/// nothing about the kernel.
fn fastest(v: Vec<f64>) -> f64 {
    v.into_iter().fold(f64::INFINITY, f64::min)
}

/// Fastest seconds of `f` over `reps` runs (after one warm-up).
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    fastest(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn decode_secs(k: &Kernels, w: &Nested8<'_>, rows: usize, cols: usize, reps: usize) -> f64 {
    let x: Vec<f32> = (0..cols).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01).collect();
    let mut acts = QActs::default();
    let mut out = vec![0f32; rows];
    time(reps, || {
        (k.quantize_acts)(&x, 1, cols, w.group_size, &mut acts);
        (k.nested8_matvec[view_index(w.view_bits)])(w, &acts, 0, &mut out);
    })
}

/// Prefill seconds: quantize n tokens once, then matmul in tiles of 64 rows (as
/// `kernels::matmul` calls the table). Tall matrices are timed in slices of 2048 rows (fastest
/// run of each, summed), so that a run long enough to be preempted is not the measure.
fn prefill_secs(k: &Kernels, w: &Nested8<'_>, rows: usize, cols: usize, n: usize, reps: usize) -> f64 {
    let x: Vec<f32> = (0..n * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01).collect();
    let mut acts = QActs::default();
    let mut tile = vec![0f32; 64 * n];
    let q = time(reps, || (k.quantize_acts)(&x, n, cols, w.group_size, &mut acts));
    let mut total = q;
    for s0 in (0..rows).step_by(2048) {
        let s1 = rows.min(s0 + 2048);
        total += time(reps, || {
            let mut r0 = s0;
            while r0 < s1 {
                let tr = 64.min(s1 - r0);
                (k.nested8_matmul[view_index(w.view_bits)])(w, &acts, r0, &mut tile[..n * tr]);
                r0 += tr;
            }
        });
    }
    total
}

/// The views to measure: `VIEWS` (comma-separated bits) or all of them.
fn views() -> Vec<u8> {
    match std::env::var("VIEWS") {
        Ok(v) => v.split(',').map(|b| b.trim().parse().expect("VIEWS: bits such as 4,5,6,8")).collect(),
        Err(_) => NESTED8_VIEWS.to_vec(),
    }
}

fn main() {
    let only: Option<String> = std::env::args().nth(1);
    let views = views();
    let prefill = std::env::var("NO_PREFILL").is_err();
    let group: usize = std::env::var("GROUP").ok().and_then(|s| s.parse().ok()).unwrap_or(64);
    let tables: Vec<Kernels> = Kernels::variants()
        .into_iter()
        .filter_map(|(_, k)| k)
        .filter(|k| only.as_deref().is_none_or(|o| o == k.name))
        .collect();
    let shapes = [(576usize, 1536usize), (49152, 576)];
    let tensors: Vec<Tensor> = shapes.iter().map(|&(r, c)| tensor(r, c, group)).collect();
    // A matrix four times the head's (113 M codes), far larger than the caches: decode from memory.
    let cold = std::env::var("COLD").is_ok().then(|| tensor(4 * 49152, 576, group));
    for k in &tables {
        println!("== {} (group {group}, single thread)", k.name);
        for &bits in views.iter().filter(|_| cold.is_some()) {
            let Some(t) = &cold else { break };
            let w = view(k, t, group, bits);
            let dt = decode_secs(k, &w, 4 * 49152, 576, 5);
            println!("{:>6}x{:<5} view {bits}: decode {:>8.1} us {:>6.2} GB/s (from memory)", 4 * 49152, 576, dt * 1e6, view_bytes(&w) as f64 / dt / 1e9);
        }
        for (&(rows, cols), t) in shapes.iter().zip(&tensors) {
            for &bits in &views {
                let w = view(k, t, group, bits);
                let reps = if k.name == "scalar" { 3 } else { std::env::var("REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(15) };
                let dt = decode_secs(k, &w, rows, cols, reps);
                let n = if k.name == "scalar" { 16 } else { 128 };
                print!("{rows:>6}x{cols:<5} view {bits}: decode {:>8.1} us {:>6.2} GB/s", dt * 1e6, view_bytes(&w) as f64 / dt / 1e9);
                if prefill {
                    let pt = prefill_secs(k, &w, rows, cols, n, if k.name == "scalar" { 1 } else { 5 });
                    print!("  | prefill n={n} {:>7.2} GFLOP/s", 2.0 * (rows * cols * n) as f64 / pt / 1e9);
                }
                println!();
            }
        }
        // SmolLM2-135M: per layer q, k, v, o, gate, up, down; 30 layers; tied head.
        let layer: [(usize, usize); 7] =
            [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)];
        let lt: Vec<Tensor> = layer.iter().map(|&(r, c)| tensor(r, c, group)).collect();
        for &bits in &views {
            let reps = if k.name == "scalar" { 3 } else { 21 };
            let mut per_token = 0.0;
            let mut pp = 0.0;
            let n = 512;
            for (&(r, c), t) in layer.iter().zip(&lt) {
                let w = view(k, t, group, bits);
                per_token += 30.0 * decode_secs(k, &w, r, c, reps);
                if k.name != "scalar" && prefill {
                    pp += 30.0 * prefill_secs(k, &w, r, c, n, 3);
                }
            }
            let head = view(k, &tensors[1], group, bits);
            per_token += decode_secs(k, &head, 49152, 576, reps.min(7));
            if k.name != "scalar" && prefill {
                pp += prefill_secs(k, &head, 49152, 576, n, 3);
            }
            print!("SmolLM2-135M view {bits}: decode matrices {:.2} ms/token single thread", per_token * 1e3);
            if k.name != "scalar" && prefill {
                print!(", prefill matrices {:.0} tok/s single thread (n={n})", n as f64 / pp);
            }
            println!();
        }
    }
}
