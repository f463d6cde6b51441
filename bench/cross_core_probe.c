// How fast two cores hand data to each other: two threads, pinned to two CPUs, take turns
// rewriting one 256 KiB buffer (each turn reads and writes every line the other just wrote),
// sampled every 50 ms; prints the median rate as one JSON line.
//
// On the 2-vCPU cloud machines Loom is measured on, the rate has two levels that last for
// seconds at a time: ~60 GB/s when the two vCPUs share an L3 and ~20 GB/s when the host has
// put them on different CCDs (each handed line crosses the fabric). A training step whose
// threads exchange data at every op slows with it (Loom's bf16 mlp step at 2 threads by
// about a third, docs/benchmarks.md), so bench/compare_cpu.py --probe runs this before every
// run and records the rate beside it. Pure compute on each core does not see it.
//
//   cc -O3 -march=native -pthread bench/cross_core_probe.c -o /tmp/cross_core_probe   (vector loads: the
//   levels stand apart; plain SSE2 code is itself the limit nearer the fast level)
//   /tmp/cross_core_probe [seconds=1] [cpu_a=first allowed] [cpu_b=second allowed] [--trace]
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { bufferBytes = 256 * 1024, slotMs = 50, maxSlots = 20 * 600 };

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static float *buffer;
static _Atomic long turns;  // even: thread 0's turn, odd: thread 1's
static _Atomic int stop;

struct player { int id, cpu; };

static void *play(void *arg) {
    struct player *p = arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(p->cpu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0) {
        fprintf(stderr, "cross_core_probe: cannot pin a thread to CPU %d\n", p->cpu);
        exit(2);
    }
    const long n = bufferBytes / sizeof(float);
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        long t = atomic_load_explicit(&turns, memory_order_acquire);
        if (t % 2 != p->id) continue;
        for (long i = 0; i < n; i++) buffer[i] += 1.0f;
        atomic_store_explicit(&turns, t + 1, memory_order_release);
    }
    return NULL;
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    double seconds = 1;
    int cpus[2] = {-1, -1}, given = 0, trace = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--trace") == 0) trace = 1;
        else if (i == 1) seconds = atof(argv[i]);
        else if (given < 2) cpus[given++] = atoi(argv[i]);
    }
    if (!(seconds > 0) || seconds * 1000 / slotMs > maxSlots) {
        fprintf(stderr, "cross_core_probe: seconds must be in (0, %d], not %s\n", maxSlots * slotMs / 1000, argv[1]);
        return 2;
    }
    cpu_set_t allowed;
    sched_getaffinity(0, sizeof allowed, &allowed);
    for (int c = 0, k = given; c < CPU_SETSIZE && k < 2; c++)
        if (CPU_ISSET(c, &allowed) && c != cpus[0]) cpus[k++] = c;
    if (cpus[0] < 0 || cpus[1] < 0 || cpus[0] == cpus[1]) {
        fprintf(stderr, "cross_core_probe: needs two different CPUs (allowed here: %d)\n", CPU_COUNT(&allowed));
        return 2;
    }
    buffer = aligned_alloc(64, bufferBytes);
    memset(buffer, 0, bufferBytes);

    pthread_t threads[2];
    struct player players[2] = {{0, cpus[0]}, {1, cpus[1]}};
    for (int i = 0; i < 2; i++) pthread_create(&threads[i], NULL, play, &players[i]);
    int slots = (int)(seconds * 1000 / slotMs);
    if (slots < 1) slots = 1;
    double *rates = malloc(sizeof(double) * slots), start = now();
    for (int s = 0; s < slots; s++) {
        long before = atomic_load(&turns);
        double t0 = now(), end = start + (s + 1) * slotMs * 1e-3;
        while (now() < end) usleep(1000);
        rates[s] = (double)(atomic_load(&turns) - before) * bufferBytes / (now() - t0) / 1e9;
        if (trace) printf("%.2f %.2f\n", now() - start, rates[s]);
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 2; i++) pthread_join(threads[i], NULL);
    qsort(rates, slots, sizeof(double), compare);
    printf("{\"cross_core_gbps\": %.2f, \"cpus\": [%d, %d], \"seconds\": %g}\n", rates[slots / 2], cpus[0], cpus[1], seconds);
    free(rates);
    free(buffer);
    return 0;
}
