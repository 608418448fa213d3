//! Helpers shared by the runtime's tests and the kernel benches (`benches/kernels.rs` includes
//! this file with `#[path]`).

/// Deterministic pseudo-random floats in [-1, 1) (xorshift64).
pub fn rand_f32(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}
