// Optimizer updates, one pass over each parameter (PyTorch's formulas).
#include "Dispatch.h"

LOOM_INLINE void loom_adam_body(float *p, const float *g, float *m, float *v, int64_t n, float beta1, float beta2,
                                float eps, float decay, float l2, float step_size, float bc2_sqrt) {
    LOOM_SIMD
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i] + l2 * p[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step_size * mi / (loom_sqrtf(vi) / bc2_sqrt + eps);
    }
}
LOOM_VARIANTS(loom_adam,
              (float *p, const float *g, float *m, float *v, int64_t n, float beta1, float beta2, float eps,
               float decay, float l2, float step_size, float bc2_sqrt),
              (p, g, m, v, n, beta1, beta2, eps, decay, l2, step_size, bc2_sqrt))

LOOM_INLINE void loom_sgd_body(float *p, const float *g, float *buf, int64_t n, float lr, float momentum,
                               float dampening, float weight_decay, int nesterov) {
    if (!buf) {
        LOOM_SIMD
        for (int64_t i = 0; i < n; i++) p[i] -= lr * (g[i] + weight_decay * p[i]);
    } else if (nesterov) {
        LOOM_SIMD
        for (int64_t i = 0; i < n; i++) {
            float gi = g[i] + weight_decay * p[i];
            float b = momentum * buf[i] + (1.0f - dampening) * gi;
            buf[i] = b;
            p[i] -= lr * (gi + momentum * b);
        }
    } else {
        LOOM_SIMD
        for (int64_t i = 0; i < n; i++) {
            float b = momentum * buf[i] + (1.0f - dampening) * (g[i] + weight_decay * p[i]);
            buf[i] = b;
            p[i] -= lr * b;
        }
    }
}
LOOM_VARIANTS(loom_sgd,
              (float *p, const float *g, float *buf, int64_t n, float lr, float momentum, float dampening,
               float weight_decay, int nesterov),
              (p, g, buf, n, lr, momentum, dampening, weight_decay, nesterov))
