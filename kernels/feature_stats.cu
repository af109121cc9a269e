// feature_stats.cu: per input feature, the running abs-max and the number of tokens with
// |x| > threshold, folded into device-resident totals in one pass over a (T, K) batch
// (kernels.reference.feature_stats; exact, since max and counting do not round).
//
// Layout: a block is 32 x 8 threads. threadIdx.x walks 32 neighbouring column packs (so a
// warp reads 32 * 16 contiguous bytes per row when W > 1), threadIdx.y and gridDim.y split the
// rows. Each thread keeps W running maxima and counts in registers, the block reduces its 8
// row groups in shared memory, and one atomic per column per block folds the result into
// the totals: no host round trip, and the totals can live on the GPU for a whole scan.
//
// Variants feature_stats_<dtype>_v<W>: dtype f32, f16, bf16; W = 16 bytes of elements when
// K is a multiple of W and x is 16-byte aligned, else 1.
// `threshold` arrives already rounded to x's dtype: torch compares a half tensor with a
// Python float in half precision, and the counts must agree with it.
#include "common.cuh"

#define STATS_ROWS_PER_BLOCK 8
#define STATS_PACKS_PER_BLOCK 32

template <typename T, int W>
__device__ void feature_stats_impl(const T* __restrict__ x, long long rows, long long cols, float threshold,
                                   float* __restrict__ absmax_acc, unsigned long long* __restrict__ count_acc) {
    __shared__ float shared_max[STATS_ROWS_PER_BLOCK][STATS_PACKS_PER_BLOCK * W];
    __shared__ unsigned int shared_count[STATS_ROWS_PER_BLOCK][STATS_PACKS_PER_BLOCK * W];
    const long long packs = cols / W;
    const long long pack = (long long)blockIdx.x * STATS_PACKS_PER_BLOCK + threadIdx.x;
    float absmax[W];
    unsigned int count[W];
#pragma unroll
    for (int k = 0; k < W; ++k) {
        absmax[k] = 0.0f;
        count[k] = 0u;
    }
    if (pack < packs) {
        const long long row_step = (long long)gridDim.y * STATS_ROWS_PER_BLOCK;
        for (long long row = (long long)blockIdx.y * STATS_ROWS_PER_BLOCK + threadIdx.y; row < rows; row += row_step) {
            const Pack<T, W> v = reinterpret_cast<const Pack<T, W>*>(x + row * cols)[pack];
#pragma unroll
            for (int k = 0; k < W; ++k) {
                const float magnitude = fabsf(to_float(v.v[k]));
                absmax[k] = nan_max(absmax[k], magnitude);
                count[k] += magnitude > threshold ? 1u : 0u;
            }
        }
    }
#pragma unroll
    for (int k = 0; k < W; ++k) {
        shared_max[threadIdx.y][threadIdx.x * W + k] = absmax[k];
        shared_count[threadIdx.y][threadIdx.x * W + k] = count[k];
    }
    __syncthreads();
    // The block's 32 * W columns are reduced over its 8 row groups by its 256 threads.
    const int flat = threadIdx.y * STATS_PACKS_PER_BLOCK + threadIdx.x;
    for (int column = flat; column < STATS_PACKS_PER_BLOCK * W; column += STATS_PACKS_PER_BLOCK * STATS_ROWS_PER_BLOCK) {
        const long long feature = (long long)blockIdx.x * STATS_PACKS_PER_BLOCK * W + column;
        if (feature >= cols) continue;
        float block_absmax = 0.0f;
        unsigned int block_count = 0u;
        for (int group = 0; group < STATS_ROWS_PER_BLOCK; ++group) {
            block_absmax = nan_max(block_absmax, shared_max[group][column]);
            block_count += shared_count[group][column];
        }
        atomic_max_nonnegative(absmax_acc + feature, block_absmax);
        if (block_count) atomicAdd(count_acc + feature, (unsigned long long)block_count);
    }
}

#define STATS_ENTRY_POINT(SUFFIX, T, W)                                                                         \
    extern "C" __global__ void __launch_bounds__(STATS_PACKS_PER_BLOCK * STATS_ROWS_PER_BLOCK)                   \
        feature_stats_##SUFFIX(const T* x, long long rows, long long cols, float threshold, float* absmax_acc,    \
                               unsigned long long* count_acc) {                                                  \
        feature_stats_impl<T, W>(x, rows, cols, threshold, absmax_acc, count_acc);                              \
    }

STATS_ENTRY_POINT(f32_v1, float, 1)
STATS_ENTRY_POINT(f32_v4, float, 4)
STATS_ENTRY_POINT(f16_v1, f16, 1)
STATS_ENTRY_POINT(f16_v8, f16, 8)
STATS_ENTRY_POINT(bf16_v1, bf16, 1)
STATS_ENTRY_POINT(bf16_v8, bf16, 8)
