// Loom's vectorised CPU kernels, compiled once per x86 vector width (SSE2, AVX2+FMA,
// AVX-512) and chosen at run time by the processor (Dispatch.c). Each works on a range
// the caller gives it; LoomCore's CPU backend splits the ranges across threads.
#ifndef LOOM_KERNELS_H
#define LOOM_KERNELS_H

#include <stdint.h>

typedef enum {
    LOOM_ISA_BASELINE = 0,  // x86-64 (SSE2), or any other architecture
    LOOM_ISA_AVX2 = 1,      // x86-64-v3: AVX2, FMA, BMI2, F16C
    LOOM_ISA_AVX512 = 2,    // x86-64-v4: AVX-512 F/BW/DQ/VL/CD
} loom_isa;

/// The variant the kernels run: the widest the processor and OS support, lowered by
/// LOOM_CPU_ISA=baseline|avx2|avx512 (a cap: asking for more than the processor has gives what it has).
loom_isa loom_kernel_isa(void);
/// The widest variant this processor supports, ignoring LOOM_CPU_ISA.
loom_isa loom_cpu_isa(void);
/// Runs the kernels' `isa` variant from now on (capped at loom_cpu_isa()); returns the one in force.
/// For tests that check every variant the processor can run.
loom_isa loom_set_kernel_isa(loom_isa isa);
/// "baseline", "avx2" or "avx512".
const char *loom_isa_name(loom_isa isa);

/// Whether the processor has AVX512-BF16 (vdpbf16ps) and the kernels run AVX-512 (LOOM_CPU_ISA
/// below avx512 turns it off).
int loom_cpu_has_avx512_bf16(void);

// C = alpha * op(A) * op(B) + beta * C (+ bias[j] in column j of every row, where bias is not
// NULL: a linear layer's forward), row-major, A and B bf16, C and bias float32, on the
// calling thread (GEMMBF16.c). op(A) is m x k (transA: A is stored k x m), op(B) is k x n.
// Returns 0, doing nothing, where the processor lacks AVX512-BF16 (or memory for the packing
// buffers).
int loom_bf16_gemm(int transA, int transB, int64_t m, int64_t n, int64_t k, float alpha, const uint16_t *a,
                   int64_t lda, const uint16_t *b, int64_t ldb, float beta, float *c, int64_t ldc, const float *bias);
// The same in two parts, so that op(B) is packed once for many products (threads sharing it,
// or attention's row blocks reading a prefix or a suffix of one head's keys):
// loom_bf16_pack_b writes columns [j0, j1) (j0 a multiple of 32) of op(B), k x n, pairs of its
// rows [p0, p1) (multiples of 16 where transB, but for p1 = (k + 1) / 2), into their panels of dst (loom_bf16_packed_b_words(k, n) words, 64-byte aligned; a panel is
// (k + 1) / 2 * 32 words, its rows in pairs). loom_bf16_gemm_packed_b reads B from such panels:
// `panelWords` apart, starting at pair 0 of the first (a product over rows r0... of the packed
// op(B), r0 even, starts r0 / 2 * 32 words in). Without AVX512-BF16 neither does anything (the
// product returns 0).
int64_t loom_bf16_packed_b_words(int64_t k, int64_t n);
void loom_bf16_pack_b(int transB, int64_t k, int64_t j0, int64_t j1, int64_t p0, int64_t p1, const uint16_t *b,
                      int64_t ldb, uint32_t *dst);
int loom_bf16_gemm_packed_b(int transA, int64_t m, int64_t n, int64_t k, float alpha, const uint16_t *a,
                            int64_t lda, const uint32_t *pb, int64_t panelWords, float beta, float *c, int64_t ldc,
                            const float *bias);
// loom_bf16_gemm and loom_bf16_pack_b with C (the last block of k's) or the panels stored
// past this core's caches (non-temporal stores; the same values): for a result the other
// threads read, where a store into a line another core read costs more than memory does
// (Convert.c).
int loom_bf16_gemm_streaming(int transA, int transB, int64_t m, int64_t n, int64_t k, float alpha, const uint16_t *a,
                             int64_t lda, const uint16_t *b, int64_t ldb, float beta, float *c, int64_t ldc,
                             const float *bias);
void loom_bf16_pack_b_streaming(int transB, int64_t k, int64_t j0, int64_t j1, int64_t p0, int64_t p1, const uint16_t *b,
                                int64_t ldb, uint32_t *dst);

// y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
void loom_gelu(const float *x, float *y, int64_t n);
// float32 -> bf16 rounding to nearest even (NaN kept), and bf16 -> float32 (exact).
void loom_f32_to_bf16(const float *x, uint16_t *y, int64_t n);
void loom_bf16_to_f32(const uint16_t *x, float *y, int64_t n);
// Rows [r0, r1) of x [., cols] rounded to bf16 into y, and their sum (in row order) into
// sums[cols] (added to its values where `accumulate`): a linear layer's dY for its bf16
// products and its bias gradient.
void loom_f32_to_bf16_summing_rows(const float *x, uint16_t *y, float *sums, int64_t cols, int64_t r0, int64_t r1,
                                   int accumulate);
// The same two with non-temporal stores of the bf16 values (the same values; Convert.c says
// when that is faster), for a result other threads read whole.
void loom_f32_to_bf16_streaming(const float *x, uint16_t *y, int64_t n);
void loom_f32_to_bf16_summing_rows_streaming(const float *x, uint16_t *y, float *sums, int64_t cols, int64_t r0, int64_t r1,
                                             int accumulate);
// gx = g * GELU'(x)
void loom_gelu_backward(const float *x, const float *g, float *gx, int64_t n);
// y = exp(x)
void loom_exp(const float *x, float *y, int64_t n);

// Row-wise softmax (or log-softmax) of rows x cols. Where `causal` > 0, row r of each
// block of `causal` rows sees only columns 0...(r mod causal) + offset, offset = cols - causal:
// the rest of the row is written as 0 (-inf for log) and never read.
void loom_softmax_rows(const float *x, float *y, int64_t rows, int64_t cols, int log, int64_t causal);
// gx = y * (g - <g, y>) per row (or g - exp(y) * sum(g) for log-softmax); the causal
// rows' masked columns are written as 0.
void loom_softmax_backward_rows(const float *y, const float *g, float *gx, int64_t rows, int64_t cols, int log,
                                int64_t causal);

// Layer norm over rows of `cols`: y = (x - mean) * rstd * gamma + beta, two-pass variance.
void loom_layernorm_rows(const float *x, const float *gamma, const float *beta, float eps, int64_t rows,
                         int64_t cols, float *y, float *mean, float *rstd);
// Its backward over rows; adds each row's g * xhat and g into dgamma and dbeta (the
// caller's per-chunk buffers). xhat: scratch of cols floats.
void loom_layernorm_backward_rows(const float *x, const float *gamma, const float *mean, const float *rstd,
                                  const float *g, int64_t rows, int64_t cols, float *gx, float *dgamma,
                                  float *dbeta, float *xhat);

// Adam/AdamW over n elements (PyTorch's formulas): decay = 1 - lr*wd for AdamW (else 1),
// l2 = wd for Adam's L2 penalty (else 0), step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t).
// Where `rounded` is not NULL, the updated p is also written to it rounded to bf16 (as loom_f32_to_bf16).
void loom_adam(float *p, const float *g, float *m, float *v, int64_t n, float beta1, float beta2, float eps,
               float decay, float l2, float step_size, float bc2_sqrt, uint16_t *rounded);
// SGD with optional momentum buffer (NULL: none), dampening and Nesterov; `rounded` as for Adam.
void loom_sgd(float *p, const float *g, float *buf, int64_t n, float lr, float momentum, float dampening,
              float weight_decay, int nesterov, uint16_t *rounded);

// How fast this process's first two allowed CPUs hand data to each other, in GB/s: two threads
// pinned to them take turns rewriting one 256 KiB buffer for `seconds` (the median of 10 ms
// samples). -1 where there are not two CPUs or a thread cannot be pinned. (CrossCore.c)
double loom_cross_core_gbps(double seconds);

// Whether results the other thread reads are better stored past the caches (StreamProbe.c):
// two threads running at once call play with ids 0 and 1; ratio is the plain stores' time over
// the streamed ones', or -1 where the probe could not run (a thread did not come, no AVX-512).
struct loom_stream_probe;
struct loom_stream_probe *loom_stream_probe_create(void);
void loom_stream_probe_play(struct loom_stream_probe *probe, int id);
double loom_stream_probe_ratio(struct loom_stream_probe *probe);
void loom_stream_probe_free(struct loom_stream_probe *probe);

#endif
