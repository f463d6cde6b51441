// bf16 matrix products on AVX512-BF16 (vdpbf16ps): C = alpha · op(A) · op(B) + beta · C with
// A and B bf16, C float32, on the calling thread. The layout is GotoBLAS's: op(B) is packed
// into panels of NR = 32 columns (all of k, once per product, or once for many:
// loom_bf16_pack_b), op(A) is read where it lies when it is row-major (a pair of k values is
// one 32-bit word there) and otherwise packed into panels, and a tile of 14 (or, for rows left
// over, 8) rows x 32 columns of C lives in 28 (16) zmm registers while a block of KC k values runs.
//
// vdpbf16ps multiplies pairs: lane i of its result gains a[2i+1]·b[2i+1], then a[2i]·b[2i]
// (each product exact in float32, each sum rounded; denormals flushed). So both operands are
// read in pairs along k:
//
//   A panel, pair p, row r:    one 32-bit word  (op(A)[r][2p], op(A)[r][2p+1])    -> broadcast
//   B panel, pair p, column j: lane j of a row  (op(B)[2p][j], op(B)[2p+1][j])   -> 2 zmm
//
// and acc[r][j] += A(r, 2p)·B(2p, j) + A(r, 2p+1)·B(2p+1, j). An odd k is padded with a zero
// pair, a partial panel with zero rows or columns, so the micro-kernel always runs a whole
// tile and the stores keep only what is inside C.
//
// Worked example, k = 3, op(B) a 3 x 2 matrix [[1, 2], [3, 4], [5, 6]] (only 2 of the 32 columns):
//   pair 0: (1, 3) (2, 4) ...      pair 1: (5, 0) (6, 0) ...
// and a row (a0, a1, a2) of op(A) packs as (a0, a1) (a2, 0): column 0 gets a0·1 + a1·3 + a2·5.
//
// Sums run in another order than a float32 sgemm, so results differ from the widened path by
// float32 rounding (BF16KernelTests bounds it).
#include "Dispatch.h"
#include <stdlib.h>

#if defined(__x86_64__)
#include <immintrin.h>

enum { NR = 32, KC = 384 };

#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))

// A thread's packing buffers, grown on demand and kept (the backend calls this from its pool's
// threads, again and again at the same sizes).
static _Thread_local uint32_t *packed_a, *packed_b;
static _Thread_local size_t packed_a_words, packed_b_words;

static uint32_t *words(uint32_t **buffer, size_t *have, size_t need) {
    if (*have < need) {
        free(*buffer);
        *buffer = aligned_alloc(64, (need * 4 + 63) / 64 * 64);
        *have = *buffer ? need : 0;
    }
    return *buffer;
}

// Two rows of up to 16 bf16 values interleaved into pairs: word i is (lo[i], hi[i]). The
// rows are read under `mask` (a missing row is NULL: zeros).
BF16_TARGET static inline __m512i interleave(const uint16_t *lo, const uint16_t *hi, __mmask32 mask) {
    const __m512i index = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                           37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    __m512i x0 = _mm512_maskz_loadu_epi16(mask, lo);
    __m512i x1 = hi ? _mm512_maskz_loadu_epi16(mask, hi) : _mm512_setzero_si512();
    return _mm512_permutex2var_epi16(x0, index, x1);
}

// Words under `lanes`, or (`stream`, all 16 lanes, a whole line) past this core's caches
// (Convert.c says why: packed operands that every thread reads).
BF16_TARGET static inline void store_words(uint32_t *dst, __mmask16 lanes, __m512i words, int stream) {
    if (stream && lanes == 0xFFFF && !((uintptr_t)dst & 63)) _mm512_stream_si512((void *)dst, words);
    else _mm512_mask_storeu_epi32(dst, lanes, words);
}

// A 16 x 16 transpose of 32-bit words: row r of `src` (ld uint16 apart; rows at or past
// `rows` are zeros; the first `values` uint16 of each read) becomes lane r of words
// dst[p * stride], p < (values + 1) / 2, of which the lanes in `lanes` are written.
// Three rounds of shuffles: words of row pairs, then 64-bit halves of row quads, then 128-bit
// lanes across quads.
BF16_TARGET static void transpose16(const uint16_t *src, int64_t ld, int rows, int values, uint32_t *dst,
                                    int64_t stride, __mmask16 lanes, int stream) {
    __mmask32 mask = values >= 32 ? 0xFFFFFFFFu : (1u << values) - 1;
    __m512i r[16], t[16];
    for (int i = 0; i < 16; i++) r[i] = i < rows ? _mm512_maskz_loadu_epi16(mask, src + i * ld) : _mm512_setzero_si512();
    for (int i = 0; i < 16; i += 2) {  // t[i] lane L: r[i][4L], r[i+1][4L], r[i][4L+1], r[i+1][4L+1]
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int g = 0; g < 16; g += 4) {  // r[g + c] lane L: word 4L + c of rows g...g+3
        r[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
        r[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
        r[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
        r[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
    }
    int pairs = (values + 1) / 2;
    for (int c = 0; c < 4; c++) {  // word 4L + c of all 16 rows: lane L of r[c], r[4 + c], r[8 + c], r[12 + c]
        __m512i v = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x88), w = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xDD);
        __m512i x = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x88), y = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xDD);
        __m512i out[4] = {_mm512_shuffle_i32x4(v, x, 0x88), _mm512_shuffle_i32x4(w, y, 0x88),
                          _mm512_shuffle_i32x4(v, x, 0xDD), _mm512_shuffle_i32x4(w, y, 0xDD)};
        for (int l = 0; l < 4; l++)
            if (4 * l + c < pairs) store_words(dst + (4 * l + c) * stride, lanes, out[l], stream);
    }
}

// The rows AHEAD pairs on are requested before they are read: an op(B) packed by rows is
// mostly an activation saved in the forward pass, cold in memory, and the packing otherwise
// waits on its lines one after another (the GPT's weight gradients ran up to 70% slower with
// their activation cold than warm; with the rows requested ahead, up to 25%).
enum { AHEAD = 8 };
BF16_TARGET static inline void prefetch(const uint16_t *from, int64_t count) {
    for (const char *p = (const char *)((uintptr_t)from & ~(uintptr_t)63), *end = (const char *)(from + count); p < end;
         p += 64)
        __builtin_prefetch(p);
}

int64_t loom_bf16_packed_b_words(int64_t k, int64_t n) { return (n + NR - 1) / NR * ((k + 1) / 2) * NR; }

// Columns [j0, j1) of op(B) (j0 a multiple of NR), pairs of rows [p0, p1), into their panels
// of `dst`: dst[panel][pair][NR] words, a panel (k + 1) / 2 · NR words. Threads sharing one
// packing split it by pairs where B is stored by rows (each reads whole rows, in order) and by
// panels where it is stored transposed (each reads whole stored rows, which are columns of
// op(B)); p0 and p1 are then multiples of 16 but for p1 = (k + 1) / 2.
BF16_TARGET static void pack_b(int transB, int64_t k, int64_t j0, int64_t j1, int64_t p0, int64_t p1, const uint16_t *b,
                               int64_t ldb, uint32_t *dst, int stream) {
    int64_t pairs = (k + 1) / 2;
    if (!transB) {  // op(B)[r][j] = b[r * ldb + j]: rows 2p and 2p + 1 interleaved, a row's panels left to right
        for (int64_t p = p0; p < p1; p++) {
            const uint16_t *row = b + 2 * p * ldb, *next = 2 * p + 1 < k ? row + ldb : NULL;
            if (p + AHEAD < p1) {  // rows 2(p + AHEAD) and the one after it, columns [j0, j1)
                const uint16_t *ahead = row + 2 * AHEAD * ldb + j0;
                prefetch(ahead, j1 - j0);
                if (2 * (p + AHEAD) + 1 < k) prefetch(ahead + ldb, j1 - j0);
            }
            for (int64_t jp = j0; jp < j1; jp += NR) {
                uint32_t *panel = dst + jp / NR * pairs * NR + p * NR;
                for (int half = 0; half < 2; half++) {
                    int64_t j = jp + 16 * half, cols = j1 - j < 0 ? 0 : j1 - j < 16 ? j1 - j : 16;
                    __mmask32 mask = (__mmask32)((1ull << cols) - 1);
                    __m512i w = cols ? interleave(row + j, next ? next + j : NULL, mask) : _mm512_setzero_si512();
                    store_words(panel + 16 * half, 0xFFFF, w, stream);
                }
            }
        }
        return;
    }
    // op(B)[r][j] = b[j * ldb + r]: column j's pairs are neighbours, transposed 16 x 16
    for (int64_t jp = j0; jp < j1; jp += NR) {
        uint32_t *panel = dst + jp / NR * pairs * NR;
        for (int half = 0; half < 2; half++) {
            int64_t j = jp + 16 * half, cols = j1 - j < 0 ? 0 : j1 - j < 16 ? j1 - j : 16;
            for (int64_t p = p0; p < p1; p += 16) {
                int values = k - 2 * p < 32 ? (int)(k - 2 * p) : 32;
                transpose16(b + j * ldb + 2 * p, ldb, (int)cols, values, panel + p * NR + 16 * half, NR, 0xFFFF, stream);
            }
        }
    }
}

void loom_bf16_pack_b(int transB, int64_t k, int64_t j0, int64_t j1, int64_t p0, int64_t p1, const uint16_t *b, int64_t ldb,
                      uint32_t *dst) {
    if (!loom_cpu_has_avx512_bf16()) return;  // nothing to pack for: loom_bf16_gemm_packed_b declines too
    pack_b(transB, k, j0, j1, p0, p1, b, ldb, dst, 0);
}

void loom_bf16_pack_b_streaming(int transB, int64_t k, int64_t j0, int64_t j1, int64_t p0, int64_t p1, const uint16_t *b,
                                int64_t ldb, uint32_t *dst) {
    if (!loom_cpu_has_avx512_bf16()) return;
    pack_b(transB, k, j0, j1, p0, p1, b, ldb, dst, 1);
    _mm_sfence();  // the stores are weakly ordered: done before the caller says so
}

// Rows [i0, i0 + mc) of op(A), columns [kk, kk + kc), as panels of mr rows: dst[panel][pair][mr].
BF16_TARGET static void pack_a(int mr, const uint16_t *a, int64_t lda, int transA, int64_t i0, int64_t mc, int64_t kk,
                               int64_t kc, uint32_t *dst) {
    int64_t pairs = (kc + 1) / 2;
    const __mmask16 lanes = (__mmask16)((1u << mr) - 1);
    if (transA) {  // op(A)[i][c] = a[c * lda + i]: stored rows 2p and 2p + 1 interleaved, a pair's panels left to
                   // right (each stored row is read once, whole, not once a panel in strips of mr values)
        for (int64_t p = 0; p < pairs; p++) {
            const uint16_t *row = a + (kk + 2 * p) * lda + i0, *next = 2 * p + 1 < kc ? row + lda : NULL;
            uint32_t *panel = dst + p * mr;
            for (int64_t ip = 0; ip < mc; ip += mr, panel += pairs * mr) {
                int64_t rows = mc - ip < mr ? mc - ip : mr;
                __mmask32 mask = (__mmask32)((1ull << rows) - 1);
                _mm512_mask_storeu_epi32(panel, lanes, interleave(row + ip, next ? next + ip : NULL, mask));
            }
        }
        return;
    }
    for (int64_t ip = 0; ip < mc; ip += mr, dst += pairs * mr) {  // op(A)[i][c] = a[i * lda + c]: row i's pairs
        int64_t i = i0 + ip, rows = mc - ip < mr ? mc - ip : mr;    // are neighbours, transposed
        for (int64_t p = 0; p < pairs; p += 16) {
            int values = kc - 2 * p < 32 ? (int)(kc - 2 * p) : 32;
            transpose16(a + i * lda + kk + 2 * p, lda, (int)rows, values, dst + p * mr, mr, lanes, 0);
        }
    }
}

typedef uint32_t unaligned_word __attribute__((aligned(2), may_alias));
typedef uint16_t aliased_half __attribute__((may_alias));

// One MRX x NR tile: acc = A · B panel over `pairs` pairs (and, with `tail`, one last k
// value: B's pair padded with zero, A's value read alone), then C = alpha · acc + beta · C
// (+ bias[j] in every row, where `bias` is not NULL) for the tile's first `rows` rows and
// `cols` columns. A is a packed panel (`direct` 0: the word
// of row r, pair p at ap[p * MRX + r]) or op(A)'s own rows (`direct` 1: row r starts `rs`
// bytes after row r - 1, a pair is a 32-bit word). Compiled for each MRX (14 and 8) and mode.
// With `stream`, whole aligned rows of the tile are stored past this core's caches (C of a
// product split by columns, which the next op reads by rows: Convert.c says why).
BF16_TARGET static inline __attribute__((always_inline)) void
tile_body(const int MRX, const int direct, const char *ap, int64_t rs, const uint32_t *bp, int64_t pairs, int tail,
          float *c, int64_t ldc, int64_t rows, int64_t cols, float alpha, float beta, const float *bias, int stream) {
    __m512 acc[MRX][2];
    for (int r = 0; r < MRX; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t p = 0; p < pairs; p++, bp += NR) {
        __m512bh b0 = (__m512bh)_mm512_load_si512(bp), b1 = (__m512bh)_mm512_load_si512(bp + 16);
#pragma clang loop unroll(full)
        for (int r = 0; r < MRX; r++) {
            uint32_t w = direct ? *(const unaligned_word *)(ap + r * rs) : ((const uint32_t *)ap)[r];
            __m512bh x = (__m512bh)_mm512_set1_epi32((int)w);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x, b1);
        }
        ap += direct ? 4 : 4 * MRX;
    }
    if (tail) {
        __m512bh b0 = (__m512bh)_mm512_load_si512(bp), b1 = (__m512bh)_mm512_load_si512(bp + 16);
#pragma clang loop unroll(full)
        for (int r = 0; r < MRX; r++) {
            __m512bh x = (__m512bh)_mm512_set1_epi32((int)*(const aliased_half *)(ap + r * rs));
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x, b1);
        }
    }
    __mmask16 m0 = cols >= 16 ? 0xFFFF : (__mmask16)((1u << cols) - 1);
    __mmask16 m1 = cols >= 32 ? 0xFFFF : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1);
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    __m512 bias0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
    __m512 bias1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
#pragma clang loop unroll(full)
    for (int r = 0; r < MRX; r++) {
        if (r >= rows) break;
        float *row = c + r * ldc;
        __m512 y0 = _mm512_mul_ps(acc[r][0], va), y1 = _mm512_mul_ps(acc[r][1], va);
        if (beta != 0) {  // beta 0 never reads C, which may hold NaNs
            y0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m0, row), vb, y0);
            y1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m1, row + 16), vb, y1);
        }
        if (bias) {  // alpha · acc + bias rounds once, as alpha · acc + 1 · C over C = bias does
            y0 = _mm512_add_ps(y0, bias0);
            y1 = _mm512_add_ps(y1, bias1);
        }
        if (stream && cols == 32 && !((uintptr_t)row & 63)) {
            _mm512_stream_ps(row, y0);
            _mm512_stream_ps(row + 16, y1);
        } else {
            _mm512_mask_storeu_ps(row, m0, y0);
            _mm512_mask_storeu_ps(row + 16, m1, y1);
        }
    }
}

#define TILE(MRX, DIRECT)                                                                                             \
    BF16_TARGET static void tile_##MRX##_##DIRECT(const char *ap, int64_t rs, const uint32_t *bp, int64_t pairs,     \
                                                  int tail, float *c, int64_t ldc, int64_t rows, int64_t cols,       \
                                                  float alpha, float beta, const float *bias, int stream) {          \
        tile_body(MRX, DIRECT, ap, rs, bp, pairs, tail, c, ldc, rows, cols, alpha, beta, bias, stream);              \
    }
TILE(14, 0)
TILE(14, 1)
TILE(8, 0)
TILE(8, 1)

typedef void (*tile_fn)(const char *, int64_t, const uint32_t *, int64_t, int, float *, int64_t, int64_t, int64_t,
                        float, float, const float *, int);

// Rows of C in panels of 14 (28 accumulators busy), the rest in panels of 8 (16 accumulators,
// ~10% slower a multiply-add): the split with the fewest multiply-add cycles, so a product
// wastes no rows where it need not. m = 128: 8 panels of 14 and 2 of 8 (in 14s alone, 140 rows
// for 128); m = 32: 4 of 8; m = 2048: 144 of 14 and 4 of 8.
static int64_t rows_in_fourteens(int64_t m) {
    int64_t best = 0, bestCost = -1;
    for (int64_t a = m / 14 + 1; a >= 0; a--) {
        int64_t rest = m - 14 * a < 0 ? 0 : m - 14 * a;
        int64_t cost = 140 * a + 88 * ((rest + 7) / 8);  // tenths of a row-pair: 14 rows at 1, 8 at 1.1
        if (bestCost < 0 || cost < bestCost) best = a, bestCost = cost;
    }
    return 14 * best < m ? 14 * best : m;
}

// The next tile's rows of C are requested (for writing) while this tile runs: a product's
// output is mostly new memory, cold, and each store otherwise waited for its line (2048 x 512
// x 128 into cold C: 690 -> 600 us; into C in cache, 2% slower, so only a first block of k).
BF16_TARGET static inline void prefetch_tile(float *c, int64_t ldc, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; r++) {
        __builtin_prefetch(c + r * ldc, 1, 3);
        if (cols > 16) __builtin_prefetch(c + r * ldc + 16, 1, 3);
    }
}

// Rows [0, m) of C (a and c already at the first), k values [kk, kk + kc), in panels of mr rows;
// C streamed past the caches where `stream` (the last block of k: no later block reads it).
static void multiply_rows(int mr, int transA, int64_t m, int64_t n, int64_t kk, int64_t kc, float alpha,
                          const uint16_t *a, int64_t lda, const uint32_t *pb, int64_t panelWords, float beta,
                          float *c, int64_t ldc, const float *bias, uint32_t *pa, int stream) {
    tile_fn packed = mr == 14 ? tile_14_0 : tile_8_0, direct = mr == 14 ? tile_14_1 : tile_8_1;
    const int64_t mcBlock = mr * 12, pairs = (kc + 1) / 2;
    for (int64_t i0 = 0; i0 < m; i0 += mcBlock) {
        int64_t mc = m - i0 < mcBlock ? m - i0 : mcBlock;
        // op(A) stored row-major is read where it lies, but for a last partial panel;
        // transposed, it is packed.
        int64_t whole = transA ? 0 : mc / mr * mr;
        if (whole < mc) pack_a(mr, a, lda, transA, i0 + whole, mc - whole, kk, kc, pa);
        for (int64_t jp = 0; jp < n; jp += NR) {
            const uint32_t *bPanel = pb + jp / NR * panelWords + kk / 2 * NR;
            int64_t cols = n - jp < NR ? n - jp : NR;
            for (int64_t ip = 0; ip < mc; ip += mr) {
                int64_t rows = mc - ip < mr ? mc - ip : mr;
                float *cTile = c + (i0 + ip) * ldc + jp;
                if (kk == 0 && !stream && ip + mr < mc)
                    prefetch_tile(cTile + mr * ldc, ldc, mc - ip - mr < mr ? mc - ip - mr : mr, cols);
                if (ip < whole)
                    direct((const char *)(a + (i0 + ip) * lda + kk), 2 * lda, bPanel, kc / 2, (int)(kc & 1), cTile, ldc,
                           rows, cols, alpha, beta, bias ? bias + jp : NULL, stream);
                else
                    packed((const char *)(pa + (ip - whole) / mr * pairs * mr), 4, bPanel, pairs, 0, cTile, ldc, rows,
                           cols, alpha, beta, bias ? bias + jp : NULL, stream);
            }
        }
    }
}

static int gemm_packed_b(int transA, int64_t m, int64_t n, int64_t k, float alpha, const uint16_t *a, int64_t lda,
                         const uint32_t *pb, int64_t panelWords, float beta, float *c, int64_t ldc, const float *bias,
                         int stream) {
    if (!loom_cpu_has_avx512_bf16()) return 0;
    if (m <= 0 || n <= 0) return 1;
    if (k <= 0) {  // C = beta · C (+ bias)
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++)
                c[i * ldc + j] = (beta == 0 ? 0 : beta * c[i * ldc + j]) + (bias ? bias[j] : 0);
        return 1;
    }
    const int64_t m14 = rows_in_fourteens(m), m8 = m - m14;  // rows [0, m14) in 14s, [m14, m) in 8s
    int64_t kcMax = k < KC ? k : KC;
    int64_t mcMax14 = m14 < 14 * 12 ? m14 : 14 * 12, mcMax8 = m8 < 8 * 12 ? (m8 + 7) / 8 * 8 : 8 * 12;
    uint32_t *pa = words(&packed_a, &packed_a_words,
                         (size_t)((mcMax14 > mcMax8 ? mcMax14 : mcMax8) * ((kcMax + 1) / 2)));
    if (!pa) return 0;
    const uint16_t *a8 = transA ? a + m14 : a + m14 * lda;  // op(A)'s row m14
    for (int64_t kk = 0; kk < k; kk += KC) {
        int64_t kc = k - kk < KC ? k - kk : KC;
        float betaHere = kk == 0 ? beta : 1;  // later blocks add onto the first's (which added the bias)
        const float *biasHere = kk == 0 ? bias : NULL;
        int streamHere = stream && kk + kc >= k;
        if (m14 > 0)
            multiply_rows(14, transA, m14, n, kk, kc, alpha, a, lda, pb, panelWords, betaHere, c, ldc, biasHere, pa,
                          streamHere);
        if (m8 > 0)
            multiply_rows(8, transA, m8, n, kk, kc, alpha, a8, lda, pb, panelWords, betaHere, c + m14 * ldc, ldc,
                          biasHere, pa, streamHere);
    }
    if (stream) _mm_sfence();  // the stores are weakly ordered: done before the caller says so
    return 1;
}

int loom_bf16_gemm_packed_b(int transA, int64_t m, int64_t n, int64_t k, float alpha, const uint16_t *a,
                            int64_t lda, const uint32_t *pb, int64_t panelWords, float beta, float *c, int64_t ldc,
                            const float *bias) {
    return gemm_packed_b(transA, m, n, k, alpha, a, lda, pb, panelWords, beta, c, ldc, bias, 0);
}

// op(B) is packed a block of KC rows at a time, each block used while it is in this core's
// cache (packed whole, a deep product's op(B) was written out to memory and read back): the
// same sums in the same order as one packing of all of k.
static int gemm(int transA, int transB, int64_t m, int64_t n, int64_t k, float alpha, const uint16_t *a, int64_t lda,
                const uint16_t *b, int64_t ldb, float beta, float *c, int64_t ldc, const float *bias, int stream) {
    if (!loom_cpu_has_avx512_bf16()) return 0;
    if (k <= 0) return gemm_packed_b(transA, m, n, k, alpha, a, lda, NULL, 0, beta, c, ldc, bias, 0);
    int64_t kcMax = k < KC ? k : KC;
    uint32_t *pb = words(&packed_b, &packed_b_words, (size_t)loom_bf16_packed_b_words(kcMax, n));
    if (!pb) return 0;
    for (int64_t kk = 0; kk < k; kk += KC) {
        int64_t kc = k - kk < KC ? k - kk : KC;
        loom_bf16_pack_b(transB, kc, 0, n, 0, (kc + 1) / 2, transB ? b + kk : b + kk * ldb, ldb, pb);
        if (!gemm_packed_b(transA, m, n, kc, alpha, transA ? a + kk * lda : a + kk, lda, pb, (kc + 1) / 2 * NR,
                           kk == 0 ? beta : 1, c, ldc, kk == 0 ? bias : NULL, stream && kk + kc >= k))
            return 0;
    }
    return 1;
}

int loom_bf16_gemm(int transA, int transB, int64_t m, int64_t n, int64_t k, float alpha, const uint16_t *a,
                   int64_t lda, const uint16_t *b, int64_t ldb, float beta, float *c, int64_t ldc, const float *bias) {
    return gemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, 0);
}

int loom_bf16_gemm_streaming(int transA, int transB, int64_t m, int64_t n, int64_t k, float alpha, const uint16_t *a,
                             int64_t lda, const uint16_t *b, int64_t ldb, float beta, float *c, int64_t ldc,
                             const float *bias) {
    return gemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, 1);
}

#else
int64_t loom_bf16_packed_b_words(int64_t k, int64_t n) { return 0; }
void loom_bf16_pack_b(int transB, int64_t k, int64_t j0, int64_t j1, int64_t p0, int64_t p1, const uint16_t *b, int64_t ldb,
                      uint32_t *dst) {}
int loom_bf16_gemm_packed_b(int transA, int64_t m, int64_t n, int64_t k, float alpha, const uint16_t *a,
                            int64_t lda, const uint32_t *pb, int64_t panelWords, float beta, float *c, int64_t ldc,
                            const float *bias) {
    return 0;
}
int loom_bf16_gemm(int transA, int transB, int64_t m, int64_t n, int64_t k, float alpha, const uint16_t *a,
                   int64_t lda, const uint16_t *b, int64_t ldb, float beta, float *c, int64_t ldc, const float *bias) {
    return 0;
}
int loom_bf16_gemm_streaming(int transA, int transB, int64_t m, int64_t n, int64_t k, float alpha, const uint16_t *a,
                             int64_t lda, const uint16_t *b, int64_t ldb, float beta, float *c, int64_t ldc,
                             const float *bias) {
    return 0;
}
void loom_bf16_pack_b_streaming(int transB, int64_t k, int64_t j0, int64_t j1, int64_t p0, int64_t p1, const uint16_t *b,
                                int64_t ldb, uint32_t *dst) {}
#endif
