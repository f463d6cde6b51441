import Foundation
import LoomCore
import LoomDistributed

/// One benchmark result, as `loom bench --json` prints it.
public struct BenchResult: Sendable, Encodable {
    public var workload: String
    public var perSecond: Double
    public var unit: String
    /// GEMM FLOPs issued per second of step time (counted by the backend, 2mnk per GEMM).
    public var gflops: Double
    /// sgemm GFLOP/s measured on this machine with the same threads.
    public var peakGflops: Double
    public var stepMilliseconds: Double
    /// Share of step time spent inside GEMM calls (linear layers, the LM head); the rest
    /// is in `timeShare`.
    public var gemmFraction: Double?
    /// Where a step's time goes on the CPU: the share of each kernel class (`KernelClass`:
    /// gemm, attention, convolution, elementwise, softmax, norm, …) and "other", the rest
    /// (autodiff bookkeeping, allocation, the data). Classes that took no time are left out.
    public var timeShare: [String: Double]?
    /// The vector width of the CPU's C kernels (`avx512`, `avx2`, `baseline`), the GEMM
    /// library (`onednn`, `openblas`), and the processor's name.
    public var kernels: String?
    public var gemmLibrary: String?
    public var processor: String?
    /// CPU threads (0 on a GPU).
    public var threads: Int
    /// The backend the workload ran on (`cpu(2 threads)`, `cuda:0 (NVIDIA H100 …, sm_90)`).
    public var device: String
    /// The precision of matrix products (`float32` or `bf16`).
    public var precision: Precision = .float32
    /// bf16 on the CPU: which kernels its products ran on (`onednn (avx512_core_bf16)`,
    /// or `widened to float32` where the processor has no bf16 instructions).
    public var bf16GEMM: String?
    /// Where bf16 convolutions ran (CPU, --precision bf16).
    public var bf16Convolution: String?
    /// The most bytes of tensors alive at once during the timed steps (model, optimizer
    /// state, activations and gradients), as PyTorch's max_memory_allocated.
    public var peakBytes: Int = 0
    /// `peakBytes` by what the bytes held at that moment: parameters, gradients,
    /// optimizer state, activations (with temporaries and inputs) and communication
    /// buffers (gradient buckets); `heldSplit` likewise for `heldBytes`.
    public var peakSplit: MemorySplit?
    public var heldSplit: MemorySplit?
    public var loss: Float
    /// Data parallel runs: ranks, and throughput over ranks x one single-threaded rank.
    public var ranks: Int = 1
    /// Data parallel runs: the ZeRO stage, and the most bytes of tensors any rank held
    /// between steps (its model states: parameters, gradients, optimizer state, and
    /// buffers such as gradient buckets); `peakBytes` is then any rank's peak in a step
    /// (those plus activations, gathered units and transient buffers).
    public var zero: Int?
    public var heldBytes: Int?
    public var scalingEfficiency: Double?
    /// How it was timed: untimed warm-up steps, then `repeats` timed runs of the same
    /// steps; `perSecond` is their median, `runsPerSecond` each run's figure in order.
    public var warmup = 0
    public var runsPerSecond: [Double] = []
    /// CPU, 2 or more threads: how fast the first two CPUs handed data to each other
    /// (`CrossCoreRate`, GB/s) before the warm-up and after the timed runs. A 2-thread step
    /// follows it; on a 2-vCPU cloud machine it can change from run to run (docs/benchmarks.md).
    public var crossCoreGbps: [Double]?
    /// CPU, 2 or more threads, where results every thread reads were considered for streaming
    /// past the caches (`StreamedHandOvers`): its measurements during the warm-up and timed
    /// runs, how many chose streaming, and the last one's ratio (plain stores' time over
    /// streamed ones').
    public var streamedHandOvers: StreamedHandOvers.Checks?
    /// CPU, 2 or more threads, where `LOOM_STREAM_STORES` set the choice by hand: "always" or "never".
    public var streamStores: String?

    enum CodingKeys: String, CodingKey {
        case workload, perSecond = "per_s", unit, gflops, peakGflops = "peak_gflops", stepMilliseconds = "step_ms"
        case gemmFraction = "gemm_fraction", threads, device, precision, peakBytes = "peak_bytes", loss, ranks, scalingEfficiency = "scaling_efficiency"
        case timeShare = "time_share", kernels, gemmLibrary = "gemm_library", processor, bf16GEMM = "bf16_gemm", bf16Convolution = "bf16_convolution"
        case warmup, repeats, runsPerSecond = "runs_per_s", zero, heldBytes = "held_bytes"
        case peakSplit = "peak_split", heldSplit = "held_split", crossCoreGbps = "cross_core_gbps"
        case streamChecks = "stream_checks", streamRatio = "stream_ratio", streamStores = "stream_stores"
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(workload, forKey: .workload)
        try c.encode(rounded(perSecond, 1), forKey: .perSecond)
        try c.encode(unit, forKey: .unit)
        try c.encode(rounded(gflops, 1), forKey: .gflops)
        try c.encode(rounded(peakGflops, 1), forKey: .peakGflops)
        try c.encode(rounded(stepMilliseconds, 3), forKey: .stepMilliseconds)
        try c.encodeIfPresent(gemmFraction.map { rounded($0, 3) }, forKey: .gemmFraction)
        try c.encodeIfPresent(timeShare?.mapValues { rounded($0, 3) }, forKey: .timeShare)
        try c.encodeIfPresent(kernels, forKey: .kernels)
        try c.encodeIfPresent(gemmLibrary, forKey: .gemmLibrary)
        try c.encodeIfPresent(processor, forKey: .processor)
        try c.encode(threads, forKey: .threads)
        try c.encode(warmup, forKey: .warmup)
        try c.encode(runsPerSecond.count, forKey: .repeats)
        try c.encode(runsPerSecond.map { rounded($0, 1) }, forKey: .runsPerSecond)
        try c.encodeIfPresent(crossCoreGbps?.map { rounded($0, 1) }, forKey: .crossCoreGbps)
        if let s = streamedHandOvers {
            try c.encode([s.streamed, s.measurements], forKey: .streamChecks)
            try c.encodeIfPresent(s.lastRatio.map { rounded($0, 2) }, forKey: .streamRatio)
        }
        try c.encodeIfPresent(streamStores, forKey: .streamStores)
        try c.encode(device, forKey: .device)
        try c.encode(precision.rawValue, forKey: .precision)
        try c.encodeIfPresent(bf16GEMM, forKey: .bf16GEMM)
        try c.encodeIfPresent(bf16Convolution, forKey: .bf16Convolution)
        try c.encode(peakBytes, forKey: .peakBytes)
        try c.encodeIfPresent(peakSplit?.named, forKey: .peakSplit)
        try c.encode(loss, forKey: .loss)
        if let scalingEfficiency {
            try c.encode(ranks, forKey: .ranks)
            try c.encode(rounded(scalingEfficiency, 3), forKey: .scalingEfficiency)
        }
        try c.encodeIfPresent(zero, forKey: .zero)
        try c.encodeIfPresent(heldBytes, forKey: .heldBytes)
        try c.encodeIfPresent(heldSplit?.named, forKey: .heldSplit)
    }

    /// One line of `loom bench --json`.
    public var json: String { JSONOutput.string(self) }
}

public enum Bench {
    /// Data parallel throughput with `ranks` in-process ranks of one thread each, each
    /// training the workload's batch (so the global batch is ranks x the workload's),
    /// against one single-threaded rank alone: efficiency = per_s / (ranks x single).
    /// `zero`: the ZeRO stage of the ranks; each rank's tensors are metered, and the
    /// result gives the most any rank held between steps and at its peak in a step.
    public static func runDataParallel(_ workload: Workload, ranks: Int, zero: Int = 0, steps: Int = 30, warmup: Int = 5,
                                       repeats: Int = 1) throws -> BenchResult {
        let one = CPUBackend(threads: 1)
        let single = try run(workload, backend: one, steps: steps, warmup: warmup, repeats: repeats, peak: peakGflops(on: one))
        let timings = try InProcessWorld.run(size: ranks) { comm -> (runs: [Double], loss: Float, held: MemorySplit, peak: MemorySplit) in
            let meter = MemoryMeter()
            return try MemoryMeter.measuring(meter) {
                let backend = CPUBackend(threads: 1)
                let step = try workload.makeStep(on: backend, communicator: comm, zero: zero)
                var loss: Float = 0
                for _ in 0..<warmup { loss = try step().item }
                let held = meter.liveSplit
                meter.resetPeak()
                var runs: [Double] = []
                for _ in 0..<repeats {
                    try comm.barrier()
                    let t0 = monotonicSeconds()
                    loss = try timedSteps(steps, step)
                    try comm.barrier()
                    runs.append(monotonicSeconds() - t0)
                }
                return (runs, loss, held, meter.peakSplit)
            }
        }
        let seconds = timings[0].runs.sorted()[timings[0].runs.count / 2]
        let perSecond = Double(ranks * workload.itemsPerStep * steps) / seconds
        var r = single
        r.perSecond = perSecond
        r.stepMilliseconds = 1000 * seconds / Double(steps)
        r.gflops = single.gflops * perSecond / single.perSecond  // same GEMM work per item
        r.gemmFraction = nil
        r.timeShare = nil
        r.peakGflops = peakGflops(on: CPUBackend(threads: ranks))  // the ceiling of all the threads the run used
        r.ranks = ranks
        r.threads = 1
        r.loss = timings[0].loss
        r.scalingEfficiency = perSecond / (Double(ranks) * single.perSecond)
        r.zero = zero
        // The rank that held the most, and the one whose step peaked highest.
        let held = timings.map(\.held).max { $0.total < $1.total }, peak = timings.map(\.peak).max { $0.total < $1.total }
        r.heldBytes = held?.total
        r.heldSplit = held
        r.peakBytes = peak?.total ?? 0
        r.peakSplit = peak
        r.runsPerSecond = timings[0].runs.map { Double(ranks * workload.itemsPerStep * steps) / $0 }
        return r
    }

    /// Best-of-5 GFLOP/s of one n×n×n sgemm on `backend` (the machine's GEMM ceiling).
    public static func peakGflops(on backend: any Backend, n: Int = 1024) -> Double {
        let a = Tensor(repeating: 1, shape: [n, n], on: backend), b = Tensor(repeating: 1, shape: [n, n], on: backend)
        let c = Tensor(repeating: 0, shape: [n, n], on: backend)
        var best = Double.infinity
        for _ in 0..<6 {
            let t0 = monotonicSeconds()
            backend.gemm(GEMMOperand(a, ld: n), GEMMOperand(b, ld: n), GEMMOperand(c, ld: n), m: n, n: n, k: n, batch: 1, alpha: 1, beta: 0)
            backend.synchronize()
            best = min(best, monotonicSeconds() - t0)
        }
        return 2 * Double(n * n * n) / best / 1e9
    }

    /// `steps` steps, timed as the references time theirs (a jitted JAX step, PyTorch's
    /// eager step): each step's loss is left unread but the last's, so a device backend
    /// starts a step while the host records the next; reading the last loss waits for
    /// all of them. Returns that loss.
    static func timedSteps(_ steps: Int, _ step: () throws -> Tensor) throws -> Float {
        var last: Tensor?
        for _ in 0..<steps { last = try step() }
        return last?.item ?? 0
    }

    /// Times `steps` training steps after `warmup` untimed ones (each reading its loss);
    /// reports the median of `repeats` timed runs (and each run). Every step's device work
    /// is inside the timing (`timedSteps`, then `synchronize`). The GEMM share of the step
    /// is known on the CPU only (a GPU's GEMM time is on the device).
    public static func run(_ workload: Workload, backend: any Backend, steps: Int = 30, warmup: Int = 5, repeats: Int = 1,
                           peak: Double, precision: Precision = .float32) throws -> BenchResult {
        let meter = MemoryMeter()
        let plainStep = try MemoryMeter.measuring(meter) { try workload.makeStep(on: backend) }
        let step = { try withPrecision(precision) { try plainStep() } }
        let counter = backend as? GEMMCounting, cpu = backend as? CPUBackend
        let probing = (cpu?.threads ?? 1) > 1
        let rateBefore = probing ? CrossCoreRate.measure() : nil
        let checksBefore = cpu?.handOvers.record
        var loss: Float = 0
        var runs: [(seconds: Double, flops: Double, kernels: [Double]?)] = []
        try MemoryMeter.measuring(meter) {
            for _ in 0..<warmup { loss = try step().item }
            for _ in 0..<repeats {
                counter?.resetCounters()
                let t0 = monotonicSeconds()
                loss = try timedSteps(steps, step)
                backend.synchronize()
                runs.append((monotonicSeconds() - t0, counter?.gemmFlops ?? 0, cpu?.kernelSeconds))
            }
        }
        let median = runs.sorted { $0.seconds < $1.seconds }[runs.count / 2]
        var result = BenchResult(workload: workload.rawValue, perSecond: Double(workload.itemsPerStep * steps) / median.seconds,
                                 unit: workload.unit, gflops: median.flops / median.seconds / 1e9, peakGflops: peak,
                                 stepMilliseconds: 1000 * median.seconds / Double(steps),
                                 gemmFraction: median.kernels.map { $0[KernelClass.gemm.rawValue] / median.seconds },
                                 threads: cpu?.threads ?? 0, device: backend.name, precision: precision, peakBytes: meter.peakBytes, loss: loss)
        result.peakSplit = meter.peakSplit
        result.warmup = warmup
        result.runsPerSecond = runs.map { Double(workload.itemsPerStep * steps) / $0.seconds }
        if let before = checksBefore, let after = cpu?.handOvers.record, after.measurements > before.measurements {
            result.streamedHandOvers = after.since(before)
        }
        if let cpu, cpu.threads > 1, cpu.handOvers.mode != .measured { result.streamStores = cpu.handOvers.mode.rawValue }
        if let before = rateBefore, let after = CrossCoreRate.measure() { result.crossCoreGbps = [before, after] }
        if let seconds = median.kernels {
            var shares: [String: Double] = [:]
            for kind in KernelClass.allCases where seconds[kind.rawValue] > 0 { shares[kind.name] = seconds[kind.rawValue] / median.seconds }
            shares["other"] = max(0, 1 - shares.values.reduce(0, +))
            result.timeShare = shares
            result.kernels = CPUBackend.kernelISA
            result.gemmLibrary = CPUBackend.gemmLibrary
            result.processor = CPUInfo.modelName
            if precision == .bfloat16 {
                result.bf16GEMM = BF16GEMMPath.description
                result.bf16Convolution = OneDNNConvolution.bf16Description
            }
        }
        return result
    }
}

/// The processor, as /proc/cpuinfo names it (nil where there is no such file).
public enum CPUInfo {
    public static let modelName: String? = {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("model name") {
            return line.split(separator: ":", maxSplits: 1).last.map { $0.trimmingCharacters(in: .whitespaces) }
        }
        return nil
    }()
}
