//! How many threads the runtime's products use while the packer runs a model, and the size
//! measure that decides it.
//!
//! A small model's products (one token at a time when sampling, short windows when profiling)
//! are too small to repay starting threads, so it runs on one. Size is forward-pass FLOPs per
//! token ([`flops_per_token`]), which also sizes the sensitivity profile's default token count.

use edge_runtime::arch::{Arch, Role, TensorSpec};
use edge_runtime::{kernels, Config};

/// Models below this many forward-pass FLOPs per token run on one thread.
pub const ONE_THREAD_BELOW_FLOPS: f64 = 2e7;

/// Forward-pass FLOPs per token of a model of `config`: 2 per weight of every linear layer
/// and of the output head (which a tied model reads from the embedding); attention ignored.
pub fn flops_per_token(arch: &Arch, config: &Config) -> f64 {
    let weights = |specs: &[TensorSpec]| -> usize {
        specs
            .iter()
            .filter(|s| matches!(s.role, Role::Linear | Role::Head))
            .map(|s| s.shape.iter().map(|d| d.of(config)).product::<usize>())
            .sum()
    };
    let n = config.n_layers * weights(arch.layer) + weights(arch.pre) + weights(arch.post);
    2.0 * n as f64
}

/// Runs the runtime's products on one thread while alive, then on as many as before: a
/// program that packs in-process (`edge-run`'s auto-pack) keeps its `-t` or board setting.
pub struct SingleThread {
    before: usize,
}

impl SingleThread {
    pub fn new() -> Self {
        let before = kernels::threads();
        kernels::set_threads(1);
        SingleThread { before }
    }
}

impl Drop for SingleThread {
    fn drop(&mut self) {
        kernels::set_threads(self.before);
    }
}

/// One thread while the result lives if a model of `config` is small
/// ([`ONE_THREAD_BELOW_FLOPS`]); `None` (the default thread count) otherwise.
pub fn one_thread_if_small(arch: &Arch, config: &Config) -> Option<SingleThread> {
    (flops_per_token(arch, config) < ONE_THREAD_BELOW_FLOPS).then(SingleThread::new)
}
