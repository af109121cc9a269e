// epilogue.cu: the INT32 accumulator of an INT8 GEMM back to floating point
// (kernels.reference.dequantize_epilogue), in one pass:
//     y = acc * (row_absmax[m] * col_absmax[n]) / 127**2  [+ outlier_out[m, n]]  [+ bias[n]]
// with the same float32 roundings in the same order as the reference, then rounded to the
// output dtype. A scale given as one number (per-tensor quantization) has stride 0.
//
// Variants dequantize_epilogue_<out>_<outlier>_v<W>: out and outlier dtypes f32, f16, bf16
// (the outlier product arrives in the activations' dtype); W = 4 accumulators per access
// when N % 4 == 0 and every row pointer is aligned for it, else 1. Bias arrives as float32.
//
// The INT8 x INT8 -> INT32 product itself is not here: kernels.cuda_ops.int8_matmul calls
// torch._int_mm, i.e. cuBLASLt's IMMA tensor-core GEMM. A hand-written GEMM that matches
// cuBLASLt's tiling, software pipelining and per-architecture tuning (sm_80 mma.sync,
// sm_90 wgmma with TMA) is a project of its own; an untuned one would be several times
// slower, and the GEMM is where the FLOPs are. What a fused kernel (GEMM + this epilogue in
// the GEMM's register tiles, as CUTLASS epilogue visitors do) would gain: the (M, N) int32
// accumulator would never be written to DRAM and read back (8 bytes per output element; for
// M = N = K = 4096 that is 128 MiB of traffic against 32 MiB of int8 operands), and one
// launch instead of two, which matters for decode-sized M where launches dominate. The
// outlier product and the bias could be folded into the same epilogue.
#include "common.cuh"

template <typename TOut, typename TOutlier, int W>
__device__ void dequantize_epilogue_impl(const int* __restrict__ acc, const float* __restrict__ row_absmax,
                                         long long row_stride, const float* __restrict__ col_absmax,
                                         long long col_stride, const float* __restrict__ bias, int has_bias,
                                         const TOutlier* __restrict__ outlier_out, int has_outlier,
                                         TOut* __restrict__ y, long long rows, long long cols) {
    const long long packs = cols / W;
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const float row_scale = row_absmax[row * row_stride];
        const Pack<int, W>* acc_row = reinterpret_cast<const Pack<int, W>*>(acc + row * cols);
        const Pack<TOutlier, W>* outlier_row = reinterpret_cast<const Pack<TOutlier, W>*>(outlier_out + row * cols);
        Pack<TOut, W>* y_row = reinterpret_cast<Pack<TOut, W>*>(y + row * cols);
        for (long long p = threadIdx.x; p < packs; p += blockDim.x) {
            const Pack<int, W> a = acc_row[p];
            Pack<TOutlier, W> extra;
            if (has_outlier) extra = outlier_row[p];
            Pack<TOut, W> out;
#pragma unroll
            for (int k = 0; k < W; ++k) {
                const long long col = p * W + k;
                const float scale = row_scale * col_absmax[col * col_stride];
                float value = ((float)a.v[k] * scale) / 16129.0f;
                if (has_outlier) value = value + to_float(extra.v[k]);
                if (has_bias) value = value + bias[col];
                out.v[k] = from_float<TOut>(value);
            }
            y_row[p] = out;
        }
    }
}

#define EPILOGUE_ENTRY_POINT(SUFFIX, TOut, TOutlier, W)                                                         \
    extern "C" __global__ void dequantize_epilogue_##SUFFIX(                                                    \
        const int* acc, const float* row_absmax, long long row_stride, const float* col_absmax,                 \
        long long col_stride, const float* bias, int has_bias, const TOutlier* outlier_out, int has_outlier,     \
        TOut* y, long long rows, long long cols) {                                                               \
        dequantize_epilogue_impl<TOut, TOutlier, W>(acc, row_absmax, row_stride, col_absmax, col_stride, bias,  \
                                                    has_bias, outlier_out, has_outlier, y, rows, cols);         \
    }

#define EPILOGUE_WIDTHS(OUT_NAME, TOut, OUTLIER_NAME, TOutlier)                                                 \
    EPILOGUE_ENTRY_POINT(OUT_NAME##_##OUTLIER_NAME##_v1, TOut, TOutlier, 1)                                     \
    EPILOGUE_ENTRY_POINT(OUT_NAME##_##OUTLIER_NAME##_v4, TOut, TOutlier, 4)

#define EPILOGUE_OUTLIER_TYPES(OUT_NAME, TOut)                                                                  \
    EPILOGUE_WIDTHS(OUT_NAME, TOut, f32, float)                                                                 \
    EPILOGUE_WIDTHS(OUT_NAME, TOut, f16, f16)                                                                   \
    EPILOGUE_WIDTHS(OUT_NAME, TOut, bf16, bf16)

EPILOGUE_OUTLIER_TYPES(f32, float)
EPILOGUE_OUTLIER_TYPES(f16, f16)
EPILOGUE_OUTLIER_TYPES(bf16, bf16)
