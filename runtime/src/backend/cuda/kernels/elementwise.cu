// Elementwise steps over `n` values. Grid: ceil(n / 256); block: 256 threads.

// gate = silu(gate) * up  (SwiGLU)
extern "C" __global__ void swiglu(float* gate, const float* up, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) { float g = gate[i]; gate[i] = g / (1.0f + expf(-g)) * up[i]; }
}

// gate = gelu_tanh(gate) * up  (GeGLU)
extern "C" __global__ void geglu(float* gate, const float* up, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float g = gate[i];
        float u = 0.7978845608028654f * (g + 0.044715f * g * g * g);  // sqrt(2/pi)
        gate[i] = 0.5f * g * (1.0f + tanhf(u)) * up[i];
    }
}

// x *= s
extern "C" __global__ void scale(float* x, float s, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= s;
}

// x += y  (the residual stream)
extern "C" __global__ void add(float* x, const float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}
