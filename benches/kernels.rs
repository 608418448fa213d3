//! Matrix-product throughput per encoding and view on SmolLM2-135M shapes, 1 and 2 threads.
//!
//! - `matvec/<shape>`: decode (one token), reported as GB/s of weight bytes the view reads;
//! - `matmul/<shape>/<tokens>`: prefill, 64 and 512 tokens, reported as elements/s where one
//!   element is one FLOP (`2 * rows * cols * tokens` per product);
//! - `pool`: the cost of one empty job on the persistent thread pool (1 worker + the caller).
//!
//! Shapes (rows x cols, group 64): 576x576 (attention), 1536x576 (ffn gate/up), 576x1536
//! (ffn down), 49152x576 (output head; matmul with 64 tokens only: prefill asks the head for
//! the last token's logits). The kernels are the detected table (`EDGE_RUN_KERNELS=scalar`
//! benches the scalar reference). Measurement is kept short so `cargo bench --bench kernels`
//! finishes in a few minutes on 2 cores; filter with e.g. `cargo bench --bench kernels -- matvec`.

#[path = "../runtime/tests/support/mod.rs"]
mod support;
use support::rand_f32;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use edge_runtime::blocks::{pack_nested8_planes, GroupParams};
use edge_runtime::format::{Checkpoint, CheckpointWriter, Encoding, TensorData};
use edge_runtime::kernels::{self, Matrix, Scratch};
use half::f16;

const GROUP: usize = 64;
const SHAPES: [(&str, usize, usize); 4] =
    [("576x576", 576, 576), ("1536x576", 1536, 576), ("576x1536", 576, 1536), ("49152x576", 49152, 576)];
const VIEWS: [(&str, Option<u8>); 5] =
    [("f16", None), ("q8", Some(8)), ("q4", Some(4)), ("q3", Some(3)), ("q2", Some(2))];
const THREADS: [usize; 2] = [1, 2];


/// A checkpoint holding one (rows, cols) matrix as f16 ("f16") and as nested8 ("nested"), in a
/// 16-byte aligned buffer, and its length.
fn checkpoint(rows: usize, cols: usize) -> (Vec<u128>, usize) {
    let v = rand_f32(rows * cols, (rows * 31 + cols) as u64);
    let mut w = CheckpointWriter::new();
    let halves: Vec<f16> = v.iter().map(|&x| f16::from_f32(x * 0.05)).collect();
    let shape = vec![rows as u64, cols as u64];
    w.add_tensor(TensorData {
        name: "f16".into(),
        encoding: Encoding::F16,
        shape: shape.clone(),
        group_size: 0,
        segments: vec![bytemuck::cast_slice(&halves).to_vec()],
    })
    .unwrap();
    // cols is a multiple of GROUP for every shape here: no row padding.
    let codes: Vec<u8> = v.iter().map(|&x| ((x + 1.0) * 127.5) as u8).collect();
    let params: Vec<GroupParams> = (0..rows * cols / GROUP)
        .map(|g| GroupParams { scale: f16::from_f32(0.0004 + (g % 13) as f32 * 1e-5), min: f16::from_f32(-0.05) })
        .collect();
    let mut segments = vec![bytemuck::cast_slice(&params).to_vec()];
    segments.extend(pack_nested8_planes(&codes));
    w.add_tensor(TensorData { name: "nested".into(), encoding: Encoding::Nested8, shape, group_size: GROUP as u32, segments })
        .unwrap();
    let mut bytes = Vec::new();
    w.write_to(&mut bytes, |_, _| {}).unwrap();
    let mut buf = vec![0u128; bytes.len().div_ceil(16)];
    bytemuck::cast_slice_mut::<u128, u8>(&mut buf)[..bytes.len()].copy_from_slice(&bytes);
    (buf, bytes.len())
}

fn matrix<'a>(ck: &Checkpoint<'a>, view: Option<u8>) -> Matrix<'a> {
    let t = ck.tensor(if view.is_some() { "nested" } else { "f16" }).unwrap();
    let (rows, cols, stored) = t.blocks().unwrap();
    Matrix::from_blocks(rows, cols, stored, view).unwrap()
}

fn products(c: &mut Criterion) {
    for (shape, rows, cols) in SHAPES {
        let (buf, len) = checkpoint(rows, cols);
        let ck = Checkpoint::parse(&bytemuck::cast_slice::<u128, u8>(&buf)[..len]).unwrap();

        let mut g = c.benchmark_group(format!("matvec/{shape}"));
        let x = rand_f32(cols, 5);
        let mut out = vec![0f32; rows];
        for (name, view) in VIEWS {
            let m = matrix(&ck, view);
            g.throughput(Throughput::Bytes(m.view_bytes() as u64));
            for threads in THREADS {
                kernels::set_threads(threads);
                let mut scratch = Scratch::new(cols, 1, threads);
                g.bench_function(BenchmarkId::new(name, format!("t{threads}")), |b| {
                    b.iter(|| kernels::matvec(&m, std::hint::black_box(&x), &mut out, &mut scratch))
                });
            }
        }
        g.finish();

        let token_counts: &[usize] = if rows > 4096 { &[64] } else { &[64, 512] };
        for &tokens in token_counts {
            let mut g = c.benchmark_group(format!("matmul/{shape}/{tokens}"));
            // Products of milliseconds: the same iteration count per sample (10 samples take
            // 10 iterations, not the 55 of linear sampling).
            g.sampling_mode(SamplingMode::Flat);
            g.throughput(Throughput::Elements((2 * rows * cols * tokens) as u64));
            let x = rand_f32(tokens * cols, 6);
            let mut out = vec![0f32; tokens * rows];
            for (name, view) in VIEWS {
                let m = matrix(&ck, view);
                for threads in THREADS {
                    kernels::set_threads(threads);
                    let mut scratch = Scratch::new(cols, tokens, threads);
                    g.bench_function(BenchmarkId::new(name, format!("t{threads}")), |b| {
                        b.iter(|| kernels::matmul(&m, std::hint::black_box(&x), tokens, &mut out, &mut scratch))
                    });
                }
            }
            g.finish();
        }
    }
    kernels::set_threads(0);
}

/// One empty job on the pool: what splitting a product over 2 threads costs at least.
fn pool(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool");
    g.bench_function("empty_job/2", |b| b.iter(|| edge_runtime::pool::run(2, 2, &|i| {
        std::hint::black_box(i);
    })));
    g.bench_function("empty_job/1", |b| b.iter(|| edge_runtime::pool::run(1, 1, &|i| {
        std::hint::black_box(i);
    })));
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = pool, products
}
criterion_main!(benches);
