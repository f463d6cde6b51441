// GELU (tanh approximation, GPT-2's) and exp, elementwise.
#include "Dispatch.h"

static const float gelu_c = 0.7978845608028654f;  // sqrt(2/pi)
static const float gelu_a = 0.044715f;

LOOM_INLINE void loom_gelu_body(const float *x, float *y, int64_t n) {
    LOOM_SIMD
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        y[i] = 0.5f * v * (1.0f + loom_tanhf(gelu_c * (v + gelu_a * v * v * v)));
    }
}
LOOM_VARIANTS(loom_gelu, (const float *x, float *y, int64_t n), (x, y, n))

// d/dx 0.5 x (1 + t(u)) = 0.5 (1 + t) + 0.5 x (1 - t^2) u',  u' = c (1 + 3a x^2)
LOOM_INLINE void loom_gelu_backward_body(const float *x, const float *g, float *gx, int64_t n) {
    LOOM_SIMD
    for (int64_t i = 0; i < n; i++) {
        float v = x[i], v2 = v * v;
        float t = loom_tanhf(gelu_c * (v + gelu_a * v2 * v));
        float du = gelu_c * (1.0f + 3.0f * gelu_a * v2);
        gx[i] = g[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
    }
}
LOOM_VARIANTS(loom_gelu_backward, (const float *x, const float *g, float *gx, int64_t n), (x, g, gx, n))

LOOM_INLINE void loom_exp_body(const float *x, float *y, int64_t n) {
    LOOM_SIMD
    for (int64_t i = 0; i < n; i++) y[i] = loom_expf(x[i]);
}
LOOM_VARIANTS(loom_exp, (const float *x, float *y, int64_t n), (x, y, n))
