// Times one StableHLO program on a PJRT plugin through Loom's shim (Sources/CPJRT): every
// parameter a zero-filled buffer, the program run N times after 5 warm-up runs, outputs
// freed, nothing donated. For comparing programs on the same XLA: Loom's (LOOM_XLA_DUMP=dir)
// and JAX's (bench/jax_export.py).
//
//   cc -O2 -I Sources/CPJRT/include bench/pjrt_time.c Sources/CPJRT/PJRT.c -ldl -o /tmp/pjrt_time
//   /tmp/pjrt_time $LOOM_PJRT_PLUGIN program.mlir 300
#include "loom_pjrt.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static void check(char *e) { if (e) { fprintf(stderr, "%s\n", e); exit(1); } }

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: %s plugin.so program.mlir runs\n", argv[0]); return 2; }
    FILE *f = fopen(argv[2], "r");
    if (!f) { perror(argv[2]); return 1; }
    fseek(f, 0, SEEK_END); long n = ftell(f); rewind(f);
    char *code = malloc(n + 1);
    if (fread(code, 1, n, f) != (size_t)n) return 1;
    code[n] = 0;
    LoomPJRT *p;
    check(loom_pjrt_open(argv[1], &p));
    void *exe; size_t outputs;
    check(loom_pjrt_compile(p, code, n, &exe, &outputs));
    // The parameters' types, "tensor<AxBxf32>", between "@main(" and the first ')'.
    void *args[1024]; size_t nargs = 0;
    char *s = strstr(code, "@main("), *end = strchr(s, ')');
    while ((s = strstr(s, "tensor<")) && s < end) {
        s += 7;
        int64_t dims[8]; size_t rank = 0; long count = 1;
        for (char *q; rank < 8 && (dims[rank] = strtol(s, &q, 10), q != s && *q == 'x'); s = q + 1) count *= dims[rank++];
        int type = strncmp(s, "i32", 3) == 0 || strncmp(s, "si32", 4) == 0 ? LOOM_PJRT_S32 : strncmp(s, "ui32", 4) == 0 ? LOOM_PJRT_U32 : LOOM_PJRT_F32;
        void *zeros = calloc(count + 1, 4);
        check(loom_pjrt_buffer_from_host(p, 0, zeros, type, dims, rank, &args[nargs++]));
        free(zeros);
    }
    void **outs = calloc(outputs, sizeof *outs);
    int runs = atoi(argv[3]);
    double t0 = 0;
    for (int r = -5; r < runs; r++) {
        if (r == 0) t0 = now();
        check(loom_pjrt_execute(p, exe, 0, args, nargs, NULL, outs, outputs, NULL));
        for (size_t i = 0; i < outputs; i++) loom_pjrt_buffer_destroy(p, outs[i]);
    }
    printf("%s: %zu parameters, %zu results, %.3f ms per run (%d runs)\n", argv[2], nargs, outputs, (now() - t0) / runs * 1e3, runs);
    return 0;
}
