//! edge-runtime: the inference core of edge-run.
//!
//! `no_std` (core + alloc) unless the `std` feature is on; `std` adds memory-mapped loading,
//! threads and CPU-feature probing. Reading order for newcomers (the layers, bottom up; see
//! `docs/ARCHITECTURE.md`): [`format`] (the checkpoint), [`blocks`] (quantized layouts),
//! [`arch`] (each architecture's tensors) and [`config`], [`plan`] (views and what they cost),
//! [`kernels`] and [`backend`] (products, attention), [`kv`] (the KV cache), [`model`] (the
//! forward pass), [`sampler`].
#![cfg_attr(not(any(test, feature = "std")), no_std)]

extern crate alloc;

pub mod arch;
pub use arch::config;
pub mod backend;
pub mod blocks;
pub mod control;
pub mod error;
pub mod format;
pub mod kernels;
pub mod kv;
pub mod model;
pub mod plan;
pub mod power;
#[cfg(feature = "std")]
pub mod pool;
pub mod sampler;
#[cfg(feature = "std")]
pub mod load;

pub use config::Config;
pub use error::{Error, Result};
pub use format::Checkpoint;
pub use model::Model;
