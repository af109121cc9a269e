/* cpu_gemv.c: the INT8 linear layer for a few tokens at a time (decoding), one pass over the weights.
 *
 * At one token per step a linear layer is a matrix-vector product: every weight byte is read once
 * and used once per token, so memory sets its time, and anything that writes or re-reads the weight
 * (a float32 copy of a block, a separate epilogue pass) costs more than the INT8 storage saves.
 * Each entry here streams the int8 weight rows (and Q8_0's block scales) once, over both cores
 * (OpenMP over the output features), with the epilogue applied as each output is finished:
 *
 *   w8a8_rows_linear    W8A8 (vectorwise, llm-int8, llm-int8-dynamic, smoothquant, absmax-tensor):
 *                       quantizes the tokens' rows as kernels.reference does (quantize_rows_i8's
 *                       arithmetic), takes exact int32 dot products with the weight rows, and writes
 *                       the reference epilogue acc * (s_x * s_w) / 127**2 [+ outlier product] [+ bias]
 *                       in the same float32 operations: the output is the reference's, bit for bit.
 *   rowscale_rows_linear  weight-only INT8: y = (sum_k x_k q_k) * (absmax / 127) + bias, float32 sums.
 *   q8_0_rows_linear    Q8_0: y = sum_b d_b (sum_{k in b} x_k q_k) + bias, float32 sums, d_b float16.
 *
 * The two float formats sum in another order than the reference's GEMM of the dequantized weight
 * (which rounds each q * scale first), so they agree with it to float32 rounding, not bit for bit.
 *
 * The instructions are chosen at run time (`gemv_isa_supported`), never assumed from the compiler
 * flags, and every variant computes the same integers:
 *   GEMV_AVX512_VNNI  vpdpbusd (AVX512-VNNI, 256-bit EVEX form with AVX512VL); the float formats:
 *                     512-bit vpmovsxbd, vcvtdq2ps, vfmadd (AVX512F)
 *   GEMV_AVX_VNNI     vpdpbusd (AVX-VNNI, VEX form: Alder Lake, Sapphire Rapids, Zen 5); float formats as AVX2
 *   GEMV_AVX2         vpmaddubsw + vpmaddwd (AVX2); the float formats: vpmovsxbd, vcvtdq2ps, vfmadd (FMA),
 *                     vcvtph2ps (F16C) for Q8_0's scales
 *   GEMV_SCALAR       plain C
 * The int8 products take |w| as the unsigned operand and q with w's sign as the signed one
 * (vpsignb), exact for any int8 weight (|-128| is 128 unsigned) and q in [-127, 127]; vpmaddubsw's
 * pair sums stay below 2 * 128 * 127 = 32512, so its saturation never bites. AMX is not used: a
 * tile product takes 16 rows of activations, and at one to four rows it would read the same weight
 * bytes as vpdpbusd does for a sixteenth of the work.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { GEMV_SCALAR = 0, GEMV_AVX2 = 1, GEMV_AVX_VNNI = 2, GEMV_AVX512_VNNI = 3 };

/* The VEX-encoded vpdpbusd needs gcc 11 / clang 12; an older compiler builds the other variants. */
#if (defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11)
#define GEMV_HAS_AVX_VNNI 1
#else
#define GEMV_HAS_AVX_VNNI 0
#endif

#define GEMV_MAX_ROWS 16
#define MAGNITUDE_BITS 0x7fffffffu
#define MIN_ABSMAX 0x1p-120f /* kernels.reference.MIN_ABSMAX */

int gemv_isa_supported(int isa) {
    __builtin_cpu_init();
    switch (isa) {
    case GEMV_SCALAR:
        return 1;
    case GEMV_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case GEMV_AVX_VNNI:
        return GEMV_HAS_AVX_VNNI && gemv_isa_supported(GEMV_AVX2) && __builtin_cpu_supports("avxvnni");
    case GEMV_AVX512_VNNI: /* the float formats' 512-bit kernels need AVX512F, which AVX512VL implies */
        return gemv_isa_supported(GEMV_AVX2) && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512vnni");
    default:
        return 0;
    }
}

/* ---- quantizing the tokens' rows: kernels.reference.quantize_rowwise / decompose_outliers ---- */

static inline uint32_t magnitude_bits(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits & MAGNITUDE_BITS;
}

static inline float absmax_of(const float *row, const uint32_t *keep, int64_t cols) {
    uint32_t largest = 0; /* bit patterns: magnitude order, NaN above infinity as in torch's amax */
    for (int64_t k = 0; k < cols; ++k) {
        const uint32_t bits = magnitude_bits(row[k]) & (keep ? keep[k] : MAGNITUDE_BITS);
        largest = bits > largest ? bits : largest;
    }
    float value;
    memcpy(&value, &largest, sizeof value);
    return value;
}

/* 127 / absmax as torch evaluates it, 0 where the reference's scale is unusable (tiny, inf, NaN). */
static inline float inverse_scale(float absmax) {
    return absmax >= MIN_ABSMAX && absmax <= 3.4028234663852886e38f ? (1.0f / absmax) * 127.0f : 0.0f;
}

static void quantize_token(const float *row, int64_t cols, const uint32_t *keep, float absmax, int8_t *out) {
    const float inverse = inverse_scale(absmax);
    for (int64_t k = 0; k < cols; ++k) {
        const float value = (!keep || keep[k]) ? row[k] : 0.0f;
        float rounded = rintf(value * inverse); /* half to even, as torch.round */
        rounded = rounded < -127.0f ? -127.0f : (rounded > 127.0f ? 127.0f : rounded);
        out[k] = rounded == rounded ? (int8_t)rounded : 0; /* NaN (inf * 0) quantizes to 0 */
    }
}

/* ---- exact int8 dot products ---- */

static int32_t dot_i8_scalar(const int8_t *q, const int8_t *w, int64_t cols) {
    int32_t total = 0;
    for (int64_t k = 0; k < cols; ++k) total += (int32_t)q[k] * (int32_t)w[k];
    return total;
}

/* One 256-bit dot-product body per instruction set: ACCUMULATE(acc, unsigned |w|, signed q*sign(w)). */
#define DOT_I8_256(NAME, TARGET, ACCUMULATE)                                                             \
    __attribute__((target(TARGET))) static int32_t NAME(const int8_t *q, const int8_t *w, int64_t cols) { \
        __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();                             \
        int64_t k = 0;                                                                                    \
        for (; k + 64 <= cols; k += 64) {                                                                 \
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + k));                              \
            const __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + k + 32));                         \
            const __m256i q0 = _mm256_loadu_si256((const __m256i *)(q + k));                              \
            const __m256i q1 = _mm256_loadu_si256((const __m256i *)(q + k + 32));                         \
            acc0 = ACCUMULATE(acc0, _mm256_abs_epi8(w0), _mm256_sign_epi8(q0, w0));                       \
            acc1 = ACCUMULATE(acc1, _mm256_abs_epi8(w1), _mm256_sign_epi8(q1, w1));                       \
        }                                                                                                 \
        for (; k + 32 <= cols; k += 32) {                                                                 \
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + k));                              \
            const __m256i q0 = _mm256_loadu_si256((const __m256i *)(q + k));                              \
            acc0 = ACCUMULATE(acc0, _mm256_abs_epi8(w0), _mm256_sign_epi8(q0, w0));                       \
        }                                                                                                 \
        const __m256i acc = _mm256_add_epi32(acc0, acc1);                                                 \
        __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));       \
        sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0x4e));                                           \
        sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0xb1));                                           \
        return _mm_cvtsi128_si32(sum) + dot_i8_scalar(q + k, w + k, cols - k);                            \
    }

/* Four weight rows at once (rows w, w + cols, ...): four independent streams, q loaded once for them,
 * and one reduction for the four sums. */
#define DOT4_I8_256(NAME, TARGET, ACCUMULATE)                                                       \
    __attribute__((target(TARGET))) static void NAME(const int8_t *q, const int8_t *w, int64_t cols,     \
                                                     int32_t *out) {                                     \
        __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),        \
                          _mm256_setzero_si256()};                                                       \
        int64_t k = 0;                                                                                   \
        for (; k + 32 <= cols; k += 32) {                                                                \
            const __m256i q0 = _mm256_loadu_si256((const __m256i *)(q + k));                             \
            for (int j = 0; j < 4; ++j) {                                                                \
                const __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + j * cols + k));              \
                acc[j] = ACCUMULATE(acc[j], _mm256_abs_epi8(w0), _mm256_sign_epi8(q0, w0));              \
            }                                                                                            \
        }                                                                                                \
        const __m256i pairs = _mm256_hadd_epi32(_mm256_hadd_epi32(acc[0], acc[1]),                       \
                                                _mm256_hadd_epi32(acc[2], acc[3]));                      \
        const __m128i sums = _mm_add_epi32(_mm256_castsi256_si128(pairs), _mm256_extracti128_si256(pairs, 1)); \
        int32_t lanes[4];                                                                                \
        _mm_storeu_si128((__m128i *)lanes, sums);                                                        \
        for (int j = 0; j < 4; ++j) out[j] = lanes[j] + dot_i8_scalar(q + k, w + j * cols + k, cols - k); \
    }

__attribute__((target("avx2"))) static inline __m256i maddubs_accumulate(__m256i acc, __m256i u, __m256i s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}
#define AVX_VNNI_ACCUMULATE(acc, u, s) _mm256_dpbusd_avx_epi32(acc, u, s)
#define AVX512_VNNI_ACCUMULATE(acc, u, s) _mm256_dpbusd_epi32(acc, u, s)

DOT_I8_256(dot_i8_avx2, "avx2", maddubs_accumulate)
#if GEMV_HAS_AVX_VNNI
DOT_I8_256(dot_i8_avx_vnni, "avx2,avxvnni", AVX_VNNI_ACCUMULATE)
#endif
DOT_I8_256(dot_i8_avx512_vnni, "avx2,avx512f,avx512vl,avx512vnni", AVX512_VNNI_ACCUMULATE)

DOT4_I8_256(dot4_i8_avx2, "avx2", maddubs_accumulate)
#if GEMV_HAS_AVX_VNNI
DOT4_I8_256(dot4_i8_avx_vnni, "avx2,avxvnni", AVX_VNNI_ACCUMULATE)
#endif
DOT4_I8_256(dot4_i8_avx512_vnni, "avx2,avx512f,avx512vl,avx512vnni", AVX512_VNNI_ACCUMULATE)

static void dot4_i8_scalar(const int8_t *q, const int8_t *w, int64_t cols, int32_t *out) {
    for (int j = 0; j < 4; ++j) out[j] = dot_i8_scalar(q, w + j * cols, cols);
}

typedef int32_t (*dot_i8_fn)(const int8_t *, const int8_t *, int64_t);
typedef void (*dot4_i8_fn)(const int8_t *, const int8_t *, int64_t, int32_t *);

static dot4_i8_fn dot4_i8_for(int isa) {
    switch (isa) {
    case GEMV_AVX512_VNNI:
        return dot4_i8_avx512_vnni;
#if GEMV_HAS_AVX_VNNI
    case GEMV_AVX_VNNI:
        return dot4_i8_avx_vnni;
#endif
    case GEMV_AVX2:
        return dot4_i8_avx2;
    default:
        return dot4_i8_scalar;
    }
}

static dot_i8_fn dot_i8_for(int isa) {
    switch (isa) {
    case GEMV_AVX512_VNNI:
        return dot_i8_avx512_vnni;
#if GEMV_HAS_AVX_VNNI
    case GEMV_AVX_VNNI:
        return dot_i8_avx_vnni;
#endif
    case GEMV_AVX2:
        return dot_i8_avx2;
    default:
        return dot_i8_scalar;
    }
}

/* x (rows, cols), row stride ldx -> y (rows, out_features), kernels.reference.int8_linear bit for bit.
 * keep (cols): all ones, 0 at an outlier column, or NULL; per_tensor: one abs-max over every row;
 * col_absmax: (out_features,), or one value when col_scalar; outlier_out (rows, out_features) or NULL;
 * bias (out_features) or NULL. rows <= GEMV_MAX_ROWS. */
void w8a8_rows_linear(const float *x, int64_t rows, int64_t cols, int64_t ldx, const uint32_t *keep, int per_tensor,
                      const int8_t *w, int64_t out_features, const float *col_absmax, int col_scalar,
                      const float *outlier_out, const float *bias, float *y, int isa, int threads) {
    float absmax[GEMV_MAX_ROWS];
    int8_t *q = malloc((size_t)(rows * cols));
    for (int64_t r = 0; r < rows; ++r) absmax[r] = absmax_of(x + r * ldx, keep, cols);
    if (per_tensor) {
        for (int64_t r = 1; r < rows; ++r) absmax[0] = magnitude_bits(absmax[r]) > magnitude_bits(absmax[0]) ? absmax[r] : absmax[0];
        for (int64_t r = 1; r < rows; ++r) absmax[r] = absmax[0];
    }
    for (int64_t r = 0; r < rows; ++r) quantize_token(x + r * ldx, cols, keep, absmax[r], q + r * cols);
    const dot_i8_fn dot = dot_i8_for(isa);
    const dot4_i8_fn dot4 = dot4_i8_for(isa);
    const int64_t groups = (out_features + 3) / 4; /* four rows a group; the last may hold fewer */
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t g = 0; g < groups; ++g) {
        const int64_t first = 4 * g, count = out_features - first < 4 ? out_features - first : 4;
        for (int64_t r = 0; r < rows; ++r) {
            int32_t acc[4];
            if (count == 4) {
                dot4(q + r * cols, w + first * cols, cols, acc);
            } else {
                for (int64_t j = 0; j < count; ++j) acc[j] = dot(q + r * cols, w + (first + j) * cols, cols);
            }
            for (int64_t j = 0; j < count; ++j) {
                const int64_t n = first + j;
                float value = ((float)acc[j] * (absmax[r] * col_absmax[col_scalar ? 0 : n])) / 16129.0f;
                if (outlier_out) value = value + outlier_out[r * out_features + n];
                if (bias) value = value + bias[n];
                y[r * out_features + n] = value;
            }
        }
    }
    free(q);
}

/* ---- float activations times int8 weights (weight-only, Q8_0) ---- */

static float dot_f32_i8_scalar(const float *x, const int8_t *w, int64_t cols) {
    float total = 0.0f;
    for (int64_t k = 0; k < cols; ++k) total += x[k] * (float)w[k];
    return total;
}

__attribute__((target("avx2,fma"))) static inline __m256 widen8(const int8_t *w) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)w)));
}

__attribute__((target("avx2,fma"))) static inline float sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) static float dot_f32_i8_avx2(const float *x, const int8_t *w, int64_t cols) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
           acc3 = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= cols; k += 32) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), widen8(w + k), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), widen8(w + k + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 16), widen8(w + k + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 24), widen8(w + k + 24), acc3);
    }
    for (; k + 8 <= cols; k += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), widen8(w + k), acc0);
    return sum8(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3))) +
           dot_f32_i8_scalar(x + k, w + k, cols - k);
}

/* Four weight rows at once, x loaded once for them; eight lanes of sums per row. */
__attribute__((target("avx2,fma"))) static void dot4_f32_i8_avx2(const float *x, const int8_t *w, int64_t cols,
                                                                 float *out) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t k = 0;
    for (; k + 8 <= cols; k += 8) {
        const __m256 x0 = _mm256_loadu_ps(x + k);
        for (int j = 0; j < 4; ++j) acc[j] = _mm256_fmadd_ps(x0, widen8(w + j * cols + k), acc[j]);
    }
    for (int j = 0; j < 4; ++j) out[j] = sum8(acc[j]) + dot_f32_i8_scalar(x + k, w + j * cols + k, cols - k);
}

/* As dot4_f32_i8_avx2 sixteen lanes wide: half the widening and FMA instructions per weight byte, which
 * is what limits the float formats (a VNNI dot product needs a quarter as many per byte). */
__attribute__((target("avx512f"))) static inline __m512 widen16(const int8_t *w) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)w)));
}

__attribute__((target("avx512f"))) static float dot_f32_i8_avx512(const float *x, const int8_t *w, int64_t cols) {
    __m512 acc = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= cols; k += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), widen16(w + k), acc);
    return _mm512_reduce_add_ps(acc) + dot_f32_i8_scalar(x + k, w + k, cols - k);
}

__attribute__((target("avx512f"))) static void dot4_f32_i8_avx512(const float *x, const int8_t *w, int64_t cols,
                                                                  float *out) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t k = 0;
    for (; k + 16 <= cols; k += 16) {
        const __m512 x0 = _mm512_loadu_ps(x + k);
        for (int j = 0; j < 4; ++j) acc[j] = _mm512_fmadd_ps(x0, widen16(w + j * cols + k), acc[j]);
    }
    for (int j = 0; j < 4; ++j) out[j] = _mm512_reduce_add_ps(acc[j]) + dot_f32_i8_scalar(x + k, w + j * cols + k, cols - k);
}

__attribute__((target("avx512f,f16c"))) static float q8_0_dot_avx512(const float *x, const int8_t *w,
                                                                     const uint16_t *d, int64_t blocks) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; ++b) {
        const float *xb = x + 32 * b;
        const int8_t *wb = w + 32 * b;
        const __m512 block = _mm512_fmadd_ps(_mm512_loadu_ps(xb + 16), widen16(wb + 16),
                                             _mm512_mul_ps(_mm512_loadu_ps(xb), widen16(wb)));
        const __m512 scale = _mm512_set1_ps(_cvtsh_ss(d[b]));
        if (b & 1) {
            acc1 = _mm512_fmadd_ps(block, scale, acc1);
        } else {
            acc0 = _mm512_fmadd_ps(block, scale, acc0);
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

static void dot4_f32_i8_scalar(const float *x, const int8_t *w, int64_t cols, float *out) {
    for (int j = 0; j < 4; ++j) out[j] = dot_f32_i8_scalar(x, w + j * cols, cols);
}

/* x (rows, cols) -> y (rows, out_features) = (x @ q.T) * (absmax / 127) [+ bias]; absmax (out_features). */
void rowscale_rows_linear(const float *x, int64_t rows, int64_t cols, int64_t ldx, const int8_t *w,
                          int64_t out_features, const float *absmax, const float *bias, float *y, int isa,
                          int threads) {
    const int wide = isa == GEMV_AVX512_VNNI; /* a CPU with AVX512-VNNI has AVX512F */
    float (*const dot)(const float *, const int8_t *, int64_t) =
        wide ? dot_f32_i8_avx512 : (isa >= GEMV_AVX2 ? dot_f32_i8_avx2 : dot_f32_i8_scalar);
    void (*const dot4)(const float *, const int8_t *, int64_t, float *) =
        wide ? dot4_f32_i8_avx512 : (isa >= GEMV_AVX2 ? dot4_f32_i8_avx2 : dot4_f32_i8_scalar);
    const int64_t groups = (out_features + 3) / 4;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t g = 0; g < groups; ++g) {
        const int64_t first = 4 * g, count = out_features - first < 4 ? out_features - first : 4;
        for (int64_t r = 0; r < rows; ++r) {
            float sums[4];
            if (count == 4) {
                dot4(x + r * ldx, w + first * cols, cols, sums);
            } else {
                for (int64_t j = 0; j < count; ++j) sums[j] = dot(x + r * ldx, w + (first + j) * cols, cols);
            }
            for (int64_t j = 0; j < count; ++j) {
                const int64_t n = first + j;
                float value = sums[j] * (absmax[n] / 127.0f); /* the scale as dequantize_rowwise rounds it */
                if (bias) value = value + bias[n];
                y[r * out_features + n] = value;
            }
        }
    }
}

static float half_to_float(uint16_t half) {
    const uint32_t sign = (uint32_t)(half & 0x8000u) << 16, exponent = (half >> 10) & 0x1fu, mantissa = half & 0x3ffu;
    float magnitude;
    if (exponent == 0) {
        magnitude = ldexpf((float)mantissa, -24); /* zero or subnormal */
    } else if (exponent == 31) {
        magnitude = mantissa ? NAN : INFINITY;
    } else {
        magnitude = ldexpf((float)(mantissa | 0x400u), (int)exponent - 25);
    }
    uint32_t bits;
    memcpy(&bits, &magnitude, sizeof bits);
    bits |= sign;
    memcpy(&magnitude, &bits, sizeof bits);
    return magnitude;
}

static float q8_0_dot_scalar(const float *x, const int8_t *w, const uint16_t *d, int64_t blocks) {
    float total = 0.0f;
    for (int64_t b = 0; b < blocks; ++b) total += half_to_float(d[b]) * dot_f32_i8_scalar(x + 32 * b, w + 32 * b, 32);
    return total;
}

__attribute__((target("avx2,fma,f16c"))) static float q8_0_dot_avx2(const float *x, const int8_t *w, const uint16_t *d,
                                                                    int64_t blocks) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; ++b) {
        const float *xb = x + 32 * b;
        const int8_t *wb = w + 32 * b;
        __m256 low = _mm256_mul_ps(_mm256_loadu_ps(xb), widen8(wb));
        __m256 high = _mm256_mul_ps(_mm256_loadu_ps(xb + 16), widen8(wb + 16));
        low = _mm256_fmadd_ps(_mm256_loadu_ps(xb + 8), widen8(wb + 8), low);
        high = _mm256_fmadd_ps(_mm256_loadu_ps(xb + 24), widen8(wb + 24), high);
        const __m256 scale = _mm256_set1_ps(_cvtsh_ss(d[b]));
        if (b & 1) {
            acc1 = _mm256_fmadd_ps(_mm256_add_ps(low, high), scale, acc1);
        } else {
            acc0 = _mm256_fmadd_ps(_mm256_add_ps(low, high), scale, acc0);
        }
    }
    return sum8(_mm256_add_ps(acc0, acc1));
}

/* x (rows, cols) -> y (rows, out_features) for Q8_0 weights: d (out_features, cols / 32) float16 bits. */
void q8_0_rows_linear(const float *x, int64_t rows, int64_t cols, int64_t ldx, const int8_t *w, int64_t out_features,
                      const uint16_t *d, const float *bias, float *y, int isa, int threads) {
    const int64_t blocks = cols / 32;
    float (*const dot)(const float *, const int8_t *, const uint16_t *, int64_t) =
        isa == GEMV_AVX512_VNNI ? q8_0_dot_avx512 : (isa >= GEMV_AVX2 ? q8_0_dot_avx2 : q8_0_dot_scalar);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < out_features; ++n) {
        for (int64_t r = 0; r < rows; ++r) {
            float value = dot(x + r * ldx, w + n * cols, d + n * blocks, blocks);
            if (bias) value = value + bias[n];
            y[r * out_features + n] = value;
        }
    }
}
