// Products of nested 8-bit weights (runtime/src/blocks.rs) with int8 activation blocks
// (quantize.cu), read straight from the planes a view needs:
//
//   out[t, r] = Σ_g d[t,g] · (step_g · isum[t,r,g] + offset_g · sum[t,g])
//   isum[t,r,g] = Σ_j q_k[r, g·gs + j] · xq[t, g·gs + j]      (int32, exact, __dp4a)
//
// Planes: p0 (2 bits/code, bits 7..6), p1..p4 (1 bit: bits 5, 4, 3, 2), p5 (2 bits: 1..0),
// LSB first, every row starting on a byte of every plane. A `view`-bit view reads the first
// nested8_planes(view) planes (the others may be null) and q_k = q >> (8 - view).
// Requirements (checked on the host): group_size and row_stride are multiples of 8.
//
// The 8-bit view's codes reach 255, past __dp4a's signed bytes: it multiplies q ^ 0x80
// (= q - 128 as i8) and adds 128 · sum, the same integer.

struct Planes { const u8* p[6]; };

// The top `view` bits of the 8 codes starting at flat index i (a multiple of 8), packed as
// bytes (code j in byte j % 4 of word j / 4); for view 8, as q - 128.
__device__ __forceinline__ void codes8(const Planes& pl, int view, size_t i, int& lo, int& hi) {
    u32 c0 = 0, c1 = 0;  // the 8 codes' full 8-bit positions, 4 per word
    u32 b0 = ((const u16*)pl.p[0])[i / 8];  // 2 bits x 8 codes
    for (int j = 0; j < 4; ++j) {
        c0 |= ((b0 >> (2 * j)) & 3u) << (8 * j + 6);
        c1 |= ((b0 >> (2 * j + 8)) & 3u) << (8 * j + 6);
    }
    int n1 = view == 2 ? 0 : (view == 8 ? 4 : view - 2);  // 1-bit planes read
    for (int p = 0; p < n1; ++p) {
        u32 b = pl.p[1 + p][i / 8];
        int shift = 5 - p;
        for (int j = 0; j < 4; ++j) {
            c0 |= ((b >> j) & 1u) << (8 * j + shift);
            c1 |= ((b >> (j + 4)) & 1u) << (8 * j + shift);
        }
    }
    if (view == 8) {
        u32 b5 = ((const u16*)pl.p[5])[i / 8];
        for (int j = 0; j < 4; ++j) {
            c0 |= ((b5 >> (2 * j)) & 3u) << (8 * j);
            c1 |= ((b5 >> (2 * j + 8)) & 3u) << (8 * j);
        }
        lo = (int)(c0 ^ 0x80808080u);
        hi = (int)(c1 ^ 0x80808080u);
    } else {
        // Shift every byte right by 8 - view; the mask drops the bits of the next byte.
        int drop = 8 - view;
        u32 m = (0xffu >> drop) * 0x01010101u;
        lo = (int)((c0 >> drop) & m);
        hi = (int)((c1 >> drop) & m);
    }
}

// (step, offset) of a group at a view, as blocks::nested8_step_offset (no FMA).
__device__ __forceinline__ void step_offset(const u16* params, size_t g, int view, float& step, float& offset) {
    int drop = 8 - view;
    float scale = h2f(params[2 * g]), mn = h2f(params[2 * g + 1]);
    step = __fmul_rn(scale, (float)(1u << drop));
    offset = __fadd_rn(mn, __fmul_rn(scale, (float)((1u << drop) - 1) * 0.5f));
}

// Decode: out[r] for token 0. One warp per row, lanes over the row's groups.
// params: (rows, groups) (scale, min) f16 pairs. xq: (padded_cols) i8; d, sum: (groups).
// Grid: ceil(rows / 4); block: 128 threads.
extern "C" __global__ void nested8_matvec(Planes pl, const u16* params, int view, int rows,
                                          int row_stride, int gs, const i8* xq, const float* d,
                                          const int* sum, float* out) {
    int row = blockIdx.x * 4 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    int groups = row_stride / gs;
    float acc = 0.0f;
    for (int g = lane; g < groups; g += 32) {
        size_t first = (size_t)row * row_stride + (size_t)g * gs;
        const int* x = (const int*)(xq + (size_t)g * gs);
        int isum = 0;
        for (int k = 0; k < gs; k += 8) {
            int lo, hi;
            codes8(pl, view, first + k, lo, hi);
            isum = __dp4a(lo, x[k / 4], isum);
            isum = __dp4a(hi, x[k / 4 + 1], isum);
        }
        if (view == 8) isum += 128 * sum[g];
        float step, offset;
        step_offset(params, (size_t)row * groups + g, view, step, offset);
        acc = __fadd_rn(acc, __fmul_rn(d[g], __fadd_rn(__fmul_rn(step, (float)isum), __fmul_rn(offset, (float)sum[g]))));
    }
    acc = warp_sum(acc);
    if (lane == 0) out[row] = acc;
}

// Prefill: out[t, r] for n tokens, (n, rows). One warp per (row, tile of up to 8 tokens):
// each code word is unpacked once and meets 8 tokens. xq: (n, padded_cols); d, sum: (n, groups).
// Grid: (ceil(rows / 4), ceil(n / 8)); block: 128 threads.
extern "C" __global__ void nested8_matmul(Planes pl, const u16* params, int view, int rows,
                                          int row_stride, int gs, int n, const i8* xq,
                                          const float* d, const int* sum, float* out) {
    int row = blockIdx.x * 4 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    int t0 = blockIdx.y * 8, nt = min(8, n - t0);
    if (row >= rows) return;
    int groups = row_stride / gs;
    float acc[8];
    for (int t = 0; t < 8; ++t) acc[t] = 0.0f;
    for (int g = lane; g < groups; g += 32) {
        size_t first = (size_t)row * row_stride + (size_t)g * gs;
        int isum[8];
        for (int t = 0; t < 8; ++t) isum[t] = 0;
        for (int k = 0; k < gs; k += 8) {
            int lo, hi;
            codes8(pl, view, first + k, lo, hi);
            for (int t = 0; t < nt; ++t) {
                const int* x = (const int*)(xq + (size_t)(t0 + t) * row_stride + (size_t)g * gs);
                isum[t] = __dp4a(lo, x[k / 4], isum[t]);
                isum[t] = __dp4a(hi, x[k / 4 + 1], isum[t]);
            }
        }
        float step, offset;
        step_offset(params, (size_t)row * groups + g, view, step, offset);
        for (int t = 0; t < nt; ++t) {
            size_t b = (size_t)(t0 + t) * groups + g;
            int is = isum[t] + (view == 8 ? 128 * sum[b] : 0);
            acc[t] = __fadd_rn(acc[t], __fmul_rn(d[b], __fadd_rn(__fmul_rn(step, (float)is), __fmul_rn(offset, (float)sum[b]))));
        }
    }
    for (int t = 0; t < nt; ++t) {
        float s = warp_sum(acc[t]);
        if (lane == 0) out[(size_t)(t0 + t) * rows + row] = s;
    }
}
