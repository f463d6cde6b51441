// Another tenant on one core, to measure how a step at 2 threads fares when one of its cores
// is slowed (ThreadSpeeds, docs/benchmarks.md): busy for ON microseconds, asleep for OFF, for
// SECONDS in all. Pinned to a core with taskset; the scheduler then gives Loom's thread on that
// core about OFF / (ON + OFF) of it.
//
//   /opt/swift/usr/bin/clang -O2 bench/busy_tenant.c -o /tmp/busy_tenant
//   taskset -c 1 /tmp/busy_tenant 200 200 20 &
//   .build/release/loom bench --workload gpt --threads 2 --precision bf16
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: busy_tenant ON_US OFF_US SECONDS\n");
        return 2;
    }
    double on = atof(argv[1]) * 1e-6, off = atof(argv[2]) * 1e-6, end = now() + atof(argv[3]);
    struct timespec pause = {0, (long)(off * 1e9)};
    volatile double x = 0;
    while (now() < end) {
        for (double t = now(); now() - t < on;) x += 1;
        nanosleep(&pause, NULL);
    }
    return 0;
}
