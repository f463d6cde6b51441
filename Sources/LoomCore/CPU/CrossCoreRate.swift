import CLoomKernels

/// How fast two of this process's CPUs hand data to each other, in GB/s (`CrossCore.c`): two
/// threads pinned to the first two allowed CPUs take turns rewriting one 256 KiB buffer.
///
/// A 2-thread step whose threads pass each op's output to the next op's other thread runs at
/// the speed this allows. On the 2-vCPU Zen 4 machines Loom is measured on it has two levels,
/// each lasting seconds to minutes: ~60 GB/s with the two vCPUs on one L3 and ~20 GB/s with
/// them on two, and the mlp's bf16 step at 2 threads is a third slower at the second
/// (docs/benchmarks.md). `loom bench` reports it before and after each run of 2 or more threads.
public enum CrossCoreRate {
    /// The median of 10 ms samples over `seconds`; nil with fewer than two CPUs allowed, or
    /// where a thread cannot be pinned.
    public static func measure(seconds: Double = 0.3) -> Double? {
        let rate = loom_cross_core_gbps(seconds)
        return rate > 0 ? rate : nil
    }
}
