// Shared helpers of every edge-run kernel. NVRTC compiles each .cu file with this text in front
// (the Rust side concatenates them), so no file includes a header the toolkit would provide:
// a machine with only the driver and libnvrtc compiles them.
//
// Every kernel is compiled with --fmad=false: the contract (runtime/src/blocks.rs) writes each
// float step as a separate multiply and add, and the CPU reference does the same.

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;

// -inf without math.h (NVRTC has no INFINITY macro).
#define NEG_INF __int_as_float(0xff800000)

// f16 bits -> f32 (exact), without cuda_fp16.h.
__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// Sum and max over a warp (every lane gets the result).
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum / max over a block of blockDim.x threads (a multiple of 32, at most 1024); `tmp` is 32
// floats of shared memory. Every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float* tmp) {
    v = warp_sum(v);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) tmp[w] = v;
    __syncthreads();
    v = lane < (blockDim.x >> 5) ? tmp[lane] : 0.0f;
    return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float* tmp) {
    v = warp_max(v);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) tmp[w] = v;
    __syncthreads();
    v = lane < (blockDim.x >> 5) ? tmp[lane] : NEG_INF;
    return warp_max(v);
}
