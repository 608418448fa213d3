//! The CUDA C of every kernel, one file per concern under `kernels/`, and the NVRTC options
//! they are compiled with. NVRTC compiles them as one program: [`program`] puts `common.cuh`
//! (the helpers) first, so no file includes a toolkit header.

/// `common.cuh`: f16 conversion, warp and block reductions.
pub const COMMON: &str = include_str!("kernels/common.cuh");

/// The kernel files, `(name, source)`, in the order [`program`] joins them.
pub const KERNELS: [(&str, &str); 7] = [
    ("quantize.cu", include_str!("kernels/quantize.cu")),
    ("nested8.cu", include_str!("kernels/nested8.cu")),
    ("norm.cu", include_str!("kernels/norm.cu")),
    ("rope.cu", include_str!("kernels/rope.cu")),
    ("elementwise.cu", include_str!("kernels/elementwise.cu")),
    ("softmax.cu", include_str!("kernels/softmax.cu")),
    ("attention.cu", include_str!("kernels/attention.cu")),
];

/// Every `extern "C" __global__` entry point the backend loads.
pub const ENTRY_POINTS: [&str; 11] = [
    "quantize_acts",
    "nested8_matvec",
    "nested8_matmul",
    "rmsnorm",
    "rope",
    "swiglu",
    "geglu",
    "scale",
    "add",
    "softmax",
    "attend_f16",
];

/// NVRTC options: no fused multiply-add, because the contract (`crate::blocks`) and the CPU
/// reference round every multiply and add on its own.
pub const NVRTC_OPTIONS: [&str; 1] = ["--fmad=false"];

/// The whole program: the helpers, then every kernel file.
pub fn program() -> alloc::string::String {
    let mut s = alloc::string::String::from(COMMON);
    for (name, src) in KERNELS {
        s.push_str("\n// ---- ");
        s.push_str(name);
        s.push_str(" ----\n");
        s.push_str(src);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_point_is_defined_once() {
        let p = program();
        for e in ENTRY_POINTS {
            let decl = alloc::format!("__global__ void {e}(");
            assert_eq!(p.matches(decl.as_str()).count(), 1, "{e}");
        }
        assert_eq!(p.matches("__global__").count(), ENTRY_POINTS.len(), "a kernel is missing from ENTRY_POINTS");
    }
}
