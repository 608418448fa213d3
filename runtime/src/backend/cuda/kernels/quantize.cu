// Activation quantization, the contract of runtime/src/kernels/acts.rs bit for bit:
//   d = amax / 127, id = 127 / amax (0 when amax = 0), q = round_half_even(x * id), sum = Σ q.
// __float2int_rn rounds half to even, like cvtps2dq / fcvtns on the CPU.
//
// x: (n, cols) f32. q: (n, padded_cols) i8, padded_cols = blocks * block (a block past `cols`
// is zero). d, sum: (n, blocks). Grid: (blocks, n); block: 32 threads (one warp per block of
// `block` values, block <= 1024).
extern "C" __global__ void quantize_acts(const float* x, int cols, int block, int blocks,
                                         i8* q, float* d, int* sum) {
    int b = blockIdx.x, t = blockIdx.y, lane = threadIdx.x;
    const float* xr = x + (size_t)t * cols;
    int lo = b * block;
    float amax = 0.0f;
    for (int j = lane; j < block; j += 32)
        if (lo + j < cols) amax = fmaxf(amax, fabsf(xr[lo + j]));
    amax = warp_max(amax);
    float dd = amax > 0.0f ? amax / 127.0f : 0.0f;
    float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    int s = 0;
    i8* qr = q + (size_t)t * blocks * block + lo;
    for (int j = lane; j < block; j += 32) {
        int v = lo + j < cols ? __float2int_rn(__fmul_rn(xr[lo + j], id)) : 0;
        qr[j] = (i8)v;
        s += v;
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) {
        d[(size_t)t * blocks + b] = dd;
        sum[(size_t)t * blocks + b] = s;
    }
}
