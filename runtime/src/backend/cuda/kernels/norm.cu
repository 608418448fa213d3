// RMSNorm: out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w, every row of width `dim`.
// x, out: (n, dim) (may alias: rmsnorm_rows runs in place with dim = the head's width).
// Grid: n rows; block: 256 threads.
extern "C" __global__ void rmsnorm(float* out, const float* x, const float* w, int dim, float eps) {
    __shared__ float tmp[32];
    const float* xr = x + (size_t)blockIdx.x * dim;
    float* o = out + (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, tmp);
    float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) o[i] = xr[i] * inv * w[i];
}
