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
 *                          broadcast straight from the store (no copy, no conversion). Where the CPU also
 *                          has AMX (and Linux lets the process use it) and D % 32 == 0, from 4 query rows up
 *                          it runs on AMX tiles instead: 16 candidate vectors x 16 rows x 32 dimensions per
 *                          instruction, the sums kept in tiles until the last dimension (block_amx).
 *
 * Candidates: vector j of candidate t is at vm + j * stride_j + id * d, id = idx ? idx[t] : t.
 * Output: out[b * out_stride + t] for b < n_rows / r_q, t < n. Rows of one query are adjacent.
 * Returns 0; -1 when the variant does not run on this CPU or cannot take this shape; -2 out of memory.
 * A NaN in a product is dropped by the running max (max_ps keeps the other operand), where torch's amax
 * would return NaN: stored vectors are L2-normalised model outputs, finite.
 */
#define _GNU_SOURCE /* syscall() for the AMX permission */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define ME_X86 1
/* A compiler without the bf16 (GCC < 10, clang < 9) or AMX (GCC < 11, clang < 12) intrinsics builds the
 * rest: the variants it cannot build are reported absent by me_cpu_features. */
#if defined(__has_include)
#if __has_include(<avx512bf16intrin.h>)
#define ME_BF16 1
#endif
#if defined(ME_BF16) && defined(__linux__) && __has_include(<amxtileintrin.h>) && __has_include(<amxbf16intrin.h>)
#define ME_AMX 1
#endif
#endif
#endif
#ifdef ME_AMX
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* Candidates per register block (12 accumulators); a tile is a whole number of blocks, the last one padded
 * with repeats of its last candidate, whose scores are dropped. */
#ifndef NC
#define NC 12
#endif
/* f32: a tile's widened vectors fill at most 32 KiB, the L1 of every x86 core since 2011. bf16: candidates
 * per tile, so that each of its r_c vectors is one long read (measured: 48 -> 2400 took 95 -> 78 ms at
 * (16, 64), N = 20,000, D = 128, one thread), and the running maxima stay within 256 KiB. */
#define TILE_FLOATS 8192
#define TILE_BF16 2400
#define RUN_FLOATS 65536
/* Ask for the vectors PREFETCH_AHEAD blocks on while a block is multiplied, so that reading memory
 * overlaps the arithmetic. */
#ifndef PREFETCH_AHEAD
#define PREFETCH_AHEAD 2
#endif
/* Query vectors (r_q) from which variant 1 runs on AMX tiles where the CPU has them: fewer leave most tile
 * columns idle. Decided per query, not per call, so that a query scores the same alone or in a batch.
 * One thread, N = 20,000, on the project's Sapphire Rapids-class Xeon, vdpbf16ps against AMX, ms: D = 128,
 * (1, 1) 0.32-0.35 / 0.46-0.47, (2, 4) 1.3-1.6 / 1.7, (4, 8) 4.1-4.3 / 3.5, (8, 16) 14-17 / 8.9-9.6, (16, 64)
 * 87-90 / 40-41; D = 384 alike ((16, 64) 232 / 106). */
#ifndef AMX_MIN_RQ
#define AMX_MIN_RQ 4
#endif

int me_abi_version(void) { return 5; }

#ifdef ME_AMX
/* AMX: the CPU has AMX-TILE and AMX-BF16 (CPUID 7.0 EDX bits 24, 22), the OS saves tile state (XCR0 bits 17,
 * 18), and Linux lets this process use it (arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA, since 5.16). */
static int amx_usable(void) {
    static int known = -1;
    if (known >= 0) return known;
    unsigned a, b, c, d;
    int ok = __get_cpuid_count(7, 0, &a, &b, &c, &d) && ((d >> 24) & 1) && ((d >> 22) & 1);
    if (ok) {
        unsigned lo, hi;
        __get_cpuid(1, &a, &b, &c, &d);
        ok = (c >> 27) & 1; /* OSXSAVE: xgetbv is allowed */
        if (ok) {
            __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
            ok = (lo & (3u << 17)) == (3u << 17) && syscall(SYS_arch_prctl, 0x1023, 18) == 0;
        }
    }
    known = ok;
    return ok;
}
#endif

/* bit 0: variant 0 runs here (AVX2 + FMA); bit 1: variant 1 (AVX512F + AVX512VL + AVX512-BF16); bit 2: variant 1
 * runs on AMX tiles where it can (see me_maxsim). */
int me_cpu_features(void) {
#ifdef ME_X86
    __builtin_cpu_init();
    int f = 0;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) f |= 1;
#ifdef ME_BF16
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bf16"))
        f |= 2;
#endif
#ifdef ME_AMX
    if ((f & 2) && amx_usable()) f |= 4;
#endif
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
#ifdef ME_BF16

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

#endif /* ME_BF16 */

#ifdef ME_AMX
/* ---- variant 1 on AMX tiles: 64 candidates x 16 rows per pass ------------------------------------------- */

/* One TDPBF16PS multiplies 16 candidate vectors (a tile's rows, 32 bf16 dimensions each, read in place) by
 * 16 query rows (a tile of 16 dimension pairs x 16 rows, prepared once per call in the layout it reads),
 * adding into a 16 x 16 fp32 tile: 8,192 multiply-adds per instruction, against 32 for a vdpbf16ps. Four
 * such tiles (64 candidates) share each load of the rows' tile. Products never leave the tiles until the
 * last 32 dimensions; then each candidate's 16 sums are folded into the running maxima. */
struct tile_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

/* tmm0-3 sums, tmm4-5 candidates, tmm6 rows: all 16 x 64 bytes; every other byte zero. A constant, because
 * GCC's _tile_loadconfig tells the compiler it reads 8 bytes, so the stores that fill a local config beyond
 * them were dropped as dead (seen: a fault in ldtilecfg). For the same reason the tile loads and stores
 * below are fenced with compiler barriers: their asm does not say which memory it reads or writes. */
static const struct tile_config amx_config = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16},
};

__attribute__((target("amx-tile"))) static void amx_start(void) { _tile_loadconfig(&amx_config); }

__attribute__((target("amx-tile"))) static void amx_stop(void) { _tile_release(); }

/* a[b]: where candidate vectors 16b..16b+15 of the block start, `stride` bytes apart. */
__attribute__((target("amx-tile,amx-bf16,avx512f"))) static void block_amx(const uint32_t *rows_b, int64_t chunks,
                                                                          const uint16_t *const a[4], int64_t stride,
                                                                          float *run, int64_t lanes, int64_t g0) {
    float sums[4][256] __attribute__((aligned(64)));
    __asm__ volatile("" ::: "memory"); /* the rows and gathered vectors are written before the tiles read them */
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t k = 0; k < chunks; k++) {
        _tile_loadd(6, rows_b + k * 256, 64);
        _tile_loadd(4, a[0] + k * 32, stride);
        _tile_dpbf16ps(0, 4, 6);
        _tile_loadd(5, a[1] + k * 32, stride);
        _tile_dpbf16ps(1, 5, 6);
        _tile_loadd(4, a[2] + k * 32, stride);
        _tile_dpbf16ps(2, 4, 6);
        _tile_loadd(5, a[3] + k * 32, stride);
        _tile_dpbf16ps(3, 5, 6);
    }
    _tile_stored(0, sums[0], 64);
    _tile_stored(1, sums[1], 64);
    _tile_stored(2, sums[2], 64);
    _tile_stored(3, sums[3], 64);
    __asm__ volatile("" ::: "memory"); /* ... and the sums read after the tiles wrote them */
    for (int b = 0; b < 4; b++)
        for (int c = 0; c < 16; c++) {
            float *dst = run + (b * 16 + c) * lanes + g0 * 16;
            _mm512_storeu_ps(dst, _mm512_max_ps(_mm512_loadu_ps(dst), _mm512_load_ps(sums[b] + c * 16)));
        }
}
#endif /* ME_AMX */

#endif /* ME_X86 */

/* MaxSim of rows [n_rows, d] (fp32 for variant 0, bf16 bits for variant 1) against n candidates.
 * Variant 0 needs d % 8 == 0, variant 1 an even d. */
int me_maxsim(int variant, const void *rows, int64_t n_rows, int64_t d, const uint16_t *vm, int64_t stride_j,
              int64_t r_c, const int64_t *idx, int64_t n, int64_t r_q, float *out, int64_t out_stride) {
#ifdef ME_X86
    const int features = me_cpu_features();
    if (variant < 0 || variant > 1 || !(features & (1 << variant)) || n_rows < 1 || r_q < 1 || n_rows % r_q ||
        d < 1 || (variant == 0 && d % 8) || (variant == 1 && d % 2))
        return -1;
    const int amx = variant == 1 && (features & 4) && d % 32 == 0 && r_q >= AMX_MIN_RQ;
    const int64_t width = variant == 0 ? 8 : 16, nc = amx ? 64 : NC;
    const int64_t units = variant == 0 ? d : d / 2; /* what one lane multiplies: a float, or a bf16 pair */
    /* lanes per row where a query has fewer rows than a register has lanes (from r_q, not from the rows of
     * the call, so that the order of a query's sums does not depend on the batch it came in) */
    int64_t s = 1;
    while (!amx && s * 2 * r_q <= width && units % (s * 2) == 0) s *= 2;
    const int64_t lanes = round_up(n_rows * s, width);
    int64_t tile = variant == 0 ? TILE_FLOATS / d : TILE_BF16;
    if (tile > RUN_FLOATS / lanes) tile = RUN_FLOATS / lanes;
    tile = tile / nc * nc;
    if (tile < nc) tile = nc;
    /* rows as the multiplies read them, zero in the padding: transposed, rows_t[q * lanes + i * s + m] = unit
     * q * s + m of row i; or on AMX, per group of 16 rows and 32 dimensions a tile of 16 pairs x 16 rows */
    uint32_t *rows_t = calloc((size_t)(units / s * lanes), 4);
    float *run = malloc(sizeof(float) * (size_t)(tile * lanes));
    float *buf = variant == 0 ? malloc(sizeof(float) * (size_t)(tile * d)) : NULL;
    uint16_t *gathered = amx ? malloc(sizeof(uint16_t) * (size_t)(64 * d)) : NULL;
    const uint16_t **ptr = malloc(sizeof(uint16_t *) * (size_t)tile);
    if (!rows_t || !run || !ptr || (variant == 0 && !buf) || (amx && !gathered)) {
        free(rows_t);
        free(run);
        free(buf);
        free(gathered);
        free(ptr);
        return -2;
    }
    const uint32_t *src = rows; /* a float, or a pair of bf16 dimensions as vdpbf16ps reads it: 4 bytes */
    const int64_t chunks = d / 32;
    for (int64_t i = 0; i < n_rows; i++)
        for (int64_t u = 0; u < units; u++) {
            const int64_t at = amx ? (((i / 16) * chunks + u / 16) * 16 + u % 16) * 16 + i % 16
                                   : (u / s) * lanes + i * s + u % s;
            rows_t[at] = src[i * units + u];
        }
#ifdef ME_AMX
    if (amx) amx_start();
#endif
    for (int64_t t0 = 0; t0 < n; t0 += tile) {
        const int64_t w = n - t0 < tile ? n - t0 : tile, w_pad = round_up(w, nc);
        for (int64_t i = 0; i < w_pad * lanes; i++) run[i] = -INFINITY;
        for (int64_t j = 0; j < r_c; j++) {
            for (int64_t t = 0; t < w_pad; t++) {
                const int64_t u = t0 + (t < w ? t : w - 1);
                ptr[t] = vm + j * stride_j + (idx ? idx[u] : u) * d;
            }
            if (variant == 0)
                widen(ptr, w_pad, d, buf);
            for (int64_t c0 = 0; c0 < w_pad; c0 += nc) {
                if (variant == 1) {
                    const int64_t ahead = c0 + PREFETCH_AHEAD * nc;
                    prefetch(ptr, ahead < w_pad ? ahead : w_pad, ahead + nc < w_pad ? ahead + nc : w_pad, d);
                }
                int64_t g0 = 0;
#ifdef ME_AMX
                if (amx) {
                    /* each group of 16 vectors straight from the store when they lie d apart, else copied */
                    const uint16_t *a[4];
                    for (int b = 0; b < 4; b++) {
                        const uint16_t *const *p = ptr + c0 + b * 16;
                        int apart = 1;
                        for (int m = 1; m < 16 && apart; m++) apart = p[m] == p[0] + m * d;
                        if (!apart)
                            for (int m = 0; m < 16; m++) memcpy(gathered + (b * 16 + m) * d, p[m], (size_t)d * 2);
                        a[b] = apart ? p[0] : gathered + b * 16 * d;
                    }
                    for (; g0 < lanes / 16; g0++)
                        block_amx(rows_t + g0 * chunks * 256, chunks, a, d * 2, run + c0 * lanes, lanes, g0);
                }
#endif
                for (; g0 < lanes / width; g0++) {
                    if (variant == 0)
                        block_f32(s, (const float *)rows_t, lanes, d, buf + c0 * d, run + c0 * lanes, g0);
#ifdef ME_BF16
                    else
                        block_bf16(s, rows_t, lanes, units, ptr + c0, run + c0 * lanes, g0);
#endif
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
#ifdef ME_AMX
    if (amx) amx_stop();
#endif
    free(rows_t);
    free(run);
    free(buf);
    free(gathered);
    free(ptr);
    return 0;
#else
    (void)variant; (void)rows; (void)n_rows; (void)d; (void)vm; (void)stride_j; (void)r_c; (void)idx; (void)n;
    (void)r_q; (void)out; (void)out_stride;
    return -1;
#endif
}
