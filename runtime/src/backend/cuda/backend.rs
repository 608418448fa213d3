//! [`Cuda`]: the [`Backend`] on one NVIDIA GPU ([`Gpu`]).
//!
//! What runs where today: the GPU is opened and its kernels compiled and loaded at
//! [`Backend::new`] (so a missing driver, device or NVRTC is one clear error at start), but
//! the forward pass does not run on it yet: [`Backend::prepare`] returns
//! [`Error::Device`] saying so, which stops a model load before any product is asked for. The
//! kernels themselves (`kernels/*.cu`) and their host launchers ([`Gpu`]) are complete and are
//! checked against the reference by `runtime/tests/cuda.rs` on a machine with a GPU. The
//! elementwise steps and attention, which get host slices through this trait, run on the host
//! (the CPU backend) until the activations live on the device.
//!
//! Still to do (issue 19): device-resident activations and KV cache behind this trait;
//! `prepare` uploading the planes a view reads ([`Gpu::upload_nested8`]), or on an integrated
//! GPU (`Gpu::integrated`, Jetson) registering the mmapped checkpoint
//! (`cuMemHostRegister`) and reading it in place; `set_views` freeing/uploading planes.

use crate::backend::cpu::Cpu;
use crate::backend::{AttnShape, Backend, PreparedMatrix, Ready};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::format::TensorInfo;
use crate::kv::KvView;

use super::device::Gpu;

/// The CUDA backend: GPU 0 and, for the steps not on the GPU yet, the CPU backend.
#[derive(Debug)]
pub struct Cuda {
    pub gpu: Gpu,
    host: Cpu,
}

/// The CUDA backend's matrix. None exists yet: [`Backend::prepare`] refuses, so the product
/// methods are never reached.
#[derive(Debug, Clone)]
pub enum CudaMatrix {}

impl Cuda {
    /// GPU `ordinal` for a model of config `c` (see [`Backend::new`]).
    pub fn open(c: &Config, max_batch: usize, max_seq_len: usize, ordinal: usize) -> Result<Cuda> {
        let gpu = Gpu::open(ordinal)?;
        let host = Cpu::new(c, max_batch, max_seq_len)?;
        Ok(Cuda { gpu, host })
    }

    fn unfinished(&self) -> Error {
        Error::Device {
            message: alloc::format!(
                "CUDA: found {} (compute {}.{}) and built its kernels, but running a model on CUDA is not \
                 finished yet (issue 19); run on the CPU (--device cpu)",
                self.gpu.name, self.gpu.capability.0, self.gpu.capability.1
            ),
        }
    }
}

impl Backend for Cuda {
    type Matrix<'a> = CudaMatrix;
    type Preparing<'a> = Ready<CudaMatrix>;

    fn new(c: &Config, max_batch: usize, max_seq_len: usize) -> Result<Self> {
        Cuda::open(c, max_batch, max_seq_len, 0)
    }
    fn name(&self) -> &'static str {
        "cuda"
    }
    fn prepare<'a>(&self, _: &TensorInfo<'a>, _: Option<u8>) -> Result<PreparedMatrix<CudaMatrix>> {
        Err(self.unfinished())
    }
    fn begin_prepare<'a>(&self, _: &TensorInfo<'a>, _: Option<u8>) -> Result<Ready<CudaMatrix>> {
        Err(self.unfinished())
    }
    fn view_bytes(m: &CudaMatrix) -> usize {
        match *m {}
    }
    fn view_bits(m: &CudaMatrix) -> Option<u8> {
        match *m {}
    }
    fn row(&self, m: &CudaMatrix, _: usize, _: &mut [f32]) {
        match *m {}
    }
    fn matvec_shared(&mut self, ms: &[&CudaMatrix], _: &[f32], _: &mut [&mut [f32]]) {
        // No matrix exists, so a call has an empty list: nothing to compute.
        if let Some(m) = ms.first() {
            match **m {}
        }
    }
    fn matmul(&mut self, m: &CudaMatrix, _: &[f32], _: usize, _: &mut [f32]) {
        match *m {}
    }
    fn matmul_shared(&mut self, ms: &[&CudaMatrix], _: &[f32], _: usize, _: &mut [&mut [f32]]) {
        if let Some(m) = ms.first() {
            match **m {}
        }
    }
    fn prefetch(&self, m: &CudaMatrix) {
        match *m {}
    }
    fn attend_one(&mut self, s: &AttnShape, q: &[f32], kv: KvView<'_>, out: &mut [f32]) {
        self.host.attend_one(s, q, kv, out)
    }
    fn attend_many(&mut self, s: &AttnShape, n: usize, q: &[f32], kv: KvView<'_>, out: &mut [f32]) {
        self.host.attend_many(s, n, q, kv, out)
    }
    fn rmsnorm(&self, out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
        self.host.rmsnorm(out, x, weight, eps)
    }
    fn rope(&self, q: &mut [f32], k: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
        self.host.rope(q, k, head_dim, cos, sin)
    }
    fn swiglu(&self, gate: &mut [f32], up: &[f32]) {
        self.host.swiglu(gate, up)
    }
    fn geglu(&self, gate: &mut [f32], up: &[f32]) {
        self.host.geglu(gate, up)
    }
    fn rmsnorm_rows(&self, x: &mut [f32], weight: &[f32], eps: f32) {
        self.host.rmsnorm_rows(x, weight, eps)
    }
    fn scale(&self, x: &mut [f32], s: f32) {
        self.host.scale(x, s)
    }
    fn add(&self, x: &mut [f32], y: &[f32]) {
        self.host.add(x, y)
    }
    fn state_bytes(&self) -> usize {
        self.host.state_bytes()
    }
}
