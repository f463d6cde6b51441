// What the two hardware probes (CrossCore.c, StreamProbe.c) share: a monotonic clock in
// seconds and the comparison their medians sort by.
#ifndef LOOM_PROBE_H
#define LOOM_PROBE_H

#include <time.h>

static inline double loom_probe_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

// For qsort over doubles, ascending.
static inline int loom_probe_compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#endif
