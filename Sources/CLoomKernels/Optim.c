// Optimizer updates, one pass over each parameter (PyTorch's formulas). Where `rounded` is
// not NULL, the updated parameter is also rounded to bf16 into it (as loom_f32_to_bf16), a
// block at a time while the block is in L1: the copy bf16 products read in the next step
// (Tensor.operandCopy), made here for the cost of its stores instead of by a pass that reads
// the parameter again from memory.
#include "Dispatch.h"

enum { ROUND_BLOCK = 4096 };  // floats: 16 KiB, half an L1

// The update over [0, n), and the rounding of each block after it.
#define UPDATE_ROUNDING(update, p, n, rounded)                                                \
    do {                                                                                      \
        if (!(rounded)) { update(0, n); break; }                                              \
        for (int64_t b = 0; b < (n); b += ROUND_BLOCK) {                                      \
            int64_t e = (n) - b < ROUND_BLOCK ? (n) : b + ROUND_BLOCK;                        \
            update(b, e);                                                                     \
            loom_f32_to_bf16_body((p) + b, (rounded) + b, e - b);                             \
        }                                                                                     \
    } while (0)

LOOM_INLINE void loom_adam_range(float *p, const float *g, float *m, float *v, int64_t i0, int64_t i1, float beta1,
                                 float beta2, float eps, float decay, float l2, float step_size, float bc2_sqrt) {
    LOOM_SIMD
    for (int64_t i = i0; i < i1; i++) {
        float gi = g[i] + l2 * p[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step_size * mi / (loom_sqrtf(vi) / bc2_sqrt + eps);
    }
}

LOOM_INLINE void loom_adam_body(float *p, const float *g, float *m, float *v, int64_t n, float beta1, float beta2,
                                float eps, float decay, float l2, float step_size, float bc2_sqrt, uint16_t *rounded) {
#define ADAM(i0, i1) loom_adam_range(p, g, m, v, i0, i1, beta1, beta2, eps, decay, l2, step_size, bc2_sqrt)
    UPDATE_ROUNDING(ADAM, p, n, rounded);
#undef ADAM
}
LOOM_VARIANTS(loom_adam,
              (float *p, const float *g, float *m, float *v, int64_t n, float beta1, float beta2, float eps,
               float decay, float l2, float step_size, float bc2_sqrt, uint16_t *rounded),
              (p, g, m, v, n, beta1, beta2, eps, decay, l2, step_size, bc2_sqrt, rounded))

LOOM_INLINE void loom_sgd_range(float *p, const float *g, float *buf, int64_t i0, int64_t i1, float lr,
                                float momentum, float dampening, float weight_decay, int nesterov) {
    if (!buf) {
        LOOM_SIMD
        for (int64_t i = i0; i < i1; i++) p[i] -= lr * (g[i] + weight_decay * p[i]);
    } else if (nesterov) {
        LOOM_SIMD
        for (int64_t i = i0; i < i1; i++) {
            float gi = g[i] + weight_decay * p[i];
            float b = momentum * buf[i] + (1.0f - dampening) * gi;
            buf[i] = b;
            p[i] -= lr * (gi + momentum * b);
        }
    } else {
        LOOM_SIMD
        for (int64_t i = i0; i < i1; i++) {
            float b = momentum * buf[i] + (1.0f - dampening) * (g[i] + weight_decay * p[i]);
            buf[i] = b;
            p[i] -= lr * b;
        }
    }
}

LOOM_INLINE void loom_sgd_body(float *p, const float *g, float *buf, int64_t n, float lr, float momentum,
                               float dampening, float weight_decay, int nesterov, uint16_t *rounded) {
#define SGD(i0, i1) loom_sgd_range(p, g, buf, i0, i1, lr, momentum, dampening, weight_decay, nesterov)
    UPDATE_ROUNDING(SGD, p, n, rounded);
#undef SGD
}
LOOM_VARIANTS(loom_sgd,
              (float *p, const float *g, float *buf, int64_t n, float lr, float momentum, float dampening,
               float weight_decay, int nesterov, uint16_t *rounded),
              (p, g, buf, n, lr, momentum, dampening, weight_decay, nesterov, rounded))
