// Layer norm over rows, forward and backward.
#include "Dispatch.h"

LOOM_INLINE void loom_layernorm_rows_body(const float *x, const float *gamma, const float *beta, float eps,
                                          int64_t rows, int64_t cols, float *y, float *mean, float *rstd) {
    LOOM_REASSOCIATE
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        float s = 0.0f;
        LOOM_SIMD
        for (int64_t j = 0; j < cols; j++) s += xr[j];
        float mu = s / (float)cols;
        // Two passes: the variance of x - mu, not E[x^2] - mu^2 (cancellation).
        float v = 0.0f;
        LOOM_SIMD
        for (int64_t j = 0; j < cols; j++) {
            float d = xr[j] - mu;
            yr[j] = d;
            v += d * d;
        }
        float rs = 1.0f / loom_sqrtf(v / (float)cols + eps);
        mean[r] = mu;
        rstd[r] = rs;
        LOOM_SIMD
        for (int64_t j = 0; j < cols; j++) yr[j] = yr[j] * rs * gamma[j] + beta[j];
    }
}
LOOM_VARIANTS(loom_layernorm_rows,
              (const float *x, const float *gamma, const float *beta, float eps, int64_t rows, int64_t cols,
               float *y, float *mean, float *rstd),
              (x, gamma, beta, eps, rows, cols, y, mean, rstd))

// dxhat = g * gamma;  gx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
LOOM_INLINE void loom_layernorm_backward_rows_body(const float *x, const float *gamma, const float *mean,
                                                   const float *rstd, const float *g, int64_t rows, int64_t cols,
                                                   float *gx, float *dgamma, float *dbeta, float *xhat) {
    LOOM_REASSOCIATE
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols, *gr = g + r * cols;
        float *gxr = gx + r * cols;
        float mu = mean[r], rs = rstd[r];
        float s1 = 0.0f, s2 = 0.0f;
        LOOM_SIMD
        for (int64_t j = 0; j < cols; j++) {
            float xh = (xr[j] - mu) * rs, dxh = gr[j] * gamma[j];
            xhat[j] = xh;
            s1 += dxh;
            s2 += dxh * xh;
            dgamma[j] += gr[j] * xh;
            dbeta[j] += gr[j];
        }
        float m1 = s1 / (float)cols, m2 = s2 / (float)cols;
        LOOM_SIMD
        for (int64_t j = 0; j < cols; j++) gxr[j] = rs * (gr[j] * gamma[j] - m1 - xhat[j] * m2);
    }
}
LOOM_VARIANTS(loom_layernorm_backward_rows,
              (const float *x, const float *gamma, const float *mean, const float *rstd, const float *g,
               int64_t rows, int64_t cols, float *gx, float *dgamma, float *dbeta, float *xhat),
              (x, gamma, mean, rstd, g, rows, cols, gx, dgamma, dbeta, xhat))
