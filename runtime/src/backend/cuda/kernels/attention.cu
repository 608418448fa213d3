// Causal attention of n query tokens over an f16 KV cache (the KvCache's f16 format).
//
// q, out: (n, n_heads * head_dim) f32. keys, values: (len, kv_stride) f16 bits, kv head h's
// columns at h * head_dim. Query token t sits at position len - n + t and reads positions
// max(0, pos + 1 - window)..=pos (window = 0: all). Query head h reads kv head h / group.
// Grid: (n_heads, n); block: 128 threads; dynamic shared memory: len floats (the scores),
// so one launch reaches len <= 12288 at 48 KiB (the host checks, and asks for more where the
// device has it).
extern "C" __global__ void attend_f16(const float* q, const u16* keys, const u16* values,
                                      float* out, int len, int n, int n_heads, int head_dim,
                                      int group, int kv_stride, float scale, int window) {
    extern __shared__ float sc[];
    __shared__ float tmp[32];
    int h = blockIdx.x, t = blockIdx.y;
    int pos = len - n + t;
    int lo = window > 0 ? max(0, pos + 1 - window) : 0;
    const float* qh = q + (size_t)t * n_heads * head_dim + (size_t)h * head_dim;
    int kvh = h / group;
    // Scores: one thread per position.
    float m = NEG_INF;
    for (int p = lo + threadIdx.x; p <= pos; p += blockDim.x) {
        const u16* k = keys + (size_t)p * kv_stride + (size_t)kvh * head_dim;
        float s = 0.0f;
        for (int i = 0; i < head_dim; ++i) s += qh[i] * h2f(k[i]);
        s *= scale;
        sc[p - lo] = s;
        m = fmaxf(m, s);
    }
    m = block_max(m, tmp);
    float z = 0.0f;
    for (int p = lo + threadIdx.x; p <= pos; p += blockDim.x) { float e = expf(sc[p - lo] - m); sc[p - lo] = e; z += e; }
    z = block_sum(z, tmp);  // also the barrier before every thread reads sc
    float inv = 1.0f / z;
    // Output: one thread per dimension of the head.
    float* o = out + (size_t)t * n_heads * head_dim + (size_t)h * head_dim;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float acc = 0.0f;
        for (int p = lo; p <= pos; ++p) acc += sc[p - lo] * h2f(values[(size_t)p * kv_stride + (size_t)kvh * head_dim + i]);
        o[i] = acc * inv;
    }
}
