#include "Dispatch.h"
#include <stdio.h>
#include <stdlib.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

static loom_isa detect(void) {
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return LOOM_ISA_BASELINE;
    int fma = (c >> 12) & 1, movbe = (c >> 22) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1,
        f16c = (c >> 29) & 1;
    if (!(fma && movbe && osxsave && avx && f16c)) return LOOM_ISA_BASELINE;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 0x6) != 0x6) return LOOM_ISA_BASELINE;  // the OS saves XMM and YMM state
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return LOOM_ISA_BASELINE;
    int bmi1 = (b >> 3) & 1, avx2 = (b >> 5) & 1, bmi2 = (b >> 8) & 1;
    int f = (b >> 16) & 1, dq = (b >> 17) & 1, cd = (b >> 28) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
    unsigned ea, eb, ec, ed;
    int lzcnt = __get_cpuid(0x80000001, &ea, &eb, &ec, &ed) && ((ec >> 5) & 1);
    if (!(avx2 && bmi1 && bmi2 && lzcnt)) return LOOM_ISA_BASELINE;
    // The OS saves the opmask and ZMM state too.
    if (f && dq && cd && bw && vl && (lo & 0xE6) == 0xE6) return LOOM_ISA_AVX512;
    return LOOM_ISA_AVX2;
#else
    return LOOM_ISA_BASELINE;
#endif
}

static int cached_cpu = -1, cached_kernel = -1;

loom_isa loom_cpu_isa(void) {
    if (cached_cpu < 0) cached_cpu = (int)detect();  // a benign race: every thread writes the same value
    return (loom_isa)cached_cpu;
}

loom_isa loom_kernel_isa(void) {
    if (cached_kernel < 0) {
        int isa = (int)loom_cpu_isa();
        const char *cap = getenv("LOOM_CPU_ISA");
        if (cap) {
            int limit = !strcmp(cap, "baseline") || !strcmp(cap, "sse2") ? LOOM_ISA_BASELINE
                        : !strcmp(cap, "avx2")                          ? LOOM_ISA_AVX2
                        : !strcmp(cap, "avx512")                        ? LOOM_ISA_AVX512
                                                                        : -1;
            if (limit < 0)
                fprintf(stderr, "loom: LOOM_CPU_ISA=%s is not one of baseline, avx2, avx512; using %s\n", cap,
                        loom_isa_name((loom_isa)isa));
            else if (limit < isa)
                isa = limit;
        }
        cached_kernel = isa;
    }
    return (loom_isa)cached_kernel;
}

loom_isa loom_set_kernel_isa(loom_isa isa) {
    loom_isa cpu = loom_cpu_isa();
    cached_kernel = (int)(isa < cpu ? isa : cpu);
    return (loom_isa)cached_kernel;
}

int loom_cpu_has_avx512_bf16(void) {
    static int cached = -1;
    if (cached < 0) {
        int has = 0;
#if defined(__x86_64__)
        unsigned a, b, c, d;
        // CPUID.(EAX=7, ECX=1):EAX bit 5 is AVX512_BF16; it needs the AVX-512 state saved.
        if (loom_cpu_isa() == LOOM_ISA_AVX512 && __get_cpuid_count(7, 1, &a, &b, &c, &d)) has = (a >> 5) & 1;
#endif
        cached = has;  // a benign race, as above
    }
    return cached && loom_kernel_isa() == LOOM_ISA_AVX512;
}

const char *loom_isa_name(loom_isa isa) {
    switch (isa) {
    case LOOM_ISA_AVX512: return "avx512";
    case LOOM_ISA_AVX2: return "avx2";
    default: return "baseline";
    }
}
