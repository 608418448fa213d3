//! One GPU: the driver (loaded at run time by cudarc: no toolkit at build time, and a clear
//! error rather than a panic where there is no driver), the kernels of [`super::sources`]
//! compiled by NVRTC once per process, and one launcher per kernel that takes host slices and
//! returns host results (what the tests check against the reference; the backend keeps its
//! buffers on the device instead).

extern crate std;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use std::sync::OnceLock;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{CompileOptions, Ptx};

use super::sources;
use crate::blocks::{self, GroupParams};
use crate::error::{Error, Result};
use crate::kernels::acts::QActs;

fn device_error(what: &str, e: impl core::fmt::Debug) -> Error {
    Error::Device { message: format!("CUDA: {what}: {e:?}") }
}

/// Whether the CUDA driver library (libcuda) can be loaded here.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen libcuda by its usual names and drops the handle.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether NVRTC (libnvrtc) can be loaded here.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen libnvrtc by its usual names and drops the handle.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The kernels compiled to PTX for `arch` (e.g. `compute_87`, Orin; `None`: NVRTC's default).
/// Errors carry NVRTC's log, so a syntax error names its line.
pub fn compile(arch: Option<&'static str>) -> Result<Ptx> {
    if !nvrtc_present() {
        return Err(Error::Device {
            message: "CUDA: NVRTC (libnvrtc.so) was not found; install the CUDA runtime libraries \
                      (JetPack on Jetson, or `pip install nvidia-cuda-nvrtc-cu12` and add its lib folder \
                      to LD_LIBRARY_PATH)"
                .into(),
        });
    }
    let opts = CompileOptions {
        options: sources::NVRTC_OPTIONS.iter().map(|o| o.to_string()).collect(),
        arch,
        name: Some("edge_run.cu".into()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(sources::program(), opts).map_err(|e| device_error("compiling the kernels", e))
}

/// Where compiled PTX is kept between runs: `$EDGE_RUN_CACHE/ptx`, else
/// `$XDG_CACHE_HOME/edge-run/ptx`, else `$HOME/.cache/edge-run/ptx` (the CLI's model cache,
/// `src/loader.rs`); `None` where none is set.
fn ptx_cache_dir() -> Option<std::path::PathBuf> {
    let var = |k| std::env::var_os(k).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    let base = var("EDGE_RUN_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("edge-run")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("edge-run")))?;
    Some(base.join("ptx"))
}

/// The kernels' PTX for `arch`: from this process if compiled already (a GPU has one
/// architecture, so the first one's is kept), else from the disk cache (keyed by a hash of the
/// program, the options and the architecture, so an edited kernel is recompiled), else
/// compiled by NVRTC (a second or so on a Jetson's CPU) and written to the cache. A cache that
/// cannot be read or written only costs the compile.
fn cached_ptx(arch: &'static str) -> Result<Ptx> {
    static PTX: OnceLock<String> = OnceLock::new();
    if let Some(src) = PTX.get() {
        return Ok(Ptx::from_src(src.clone()));
    }
    let mut key = sources::program();
    key.push_str(arch);
    sources::NVRTC_OPTIONS.iter().for_each(|o| key.push_str(o));
    let file = ptx_cache_dir().map(|d| d.join(format!("{:016x}.ptx", xxhash_rust::xxh3::xxh3_64(key.as_bytes()))));
    let src = match file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) {
        Some(src) => src,
        None => {
            let src = compile(Some(arch))?.to_src();
            if let Some(f) = &file {
                // Written aside and renamed, so a reader never sees half a file.
                let tmp = f.with_extension(format!("tmp{}", std::process::id()));
                let ok = f.parent().is_some_and(|d| std::fs::create_dir_all(d).is_ok())
                    && std::fs::write(&tmp, &src).is_ok()
                    && std::fs::rename(&tmp, f).is_ok();
                if !ok {
                    let _ = std::fs::remove_file(&tmp);
                }
            }
            src
        }
    };
    Ok(Ptx::from_src(PTX.get_or_init(|| src).clone()))
}

/// The planes' device pointers as the kernels take them (`struct Planes` of nested8.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Planes {
    p: [u64; 6],
}

// SAFETY: six u64 device addresses, laid out as the kernel's `struct Planes { const u8* p[6]; }`.
unsafe impl DeviceRepr for Planes {}

/// An opened GPU with the kernels loaded.
#[derive(Debug)]
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    funcs: Vec<CudaFunction>,
    /// The device's name, as the driver gives it.
    pub name: String,
    /// Compute capability (major, minor).
    pub capability: (i32, i32),
    /// Whether the GPU shares the host's memory (Jetson): an mmapped checkpoint can then be
    /// registered and read in place instead of copied.
    pub integrated: bool,
}

/// A nested 8-bit matrix at one view, its planes on the device.
#[derive(Debug, Clone)]
pub struct DeviceNested8 {
    pub rows: usize,
    pub row_stride: usize,
    pub group_size: usize,
    pub view_bits: u8,
    params: CudaSlice<u16>,
    /// The first `nested8_planes_for_view(view_bits)` planes; the others are not uploaded.
    planes: Vec<CudaSlice<u8>>,
    /// Bytes the view reads on the device.
    pub bytes: usize,
}

impl Gpu {
    /// GPU `ordinal`: a clear error where the driver or the device is missing.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        if !driver_present() {
            return Err(Error::Device {
                message: "CUDA: no NVIDIA driver was found (libcuda.so could not be loaded), so no GPU \
                          can be used; run on the CPU (--device cpu)"
                    .into(),
            });
        }
        let n = CudaContext::device_count().map_err(|e| device_error("the driver found no usable GPU (run on the CPU: --device cpu)", e))?;
        if ordinal >= n as usize {
            return Err(Error::Device {
                message: format!("CUDA: no GPU {ordinal} was found ({n} present); pick one of cuda:0..cuda:{n} or run on the CPU"),
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| device_error("opening the GPU", e))?;
        let attr = |a| ctx.attribute(a).map_err(|e| device_error("reading an attribute", e));
        use cudarc::driver::sys::CUdevice_attribute as A;
        let capability = (attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?, attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?);
        let integrated = attr(A::CU_DEVICE_ATTRIBUTE_INTEGRATED)? != 0;
        let name = ctx.name().map_err(|e| device_error("reading the name", e))?;
        // NVRTC wants a 'static arch name; the few real ones are listed rather than leaked.
        let arch = match capability {
            (7, 2) => "compute_72",
            (7, 5) => "compute_75",
            (8, 0) => "compute_80",
            (8, 6) => "compute_86",
            (8, 7) => "compute_87",
            (8, 9) => "compute_89",
            (9, 0) => "compute_90",
            // Newer GPUs JIT-compile Hopper's PTX forward; Pascal is the oldest with __dp4a.
            c if c >= (9, 0) => "compute_90",
            (6, _) => "compute_61",
            _ => "compute_75",
        };
        let module = ctx.load_module(cached_ptx(arch)?).map_err(|e| device_error("loading the kernels", e))?;
        let funcs = sources::ENTRY_POINTS
            .iter()
            .map(|f| module.load_function(f).map_err(|e| device_error(f, e)))
            .collect::<Result<Vec<_>>>()?;
        let stream = ctx.default_stream();
        Ok(Gpu { ctx, stream, _module: module, funcs, name, capability, integrated })
    }

    fn func(&self, name: &str) -> &CudaFunction {
        let i = sources::ENTRY_POINTS.iter().position(|f| *f == name).unwrap_or(0);
        &self.funcs[i]
    }

    fn upload<T: DeviceRepr>(&self, v: &[T]) -> Result<CudaSlice<T>> {
        self.stream.clone_htod(v).map_err(|e| device_error("uploading", e))
    }

    fn download<T: DeviceRepr + Default + Clone>(&self, v: &CudaSlice<T>) -> Result<Vec<T>> {
        self.stream.clone_dtoh(v).map_err(|e| device_error("downloading", e))
    }

    /// Free and total device memory in bytes (what the memory budget counts on a discrete GPU).
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.ctx.bind_to_thread().map_err(|e| device_error("binding the context", e))?;
        cudarc::driver::result::mem_get_info().map_err(|e| device_error("reading memory", e))
    }

    /// Upload the planes a `view_bits` view of a nested tensor reads (and its group params).
    pub fn upload_nested8(
        &self,
        params: &[GroupParams],
        planes: &[&[u8]; 6],
        rows: usize,
        row_stride: usize,
        group_size: usize,
        view_bits: u8,
    ) -> Result<DeviceNested8> {
        let n = blocks::nested8_planes_for_view(view_bits)
            .ok_or_else(|| Error::InvalidArgument { what: format!("CUDA: view {view_bits} is not one of 2, 3, 4, 5, 6, 8") })?;
        if !group_size.is_multiple_of(8) || !row_stride.is_multiple_of(group_size) {
            return Err(Error::InvalidArgument {
                what: format!("CUDA: group size {group_size} / row stride {row_stride} must be multiples of 8"),
            });
        }
        let p16: &[u16] = bytemuck::cast_slice(params);
        let params = self.upload(p16)?;
        let planes = planes[..n].iter().map(|p| self.upload(p)).collect::<Result<Vec<_>>>()?;
        let bytes = p16.len() * 2 + planes.iter().map(|p| p.len()).sum::<usize>();
        Ok(DeviceNested8 { rows, row_stride, group_size, view_bits, params, planes, bytes })
    }

    fn plane_ptrs(&self, m: &DeviceNested8) -> Planes {
        let mut p = [0u64; 6];
        for (d, s) in p.iter_mut().zip(&m.planes) {
            let (ptr, _sync) = s.device_ptr(&self.stream);
            *d = ptr;
        }
        Planes { p }
    }

    /// `out[t, r] = m[r] · acts[t]` for every token of `acts` (quantized on the host by the
    /// reference, block = group size): one launch of `nested8_matvec` for one token, of
    /// `nested8_matmul` for more. Returns (acts.n, m.rows).
    pub fn nested8_product(&self, m: &DeviceNested8, acts: &QActs) -> Result<Vec<f32>> {
        if acts.block != m.group_size || acts.padded_cols != m.row_stride {
            return Err(Error::InvalidArgument { what: "CUDA: activations not quantized for this matrix".into() });
        }
        let (q, d, s) = (self.upload(&acts.q[..acts.n * acts.padded_cols])?, self.upload(&acts.d[..acts.n * acts.blocks()])?, self.upload(&acts.sum[..acts.n * acts.blocks()])?);
        let mut out = self.stream.alloc_zeros::<f32>(acts.n * m.rows).map_err(|e| device_error("allocating", e))?;
        let planes = self.plane_ptrs(m);
        let (view, rows, stride, gs, n) = (m.view_bits as i32, m.rows as i32, m.row_stride as i32, m.group_size as i32, acts.n as i32);
        let grid_x = m.rows.div_ceil(4) as u32;
        if acts.n == 1 {
            let cfg = LaunchConfig { grid_dim: (grid_x, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
            let mut b = self.stream.launch_builder(self.func("nested8_matvec"));
            b.arg(&planes).arg(&m.params).arg(&view).arg(&rows).arg(&stride).arg(&gs).arg(&q).arg(&d).arg(&s).arg(&mut out);
            // SAFETY: the arguments match nested8_matvec's signature; every buffer holds what
            // the kernel's comment says for these sizes (checked above).
            unsafe { b.launch(cfg) }.map_err(|e| device_error("nested8_matvec", e))?;
        } else {
            let cfg = LaunchConfig { grid_dim: (grid_x, acts.n.div_ceil(8) as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
            let mut b = self.stream.launch_builder(self.func("nested8_matmul"));
            b.arg(&planes).arg(&m.params).arg(&view).arg(&rows).arg(&stride).arg(&gs).arg(&n).arg(&q).arg(&d).arg(&s).arg(&mut out);
            // SAFETY: as above, for nested8_matmul's signature.
            unsafe { b.launch(cfg) }.map_err(|e| device_error("nested8_matmul", e))?;
        }
        self.download(&out)
    }

    /// Quantize `x` ((n, cols)) on the GPU: (q, d, sum) as [`QActs`] holds them.
    pub fn quantize(&self, x: &[f32], n: usize, cols: usize, block: usize) -> Result<(Vec<i8>, Vec<f32>, Vec<i32>)> {
        let blocks = cols.div_ceil(block);
        let xd = self.upload(&x[..n * cols])?;
        let alloc = |e| device_error("allocating", e);
        let mut q = self.stream.alloc_zeros::<i8>(n * blocks * block).map_err(alloc)?;
        let mut d = self.stream.alloc_zeros::<f32>(n * blocks).map_err(alloc)?;
        let mut s = self.stream.alloc_zeros::<i32>(n * blocks).map_err(alloc)?;
        let (c, b, nb) = (cols as i32, block as i32, blocks as i32);
        let cfg = LaunchConfig { grid_dim: (blocks as u32, n as u32, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 };
        let mut l = self.stream.launch_builder(self.func("quantize_acts"));
        l.arg(&xd).arg(&c).arg(&b).arg(&nb).arg(&mut q).arg(&mut d).arg(&mut s);
        // SAFETY: the arguments match quantize_acts's signature and sizes.
        unsafe { l.launch(cfg) }.map_err(|e| device_error("quantize_acts", e))?;
        Ok((self.download(&q)?, self.download(&d)?, self.download(&s)?))
    }

    /// RMSNorm of every `w.len()`-wide row of `x`, returned.
    pub fn rmsnorm(&self, x: &[f32], w: &[f32], eps: f32) -> Result<Vec<f32>> {
        let dim = w.len();
        let (xd, wd) = (self.upload(x)?, self.upload(w)?);
        let mut out = self.stream.alloc_zeros::<f32>(x.len()).map_err(|e| device_error("allocating", e))?;
        let cfg = LaunchConfig { grid_dim: ((x.len() / dim) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let di = dim as i32;
        let mut l = self.stream.launch_builder(self.func("rmsnorm"));
        l.arg(&mut out).arg(&xd).arg(&wd).arg(&di).arg(&eps);
        // SAFETY: the arguments match rmsnorm's signature; x is whole rows of dim.
        unsafe { l.launch(cfg) }.map_err(|e| device_error("rmsnorm", e))?;
        self.download(&out)
    }

    /// `gate = act(gate) * up` with `kernel` one of `swiglu`, `geglu`, returned.
    pub fn glu(&self, kernel: &str, gate: &[f32], up: &[f32]) -> Result<Vec<f32>> {
        let (mut g, u) = (self.upload(gate)?, self.upload(up)?);
        let n = gate.len() as i32;
        let mut l = self.stream.launch_builder(self.func(kernel));
        l.arg(&mut g).arg(&u).arg(&n);
        // SAFETY: swiglu and geglu take (gate, up, n) over n values, both buffers hold n.
        unsafe { l.launch(LaunchConfig::for_num_elems(gate.len() as u32)) }.map_err(|e| device_error(kernel, e))?;
        self.download(&g)
    }

    /// Softmax of every `width`-wide row, returned.
    pub fn softmax(&self, x: &[f32], width: usize) -> Result<Vec<f32>> {
        let mut xd = self.upload(x)?;
        let w = width as i32;
        let cfg = LaunchConfig { grid_dim: ((x.len() / width) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let mut l = self.stream.launch_builder(self.func("softmax"));
        l.arg(&mut xd).arg(&w);
        // SAFETY: the arguments match softmax's signature; x is whole rows of width.
        unsafe { l.launch(cfg) }.map_err(|e| device_error("softmax", e))?;
        self.download(&xd)
    }

    /// RoPE of the `width`-wide rows of `v` ((n, width)) by the angles of `cos`/`sin`
    /// ((n, head_dim / 2)), returned.
    pub fn rope(&self, v: &[f32], width: usize, head_dim: usize, cos: &[f32], sin: &[f32]) -> Result<Vec<f32>> {
        let mut vd = self.upload(v)?;
        let (cd, sd) = (self.upload(cos)?, self.upload(sin)?);
        let (w, hd) = (width as i32, head_dim as i32);
        let cfg = LaunchConfig { grid_dim: ((v.len() / width) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let mut l = self.stream.launch_builder(self.func("rope"));
        l.arg(&mut vd).arg(&w).arg(&hd).arg(&cd).arg(&sd);
        // SAFETY: the arguments match rope's signature; v is whole rows, cos/sin one row per token.
        unsafe { l.launch(cfg) }.map_err(|e| device_error("rope", e))?;
        self.download(&vd)
    }

    /// Causal attention of `n` query tokens (`q`: (n, n_heads * head_dim)) at the last `n` of
    /// `len` positions over f16 keys and values ((len, kv_stride), bits), `window` 0 for none.
    /// Returns (n, n_heads * head_dim).
    #[allow(clippy::too_many_arguments)] // the kernel's shape, spelled out
    pub fn attend_f16(
        &self,
        q: &[f32],
        keys: &[u16],
        values: &[u16],
        (len, n, n_heads, head_dim, group, kv_stride): (usize, usize, usize, usize, usize, usize),
        scale: f32,
        window: usize,
    ) -> Result<Vec<f32>> {
        let shared = 4 * len;
        if shared > 48 * 1024 {
            return Err(Error::InvalidArgument { what: format!("CUDA: attention over {len} positions needs more than 48 KiB of scores (not yet tiled)") });
        }
        let (qd, kd, vd) = (self.upload(q)?, self.upload(keys)?, self.upload(values)?);
        let mut out = self.stream.alloc_zeros::<f32>(n * n_heads * head_dim).map_err(|e| device_error("allocating", e))?;
        let a = [len, n, n_heads, head_dim, group, kv_stride].map(|v| v as i32);
        let w = window as i32;
        let cfg = LaunchConfig { grid_dim: (n_heads as u32, n as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: shared as u32 };
        let mut l = self.stream.launch_builder(self.func("attend_f16"));
        l.arg(&qd).arg(&kd).arg(&vd).arg(&mut out);
        for v in &a {
            l.arg(v);
        }
        l.arg(&scale).arg(&w);
        // SAFETY: the arguments match attend_f16's signature and sizes; the scores fit the
        // dynamic shared memory asked for (checked above).
        unsafe { l.launch(cfg) }.map_err(|e| device_error("attend_f16", e))?;
        self.download(&out)
    }
}
