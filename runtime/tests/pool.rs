//! The persistent thread pool: every index runs exactly once, panics propagate without
//! hanging, concurrent and nested callers complete, and the products give the same bits on
//! any thread count.

mod support;
use support::rand_f32;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::*};
use std::sync::Mutex;

use edge_runtime::blocks::{pack_nested8_planes, GroupParams, NESTED8_VIEWS};
use edge_runtime::format::{Checkpoint, CheckpointWriter, Encoding, TensorData};
use edge_runtime::kernels::{self, Matrix};
use edge_runtime::pool;
use half::f16;

/// `set_threads` is process-wide, and `idle_workers_park` measures the process's CPU time:
/// the tests take turns.
static THREADS: Mutex<()> = Mutex::new(());

fn lock_threads() -> std::sync::MutexGuard<'static, ()> {
    THREADS.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn every_index_runs_exactly_once() {
    let _g = lock_threads();
    let counts: Vec<AtomicUsize> = (0..64).map(|_| AtomicUsize::new(0)).collect();
    for round in 0..100 {
        for n in [0usize, 1, 2, 3, 4, 5, 8, 17, 64] {
            for threads in [1usize, 2, 3, 4, 8] {
                pool::run(n, threads, &|i| {
                    counts[i].fetch_add(1, Relaxed);
                });
                for (i, c) in counts.iter().enumerate() {
                    let want = usize::from(i < n);
                    assert_eq!(c.swap(0, Relaxed), want, "round {round}, n {n}, threads {threads}, index {i}");
                }
            }
        }
    }
    assert!(pool::workers() >= 1);
}

#[test]
fn jobs_see_the_callers_writes_and_the_caller_sees_theirs() {
    let _g = lock_threads();
    // Each index writes its own slot; the caller reads them after `run` returns.
    let mut data = vec![0u64; 4096];
    for round in 1..300u64 {
        let ptr = data.as_mut_ptr() as usize;
        let n = 1 + (round as usize % 4);
        pool::run(n, n, &|i| {
            let chunk = 4096 / n;
            for j in i * chunk..(i + 1) * chunk {
                // SAFETY: index i writes only its own chunk; `run` returns after every index.
                unsafe { *(ptr as *mut u64).add(j) = round * 10_000 + j as u64 };
            }
        });
        let chunk = 4096 / n;
        for (j, v) in data.iter().enumerate().take(n * chunk) {
            assert_eq!(*v, round * 10_000 + j as u64);
        }
    }
}

#[test]
fn a_panicking_job_propagates_and_the_pool_survives() {
    let _g = lock_threads();
    for bad in [0usize, 1, 2] {
        let ran = AtomicUsize::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool::run(3, 3, &|i| {
                ran.fetch_add(1, Relaxed);
                if i == bad {
                    panic!("job {i} fails on purpose");
                }
            })
        }));
        let payload = r.expect_err("the panic must reach the caller");
        let msg = payload.downcast_ref::<String>().cloned().unwrap_or_default();
        assert_eq!(msg, format!("job {bad} fails on purpose"), "the first panic's own message");
        assert_eq!(ran.load(Relaxed), 3, "every index still ran");
        // The pool still works.
        let sum = AtomicUsize::new(0);
        pool::run(3, 3, &|i| {
            sum.fetch_add(i + 1, Relaxed);
        });
        assert_eq!(sum.load(Relaxed), 6);
    }
}

#[test]
fn concurrent_and_nested_callers_complete() {
    let _g = lock_threads();
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                for round in 0..500 {
                    let sum = AtomicUsize::new(0);
                    pool::run(2 + (t + round) % 3, 4, &|i| {
                        // A job that itself splits (nested): runs serially on its thread.
                        let inner = AtomicUsize::new(0);
                        pool::run(3, 3, &|j| {
                            inner.fetch_add(j, Relaxed);
                        });
                        assert_eq!(inner.load(Relaxed), 3);
                        sum.fetch_add(i + 1, Relaxed);
                    });
                    let n = 2 + (t + round) % 3;
                    assert_eq!(sum.load(Relaxed), n * (n + 1) / 2);
                }
            });
        }
    });
}

#[test]
fn idle_workers_park() {
    let _g = lock_threads(); // no other test of this binary computing meanwhile
    pool::run(2, 2, &|_| {});
    std::thread::sleep(pool::SPIN * 20);
    // After the spin window the workers sleep: this process's CPU time stops growing.
    #[cfg(target_os = "linux")]
    {
        let cpu = || {
            let s = std::fs::read_to_string("/proc/self/stat").unwrap();
            let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
            f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap() // utime + stime, ticks
        };
        let before = cpu();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let used = cpu() - before;
        assert!(used <= 5, "{used} ticks of CPU in 300 ms while idle");
    }
}


/// A checkpoint with an f16 and a nested tensor of (rows, cols), in a 16-byte aligned buffer,
/// and its length in bytes.
fn checkpoint_bytes(rows: usize, cols: usize, group: usize) -> (Vec<u128>, usize) {
    let v = rand_f32(rows * cols, 7);
    let mut w = CheckpointWriter::new();
    let f16s: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
    w.add_tensor(TensorData {
        name: "f16".into(),
        encoding: Encoding::F16,
        shape: vec![rows as u64, cols as u64],
        group_size: 0,
        segments: vec![bytemuck::cast_slice(&f16s).to_vec()],
    })
    .unwrap();
    let codes: Vec<u8> = v.iter().map(|&x| ((x + 1.0) * 127.5) as u8).collect();
    let params: Vec<GroupParams> = (0..rows * cols / group)
        .map(|g| GroupParams { scale: f16::from_f32(0.008 + (g % 97) as f32 * 1e-4), min: f16::from_f32(-1.0) })
        .collect();
    let mut segments = vec![bytemuck::cast_slice(&params).to_vec()];
    segments.extend(pack_nested8_planes(&codes));
    w.add_tensor(TensorData {
        name: "nested".into(),
        encoding: Encoding::Nested8,
        shape: vec![rows as u64, cols as u64],
        group_size: group as u32,
        segments,
    })
    .unwrap();
    let mut bytes = Vec::new();
    w.write_to(&mut bytes, |_, _| {}).unwrap();
    let mut buf = vec![0u128; bytes.len().div_ceil(16)];
    bytemuck::cast_slice_mut::<u128, u8>(&mut buf)[..bytes.len()].copy_from_slice(&bytes);
    (buf, bytes.len())
}

#[test]
fn products_are_bit_identical_on_any_thread_count() {
    // Big enough that every thread count splits (the pool skips shares below
    // MIN_WEIGHTS_PER_THREAD), with a row count that is not a multiple of the alignment.
    let (rows, cols) = (1000usize, 576usize);
    let (buf, len) = checkpoint_bytes(rows, cols, 64);
    let ck = Checkpoint::parse(&bytemuck::cast_slice::<u128, u8>(&buf)[..len]).unwrap();
    let _g = lock_threads();
    for name in ["f16", "nested"] {
        let t = ck.tensor(name).unwrap();
        let views: Vec<Option<u8>> =
            if name == "nested" { NESTED8_VIEWS.iter().map(|&v| Some(v)).collect() } else { vec![None] };
        for view in views {
            let m = edge_runtime::backend::cpu::matrix(t, view).unwrap();
            for n in [1usize, 3, 70] {
                let x = rand_f32(n * cols, 11 + n as u64);
                let mut first: Option<Vec<f32>> = None;
                for threads in [1usize, 2, 3, 4, 7] {
                    kernels::set_threads(threads);
                    let mut out = vec![f32::NAN; n * rows];
                    let mut scratch = kernels::Scratch::new(cols, n, threads);
                    kernels::matmul(&m, &x, n, &mut out, &mut scratch);
                    assert!(out.iter().all(|v| v.is_finite()), "{name} {view:?} n={n} threads={threads}: rows left unwritten");
                    match &first {
                        None => first = Some(out),
                        Some(f) => {
                            let same = f.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits());
                            assert!(same, "{name} {view:?} n={n}: threads={threads} differs from 1 thread");
                        }
                    }
                }
            }
        }
    }
    kernels::set_threads(0);
}

#[test]
fn shared_input_products_equal_separate_ones() {
    // q/k/v-like: matrices of different heights over one input, each split over the threads
    // in one job; they must give matvec's bits, for nested views and for a float fallback.
    let cols = 576usize;
    let mats: Vec<(Vec<u128>, usize)> = [1000usize, 192, 40].iter().map(|&r| checkpoint_bytes(r, cols, 64)).collect();
    let cks: Vec<Checkpoint<'_>> =
        mats.iter().map(|(b, len)| Checkpoint::parse(&bytemuck::cast_slice::<u128, u8>(b)[..*len]).unwrap()).collect();
    let _g = lock_threads();
    for view in [Some(2u8), Some(3), Some(4), Some(8), None] {
        let ms: Vec<Matrix<'_>> = cks
            .iter()
            .enumerate()
            // view None: the middle one is f16, so the call falls back to one product each.
            .map(|(i, ck)| match view {
                Some(v) => edge_runtime::backend::cpu::matrix(ck.tensor("nested").unwrap(), Some(v)).unwrap(),
                None if i == 1 => edge_runtime::backend::cpu::matrix(ck.tensor("f16").unwrap(), None).unwrap(),
                None => edge_runtime::backend::cpu::matrix(ck.tensor("nested").unwrap(), Some(4)).unwrap(),
            })
            .collect();
        for threads in [1usize, 2, 3, 7] {
            kernels::set_threads(threads);
            // n = 1: matvec_shared against matvec; n > 1: matmul_shared against matmul.
            for n in [1usize, 3, 70] {
                let x = rand_f32(n * cols, 5 + n as u64);
                let mut scratch = kernels::Scratch::new(cols, n, threads);
                let want: Vec<Vec<f32>> = ms
                    .iter()
                    .map(|m| {
                        let mut o = vec![f32::NAN; n * m.rows];
                        kernels::matmul(m, &x, n, &mut o, &mut scratch);
                        o
                    })
                    .collect();
                let mut got: Vec<Vec<f32>> = ms.iter().map(|m| vec![f32::NAN; n * m.rows]).collect();
                let mut outs: Vec<&mut [f32]> = got.iter_mut().map(|o| o.as_mut_slice()).collect();
                let refs: Vec<&Matrix<'_>> = ms.iter().collect();
                match n {
                    1 => kernels::matvec_shared(&refs, &x, &mut outs, &mut scratch),
                    _ => kernels::matmul_shared(&refs, &x, n, &mut outs, &mut scratch),
                }
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    let same = g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "view {view:?}, threads {threads}, n {n}, matrix {i}: shared product differs from separate ones");
                }
            }
        }
    }
    kernels::set_threads(0);
}

#[test]
fn token_row_steps_equal_their_single_row_definitions() {
    // Sizes below and well above the split threshold, with widths that are not multiples of
    // a cache line, so ranges cut rows at odd places.
    use edge_runtime::kernels::{tokens, vector};
    let _g = lock_threads();
    let (dim, kv_dim, head_dim) = (200usize, 40usize, 8usize);
    let half = head_dim / 2;
    for n in [1usize, 2, 97, 400] {
        let x = rand_f32(n * dim, 21 + n as u64);
        let y = rand_f32(n * dim, 22 + n as u64);
        let weight = rand_f32(dim, 23);
        let (cos, sin) = (rand_f32(n * half, 24), rand_f32(n * half, 25));
        let kx = rand_f32(n * kv_dim, 26);
        // One row at a time, on the calling thread.
        let mut norm_want = vec![0f32; n * dim];
        let (mut q_want, mut k_want) = (x.clone(), kx.clone());
        for t in 0..n {
            vector::rmsnorm(&mut norm_want[t * dim..(t + 1) * dim], &x[t * dim..(t + 1) * dim], &weight, 1e-5);
            vector::rope(&mut q_want[t * dim..(t + 1) * dim], head_dim, &cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
            vector::rope(&mut k_want[t * kv_dim..(t + 1) * kv_dim], head_dim, &cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
        }
        let mut swiglu_want = x.clone();
        vector::swiglu(&mut swiglu_want, &y);
        let add_want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
        for threads in [1usize, 2, 3, 7] {
            kernels::set_threads(threads);
            let mut norm = vec![f32::NAN; n * dim];
            tokens::rmsnorm(&mut norm, &x, &weight, 1e-5);
            let (mut q, mut k) = (x.clone(), kx.clone());
            tokens::rope(&mut q, &mut k, head_dim, &cos, &sin);
            let mut gate = x.clone();
            tokens::swiglu(&mut gate, &y);
            let mut sum = x.clone();
            tokens::add(&mut sum, &y);
            for (what, got, want) in
                [("rmsnorm", &norm, &norm_want), ("rope q", &q, &q_want), ("rope k", &k, &k_want), ("swiglu", &gate, &swiglu_want), ("add", &sum, &add_want)]
            {
                let same = got.iter().zip(want.iter()).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{what}, n {n}, threads {threads}: differs from one row at a time");
            }
        }
    }
    kernels::set_threads(0);
}
