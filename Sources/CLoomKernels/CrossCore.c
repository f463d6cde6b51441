// How fast two CPUs hand data to each other (bench/cross_core_probe.c is the standalone
// version, with what it found): two threads pinned to two CPUs take turns rewriting one
// 256 KiB buffer (each turn reads and writes every line the other just wrote), the rate
// sampled every 10 ms; the median sample in GB/s.
//
// On the 2-vCPU Zen 4 machines Loom is measured on it has two levels that last seconds to
// minutes, ~60 GB/s with the two vCPUs on one L3 and ~20 GB/s with them on two, and a
// 2-thread step whose threads exchange data at every op follows it (the mlp's bf16 step by
// a third: docs/benchmarks.md); `loom bench` reports it beside each 2-thread figure.
#define _GNU_SOURCE
#include "Dispatch.h"
#include "Probe.h"
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

enum { probe_bytes = 256 * 1024, probe_slot_ms = 10 };

LOOM_INLINE void loom_probe_turn_body(float *x, int64_t n) {
    LOOM_SIMD
    for (int64_t i = 0; i < n; i++) x[i] += 1.0f;
}
LOOM_VARIANTS(loom_probe_turn, (float *x, int64_t n), (x, n))

struct probe {
    float *buffer;
    _Atomic long turns;  // even: the first thread's turn, odd: the second's
    _Atomic int stop, pinned, failed;
    int cpus[2];
};

struct player { struct probe *probe; int id; };

static void *probe_play(void *arg) {
    struct player *p = arg;
    struct probe *probe = p->probe;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(probe->cpus[p->id], &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0) {
        atomic_store(&probe->failed, 1);
        return NULL;
    }
    atomic_fetch_add(&probe->pinned, 1);
    while (!atomic_load_explicit(&probe->stop, memory_order_relaxed) && !atomic_load(&probe->failed)) {
        long t = atomic_load_explicit(&probe->turns, memory_order_acquire);
        if (t % 2 != p->id) continue;
        loom_probe_turn(probe->buffer, probe_bytes / (int64_t)sizeof(float));
        atomic_store_explicit(&probe->turns, t + 1, memory_order_release);
    }
    return NULL;
}

double loom_cross_core_gbps(double seconds) {
    struct probe probe = {.cpus = {-1, -1}};
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return -1;
    for (int c = 0, k = 0; c < CPU_SETSIZE && k < 2; c++)
        if (CPU_ISSET(c, &allowed)) probe.cpus[k++] = c;
    if (probe.cpus[1] < 0) return -1;
    probe.buffer = aligned_alloc(64, probe_bytes);
    if (!probe.buffer) return -1;
    memset(probe.buffer, 0, probe_bytes);
    pthread_t threads[2];
    struct player players[2] = {{&probe, 0}, {&probe, 1}};
    int started = 0;
    for (; started < 2; started++)
        if (pthread_create(&threads[started], NULL, probe_play, &players[started]) != 0) break;
    int slots = (int)(seconds * 1000 / probe_slot_ms);
    if (slots < 1) slots = 1;
    double *rates = malloc(sizeof(double) * (size_t)slots);
    int taken = 0;
    if (started == 2 && rates) {
        while (atomic_load(&probe.pinned) < 2 && !atomic_load(&probe.failed)) usleep(100);
        for (; taken < slots && !atomic_load(&probe.failed); taken++) {
            long before = atomic_load(&probe.turns);
            double t0 = loom_probe_seconds(), end = t0 + probe_slot_ms * 1e-3;
            while (loom_probe_seconds() < end) usleep(1000);
            rates[taken] = (double)(atomic_load(&probe.turns) - before) * probe_bytes / (loom_probe_seconds() - t0) / 1e9;
        }
    }
    atomic_store(&probe.stop, 1);
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
    double median = -1;
    if (started == 2 && rates && !atomic_load(&probe.failed) && taken == slots) {
        qsort(rates, (size_t)slots, sizeof(double), loom_probe_compare);
        median = rates[slots / 2];
    }
    free(rates);
    free(probe.buffer);
    return median;
}
