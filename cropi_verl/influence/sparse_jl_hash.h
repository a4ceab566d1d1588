/* What both sparse_jl kernels (sparse_jl.c on the CPU, sparse_jl.cu on CUDA) share: murmur3's fmix32 finaliser,
 * the h of projection.py's coordinate hash h(i) = fmix32(i * 0x9E3779B1 ^ key). */
#ifndef SPARSE_JL_HASH_H
#define SPARSE_JL_HASH_H

#ifdef __CUDACC__
#define SJL_INLINE __device__ __forceinline__
#else
#define SJL_INLINE static inline
#endif

SJL_INLINE unsigned int fmix32(unsigned int h) {
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h;
}

#endif
