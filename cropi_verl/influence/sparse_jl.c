/* sparse_jl on the CPU: the CountSketch of projection.py, fused (hash, bucket, scatter) in one pass.
 *
 * For each canonical block (coordinates lo .. lo+n-1, low 32 bits; `key` = the block's high-word key):
 *   h(i) = fmix32((lo + i) * 0x9E3779B1 ^ key),  c(i) = h(i) mod 2k,
 *   part[c(i) >> 1] += s(i) x[i],  s(i) = +1 for even c(i), -1 for odd
 * (fp32, in coordinate order: the same sums as torch's index_add_; s x is a sign flip, exact). The caller adds
 * the block parts in block order in fp64, so the result is bit-identical to the torch path.
 * c(i) is read from a cached index (uint16 when 2k <= 65536, else uint32) when one is given, or hashed on the fly.
 * Built and loaded by native.py (ctypes); every entry point is reentrant, so threads run blocks in parallel. */
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "sparse_jl_hash.h"

#define TILE 2048


#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
static void bucket_tile(uint32_t lo, int64_t n, uint32_t key, uint32_t two_k, uint32_t *out) {
    if ((two_k & (two_k - 1)) == 0) {
        for (int64_t i = 0; i < n; i++) out[i] = fmix32((lo + (uint32_t)i) * 0x9E3779B1u ^ key) & (two_k - 1);
    } else {
        for (int64_t i = 0; i < n; i++) out[i] = (fmix32((lo + (uint32_t)i) * 0x9E3779B1u ^ key) & 0x7FFFFFFFu) % two_k;
    }
}

/* c(i) for n coordinates into `out` (uint16 if wide == 2, else uint32): the cached index. */
void sjl_buckets(uint32_t lo, int64_t n, uint32_t key, int64_t two_k, int wide, void *out) {
    uint32_t tile[TILE];
    for (int64_t s = 0; s < n; s += TILE) {
        int64_t m = n - s < TILE ? n - s : TILE;
        bucket_tile(lo + (uint32_t)s, m, key, (uint32_t)two_k, wide == 2 ? tile : (uint32_t *)out + s);
        if (wide == 2)
            for (int64_t i = 0; i < m; i++) ((uint16_t *)out)[s + i] = (uint16_t)tile[i];
    }
}

static inline float flip(float v, uint32_t c) {  /* -v for odd c, v for even c: the sign bit, exact */
    uint32_t u;
    memcpy(&u, &v, 4);
    u ^= c << 31;
    memcpy(&v, &u, 4);
    return v;
}

#define SCATTER(T)                                                                   \
    static inline void scatter_##T(const float *x, int64_t m, const T *c, float *a) { \
        int64_t i = 0;                                                               \
        for (; i + 4 <= m; i += 4) {                                                 \
            a[c[i] >> 1] += flip(x[i], c[i]);                                        \
            a[c[i + 1] >> 1] += flip(x[i + 1], c[i + 1]);                            \
            a[c[i + 2] >> 1] += flip(x[i + 2], c[i + 2]);                            \
            a[c[i + 3] >> 1] += flip(x[i + 3], c[i + 3]);                            \
        }                                                                            \
        for (; i < m; i++) a[c[i] >> 1] += flip(x[i], c[i]);                         \
    }
SCATTER(uint32_t)

#if defined(__SSE2__)
/* Four coordinates: the signs flipped in one SSE register (c's low bit to bit 31), the four b = c >> 1 taken
 * from one 64-bit load, then four scalar adds (the same adds, in the same order, as the scalar loop). */
#define SCATTER4(i)                                                                                           \
    {                                                                                                         \
        __m128i cv = _mm_loadl_epi64((const __m128i *)(c + (i)));                                             \
        __m128 xv = _mm_xor_ps(_mm_loadu_ps(x + (i)),                                                         \
                               _mm_castsi128_ps(_mm_slli_epi32(_mm_unpacklo_epi16(cv, zero), 31)));           \
        uint64_t w;                                                                                           \
        memcpy(&w, c + (i), 8);                                                                               \
        a[(w >> 1) & 0x7FFF] += _mm_cvtss_f32(xv);                                                            \
        a[(w >> 17) & 0x7FFF] += _mm_cvtss_f32(_mm_shuffle_ps(xv, xv, 1));                                    \
        a[(w >> 33) & 0x7FFF] += _mm_cvtss_f32(_mm_movehl_ps(xv, xv));                                        \
        a[(w >> 49) & 0x7FFF] += _mm_cvtss_f32(_mm_shuffle_ps(xv, xv, 3));                                    \
    }

static inline void scatter_uint16_t(const float *x, int64_t m, const uint16_t *c, float *a) {
    const __m128i zero = _mm_setzero_si128();
    int64_t i = 0;
    for (; i + 16 <= m; i += 16) {
        SCATTER4(i)
        SCATTER4(i + 4)
        SCATTER4(i + 8)
        SCATTER4(i + 12)
    }
    for (; i < m; i++) a[c[i] >> 1] += flip(x[i], c[i]);
}
#else
SCATTER(uint16_t)
#endif

/* Blocks b = 0..nb-1 of x (rows [B], leading dimension ld), described by plan[b] = (column in x, length,
 * low word of the first coordinate, high-word key, address of the cached c or 0 to hash on the fly); the cached
 * c is uint16 if wide == 2, else uint32. Writes part[b][row][0..k-1] (fp32, [nb, B, k]). */
void sjl_blocks(const float *x, int64_t ld, int64_t B, int64_t nb, const int64_t *plan, int wide, int64_t two_k,
                float *part) {
    uint32_t tile[TILE];
    int64_t k = two_k / 2;
    for (int64_t b = 0; b < nb; b++) {
        const int64_t *p = plan + 5 * b;
        const void *index = (const void *)(uintptr_t)p[4];
        float *out = part + b * B * k;
        memset(out, 0, sizeof(float) * B * k);
        for (int64_t s = 0; s < p[1]; s += TILE) {
            int64_t m = p[1] - s < TILE ? p[1] - s : TILE;
            if (!index) bucket_tile((uint32_t)p[2] + (uint32_t)s, m, (uint32_t)p[3], (uint32_t)two_k, tile);
            for (int64_t r = 0; r < B; r++) {
                const float *xr = x + r * ld + p[0] + s;
                if (!index) scatter_uint32_t(xr, m, tile, out + r * k);
                else if (wide == 2) scatter_uint16_t(xr, m, (const uint16_t *)index + s, out + r * k);
                else scatter_uint32_t(xr, m, (const uint32_t *)index + s, out + r * k);
            }
        }
    }
}

/* total[j] = sum over b = 0..nb-1 of part[b][j], in fp64 and in block order (m = B * k). */
void sjl_reduce(const float *part, int64_t nb, int64_t m, double *total) {
    memset(total, 0, sizeof(double) * m);
    for (int64_t b = 0; b < nb; b++)
        for (int64_t j = 0; j < m; j++) total[j] += (double)part[b * m + j];
}
