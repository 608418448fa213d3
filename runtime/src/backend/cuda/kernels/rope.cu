// RoPE, interleaved pairs: for token t, head h, pair i < head_dim / 2,
//   (a, b) = (v[2i], v[2i+1]) -> (a cos - b sin, a sin + b cos), angles cos/sin[t, i].
// v: (n, width) with width = heads * head_dim (q and k are launched separately).
// cos, sin: (n, head_dim / 2). Grid: (n); block: 256 threads over the row's pairs.
extern "C" __global__ void rope(float* v, int width, int head_dim, const float* cs, const float* sn) {
    int t = blockIdx.x, half = head_dim / 2;
    float* r = v + (size_t)t * width;
    for (int p = threadIdx.x; p < width / 2; p += blockDim.x) {
        int i = p % half;
        float c = cs[(size_t)t * half + i], s = sn[(size_t)t * half + i];
        float a = r[2 * p], b = r[2 * p + 1];
        r[2 * p] = a * c - b * s;
        r[2 * p + 1] = a * s + b * c;
    }
}
