// Softmax of every row in place: x: (n, width). Sampling reads the probabilities.
// Grid: n rows; block: 256 threads.
extern "C" __global__ void softmax(float* x, int width) {
    __shared__ float tmp[32];
    float* r = x + (size_t)blockIdx.x * width;
    float m = NEG_INF;
    for (int i = threadIdx.x; i < width; i += blockDim.x) m = fmaxf(m, r[i]);
    m = block_max(m, tmp);
    float s = 0.0f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) { float e = expf(r[i] - m); r[i] = e; s += e; }
    s = block_sum(s, tmp);
    float inv = 1.0f / s;
    for (int i = threadIdx.x; i < width; i += blockDim.x) r[i] *= inv;
}
