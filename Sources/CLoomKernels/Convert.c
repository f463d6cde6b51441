// Conversions between float32 and bf16 (its upper 16 bits): what a bf16 matrix product
// reads its float32 operands through, so they run at memory speed.
#include "Dispatch.h"

// loom_f32_to_bf16_body: Dispatch.h (the optimizers round what they update with it too)
LOOM_VARIANTS(loom_f32_to_bf16, (const float *x, uint16_t *y, int64_t n), (x, y, n))

// Rows [r0, r1) of x [., cols] rounded into y, and summed into sums[cols]: row r0's values
// (added to sums' own where `accumulate`), then each later row added in order. One pass over
// x for the two things a linear layer's backward reads dY for under bf16: the products'
// operand and the bias gradient (the caller adds blocks of rows' sums).
LOOM_INLINE void loom_f32_to_bf16_summing_rows_body(const float *x, uint16_t *y, float *sums, int64_t cols, int64_t r0,
                                                    int64_t r1, int accumulate) {
    for (int64_t r = r0; r < r1; r++) {
        const float *xr = x + r * cols;
        loom_f32_to_bf16_body(xr, y + r * cols, cols);
        if (r == r0 && !accumulate) {
            LOOM_SIMD
            for (int64_t j = 0; j < cols; j++) sums[j] = xr[j];
        } else {
            LOOM_SIMD
            for (int64_t j = 0; j < cols; j++) sums[j] += xr[j];
        }
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
