// Conversions between float32 and bf16 (its upper 16 bits): what a bf16 matrix product
// reads its float32 operands through, so they run at memory speed.
#include "Dispatch.h"

// loom_f32_to_bf16_body: Dispatch.h (the optimizers round what they update with it too)
LOOM_VARIANTS(loom_f32_to_bf16, (const float *x, uint16_t *y, int64_t n), (x, y, n))

// sums[cols] = row (`first`), else sums += row.
LOOM_INLINE void loom_sum_row(float *sums, const float *row, int64_t cols, int first) {
    if (first) {
        LOOM_SIMD
        for (int64_t j = 0; j < cols; j++) sums[j] = row[j];
    } else {
        LOOM_SIMD
        for (int64_t j = 0; j < cols; j++) sums[j] += row[j];
    }
}

// Rows [r0, r1) of x [., cols] rounded into y, and summed into sums[cols]: row r0's values
// (added to sums' own where `accumulate`), then each later row added in order. One pass over
// x for the two things a linear layer's backward reads dY for under bf16: the products'
// operand and the bias gradient (the caller adds blocks of rows' sums).
LOOM_INLINE void loom_f32_to_bf16_summing_rows_body(const float *x, uint16_t *y, float *sums, int64_t cols, int64_t r0,
                                                    int64_t r1, int accumulate) {
    for (int64_t r = r0; r < r1; r++) {
        loom_f32_to_bf16_body(x + r * cols, y + r * cols, cols);
        loom_sum_row(sums, x + r * cols, cols, r == r0 && !accumulate);
    }
}
LOOM_VARIANTS(loom_f32_to_bf16_summing_rows,
              (const float *x, uint16_t *y, float *sums, int64_t cols, int64_t r0, int64_t r1, int accumulate),
              (x, y, sums, cols, r0, r1, accumulate))

LOOM_INLINE void loom_bf16_to_f32_body(const uint16_t *x, float *y, int64_t n) {
    LOOM_SIMD
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits = (uint32_t)x[i] << 16;
        memcpy(&y[i], &bits, 4);
    }
}
LOOM_VARIANTS(loom_bf16_to_f32, (const uint16_t *x, float *y, int64_t n), (x, y, n))

// The rounding again, its bf16 stored with non-temporal stores (past this core's caches, to
// memory), for a result the other threads read: a store into a line another core has read
// must first take it from that core, which costs ~7 ns a line with the two cores on one L3 and
// ~28 with them on two (Zen 4; a line streamed costs ~3–5 either way, and its readers then fetch
// it from memory: bench/column_split_probe.c). The same values as loom_f32_to_bf16 (NaN kept,
// denormals as they are); without AVX-512, loom_f32_to_bf16 itself.
#if defined(__x86_64__)
#include <immintrin.h>

#define STREAM_TARGET __attribute__((target("arch=x86-64-v4,tune=znver4")))  // as LOOM_VARIANTS' AVX-512 copy

STREAM_TARGET static void stream_bf16(const float *x, uint16_t *y, int64_t n) {
    int64_t head = (int64_t)((64 - ((uintptr_t)y & 63)) & 63) / 2;  // values before y's first whole line
    if (head > n || ((uintptr_t)y & 1)) head = n;
    loom_f32_to_bf16_body(x, y, head);
    const __m512i half = _mm512_set1_epi32(0x7FFF), one = _mm512_set1_epi32(1), magnitude = _mm512_set1_epi32(0x7FFFFFFF),
                  infinity = _mm512_set1_epi32(0x7F800000), quiet = _mm512_set1_epi32(0x40);
    int64_t i = head;
    for (; i + 32 <= n; i += 32) {  // a line: 32 values, as loom_f32_to_bf16_body rounds them
        __m256i out[2];
        for (int k = 0; k < 2; k++) {
            __m512i bits = _mm512_loadu_si512(x + i + 16 * k);
            __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(bits, half), _mm512_and_si512(_mm512_srli_epi32(bits, 16), one));
            __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(bits, magnitude), infinity);
            __m512i top = _mm512_mask_or_epi32(_mm512_srli_epi32(rounded, 16), nan, _mm512_srli_epi32(bits, 16), quiet);
            out[k] = _mm512_cvtepi32_epi16(top);
        }
        _mm512_stream_si512((void *)(y + i), _mm512_inserti64x4(_mm512_castsi256_si512(out[0]), out[1], 1));
    }
    loom_f32_to_bf16_body(x + i, y + i, n - i);
}

static int can_stream(void) { return loom_kernel_isa() == LOOM_ISA_AVX512; }

void loom_f32_to_bf16_streaming(const float *x, uint16_t *y, int64_t n) {
    if (!can_stream()) {
        loom_f32_to_bf16(x, y, n);
        return;
    }
    stream_bf16(x, y, n);
    _mm_sfence();  // the stores are weakly ordered: done before the caller says so
}

STREAM_TARGET static void stream_summing_rows(const float *x, uint16_t *y, float *sums, int64_t cols, int64_t r0, int64_t r1,
                                              int accumulate) {
    for (int64_t r = r0; r < r1; r++) {
        stream_bf16(x + r * cols, y + r * cols, cols);
        loom_sum_row(sums, x + r * cols, cols, r == r0 && !accumulate);
    }
}

void loom_f32_to_bf16_summing_rows_streaming(const float *x, uint16_t *y, float *sums, int64_t cols, int64_t r0, int64_t r1,
                                             int accumulate) {
    if (!can_stream()) {
        loom_f32_to_bf16_summing_rows(x, y, sums, cols, r0, r1, accumulate);
        return;
    }
    stream_summing_rows(x, y, sums, cols, r0, r1, accumulate);
    _mm_sfence();
}
#else
void loom_f32_to_bf16_streaming(const float *x, uint16_t *y, int64_t n) { loom_f32_to_bf16(x, y, n); }
void loom_f32_to_bf16_summing_rows_streaming(const float *x, uint16_t *y, float *sums, int64_t cols, int64_t r0, int64_t r1,
                                             int accumulate) {
    loom_f32_to_bf16_summing_rows(x, y, sums, cols, r0, r1, accumulate);
}
#endif
