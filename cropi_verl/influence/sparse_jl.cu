/* sparse_jl on a CUDA GPU: the same sums, in the same order, as sparse_jl.c and the torch path, so the same bits.
 *
 * sjl_blocks_f32 / sjl_blocks_bf16: one CTA of THREADS threads per (bucket range, canonical block, row). For block b (plan[b] = column in
 * x, length, low word of its first coordinate lo, high-word key):
 *   h(i) = fmix32((lo + i) * 0x9E3779B1 ^ key),  c(i) = h(i) mod 2k,
 *   part[b][row][c(i) >> 1] += s(i) x[i],  s(i) = +1 for even c(i), -1 for odd,
 * one fp32 running sum per bucket in shared memory, in coordinate order. The CTA takes STEP consecutive
 * coordinates at a time (UNROLL per thread); coordinates of one step that share a bucket add in rounds, lowest
 * coordinate first: each round, every pending coordinate bids its stamp (epoch << 11 | position in the step) with
 * atomicMin on its bucket's owner word, and each bucket's winner adds; epochs decrease, so a new bid always beats
 * an old one. A step takes as many rounds as its fullest bucket has coordinates (about 4 for k = 8192). So every
 * bucket sees exactly the sequential loop's adds, whatever the warp schedule: deterministic, the CPU's bits.
 * x is fp32, or bf16 (widened exactly, bits << 16).
 * sjl_reduce: total[j] = sum over b = 0..nb-1 of part[b][j] in fp64, in block order (as sjl_reduce in C).
 * Compiled at run time by NVRTC (torch.cuda._compile_kernel; see cuda_kernel.py); no fast math, so adds are
 * plain IEEE fp32/fp64 adds with denormals kept. */

#define THREADS 512
#define UNROLL 4
#define STEP (THREADS * UNROLL)  /* coordinates per step; position in the step p = u * THREADS + thread < 2^11 */

#include "sparse_jl_hash.h"

typedef unsigned int u32;
typedef long long i64;


__device__ __forceinline__ float load_x(const float *x, i64 i) { return __ldcs(x + i); }

__device__ __forceinline__ float load_x(const unsigned short *x, i64 i) {  // bf16 widened: bits << 16, exact
    return __uint_as_float(((u32)__ldcs(x + i)) << 16);
}

/* Grid (ceil(k / kp), nb, B): CTA (z, block, row) keeps buckets z kp .. z kp + kc - 1 (kc <= kp; the other
 * coordinates of the block are skipped), so k beyond one CTA's shared memory is split across CTAs. ld = ld_hi 2^31
 * + ld_lo: the row stride of x in elements. Dynamic shared memory: kp fp32 sums, kp owner words. */
template <typename T>
__device__ __forceinline__ void blocks(const T *x, const i64 *plan, u32 ld_lo, u32 ld_hi, u32 two_k, u32 kp,
                                       float *part) {
    extern __shared__ u32 smem[];
    const i64 ld = (i64)ld_hi << 31 | ld_lo;
    const u32 k = two_k >> 1, tid = threadIdx.x, b0 = blockIdx.x * kp, kc = min(kp, k - b0);
    const bool pow2 = (two_k & (two_k - 1)) == 0;
    float *acc = (float *)smem;
    u32 *owner = smem + kp;
    const i64 *p = plan + 4 * (i64)blockIdx.y;
    const i64 len = p[1];
    const u32 lo = (u32)p[2], key = (u32)p[3];
    const i64 first = (i64)blockIdx.z * ld + p[0];
    for (u32 j = tid; j < kc; j += THREADS) {
        acc[j] = 0.0f;
        owner[j] = 0xFFFFFFFFu;
    }
    u32 epoch = 0x1FFFFFu;  // 2^21 - 1 rounds; a block of 2^18 coordinates needs about 2^9
    float cur[UNROLL], next[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; u++) {
        const i64 i = (i64)u * THREADS + tid;
        cur[u] = i < len ? load_x(x, first + i) : 0.0f;
    }
    __syncthreads();
    for (i64 s = 0; s < len; s += STEP) {
        u32 b[UNROLL], pending = 0;
        float v[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const i64 i = s + (i64)u * THREADS + tid;
            const u32 h = fmix32((lo + (u32)i) * 0x9E3779B1u ^ key);
            const u32 c = pow2 ? (h & (two_k - 1)) : ((h & 0x7FFFFFFFu) % two_k);
            b[u] = (c >> 1) - b0;  // wraps to >= kc below this CTA's range
            v[u] = __uint_as_float(__float_as_uint(cur[u]) ^ (c << 31));  // s(i) x[i], exact
            pending |= (u32)(i < len && b[u] < kc) << u;
            const i64 ahead = i + STEP;  // prefetch the next step while this one is summed
            next[u] = ahead < len ? load_x(x, first + ahead) : 0.0f;
        }
        while (true) {  // CTA-uniform: ends when no item of the step is pending
#pragma unroll
            for (int u = 0; u < UNROLL; u++)
                if (pending >> u & 1) atomicMin(&owner[b[u]], epoch << 11 | (u32)u * THREADS + tid);
            __syncthreads();
#pragma unroll
            for (int u = 0; u < UNROLL; u++)
                if ((pending >> u & 1) && owner[b[u]] == (epoch << 11 | (u32)u * THREADS + tid)) {
                    acc[b[u]] += v[u];
                    pending &= ~(1u << u);
                }
            epoch--;
            if (!__syncthreads_or(pending)) break;
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) cur[u] = next[u];
    }
    float *out = part + ((i64)blockIdx.y * gridDim.z + blockIdx.z) * k + b0;
    for (u32 j = tid; j < kc; j += THREADS) out[j] = acc[j];
}

extern "C" __global__ void __launch_bounds__(THREADS)
sjl_blocks_f32(const float *x, const i64 *plan, u32 ld_lo, u32 ld_hi, u32 two_k, u32 kp, float *part) {
    blocks(x, plan, ld_lo, ld_hi, two_k, kp, part);
}

extern "C" __global__ void __launch_bounds__(THREADS)
sjl_blocks_bf16(const unsigned short *x, const i64 *plan, u32 ld_lo, u32 ld_hi, u32 two_k, u32 kp, float *part) {
    blocks(x, plan, ld_lo, ld_hi, two_k, kp, part);
}

/* part is [nb, m] fp32 (m = B * k), total is [m] fp64. */
extern "C" __global__ void sjl_reduce(const float *part, int nb, int m, double *total) {
    const i64 j = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= m) return;
    double t = 0.0;
#pragma unroll 32
    for (i64 b = 0; b < nb; b++) t += (double)part[b * m + j];
    total[j] = t;
}
