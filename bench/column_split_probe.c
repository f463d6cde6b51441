// Whether an elementwise op on a short, wide activation should split it as the product
// before it did: two threads pinned to two CPUs write a [128, 512] float32 matrix (as a
// product would: each thread its half of the rows, or its half of the columns), then each
// computes ReLU of its share into a second matrix, by rows (a contiguous half of the
// elements) or by columns (its half of every row, 1 KiB runs), and so on, step after step;
// and, as a weight's bf16 copy is used (rewritten by rows, each thread its own, and read
// whole by both products), written by rows and summed whole by both, and the same written
// with non-temporal stores (past the writer's caches, as Loom stores such results: a sixth
// pairing, "streamed rows"). Prints, for each
// pairing, the median time of the write and of the read (the slower thread's, in µs) as one
// JSON line.
//
// Measured on a 2-vCPU Zen 4 (docs/benchmarks.md): writing or reading by columns took 4–8×
// as long as by rows with the two vCPUs on one L3 and 15–25× with them on two, even where
// each thread touched only the columns it wrote, so Loom's elementwise ops stay split by
// rows after a product split by columns (whose C is written the slow way). Streamed, the
// write of lines the other thread read took ~9 µs near and ~6 far instead of ~15 and ~57,
// and the read ~9 and ~13 instead of ~5 and ~11 (from memory).
//
//   cc -O3 -march=native -pthread bench/column_split_probe.c -o /tmp/column_split_probe
//   /tmp/column_split_probe [iterations=20000] [cpu_a=first allowed] [cpu_b=second allowed]
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

enum { rows = 128, cols = 512 };

static float *y, *z;
static double *times[2], *writes[2];
static int iterations, writeByColumns, readByColumns, streamed, cpus[2];
static _Atomic int arrived;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void barrier(int *generation) {
    int g = ++*generation;
    atomic_fetch_add(&arrived, 1);
    while (atomic_load(&arrived) < 2 * g) {}
}

// Rows [r0, r1), columns [c0, c1) of f.
static void write_part(float *f, int r0, int r1, int c0, int c1, int step) {
    for (int r = r0; r < r1; r++)
        for (int c = c0; c < c1; c++) f[r * cols + c] = (float)(r - c + step);
}

// Whole rows [r0, r1) of f with non-temporal stores, where the compiler has them (AVX).
static void stream_rows(float *f, int r0, int r1, int step) {
#if defined(__AVX__)
    const __m256 lanes = _mm256_set_ps(7, 6, 5, 4, 3, 2, 1, 0);
    for (int r = r0; r < r1; r++)
        for (int c = 0; c < cols; c += 8)  // the values write_part gives: r - c + step at column c
            _mm256_stream_ps(f + r * cols + c, _mm256_sub_ps(_mm256_set1_ps((float)(r - c + step)), lanes));
    _mm_sfence();
#else
    write_part(f, r0, r1, 0, cols, step);
#endif
}

__attribute__((noinline)) static float sum(const float *x, int n) {  // 16 lanes: a read, not a chain of adds
    float s[16] = {0};
    for (int i = 0; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) s[j] += x[i + j];
    for (int j = 1; j < 16; j++) s[0] += s[j];
    return s[0];
}
static volatile float sink;

__attribute__((noinline)) static void relu(const float *restrict x, float *restrict out, int n) {
    for (int i = 0; i < n; i++) out[i] = x[i] > 0 ? x[i] : 0;
}

static void *run(void *arg) {
    int t = (int)(long)arg, generation = 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpus[t], &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0) {
        fprintf(stderr, "column_split_probe: cannot pin a thread to CPU %d\n", cpus[t]);
        exit(2);
    }
    for (int i = 0; i < iterations; i++) {
        double written = now();
        if (streamed) stream_rows(y, t * rows / 2, (t + 1) * rows / 2, i);
        else if (writeByColumns) write_part(y, 0, rows, t * cols / 2, (t + 1) * cols / 2, i);
        else write_part(y, t * rows / 2, (t + 1) * rows / 2, 0, cols, i);
        writes[t][i] = now() - written;
        barrier(&generation);
        double start = now();
        if (readByColumns == 2) {
            sink = sum(y, rows * cols);
        } else if (readByColumns) {
            for (int r = 0; r < rows; r++) relu(y + r * cols + t * cols / 2, z + r * cols + t * cols / 2, cols / 2);
        } else {
            relu(y + t * rows * cols / 2, z + t * rows * cols / 2, rows * cols / 2);
        }
        times[t][i] = now() - start;
        barrier(&generation);
    }
    return NULL;
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, w = *(const double *)b;
    return (x > w) - (x < w);
}

int main(int argc, char **argv) {
    iterations = argc > 1 ? atoi(argv[1]) : 20000;
    if (iterations < 1) {
        fprintf(stderr, "column_split_probe: iterations must be at least 1, not %s\n", argv[1]);
        return 2;
    }
    cpus[0] = cpus[1] = -1;
    for (int i = 2; i < argc && i < 4; i++) cpus[i - 2] = atoi(argv[i]);
    cpu_set_t allowed;
    sched_getaffinity(0, sizeof allowed, &allowed);
    for (int c = 0, k = (cpus[0] >= 0) + (cpus[1] >= 0); c < CPU_SETSIZE && k < 2; c++)
        if (CPU_ISSET(c, &allowed) && c != cpus[0]) cpus[k++] = c;
    if (cpus[0] < 0 || cpus[1] < 0 || cpus[0] == cpus[1]) {
        fprintf(stderr, "column_split_probe: needs two different CPUs (allowed here: %d)\n", CPU_COUNT(&allowed));
        return 2;
    }
    y = aligned_alloc(64, rows * cols * sizeof(float));
    z = aligned_alloc(64, rows * cols * sizeof(float));
    for (int t = 0; t < 2; t++) {
        times[t] = malloc(sizeof(double) * iterations);
        writes[t] = malloc(sizeof(double) * iterations);
    }
    const char *names[4] = {"rows", "columns", "both, whole", "streamed rows"};
    enum { modes = 6 };  // (write, read): by rows or columns each, then rows and whole, then streamed rows and whole
    double relu[modes], write[modes];
    for (int mode = 0; mode < modes; mode++) {
        writeByColumns = mode >= 4 ? 0 : mode / 2;
        readByColumns = mode >= 4 ? 2 : mode % 2;
        streamed = mode == 5;
        atomic_store(&arrived, 0);
        pthread_t threads[2];
        for (long t = 0; t < 2; t++) pthread_create(&threads[t], NULL, run, (void *)t);
        for (int t = 0; t < 2; t++) pthread_join(threads[t], NULL);
        for (int i = 0; i < iterations; i++) {
            times[0][i] = times[0][i] > times[1][i] ? times[0][i] : times[1][i];
            writes[0][i] = writes[0][i] > writes[1][i] ? writes[0][i] : writes[1][i];
        }
        qsort(times[0], iterations, sizeof(double), compare);
        qsort(writes[0], iterations, sizeof(double), compare);
        relu[mode] = times[0][iterations / 2] * 1e6;
        write[mode] = writes[0][iterations / 2] * 1e6;
    }
    for (int k = 0; k < 2; k++) {
        printf(k ? ", \"read_us\": {" : "{\"cpus\": [%d, %d], \"write_us\": {", cpus[0], cpus[1]);
        for (int mode = 0; mode < modes; mode++)
            printf("%s\"written by %s, read by %s\": %.2f", mode ? ", " : "", names[mode == 5 ? 3 : mode == 4 ? 0 : mode / 2],
                   names[mode >= 4 ? 2 : mode % 2], k ? relu[mode] : write[mode]);
        printf("}");
    }
    printf("}\n");
    for (int t = 0; t < 2; t++) {
        free(times[t]);
        free(writes[t]);
    }
    free(y);
    free(z);
    return 0;
}
