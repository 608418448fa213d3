//! Memory read bandwidth, for the decode roofline in docs/RESULTS.md:
//! `cargo run --release -p edge-runtime --example membw -- [THREADS] [MIB]`.
//! Each thread sums its share of a buffer far larger than the caches; the median of 7 passes
//! is printed in GB/s (10^9 bytes per second).
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let threads = args.first().copied().unwrap_or(2).max(1);
    let mib = args.get(1).copied().unwrap_or(1024);
    let words = mib * (1 << 20) / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let chunk = words.div_ceil(threads);
    let mut rates = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(chunk)
                .map(|c| {
                    s.spawn(move || {
                        // Eight independent sums so the loop is load-bound, not add-latency-bound.
                        let mut acc = [0u64; 8];
                        for w in c.chunks_exact(8) {
                            for (a, x) in acc.iter_mut().zip(w) {
                                *a = a.wrapping_add(*x);
                            }
                        }
                        acc.iter().fold(0u64, |a, b| a.wrapping_add(*b))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).fold(0u64, |a, b| a.wrapping_add(b))
        });
        let s = t.elapsed().as_secs_f64();
        std::hint::black_box(total);
        rates.push((words * 8) as f64 / s / 1e9);
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    println!("{threads} threads, {mib} MiB: read bandwidth {:.2} GB/s (median of 7; min {:.2}, max {:.2})", rates[3], rates[0], rates[6]);
}
