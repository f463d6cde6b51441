// Row-wise softmax and its backward, with an optional causal limit per row.
#include "Dispatch.h"

// Columns row r may see: all, or under a causal mask over blocks of `causal` rows,
// (r mod causal) + 1 + (cols - causal).
LOOM_INLINE int64_t visible(int64_t r, int64_t cols, int64_t causal) {
    return causal > 0 ? r % causal + 1 + (cols - causal) : cols;
}

LOOM_INLINE float row_max(const float *x, int64_t n) {
    float m = -INFINITY;
    LOOM_SIMD
    for (int64_t j = 0; j < n; j++) m = fmaxf(m, x[j]);
    return m;
}

LOOM_INLINE void loom_softmax_rows_body(const float *x, float *y, int64_t rows, int64_t cols, int log,
                                        int64_t causal) {
    LOOM_REASSOCIATE
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
        // Sums run over the whole row, hidden columns counting 0 (they may hold anything), so
        // that a causal row sums in the order of the same row masked with -inf: the CPU's
        // fused attention then rounds P to bf16 exactly as the unfused ops do.
        float s = 0.0f;
        if (log) {  // y = x - m - log(sum exp(x - m)); x is read again, so y is not written before
            LOOM_SIMD
            for (int64_t j = 0; j < cols; j++) s += j < n ? loom_expf(xr[j] - m) : 0.0f;
            float shift = m + logf(s);
            LOOM_SIMD
            for (int64_t j = 0; j < n; j++) yr[j] = xr[j] - shift;
        } else {
            LOOM_SIMD
            for (int64_t j = 0; j < cols; j++) {
                float e = j < n ? loom_expf(xr[j] - m) : 0.0f;
                if (j < n) yr[j] = e;
                s += e;
            }
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
    LOOM_REASSOCIATE
    for (int64_t r = 0; r < rows; r++) {
        const float *yr = y + r * cols, *gr = g + r * cols;
        float *gxr = gx + r * cols;
        int64_t n = visible(r, cols, causal);
        float s = 0.0f;  // over the whole row, hidden columns counting 0, as in the forward
        if (log) {  // y = log p: gx = g - p * sum(g)
            LOOM_SIMD
            for (int64_t j = 0; j < cols; j++) s += j < n ? gr[j] : 0.0f;
            LOOM_SIMD
            for (int64_t j = 0; j < n; j++) gxr[j] = gr[j] - loom_expf(yr[j]) * s;
        } else {    // gx = p * (g - <g, p>)
            LOOM_SIMD
            for (int64_t j = 0; j < cols; j++) s += j < n ? gr[j] * yr[j] : 0.0f;
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
