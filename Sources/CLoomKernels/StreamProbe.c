// Whether a result the other thread reads is better stored past this core's caches: the two
// threads of a parallel region, at once, write their halves of a [128, 512] float32 matrix
// (as a product split by columns, or a cast of a short activation, does) and then both read
// all of it, step after step; every other step with non-temporal stores. A store into a line
// the other core read since costs what moving the line's ownership between the cores costs:
// on the 2-vCPU Zen 4 machines Loom is measured on, ~7 ns a line with the two vCPUs on one L3
// and ~28 with them on two, where a streamed line costs ~3–5 either way and its readers fetch it
// from memory (bench/column_split_probe.c). The slower thread's time a step, median of each
// kind: plain ~20 µs near, ~68 far; streamed ~19 either way.
//
//   loom_stream_probe_play(probe, 0) and (probe, 1) from two threads running at once; then
//   loom_stream_probe_ratio(probe): plain over streamed, or -1 where a thread did not come
//   (the two ran one after the other) or the processor has no AVX-512 (the kernels then
//   store plainly whatever is asked).
#include "Dispatch.h"
#include "Probe.h"
#include <stdatomic.h>
#include <stdlib.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

enum { probe_rows = 128, probe_cols = 512, probe_steps = 32, probe_wait_ns = 20 * 1000 * 1000 };

struct loom_stream_probe {
    float *matrix;
    _Atomic int arrived, failed;
    double seconds[2][probe_steps];
};

struct loom_stream_probe *loom_stream_probe_create(void) {
    struct loom_stream_probe *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->matrix = aligned_alloc(64, probe_rows * probe_cols * sizeof(float));
    if (!p->matrix) {
        free(p);
        return NULL;
    }
    for (int i = 0; i < probe_rows * probe_cols; i++) p->matrix[i] = 0;
    return p;
}

void loom_stream_probe_free(struct loom_stream_probe *p) {
    if (!p) return;
    free(p->matrix);
    free(p);
}

// Waits for the other thread at barrier `round` (each thread arrives once a round); gives up,
// marking the probe failed, after probe_wait_ns.
static int stream_probe_meet(struct loom_stream_probe *p, int round) {
    atomic_fetch_add(&p->arrived, 1);
    double deadline = loom_probe_seconds() + probe_wait_ns * 1e-9;
    for (long spins = 0; atomic_load(&p->arrived) < 2 * round; spins++) {
        if (atomic_load(&p->failed)) return 0;
        if ((spins & 1023) == 1023 && loom_probe_seconds() > deadline) {
            atomic_store(&p->failed, 1);
            return 0;
        }
    }
    return 1;
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static void stream_probe_write(float *half, int n, float value, int streamed) {
    __m512 v = _mm512_set1_ps(value);
    if (streamed) {
        for (int i = 0; i < n; i += 16) _mm512_stream_ps(half + i, v);
        _mm_sfence();
    } else {
        for (int i = 0; i < n; i += 16) _mm512_store_ps(half + i, v);
    }
}

__attribute__((target("avx512f"))) static float stream_probe_read(const float *x, int n) {
    __m512 s = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) s = _mm512_add_ps(s, _mm512_load_ps(x + i));
    return _mm512_reduce_add_ps(s);
}
#endif

void loom_stream_probe_play(struct loom_stream_probe *p, int id) {
#if defined(__x86_64__)
    if (!p || id < 0 || id > 1 || loom_kernel_isa() != LOOM_ISA_AVX512) return;
    const int n = probe_rows * probe_cols;
    volatile float sink = 0;
    for (int step = 0, round = 0; step < probe_steps; step++) {
        if (!stream_probe_meet(p, ++round)) return;  // both start a step together
        double start = loom_probe_seconds();
        stream_probe_write(p->matrix + id * n / 2, n / 2, (float)step, step % 2);
        if (!stream_probe_meet(p, ++round)) return;
        sink += stream_probe_read(p->matrix, n);
        p->seconds[id][step] = loom_probe_seconds() - start;
    }
    (void)sink;
#else
    (void)p;
    (void)id;
#endif
}

double loom_stream_probe_ratio(struct loom_stream_probe *p) {
    if (!p || atomic_load(&p->failed) || atomic_load(&p->arrived) < 4 * probe_steps) return -1;
    double kinds[2][probe_steps / 2];  // [plain, streamed][step]: the slower thread's
    for (int step = 0; step < probe_steps; step++) {
        double a = p->seconds[0][step], b = p->seconds[1][step];
        kinds[step % 2][step / 2] = a > b ? a : b;
    }
    for (int k = 0; k < 2; k++) qsort(kinds[k], probe_steps / 2, sizeof(double), loom_probe_compare);
    double plain = kinds[0][probe_steps / 4], streamed = kinds[1][probe_steps / 4];
    return streamed > 0 ? plain / streamed : -1;
}
