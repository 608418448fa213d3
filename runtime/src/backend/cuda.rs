//! The CUDA backend (Jetson Orin first, any NVIDIA GPU).
//!
//! - [`sources`]: the kernels' CUDA C (`cuda/kernels/*.cu`), compiled at run time by NVRTC, so a
//!   build needs no CUDA toolkit; always built, so their text can be checked anywhere.
//! - With the `cuda` feature: [`device::Gpu`] (the driver, loaded at run time by cudarc; the
//!   compiled kernels; one launcher per kernel, host slices in and out) and [`Cuda`], the
//!   [`super::Backend`] over it.
//! - Without it: [`Cuda`] is a stand-in that cannot be constructed, so code written against it
//!   compiles everywhere and fails at run time with one clear error (candle's dummy backend).

pub mod sources;

#[cfg(feature = "cuda")]
mod backend;
#[cfg(feature = "cuda")]
pub mod device;
#[cfg(not(feature = "cuda"))]
mod stand_in;

#[cfg(feature = "cuda")]
pub use backend::{Cuda, CudaMatrix};
#[cfg(not(feature = "cuda"))]
pub use stand_in::{Cuda, CudaMatrix};
