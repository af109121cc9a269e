// common.cuh: element types, conversions, vector packs and reductions shared by every kernel.
//
// fp16 and bf16 travel as their 16-bit patterns. NVRTC has no built-in copy of
// cuda_fp16.h / cuda_bf16.h, and a header search path would tie compilation to
// a CUDA toolkit install; the conversions below are the PTX `cvt` instructions
// those headers use themselves, round-to-nearest-even like torch's `.to()`.
// `cvt.rn.bf16.f32` needs sm_80 or newer, the oldest architecture we build for.
#pragma once

struct f16 { unsigned short bits; };
struct bf16 { unsigned short bits; };

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(f16 v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
    return f;
}
__device__ __forceinline__ float to_float(bf16 v) { return __uint_as_float(((unsigned int)v.bits) << 16); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ f16 from_float<f16>(float v) {
    f16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(v));
    return r;
}
template <> __device__ __forceinline__ bf16 from_float<bf16>(float v) {
    bf16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"(v));
    return r;
}

// W consecutive elements loaded or stored as one access. With W * sizeof(T) == 16
// a warp moves 512 contiguous bytes per instruction; W == 1 is the plain path for
// rows whose length or address is not a multiple of 16 bytes (the host chooses).
template <typename T, int W> struct alignas(sizeof(T) * W) Pack { T v[W]; };

// Maximum that propagates NaN, as torch's amax and maximum do (fmaxf drops it).
__device__ __forceinline__ float nan_max(float a, float b) { return (a > b || a != a) ? a : b; }

// reference.MIN_ABSMAX: below it 127 / absmax would overflow float32, and the row quantizes to zeros.
#define MIN_ABSMAX 0x1p-120f

// The inverse scale of reference._inverse_scale: 0 for a zero, tiny or NaN abs-max (and 127 / inf is 0).
// torch evaluates `127.0 / tensor` as `tensor.reciprocal() * 127.0`: an IEEE reciprocal, then a rounded
// product. That differs from a single division 127 / absmax in the last bit for some absmax, which moves
// ties; the kernels do exactly what torch does.
__device__ __forceinline__ float inverse_scale(float absmax) {
    return absmax >= MIN_ABSMAX ? (1.0f / absmax) * 127.0f : 0.0f;
}

// clamp(round_half_even(x * inverse), -127, 127) with NaN to 0: reference._round_to_int8, operation for
// operation. A NaN product comes from a non-finite value in a row whose inverse scale is 0; without the
// test, fmaxf would turn it into -127.
__device__ __forceinline__ signed char quantize_value(float x, float inverse) {
    float r = rintf(x * inverse);
    r = r == r ? r : 0.0f;
    r = fminf(fmaxf(r, -127.0f), 127.0f);
    return (signed char)(int)r;
}

// NaN-propagating max over the whole block; every thread receives the result.
// Must be reached by all threads of the block; blockDim.x is a multiple of 32, at most 1024.
__device__ float block_max(float v) {
    __shared__ float warp_max[32];
    for (int offset = 16; offset > 0; offset >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, offset));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    if (lane == 0) warp_max[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < n_warps ? warp_max[lane] : 0.0f;
        for (int offset = 16; offset > 0; offset >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, offset));
        if (lane == 0) warp_max[0] = v;
    }
    __syncthreads();
    const float result = warp_max[0];
    __syncthreads();  // warp_max is reused by the next call
    return result;
}

// Running maximum of a non-negative float in global memory: for floats >= 0 (and
// positive NaN) the IEEE bit patterns order like signed integers.
__device__ __forceinline__ void atomic_max_nonnegative(float* address, float value) {
    atomicMax(reinterpret_cast<int*>(address), __float_as_int(value));
}
