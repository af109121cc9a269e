// outliers.cu: LLM.int8()'s activation decomposition (kernels.reference.decompose_outliers).
//
// outlier_mask        marks the outlier columns in a (K,) byte mask. Indices outside [0, K)
//                     are skipped rather than written: the host checks them when they are on
//                     the CPU; on the GPU a bad index must not corrupt memory.
// decompose_outliers  one block per token row (grid-stride over rows), in one launch:
//                     1. abs-max of the row over the regular columns (outliers count as 0),
//                     2. q = clamp(rint(x * (127 / absmax)), -127, 127), 0 in outlier columns,
//                     3. the outlier columns gathered into a dense (T, n) matrix in x's dtype,
//                        a bit copy. The row is read from DRAM once; passes 2 and 3 hit cache.
// Variants decompose_outliers_<dtype>_v<W>: dtype f32, f16, bf16; W = 16 bytes of elements
// when K is a multiple of W and x is 16-byte aligned, else 1.
#include "common.cuh"

extern "C" __global__ void outlier_mask(const long long* __restrict__ columns, long long n_columns,
                                        unsigned char* __restrict__ mask, long long cols) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n_columns; i += stride) {
        const long long column = columns[i];
        if (column >= 0 && column < cols) mask[column] = 1;
    }
}

template <typename T, int W>
__device__ void decompose_outliers_impl(const T* __restrict__ x, const unsigned char* __restrict__ mask,
                                        const long long* __restrict__ columns, long long n_columns, long long rows,
                                        long long cols, signed char* __restrict__ q, float* __restrict__ absmax_out,
                                        T* __restrict__ outliers) {
    const long long packs = cols / W;
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const Pack<T, W>* x_row = reinterpret_cast<const Pack<T, W>*>(x + row * cols);
        const Pack<unsigned char, W>* mask_packs = reinterpret_cast<const Pack<unsigned char, W>*>(mask);
        Pack<signed char, W>* q_row = reinterpret_cast<Pack<signed char, W>*>(q + row * cols);
        float absmax = 0.0f;
        for (long long p = threadIdx.x; p < packs; p += blockDim.x) {
            const Pack<T, W> v = x_row[p];
            const Pack<unsigned char, W> is_outlier = mask_packs[p];
#pragma unroll
            for (int k = 0; k < W; ++k)
                if (!is_outlier.v[k]) absmax = nan_max(absmax, fabsf(to_float(v.v[k])));
        }
        absmax = block_max(absmax);
        const float inverse = inverse_scale(absmax);
        for (long long p = threadIdx.x; p < packs; p += blockDim.x) {
            const Pack<T, W> v = x_row[p];
            const Pack<unsigned char, W> is_outlier = mask_packs[p];
            Pack<signed char, W> out;
#pragma unroll
            for (int k = 0; k < W; ++k) out.v[k] = is_outlier.v[k] ? (signed char)0 : quantize_value(to_float(v.v[k]), inverse);
            q_row[p] = out;
        }
        const T* x_elements = x + row * cols;
        T* outlier_row = outliers + row * n_columns;
        for (long long j = threadIdx.x; j < n_columns; j += blockDim.x) {
            const long long column = columns[j];
            outlier_row[j] = (column >= 0 && column < cols) ? x_elements[column] : from_float<T>(0.0f);
        }
        if (threadIdx.x == 0) absmax_out[row] = absmax;
    }
}

#define DECOMPOSE_ENTRY_POINT(SUFFIX, T, W)                                                                     \
    extern "C" __global__ void decompose_outliers_##SUFFIX(                                                     \
        const T* x, const unsigned char* mask, const long long* columns, long long n_columns, long long rows,    \
        long long cols, signed char* q, float* absmax, T* outliers) {                                            \
        decompose_outliers_impl<T, W>(x, mask, columns, n_columns, rows, cols, q, absmax, outliers);            \
    }

DECOMPOSE_ENTRY_POINT(f32_v1, float, 1)
DECOMPOSE_ENTRY_POINT(f32_v4, float, 4)
DECOMPOSE_ENTRY_POINT(f16_v1, f16, 1)
DECOMPOSE_ENTRY_POINT(f16_v8, f16, 8)
DECOMPOSE_ENTRY_POINT(bf16_v1, bf16, 1)
DECOMPOSE_ENTRY_POINT(bf16_v8, bf16, 8)
