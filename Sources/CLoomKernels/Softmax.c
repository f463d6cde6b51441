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
typedef float lanes16 __attribute__((ext_vector_type(16)));
typedef float lanes8 __attribute__((ext_vector_type(8)));
typedef float lanes4 __attribute__((ext_vector_type(4)));
typedef float lanes2 __attribute__((ext_vector_type(2)));

// STEP(j, l, inside) for a row's first n columns j (lane l = j mod LANES): whole blocks of
// LANES with inside = 1, then the last partial block with inside = j < n. The compiler then
// masks that one block only; a single loop over n, masking every block, took half the time
// of a causal attention row's softmax (128 x 128, one core: 9 -> 6 us). The loop over blocks
// is kept scalar: vectorised across blocks (the lanes' loop unrolled first), it became
// scatters into the lanes.
#define OVER_BLOCKS(n, STEP)                                                                     \
    do {                                                                                         \
        int64_t full_ = (n) / LANES * LANES;                                                     \
        _Pragma("clang loop vectorize(disable)")                                                \
        for (int64_t j0_ = 0; j0_ < full_; j0_ += LANES) {                                       \
            LOOM_SIMD for (int l = 0; l < LANES; l++) STEP(j0_ + l, l, 1);                       \
        }                                                                                        \
        if (full_ < (n)) {                                                                       \
            LOOM_SIMD for (int l = 0; l < LANES; l++) STEP(full_ + l, l, full_ + l < (n));      \
        }                                                                                        \
    } while (0)

// Lane l gains lane l + 8, then l + 4, l + 2 and l + 1: the tree, in vector halves.
LOOM_INLINE float lane_total(const float *lanes) {
    lanes16 v;
    memcpy(&v, lanes, sizeof v);
    lanes8 a = v.lo + v.hi;
    lanes4 b = a.lo + a.hi;
    lanes2 c = b.lo + b.hi;
    return c.x + c.y;
}

// The largest of a row's first n values (lanes past n read as -inf; NaNs are passed over, as
// fmaxf does): the same value in any order, so the lanes are folded in vector halves. Folded
// one lane at a time, this was half of a causal attention row's softmax.
LOOM_INLINE float row_max(const float *x, int64_t n) {
    float lanes[LANES];
    for (int l = 0; l < LANES; l++) lanes[l] = -INFINITY;
#define MAX_STEP(j, l, inside) lanes[l] = fmaxf(lanes[l], (inside) ? x[j] : -INFINITY)
    OVER_BLOCKS(n, MAX_STEP);
#undef MAX_STEP
    lanes16 v;
    memcpy(&v, lanes, sizeof v);
    lanes8 a = __builtin_elementwise_max(v.lo, v.hi);
    lanes4 b = __builtin_elementwise_max(a.lo, a.hi);
    lanes2 c = __builtin_elementwise_max(b.lo, b.hi);
    return fmaxf(c.x, c.y);
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
        float lanes[LANES] = {0};
        if (log) {  // y = x - m - log(sum exp(x - m)); x is read again, so y is not written before
#define SUM_STEP(j, l, inside) lanes[l] += (inside) ? loom_expf(xr[j] - m) : 0.0f
            OVER_BLOCKS(n, SUM_STEP);
#undef SUM_STEP
            float shift = m + logf(lane_total(lanes));
#define SHIFT_STEP(j, l, inside) if (inside) yr[j] = xr[j] - shift
            OVER_BLOCKS(n, SHIFT_STEP);
#undef SHIFT_STEP
        } else {
#define EXP_STEP(j, l, inside)                                  \
    {                                                           \
        float e = (inside) ? loom_expf(xr[j] - m) : 0.0f;       \
        if (inside) yr[j] = e;                                  \
        lanes[l] += e;                                          \
    }
            OVER_BLOCKS(n, EXP_STEP);
#undef EXP_STEP
            float inv = 1.0f / lane_total(lanes);
#define SCALE_STEP(j, l, inside) if (inside) yr[j] *= inv
            OVER_BLOCKS(n, SCALE_STEP);
#undef SCALE_STEP
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
        float lanes[LANES] = {0};  // summed as the forward sums
        if (log) {  // y = log p: gx = g - p * sum(g)
#define SUM_STEP(j, l, inside) lanes[l] += (inside) ? gr[j] : 0.0f
            OVER_BLOCKS(n, SUM_STEP);
#undef SUM_STEP
            float s = lane_total(lanes);
            LOOM_SIMD
            for (int64_t j = 0; j < n; j++) gxr[j] = gr[j] - loom_expf(yr[j]) * s;
        } else {    // gx = p * (g - <g, p>)
            {  // each product rounded, then added (never fused): a masked lane adds an exact 0
#pragma clang fp contract(off)
#define SUM_STEP(j, l, inside) lanes[l] += (inside) ? gr[j] * yr[j] : 0.0f
                OVER_BLOCKS(n, SUM_STEP);
#undef SUM_STEP
            }
            float s = lane_total(lanes);
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
