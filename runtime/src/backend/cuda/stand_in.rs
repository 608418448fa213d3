//! The CUDA backend's stand-in, built without the `cuda` feature: [`Cuda`] is a
//! stand-in that cannot be constructed, so code written against it compiles everywhere and
//! fails at run time with one clear error (candle's dummy backend pattern).

use crate::backend::{AttnShape, Backend, PreparedMatrix, Ready};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::format::TensorInfo;
use crate::kv::KvView;

/// The CUDA backend's stand-in: an empty enum, so no value of it exists and none of its
/// methods can run.
#[derive(Debug)]
pub enum Cuda {}

/// The CUDA backend's matrix (none exists in this build).
#[derive(Debug, Clone)]
pub enum CudaMatrix {}

impl Cuda {
    /// Always an error in this build.
    pub fn new() -> Result<Cuda> {
        Err(Error::NotCompiled {
            feature: "cuda",
            hint: "rebuild with `cargo build --release --features cuda` (no CUDA toolkit needed), or run on the CPU (the default)",
        })
    }
}

impl Backend for Cuda {
    type Matrix<'a> = CudaMatrix;
    type Preparing<'a> = Ready<CudaMatrix>;

    fn new(_: &Config, _: usize, _: usize) -> Result<Self> {
        Cuda::new()
    }
    fn name(&self) -> &'static str {
        match *self {}
    }
    fn prepare<'a>(&self, _: &TensorInfo<'a>, _: Option<u8>) -> Result<PreparedMatrix<CudaMatrix>> {
        match *self {}
    }
    fn begin_prepare<'a>(&self, _: &TensorInfo<'a>, _: Option<u8>) -> Result<Ready<CudaMatrix>> {
        match *self {}
    }
    fn view_bytes(m: &CudaMatrix) -> usize {
        match *m {}
    }
    fn view_bits(m: &CudaMatrix) -> Option<u8> {
        match *m {}
    }
    fn row(&self, _: &CudaMatrix, _: usize, _: &mut [f32]) {
        match *self {}
    }
    fn matvec_shared(&mut self, _: &[&CudaMatrix], _: &[f32], _: &mut [&mut [f32]]) {
        match *self {}
    }
    fn matmul(&mut self, _: &CudaMatrix, _: &[f32], _: usize, _: &mut [f32]) {
        match *self {}
    }
    fn matmul_shared(&mut self, _: &[&CudaMatrix], _: &[f32], _: usize, _: &mut [&mut [f32]]) {
        match *self {}
    }
    fn prefetch(&self, _: &CudaMatrix) {
        match *self {}
    }
    fn attend_one(&mut self, _: &AttnShape, _: &[f32], _: KvView<'_>, _: &mut [f32]) {
        match *self {}
    }
    fn attend_many(&mut self, _: &AttnShape, _: usize, _: &[f32], _: KvView<'_>, _: &mut [f32]) {
        match *self {}
    }
    fn rmsnorm(&self, _: &mut [f32], _: &[f32], _: &[f32], _: f32) {
        match *self {}
    }
    fn rope(&self, _: &mut [f32], _: &mut [f32], _: usize, _: &[f32], _: &[f32]) {
        match *self {}
    }
    fn swiglu(&self, _: &mut [f32], _: &[f32]) {
        match *self {}
    }
    fn geglu(&self, _: &mut [f32], _: &[f32]) {
        match *self {}
    }
    fn rmsnorm_rows(&self, _: &mut [f32], _: &[f32], _: f32) {
        match *self {}
    }
    fn scale(&self, _: &mut [f32], _: f32) {
        match *self {}
    }
    fn add(&self, _: &mut [f32], _: &[f32]) {
        match *self {}
    }
    fn state_bytes(&self) -> usize {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stand_in_says_what_is_missing() {
        let e = Cuda::new().unwrap_err();
        assert!(matches!(e, Error::NotCompiled { feature: "cuda", .. }));
        assert!(alloc::format!("{e}").contains("cuda"));
    }
}
