/* cpu_int8.c: the passes around the float32 GEMM of the CPU INT8 linear layer, and the scan's
 * statistics, each one pass over memory in one OpenMP parallel region (kernels.cpu_loader
 * compiles this file with the system C compiler and calls it through ctypes).
 *
 * Every function computes what its torch reference computes, value for value, in the same
 * float32 roundings (compiled with -ffp-contract=off and without fast-math, so nothing is
 * fused or reordered):
 *   quantize_rows_*     kernels.reference.quantize_rowwise / decompose_outliers, the outlier
 *                       columns counted as zero; the float variant also returns each row's
 *                       L1 norm, which decides whether one float32 GEMM is exact
 *   dequantize_*        kernels.reference.dequantize_epilogue, in place on a float32
 *                       accumulator or from an int32 one
 *   outlier_flags       the columns where any |x| > threshold (kernels.reference.outlier_columns)
 *   feature_stats       per column max |x| and count of |x| > threshold, the histogram of
 *                       log10 |x| (kernels.reference.feature_stats + log_histogram), and on
 *                       request each row's max |x| (kernels.reference.input_stats)
 *   token_dim_absmax    each row's max |x| and its column, each column's max |x|
 *                       (kernels.reference.token_dim_absmax: the scan's residual stream)
 *   median_magnitude    the lower median of |x| (kernels.reference.median_magnitude)
 *
 * Abs-max works on the bit patterns: for floats without their sign bit, unsigned integer order
 * is magnitude order (NaN above infinity, so NaN wins as it does in torch's amax), and integer
 * max reductions vectorise where float ones may not.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAGNITUDE_BITS 0x7fffffffu
#define INFINITY_BITS 0x7f800000u /* above it: NaN */

static inline uint32_t magnitude_bits(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits & MAGNITUDE_BITS;
}

static inline float float_of_bits(uint32_t bits) {
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* 127 / absmax as torch evaluates a scalar over a tensor (reciprocal, then times 127); 0 below
 * kernels.reference.MIN_ABSMAX (2**-120, where the reciprocal would overflow) and for NaN. */
static inline float inverse_scale(float absmax) { return absmax >= 0x1p-120f ? (1.0f / absmax) * 127.0f : 0.0f; }

static inline float round_to_int8_range(float scaled) {
    const float rounded = rintf(scaled); /* the default rounding mode: half to even, as torch.round */
    return rounded < -127.0f ? -127.0f : (rounded > 127.0f ? 127.0f : rounded);
}

/* The abs-max of one row over the kept columns (keep[k] is all ones, or 0 for an outlier column). */
static float row_absmax(const float *row, const uint32_t *keep, int64_t cols) {
    uint32_t largest = 0;
    if (keep) {
        for (int64_t k = 0; k < cols; ++k) {
            const uint32_t bits = magnitude_bits(row[k]) & keep[k];
            largest = bits > largest ? bits : largest;
        }
    } else {
        for (int64_t k = 0; k < cols; ++k) {
            const uint32_t bits = magnitude_bits(row[k]);
            largest = bits > largest ? bits : largest;
        }
    }
    return float_of_bits(largest);
}

/* x (rows, cols) with row stride ldx -> q (rows, cols) float32 integers in [-127, 127], absmax (rows),
 * l1 (rows) = sum |q|; keep (cols) or NULL; tensor_absmax: one scale for every row, or NULL for one per row. */
void quantize_rows_f32(const float *x, int64_t rows, int64_t cols, int64_t ldx, const uint32_t *keep,
                       const float *tensor_absmax, float *q, float *absmax, float *l1, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < rows; ++r) {
        const float *row = x + r * ldx;
        float *out = q + r * cols;
        const float largest = tensor_absmax ? *tensor_absmax : row_absmax(row, keep, cols);
        const float inverse = inverse_scale(largest);
        float total = 0.0f; /* a sum of integers below 2**24: exact in any order */
        if (keep) {
            for (int64_t k = 0; k < cols; ++k) {
                const float value = keep[k] ? row[k] : 0.0f;
                out[k] = round_to_int8_range(value * inverse);
                total += fabsf(out[k]);
            }
        } else {
            for (int64_t k = 0; k < cols; ++k) {
                out[k] = round_to_int8_range(row[k] * inverse);
                total += fabsf(out[k]);
            }
        }
        absmax[r] = largest;
        l1[r] = total;
    }
}

/* As quantize_rows_f32, to int8 for an integer GEMM (no L1: an int32 sum of int8 products is exact). */
void quantize_rows_i8(const float *x, int64_t rows, int64_t cols, int64_t ldx, const uint32_t *keep,
                      const float *tensor_absmax, int8_t *q, float *absmax, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < rows; ++r) {
        const float *row = x + r * ldx;
        int8_t *out = q + r * cols;
        const float largest = tensor_absmax ? *tensor_absmax : row_absmax(row, keep, cols);
        const float inverse = inverse_scale(largest);
        for (int64_t k = 0; k < cols; ++k) {
            const float value = (!keep || keep[k]) ? row[k] : 0.0f;
            out[k] = (int8_t)round_to_int8_range(value * inverse);
        }
        absmax[r] = largest;
    }
}

/* y = acc * (row_absmax[m] * col_absmax[n]) / 127**2 [+ outlier[m, n]] [+ bias[n]], the reference's
 * order of float32 operations. ACC_T is float (the accumulator is y itself, exact integers) or int32. */
#define DEQUANTIZE(NAME, ACC_T)                                                                               \
    void NAME(const ACC_T *acc, float *y, int64_t rows, int64_t cols, const float *row_absmax,               \
              const float *col_absmax, const float *outlier, const float *bias, int threads) {               \
        _Pragma("omp parallel for schedule(static) num_threads(threads)") for (int64_t r = 0; r < rows; ++r) { \
            const ACC_T *in = acc + r * cols;                                                                 \
            float *out = y + r * cols;                                                                        \
            const float *extra = outlier ? outlier + r * cols : NULL;                                         \
            const float row_scale = row_absmax[r];                                                            \
            for (int64_t c = 0; c < cols; ++c) {                                                              \
                float value = ((float)in[c] * (row_scale * col_absmax[c])) / 16129.0f;                        \
                if (extra) value = value + extra[c];                                                          \
                if (bias) value = value + bias[c];                                                            \
                out[c] = value;                                                                               \
            }                                                                                                 \
        }                                                                                                     \
    }

DEQUANTIZE(dequantize_f32, float)
DEQUANTIZE(dequantize_i32, int32_t)

/* flags (cols) |= 1 where any |x[:, k]| > threshold (NaN never is). */
void outlier_flags(const float *x, int64_t rows, int64_t cols, int64_t ldx, float threshold, uint8_t *flags,
                   int threads) {
#pragma omp parallel num_threads(threads)
    {
        uint8_t *local = calloc((size_t)cols, 1);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            const float *row = x + r * ldx;
            for (int64_t k = 0; k < cols; ++k) local[k] |= fabsf(row[k]) > threshold;
        }
#pragma omp critical
        for (int64_t k = 0; k < cols; ++k) flags[k] |= local[k];
        free(local);
    }
}

/* Fold one row's |x| into the running per-column maxima (bit patterns); returns the row's largest. One
 * vectorised pass: the callers' other work on the row reads it again from L1. */
static inline uint32_t fold_row_magnitudes(const float *restrict row, int64_t cols, uint32_t *restrict col_largest) {
    uint32_t row_largest = 0;
    for (int64_t k = 0; k < cols; ++k) {
        const uint32_t bits = magnitude_bits(row[k]);
        col_largest[k] = bits > col_largest[k] ? bits : col_largest[k];
        row_largest = bits > row_largest ? bits : row_largest;
    }
    return row_largest;
}

/* One batch's per-column max |x| (bit patterns, as above) and count of |x| > threshold, each row's
 * max |x| where row_absmax_bits is not NULL (the scan's token axis), and its histogram of log10 |x|: bin_of_cell[bits >> 16] is the bin of the smallest magnitude in that cell
 * of 2**16 bit patterns (a cell spans 0.0034 decades, so at most one bin edge falls inside it), and
 * upper_edge_bits[b] is the smallest magnitude of bin b + 1, which settles the cells an edge splits. */
void feature_stats(const float *x, int64_t rows, int64_t cols, int64_t ldx, float threshold, uint32_t *absmax_bits,
                   int64_t *count, int64_t *hist, const uint8_t *bin_of_cell, const uint32_t *upper_edge_bits,
                   int bins, uint32_t *row_absmax_bits, int threads) {
#pragma omp parallel num_threads(threads)
    {
        uint32_t *largest = calloc((size_t)cols, sizeof *largest);
        int64_t *over = calloc((size_t)cols, sizeof *over);
        int64_t *local_hist = calloc((size_t)bins, sizeof *local_hist);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            const float *row = x + r * ldx;
            const uint32_t row_largest = fold_row_magnitudes(row, cols, largest);
            if (row_absmax_bits) row_absmax_bits[r] = row_largest;
            for (int64_t k = 0; k < cols; ++k) over[k] += fabsf(row[k]) > threshold;
            for (int64_t k = 0; k < cols; ++k) {
                const uint32_t bits = magnitude_bits(row[k]);
                int bin = bin_of_cell[bits >> 16];
                bin += bin < bins - 1 && bits >= upper_edge_bits[bin];
                local_hist[bin] += 1;
            }
        }
#pragma omp critical
        {
            for (int64_t k = 0; k < cols; ++k) {
                absmax_bits[k] = largest[k] > absmax_bits[k] ? largest[k] : absmax_bits[k];
                count[k] += over[k];
            }
            for (int b = 0; b < bins; ++b) hist[b] += local_hist[b];
        }
        free(largest);
        free(over);
        free(local_hist);
    }
}

/* Each row's max |x| (bit patterns) and the first column that holds it (the first NaN in a row with
 * NaN, as the reference), and each column's max |x|
 * folded into col_absmax_bits: the residual stream's statistics per token and per dimension. The
 * column is found in a second look at the row, which is still in L1, so the first stays a max
 * reduction that vectorises. */
void token_dim_absmax(const float *x, int64_t rows, int64_t cols, int64_t ldx, uint32_t *row_absmax_bits,
                      int32_t *row_argmax, uint32_t *col_absmax_bits, int threads) {
#pragma omp parallel num_threads(threads)
    {
        uint32_t *largest = calloc((size_t)cols, sizeof *largest);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            const float *row = x + r * ldx;
            const uint32_t row_largest = fold_row_magnitudes(row, cols, largest);
            /* the first column at the row's maximum; in a row with NaN, the first NaN (NaNs differ in payload) */
            const uint32_t target = row_largest > INFINITY_BITS ? INFINITY_BITS + 1 : row_largest;
            int64_t at = 0;
            while (at < cols - 1 && magnitude_bits(row[at]) < target) ++at;
            row_absmax_bits[r] = row_largest;
            row_argmax[r] = (int32_t)at;
        }
#pragma omp critical
        for (int64_t k = 0; k < cols; ++k)
            col_absmax_bits[k] = largest[k] > col_absmax_bits[k] ? largest[k] : col_absmax_bits[k];
        free(largest);
    }
}

/* The lower median of |x| over n floats, exactly (torch.median's element (n - 1) / 2 of the sorted
 * values): a radix select on the magnitudes' bit patterns, one counting pass over their high 16 bits
 * and one over the low 16 bits of those in the bucket that holds the median. Two linear passes where
 * a sort-based median takes several: the scan asks for one per layer. */
float median_magnitude(const float *x, int64_t n) {
    const uint32_t buckets = 1u << 16;
    int64_t *counts = calloc(buckets, sizeof *counts);
    if (!counts) return NAN;
    int64_t rank = (n - 1) / 2;
    for (int64_t i = 0; i < n; ++i) counts[magnitude_bits(x[i]) >> 16] += 1;
    uint32_t high = 0;
    while (rank >= counts[high]) rank -= counts[high++];
    memset(counts, 0, buckets * sizeof *counts);
    for (int64_t i = 0; i < n; ++i) {
        const uint32_t bits = magnitude_bits(x[i]);
        if (bits >> 16 == high) counts[bits & (buckets - 1)] += 1;
    }
    uint32_t low = 0;
    while (rank >= counts[low]) rank -= counts[low++];
    free(counts);
    return float_of_bits(high << 16 | low);
}
