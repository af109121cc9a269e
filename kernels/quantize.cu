// quantize.cu: abs-max quantization to int8 and back (kernels.reference.quantize_rowwise,
// quantize_tensor and dequantize_rowwise, bit for bit on the int8 values and scales).
//
// Variants, one entry point each, named <kernel>_<dtype>_v<W>:
//   dtype  f32, f16, bf16: the input (or output) element type.
//   W      elements per memory access: 16 bytes (v4 for f32, v8 for f16/bf16) when every row
//          starts on a 16-byte boundary and holds a whole number of packs, else 1.
// quantize_rowwise  one block per row (grid-stride over rows): the row's abs-max, then
//                   q = clamp(rint(x * (127 / absmax)), -127, 127). The second pass re-reads the
//                   row from L2/L1, so DRAM traffic is one read of x and one write of q.
// tensor_absmax     grid-stride abs-max over the whole tensor, one atomic per block, into a
//                   zero-initialised float: the per-tensor scale, left on the device.
// quantize_tensor   elementwise quantization with that device-resident scale (no host sync).
// dequantize_rowwise  y = q * (absmax / 127), in that order of roundings, like the reference.
#include "common.cuh"

template <typename T, int W>
__device__ void quantize_rowwise_impl(const T* __restrict__ x, signed char* __restrict__ q,
                                      float* __restrict__ absmax_out, long long rows, long long cols) {
    const long long packs = cols / W;  // the host picks W so that cols % W == 0
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const Pack<T, W>* x_row = reinterpret_cast<const Pack<T, W>*>(x + row * cols);
        Pack<signed char, W>* q_row = reinterpret_cast<Pack<signed char, W>*>(q + row * cols);
        float absmax = 0.0f;
        for (long long p = threadIdx.x; p < packs; p += blockDim.x) {
            const Pack<T, W> v = x_row[p];
#pragma unroll
            for (int k = 0; k < W; ++k) absmax = nan_max(absmax, fabsf(to_float(v.v[k])));
        }
        absmax = block_max(absmax);
        const float inverse = inverse_scale(absmax);
        for (long long p = threadIdx.x; p < packs; p += blockDim.x) {
            const Pack<T, W> v = x_row[p];
            Pack<signed char, W> out;
#pragma unroll
            for (int k = 0; k < W; ++k) out.v[k] = quantize_value(to_float(v.v[k]), inverse);
            q_row[p] = out;
        }
        if (threadIdx.x == 0) absmax_out[row] = absmax;
    }
}

template <typename T, int W>
__device__ void tensor_absmax_impl(const T* __restrict__ x, long long n, float* __restrict__ absmax_out) {
    const long long packs = n / W;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const Pack<T, W>* x_packs = reinterpret_cast<const Pack<T, W>*>(x);
    float absmax = 0.0f;
    for (long long p = first; p < packs; p += stride) {
        const Pack<T, W> v = x_packs[p];
#pragma unroll
        for (int k = 0; k < W; ++k) absmax = nan_max(absmax, fabsf(to_float(v.v[k])));
    }
    for (long long i = packs * W + first; i < n; i += stride) absmax = nan_max(absmax, fabsf(to_float(x[i])));
    absmax = block_max(absmax);
    if (threadIdx.x == 0) atomic_max_nonnegative(absmax_out, absmax);
}

template <typename T, int W>
__device__ void quantize_tensor_impl(const T* __restrict__ x, const float* __restrict__ absmax, long long n,
                                     signed char* __restrict__ q) {
    const long long packs = n / W;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const float inverse = inverse_scale(*absmax);
    const Pack<T, W>* x_packs = reinterpret_cast<const Pack<T, W>*>(x);
    Pack<signed char, W>* q_packs = reinterpret_cast<Pack<signed char, W>*>(q);
    for (long long p = first; p < packs; p += stride) {
        const Pack<T, W> v = x_packs[p];
        Pack<signed char, W> out;
#pragma unroll
        for (int k = 0; k < W; ++k) out.v[k] = quantize_value(to_float(v.v[k]), inverse);
        q_packs[p] = out;
    }
    for (long long i = packs * W + first; i < n; i += stride) q[i] = quantize_value(to_float(x[i]), inverse);
}

template <typename T, int W>
__device__ void dequantize_rowwise_impl(const signed char* __restrict__ q, const float* __restrict__ absmax,
                                        long long absmax_stride, T* __restrict__ y, long long rows, long long cols) {
    const long long packs = cols / W;
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const float scale = absmax[row * absmax_stride] / 127.0f;
        const Pack<signed char, W>* q_row = reinterpret_cast<const Pack<signed char, W>*>(q + row * cols);
        Pack<T, W>* y_row = reinterpret_cast<Pack<T, W>*>(y + row * cols);
        for (long long p = threadIdx.x; p < packs; p += blockDim.x) {
            const Pack<signed char, W> v = q_row[p];
            Pack<T, W> out;
#pragma unroll
            for (int k = 0; k < W; ++k) out.v[k] = from_float<T>((float)v.v[k] * scale);
            y_row[p] = out;
        }
    }
}

#define QUANTIZE_ENTRY_POINTS(SUFFIX, T, W)                                                                     \
    extern "C" __global__ void quantize_rowwise_##SUFFIX(const T* x, signed char* q, float* absmax,              \
                                                         long long rows, long long cols) {                       \
        quantize_rowwise_impl<T, W>(x, q, absmax, rows, cols);                                                  \
    }                                                                                                           \
    extern "C" __global__ void tensor_absmax_##SUFFIX(const T* x, long long n, float* absmax) {                  \
        tensor_absmax_impl<T, W>(x, n, absmax);                                                                 \
    }                                                                                                           \
    extern "C" __global__ void quantize_tensor_##SUFFIX(const T* x, const float* absmax, long long n,            \
                                                        signed char* q) {                                        \
        quantize_tensor_impl<T, W>(x, absmax, n, q);                                                            \
    }                                                                                                           \
    extern "C" __global__ void dequantize_rowwise_##SUFFIX(const signed char* q, const float* absmax,           \
                                                           long long absmax_stride, T* y, long long rows,        \
                                                           long long cols) {                                     \
        dequantize_rowwise_impl<T, W>(q, absmax, absmax_stride, y, rows, cols);                                 \
    }

QUANTIZE_ENTRY_POINTS(f32_v1, float, 1)
QUANTIZE_ENTRY_POINTS(f32_v4, float, 4)
QUANTIZE_ENTRY_POINTS(f16_v1, f16, 1)
QUANTIZE_ENTRY_POINTS(f16_v8, f16, 8)
QUANTIZE_ENTRY_POINTS(bf16_v1, bf16, 1)
QUANTIZE_ENTRY_POINTS(bf16_v8, bf16, 8)
