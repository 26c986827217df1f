/* Fused MaxSim over the store's vector-major bf16 candidates (model/maxsim_kernel.py builds and loads it).
 *
 * score[b, t] = sum over the r_q rows of query b of the max over the first r_c vectors of candidate t of
 * <row, vector>. torch can only run this as GEMMs that write every product to memory and maxima that read
 * them back (model/scoring.py); here a sum of products stays in a register until it is folded into its
 * running max, so the work is the multiply-adds and one pass over the candidates' bytes.
 *
 * Layout: the query rows lie across a register's lanes (transposed once per call) and a candidate's values
 * are broadcast to them, so one instruction advances up to W dot products at once and the maxima are
 * lane-wise. With fewer rows than lanes, each row takes S = W / rows lanes that hold S consecutive
 * dimensions (lane i * S + m reads dimension step q * S + m of row i, and the broadcast repeats the
 * candidate's S values across the register); the S partial sums of a row are added by log2(S) lane swaps at
 * the end of a block. So every lane does useful work at r_q = 1, 2, 4, 8 or 16.
 * Two variants, chosen by the caller from me_cpu_features():
 *   0  f32  (AVX2 + FMA)   rows fp32, W = 8 lanes; a tile of candidate vectors is widened from bf16 to fp32
 *                          once (a 16-bit shift) into a buffer that stays in L1. Exact fp32 products.
 *   1  bf16 (AVX512-BF16)  rows bf16, W = 16 lanes of dimension pairs; vdpbf16ps multiplies a pair of bf16
 *                          dimensions and adds both products into fp32 accumulators, the candidate's values
 *                          broadcast straight from the store (no copy, no conversion).
 *
 * Candidates: vector j of candidate t is at vm + j * stride_j + id * d, id = idx ? idx[t] : t.
 * Output: out[b * out_stride + t] for b < n_rows / r_q, t < n. Rows of one query are adjacent.
 * Returns 0; -1 when the variant does not run on this CPU or cannot take this shape; -2 out of memory.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define ME_X86 1
#endif

/* Candidates per register block (12 accumulators); a tile is a whole number of blocks, the last one padded
 * with repeats of its last candidate, whose scores are dropped. */
#define NC 12
/* f32: a tile's widened vectors fill at most 32 KiB, the L1 of every x86 core since 2011. bf16: candidates
 * per tile, so that each of its r_c vectors is one long read (measured: 48 -> 2400 took 95 -> 78 ms at
 * (16, 64), N = 20,000, D = 128, one thread), and the running maxima stay within 256 KiB. */
#define TILE_FLOATS 8192
#define TILE_BF16 2400
#define RUN_FLOATS 65536
/* Ask for the vectors PREFETCH_AHEAD blocks on while a block is multiplied, so that reading memory
 * overlaps the arithmetic. */
#define PREFETCH_AHEAD 2

int me_abi_version(void) { return 3; }

/* bit 0: variant 0 runs here (AVX2 + FMA); bit 1: variant 1 (AVX512F + AVX512VL + AVX512-BF16). */
int me_cpu_features(void) {
#ifdef ME_X86
    __builtin_cpu_init();
    int f = 0;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) f |= 1;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bf16"))
        f |= 2;
    return f;
#else
    return 0;
#endif
}

static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

static void prefetch(const uint16_t *const *ptr, int64_t from, int64_t to, int64_t d) {
    for (int64_t t = from; t < to; t++)
        for (int64_t b = 0; b < d * 2; b += 64) __builtin_prefetch((const char *)ptr[t] + b, 0, 3);
}

#ifdef ME_X86

/* ---- variant 0, f32: AVX2 + FMA, 8 lanes ------------------------------------------------------------------ */

/* Rows (rows_t [d / S, lanes] fp32) x NC widened candidates (cand [NC, d]); run [NC, lanes] keeps maxima. */
#define F32_BLOCK(S, BCAST)                                                                                    \
    __attribute__((target("avx2,fma"))) static void block_f32_##S(const float *rows_t, int64_t lanes,         \
                                                                  int64_t d, const float *cand, float *run,    \
                                                                  int64_t g0) {                                \
        __m256 acc[NC];                                                                                        \
        for (int c = 0; c < NC; c++) acc[c] = _mm256_setzero_ps();                                             \
        for (int64_t q = 0; q < d / S; q++) {                                                                  \
            __m256 r = _mm256_loadu_ps(rows_t + q * lanes + g0 * 8);                                           \
            for (int c = 0; c < NC; c++) {                                                                    \
                const float *p = cand + c * d + q * S;                                                         \
                acc[c] = _mm256_fmadd_ps(r, BCAST, acc[c]);                                                    \
            }                                                                                                  \
        }                                                                                                      \
        for (int c = 0; c < NC; c++) {                                                                         \
            __m256 v = acc[c];                                                                                 \
            if (S >= 2) v = _mm256_add_ps(v, _mm256_permute_ps(v, 0xB1));                                      \
            if (S >= 4) v = _mm256_add_ps(v, _mm256_permute_ps(v, 0x4E));                                      \
            if (S >= 8) v = _mm256_add_ps(v, _mm256_permute2f128_ps(v, v, 0x01));                              \
            float *dst = run + c * lanes + g0 * 8;                                                             \
            _mm256_storeu_ps(dst, _mm256_max_ps(_mm256_loadu_ps(dst), v));                                     \
        }                                                                                                      \
    }
F32_BLOCK(1, _mm256_broadcast_ss(p))
F32_BLOCK(2, _mm256_castpd_ps(_mm256_broadcast_sd((const double *)p)))
F32_BLOCK(4, _mm256_broadcast_ps((const __m128 *)p))
F32_BLOCK(8, _mm256_loadu_ps(p))

/* Two groups of 8 rows x 6 candidates, for 16 rows and more: 8 loads feed 12 multiply-adds, where one
 * group x 12 candidates needs 13 (the broadcasts are loads, and loads bound this loop). */
__attribute__((target("avx2,fma"))) static void block_f32_1x2(const float *rows_t, int64_t lanes, int64_t d,
                                                              const float *cand, float *run, int64_t g0) {
    __m256 acc[2][NC / 2];
    for (int g = 0; g < 2; g++)
        for (int c = 0; c < NC / 2; c++) acc[g][c] = _mm256_setzero_ps();
    for (int64_t q = 0; q < d; q++) {
        __m256 r0 = _mm256_loadu_ps(rows_t + q * lanes + g0 * 8), r1 = _mm256_loadu_ps(rows_t + q * lanes + g0 * 8 + 8);
        for (int c = 0; c < NC / 2; c++) {
            __m256 b = _mm256_broadcast_ss(cand + c * d + q);
            acc[0][c] = _mm256_fmadd_ps(r0, b, acc[0][c]);
            acc[1][c] = _mm256_fmadd_ps(r1, b, acc[1][c]);
        }
    }
    for (int c = 0; c < NC / 2; c++)
        for (int g = 0; g < 2; g++) {
            float *dst = run + c * lanes + (g0 + g) * 8;
            _mm256_storeu_ps(dst, _mm256_max_ps(_mm256_loadu_ps(dst), acc[g][c]));
        }
}

/* Candidates' vectors ptr[0..w_pad) widened into buf [w_pad, d] (bf16 -> fp32 is a 16-bit shift). */
__attribute__((target("avx2,fma"))) static void widen(const uint16_t *const *ptr, int64_t w_pad, int64_t d,
                                                      float *buf) {
    for (int64_t t = 0; t < w_pad; t++) {
        const uint16_t *src = ptr[t];
        float *dst = buf + t * d;
        for (int64_t k = 0; k < d; k += 8) {
            __m256i x = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + k)));
            _mm256_storeu_ps(dst + k, _mm256_castsi256_ps(_mm256_slli_epi32(x, 16)));
        }
    }
}

static void block_f32(int64_t s, const float *rows_t, int64_t lanes, int64_t d, const float *cand, float *run,
                      int64_t g0) {
    switch (s) {
    case 8: block_f32_8(rows_t, lanes, d, cand, run, g0); break;
    case 4: block_f32_4(rows_t, lanes, d, cand, run, g0); break;
    case 2: block_f32_2(rows_t, lanes, d, cand, run, g0); break;
    default: block_f32_1(rows_t, lanes, d, cand, run, g0); break;
    }
}

/* ---- variant 1, bf16: AVX512-BF16, 16 lanes of dimension pairs -------------------------------------------- */

#define BF16_BLOCK(S, BCAST)                                                                                   \
    __attribute__((target("avx512f,avx512vl,avx512bf16"))) static void block_bf16_##S(                        \
        const uint32_t *rows_t, int64_t lanes, int64_t pairs, const uint16_t *const *ptr, float *run,          \
        int64_t g0) {                                                                                          \
        __m512 acc[NC];                                                                                        \
        const uint32_t *cp[NC];                                                                                \
        for (int c = 0; c < NC; c++) {                                                                         \
            acc[c] = _mm512_setzero_ps();                                                                      \
            cp[c] = (const uint32_t *)ptr[c];                                                                  \
        }                                                                                                      \
        for (int64_t q = 0; q < pairs / S; q++) {                                                              \
            __m512bh r = (__m512bh)_mm512_loadu_si512((const void *)(rows_t + q * lanes + g0 * 16));          \
            for (int c = 0; c < NC; c++) {                                                                     \
                const uint32_t *p = cp[c] + q * S;                                                             \
                acc[c] = _mm512_dpbf16_ps(acc[c], r, (__m512bh)(BCAST));                                      \
            }                                                                                                  \
        }                                                                                                      \
        for (int c = 0; c < NC; c++) {                                                                         \
            __m512 v = acc[c];                                                                                 \
            if (S >= 2) v = _mm512_add_ps(v, _mm512_permute_ps(v, 0xB1));                                      \
            if (S >= 4) v = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4E));                                      \
            if (S >= 8) v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0xB1));                                \
            if (S >= 16) v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0x4E));                               \
            float *dst = run + c * lanes + g0 * 16;                                                            \
            _mm512_storeu_ps(dst, _mm512_max_ps(_mm512_loadu_ps(dst), v));                                     \
        }                                                                                                      \
    }

__attribute__((target("avx512f,avx512vl,avx512bf16"))) static inline __m512i bcast2(const uint32_t *p) {
    int64_t x;
    memcpy(&x, p, 8);
    return _mm512_set1_epi64(x);
}

BF16_BLOCK(1, _mm512_set1_epi32((int)p[0]))
BF16_BLOCK(2, bcast2(p))
BF16_BLOCK(4, _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)p)))
BF16_BLOCK(8, _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)p)))
BF16_BLOCK(16, _mm512_loadu_si512((const void *)p))

static void block_bf16(int64_t s, const uint32_t *rows_t, int64_t lanes, int64_t pairs,
                       const uint16_t *const *ptr, float *run, int64_t g0) {
    switch (s) {
    case 16: block_bf16_16(rows_t, lanes, pairs, ptr, run, g0); break;
    case 8: block_bf16_8(rows_t, lanes, pairs, ptr, run, g0); break;
    case 4: block_bf16_4(rows_t, lanes, pairs, ptr, run, g0); break;
    case 2: block_bf16_2(rows_t, lanes, pairs, ptr, run, g0); break;
    default: block_bf16_1(rows_t, lanes, pairs, ptr, run, g0); break;
    }
}

#endif /* ME_X86 */

/* MaxSim of rows [n_rows, d] (fp32 for variant 0, bf16 bits for variant 1) against n candidates.
 * Variant 0 needs d % 8 == 0, variant 1 an even d. */
int me_maxsim(int variant, const void *rows, int64_t n_rows, int64_t d, const uint16_t *vm, int64_t stride_j,
              int64_t r_c, const int64_t *idx, int64_t n, int64_t r_q, float *out, int64_t out_stride) {
#ifdef ME_X86
    if (variant < 0 || variant > 1 || !(me_cpu_features() & (1 << variant)) || n_rows < 1 || r_q < 1 ||
        n_rows % r_q || d < 1 || (variant == 0 && d % 8) || (variant == 1 && d % 2))
        return -1;
    const int64_t width = variant == 0 ? 8 : 16;
    const int64_t units = variant == 0 ? d : d / 2; /* what one lane multiplies: a float, or a bf16 pair */
    int64_t s = 1;                                  /* lanes per row, where rows are fewer than lanes */
    while (s * 2 * n_rows <= width && units % (s * 2) == 0) s *= 2;
    const int64_t lanes = round_up(n_rows * s, width);
    int64_t tile = variant == 0 ? (TILE_FLOATS / d) / NC * NC : TILE_BF16;
    if (tile > RUN_FLOATS / lanes) tile = (RUN_FLOATS / lanes) / NC * NC;
    if (tile < NC) tile = NC;
    /* transposed rows: rows_t[q * lanes + i * s + m] = unit q * s + m of row i; zero in the padding */
    uint32_t *rows_t = calloc((size_t)(units / s * lanes), 4);
    float *run = malloc(sizeof(float) * (size_t)(tile * lanes));
    float *buf = variant == 0 ? malloc(sizeof(float) * (size_t)(tile * d)) : NULL;
    const uint16_t **ptr = malloc(sizeof(uint16_t *) * (size_t)tile);
    if (!rows_t || !run || !ptr || (variant == 0 && !buf)) {
        free(rows_t);
        free(run);
        free(buf);
        free(ptr);
        return -2;
    }
    const uint32_t *src = rows; /* a float, or a pair of bf16 dimensions as vdpbf16ps reads it: 4 bytes */
    for (int64_t i = 0; i < n_rows; i++)
        for (int64_t u = 0; u < units; u++) rows_t[(u / s) * lanes + i * s + u % s] = src[i * units + u];
    for (int64_t t0 = 0; t0 < n; t0 += tile) {
        const int64_t w = n - t0 < tile ? n - t0 : tile, w_pad = round_up(w, NC);
        for (int64_t i = 0; i < w_pad * lanes; i++) run[i] = -INFINITY;
        for (int64_t j = 0; j < r_c; j++) {
            for (int64_t t = 0; t < w_pad; t++) {
                const int64_t u = t0 + (t < w ? t : w - 1);
                ptr[t] = vm + j * stride_j + (idx ? idx[u] : u) * d;
            }
            if (variant == 0)
                widen(ptr, w_pad, d, buf);
            for (int64_t c0 = 0; c0 < w_pad; c0 += NC) {
                if (variant == 1) {
                    const int64_t ahead = c0 + PREFETCH_AHEAD * NC;
                    prefetch(ptr, ahead < w_pad ? ahead : w_pad, ahead + NC < w_pad ? ahead + NC : w_pad, d);
                }
                int64_t g0 = 0;
#ifdef ME_X86
                if (variant == 0)
                    for (; g0 + 2 <= lanes / width; g0 += 2)
                        for (int64_t h = 0; h < NC; h += NC / 2)
                            block_f32_1x2((const float *)rows_t, lanes, d, buf + (c0 + h) * d,
                                          run + (c0 + h) * lanes, g0);
#endif
                for (; g0 < lanes / width; g0++) {
                    if (variant == 0)
                        block_f32(s, (const float *)rows_t, lanes, d, buf + c0 * d, run + c0 * lanes, g0);
                    else
                        block_bf16(s, rows_t, lanes, units, ptr + c0, run + c0 * lanes, g0);
                }
            }
        }
        /* each query's score: the sum of its rows' maxima (a row's value sits in its first lane) */
        for (int64_t t = 0; t < w; t++)
            for (int64_t b = 0; b < n_rows / r_q; b++) {
                float sum = 0.0f;
                for (int64_t i = 0; i < r_q; i++) sum += run[t * lanes + (b * r_q + i) * s];
                out[b * out_stride + t0 + t] = sum;
            }
    }
    free(rows_t);
    free(run);
    free(buf);
    free(ptr);
    return 0;
#else
    (void)variant; (void)rows; (void)n_rows; (void)d; (void)vm; (void)stride_j; (void)r_c; (void)idx; (void)n;
    (void)r_q; (void)out; (void)out_stride;
    return -1;
#endif
}
