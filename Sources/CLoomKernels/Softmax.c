// Row-wise softmax and its backward, with an optional causal limit per row.
#include "Dispatch.h"

// Columns row r may see: all, or under a causal mask over blocks of `causal` rows,
// (r mod causal) + 1 + (cols - causal).
LOOM_INLINE int64_t visible(int64_t r, int64_t cols, int64_t causal) {
    return causal > 0 ? r % causal + 1 + (cols - causal) : cols;
}

// Sums over a row's visible columns in 16 lanes (lane l adds columns l, l + 16, ...), then a
// fixed tree over the lanes. The order depends only on the lanes' columns, and columns past
// the visible ones would add exact zeros: so a causal row of n visible columns sums exactly
// as the same full row masked with -inf does (the CPU's fused attention then rounds P to
// bf16 as the unfused ops do), while reading only its first n columns.
#define LANES 16
LOOM_INLINE float lane_total(float *lanes) {
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++) lanes[l] += lanes[l + w];
    return lanes[0];
}

// The largest of a row's first n values, over whole blocks of LANES (lanes past n read as
// -inf): a causal row's n is any number, and a loop over exactly n runs its last n mod 16
// values one at a time.
LOOM_INLINE float row_max(const float *x, int64_t n) {
    float lanes[LANES];
    for (int l = 0; l < LANES; l++) lanes[l] = -INFINITY;
    for (int64_t j0 = 0; j0 < n; j0 += LANES) {
        LOOM_SIMD
        for (int l = 0; l < LANES; l++) lanes[l] = fmaxf(lanes[l], j0 + l < n ? x[j0 + l] : -INFINITY);
    }
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++) lanes[l] = fmaxf(lanes[l], lanes[l + w]);
    return lanes[0];
}

LOOM_INLINE void loom_softmax_rows_body(const float *x, float *y, int64_t rows, int64_t cols, int log,
                                        int64_t causal) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        int64_t n = visible(r, cols, causal);
        float m = row_max(xr, n);
        if (m == -INFINITY) {  // an all-masked row: nothing to normalise
            LOOM_SIMD
            for (int64_t j = 0; j < cols; j++) yr[j] = log ? -INFINITY : 0.0f;
            continue;
        }
        float s, lanes[LANES] = {0};
        if (log) {  // y = x - m - log(sum exp(x - m)); x is read again, so y is not written before
            for (int64_t j0 = 0; j0 < n; j0 += LANES) {
                LOOM_SIMD
                for (int l = 0; l < LANES; l++) lanes[l] += j0 + l < n ? loom_expf(xr[j0 + l] - m) : 0.0f;
            }
            float shift = m + logf(lane_total(lanes));
            LOOM_SIMD
            for (int64_t j = 0; j < n; j++) yr[j] = xr[j] - shift;
        } else {
            for (int64_t j0 = 0; j0 < n; j0 += LANES) {
                LOOM_SIMD
                for (int l = 0; l < LANES; l++) {
                    float e = j0 + l < n ? loom_expf(xr[j0 + l] - m) : 0.0f;
                    if (j0 + l < n) yr[j0 + l] = e;
                    lanes[l] += e;
                }
            }
            s = lane_total(lanes);
            float inv = 1.0f / s;
            LOOM_SIMD
            for (int64_t j = 0; j < n; j++) yr[j] *= inv;
        }
        LOOM_SIMD
        for (int64_t j = n; j < cols; j++) yr[j] = log ? -INFINITY : 0.0f;
    }
}
LOOM_VARIANTS(loom_softmax_rows, (const float *x, float *y, int64_t rows, int64_t cols, int log, int64_t causal),
              (x, y, rows, cols, log, causal))

LOOM_INLINE void loom_softmax_backward_rows_body(const float *y, const float *g, float *gx, int64_t rows,
                                                 int64_t cols, int log, int64_t causal) {
    for (int64_t r = 0; r < rows; r++) {
        const float *yr = y + r * cols, *gr = g + r * cols;
        float *gxr = gx + r * cols;
        int64_t n = visible(r, cols, causal);
        float s, lanes[LANES] = {0};  // summed as the forward sums
        if (log) {  // y = log p: gx = g - p * sum(g)
            for (int64_t j0 = 0; j0 < n; j0 += LANES) {
                LOOM_SIMD
                for (int l = 0; l < LANES; l++) lanes[l] += j0 + l < n ? gr[j0 + l] : 0.0f;
            }
            s = lane_total(lanes);
            LOOM_SIMD
            for (int64_t j = 0; j < n; j++) gxr[j] = gr[j] - loom_expf(yr[j]) * s;
        } else {    // gx = p * (g - <g, p>)
            for (int64_t j0 = 0; j0 < n; j0 += LANES) {
                LOOM_SIMD
                for (int l = 0; l < LANES; l++) lanes[l] += j0 + l < n ? gr[j0 + l] * yr[j0 + l] : 0.0f;
            }
            s = lane_total(lanes);
            LOOM_SIMD
            for (int64_t j = 0; j < n; j++) gxr[j] = yr[j] * (gr[j] - s);
        }
        LOOM_SIMD
        for (int64_t j = n; j < cols; j++) gxr[j] = 0.0f;
    }
}
LOOM_VARIANTS(loom_softmax_backward_rows,
              (const float *y, const float *g, float *gx, int64_t rows, int64_t cols, int log, int64_t causal),
              (y, g, gx, rows, cols, log, causal))
