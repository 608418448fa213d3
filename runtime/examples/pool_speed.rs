//! Per-call timings of the pool and of decode products on 1 and 2 threads, as min / median /
//! 90th percentile of many single calls: on a shared machine the minimum shows what the code
//! can do, the median what it did.
//!
//! `cargo run --release -p edge-runtime --example pool_speed [CALLS]`

use std::time::Instant;

use edge_runtime::blocks::{pack_nested8_planes, GroupParams};
use edge_runtime::format::{Checkpoint, CheckpointWriter, Encoding, TensorData};
use edge_runtime::kernels::{self, Scratch};
use edge_runtime::pool;
use half::f16;

fn stats(mut t: Vec<f64>) -> String {
    t.sort_by(f64::total_cmp);
    let q = |p: f64| t[((t.len() - 1) as f64 * p) as usize];
    format!("min {:8.2} µs  median {:8.2} µs  p90 {:8.2} µs", q(0.0), q(0.5), q(0.9))
}

fn time(calls: usize, mut f: impl FnMut()) -> Vec<f64> {
    for _ in 0..calls / 10 {
        f();
    }
    (0..calls)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect()
}

fn main() {
    let calls: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    for threads in [1usize, 2] {
        println!("empty job, {threads} thread(s): {}", stats(time(calls * 10, || pool::run(threads, threads, &|i| {
            std::hint::black_box(i);
        }))));
    }
    // How often a worker takes part: 8 tasks of ~3 µs each, counted by who ran them.
    let caller = std::thread::current().id();
    let by_workers = std::sync::atomic::AtomicUsize::new(0);
    let t = time(calls, || {
        pool::run(8, 2, &|_| {
            let s = Instant::now();
            while s.elapsed().as_nanos() < 3000 {}
            if std::thread::current().id() != caller {
                by_workers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    });
    let total = 8 * (calls + calls / 10);
    println!(
        "8 x 3 µs tasks, 2 threads: {}  (workers ran {:.0}% of the tasks)",
        stats(t),
        100.0 * by_workers.load(std::sync::atomic::Ordering::Relaxed) as f64 / total as f64
    );
    for (rows, cols) in [(576usize, 576usize), (1536, 576), (576, 1536)] {
        let mut s = 0x1234_5678u64;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        let v: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..cols).map(|_| rnd()).collect();
        let halves: Vec<f16> = v.iter().map(|&a| f16::from_f32(a * 0.05)).collect();
        let codes: Vec<u8> = v.iter().map(|&a| ((a + 1.0) * 127.5) as u8).collect();
        let params = vec![GroupParams { scale: f16::from_f32(0.0004), min: f16::from_f32(-0.05) }; rows * cols / 64];
        let mut segs = vec![bytemuck::cast_slice(&params).to_vec()];
        segs.extend(pack_nested8_planes(&codes));
        let shape = vec![rows as u64, cols as u64];
        let mut w = CheckpointWriter::new();
        w.add_tensor(TensorData { name: "f16".into(), encoding: Encoding::F16, shape: shape.clone(), group_size: 0, segments: vec![bytemuck::cast_slice(&halves).to_vec()] }).unwrap();
        w.add_tensor(TensorData { name: "q".into(), encoding: Encoding::Nested8, shape, group_size: 64, segments: segs }).unwrap();
        let mut bytes = Vec::new();
        w.write_to(&mut bytes, |_, _| {}).unwrap();
        let mut buf = vec![0u128; bytes.len().div_ceil(16)];
        bytemuck::cast_slice_mut::<u128, u8>(&mut buf)[..bytes.len()].copy_from_slice(&bytes);
        let ck = Checkpoint::parse(&bytemuck::cast_slice::<u128, u8>(&buf)[..bytes.len()]).unwrap();
        for (name, view) in [("f16", None), ("q8", Some(8u8)), ("q4", Some(4)), ("q2", Some(2))] {
            let m = edge_runtime::backend::cpu::matrix(ck.tensor(if view.is_some() { "q" } else { "f16" }).unwrap(), view).unwrap();
            for threads in [1usize, 2] {
                kernels::set_threads(threads);
                let mut scratch = Scratch::new(cols, 1, threads);
                let mut out = vec![0f32; rows];
                let t = time(calls, || kernels::matvec(&m, &x, &mut out, &mut scratch));
                println!("matvec {rows}x{cols} {name} t{threads}: {}", stats(t));
            }
        }
    }
}
