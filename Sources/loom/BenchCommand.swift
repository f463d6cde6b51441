import ArgumentParser
import Foundation
import LoomCore
import LoomDistributed
import LoomParallel
import LoomTrain
import LoomXLA

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Train the reference workloads (mlp, cnn, gpt, resnet20) and report throughput and GFLOP/s.",
        discussion: """
        Each workload trains on a fixed random batch with the shapes, batch sizes and optimizers of \
        the PyTorch/JAX references: mlp 784-512-512-10 (batch 128, SGD momentum), cnn two 5x5 convs \
        (batch 64, SGD momentum), gpt 4 layers d128 context 128 (16 sequences, AdamW), resnet20 \
        ResNet-20 on 3x32x32 images (batch 128, SGD momentum, batch norm in training mode). \
        GFLOP/s counts the GEMM work the backend issued; peak is a 1024^3 sgemm on the same threads. \
        On the CPU each line is followed by where the step's time went, by kernel class (gemm, \
        attention, convolution, elementwise, softmax, norm, ...; --json: time_share), and the \
        header names the processor, the kernels' vector width and the GEMM library. With 2 or \
        more threads, the rate at which the first two CPUs hand data to each other is measured \
        before and after each workload (--json: cross_core_gbps): a 2-thread step follows it, \
        and on a cloud machine whose vCPUs the host moves between L3s it changes from run to run. \
        The line after says in how many of the backend's checks results both threads read were \
        stored past the caches (non-temporal stores, chosen while plain stores measure 1.5x as \
        slow; --json: stream_checks [streamed, checks], stream_ratio), or always or never where \
        LOOM_STREAM_STORES=always|never sets it (--json: stream_stores). \
        LOOM_CPU_ISA=baseline|avx2 caps the kernels' width; LOOM_GEMM=openblas|onednn picks \
        the GEMM library (default: oneDNN with AVX-512, else OpenBLAS). With --precision bf16 \
        the header says where the bf16 products ran: Loom's AVX512-BF16 kernel where the \
        processor has vdpbf16ps, oneDNN's bf16 kernels where it has AMX, else widened to \
        float32 (LOOM_BF16_GEMM=kernel|onednn|widen chooses), and the convolutions: oneDNN's \
        bf16 kernels, or float32 where there are none. A timed run reads only its last step's \
        loss, as the references do: on --device xla each step's program runs while the host \
        records the next (the xla line: programs compiled, and the time writing, starting and \
        waiting for them).

        Examples:
          loom bench
          loom bench --workload gpt --threads 1 --json
          loom bench --repeats 3         # the median of 3 timed runs (as bench/compare_cpu.py runs it)
          loom bench generate            # tokens/s and ms per token over the KV cache
        """
    )

    @Argument(help: "comm: all-reduce bandwidth (run under loom launch for MPI); generate: generation over the KV cache. Neither: the training workloads.")
    var suite: String?

    @Option(help: "Workload to run: mlp, cnn, gpt, resnet20, gpt2 or all (the first four).")
    var workload: String = "all"

    @Option(help: "Data parallel ranks (in-process, one thread each): reports scaling efficiency; for comm, in-process ranks when not under mpirun.")
    var dp: Int?
    @Option(help: "ZeRO stage of the --dp ranks (0-3): reports each rank's bytes held between steps and its peak in a step, split into parameters, gradients, optimizer state, communication buffers and activations.")
    var zero: Int = 0

    @Option(help: "Pipeline stages (in-process, one thread each; gpt workload): reports measured and theoretical bubble.")
    var pp: Int?
    @Option(name: .customLong("micro-batches"), help: "Micro-batches per step with --pp.")
    var microBatches: Int = 8
    @Option(help: "Pipeline schedule with --pp: gpipe, 1f1b or interleaved (2 chunks per stage).")
    var schedule: Schedule.Kind = .oneFOneB
    @Option(help: "With --pp: write a Chrome trace (Perfetto) of the last step to this file.")
    var trace: String?

    @Option(help: "CPU threads for Loom's kernels and OpenBLAS (default: all cores or LOOM_THREADS).")
    var threads: Int?

    @Option(help: "Matrix products and convolutions: float32, or bf16 (bf16 operands, float32 accumulation), as loom train --precision.")
    var precision: Precision = .float32

    @Option(help: "Timed steps per run.")
    var steps: Int = 30

    @Option(help: "Timed runs after the 5 warm-up steps; the median is reported (--json: runs_per_s lists each). bench/compare_cpu.py gives its peers the same.")
    var repeats: Int = 1

    @Flag(help: "Print one JSON object per workload.")
    var json = false

    func validate() throws {
        if let suite, suite != "comm", suite != "generate" {
            throw ValidationError("unknown benchmark '\(suite)'; valid: comm, generate (or none for the training workloads)")
        }
        guard workload == "all" || Workload(rawValue: workload) != nil else {
            throw ValidationError("unknown workload '\(workload)'; valid: mlp, cnn, gpt, resnet20, gpt2 (GPT-2 small, for GPUs), all (mlp, cnn, gpt, resnet20)")
        }
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
        guard repeats >= 1 else { throw ValidationError("--repeats \(repeats) must be at least 1") }
        guard (0...3).contains(zero) else { throw ValidationError("--zero \(zero): valid stages are 0, 1, 2 and 3") }
        if zero > 0 && (dp ?? 1) < 2 { throw ValidationError("--zero \(zero) shards over data-parallel ranks: give --dp 2 or more") }
        if precision != .float32, suite != nil || dp != nil || pp != nil {
            throw ValidationError("--precision \(precision.rawValue) applies to the training workloads, not to comm, --dp or --pp")
        }
    }

    @OptionGroup var deviceOptions: DeviceOptions

    func run() throws {
        if suite == "comm" || dp != nil || pp != nil { try runReportingErrors { try deviceOptions.requireCPU("loom bench comm, --dp and --pp") } }
        if suite == "comm" { return try runComm() }
        if suite == "generate" { return try runGeneration() }
        if let dp, dp > 1 { return try runDataParallel(dp) }
        if let pp {
            let world = MPICommunicator.launchedByMPI ? try MPICommunicator.world() : nil
            if let world, world.size != pp { throw ValidationError("--pp \(pp) but the launcher started \(world.size) processes") }
            let r = try PipelineBench.run(stages: pp, microBatches: microBatches, schedule: schedule, steps: steps,
                                          trace: world == nil ? trace : nil, mpiWorld: world)
            world?.finalize()
            if let world, world.rank != 0 { return }
            if json { print(r.json) } else {
                print(String(format: "gpt pp %d (%@, %d micro-batches): %.1f tokens/s, bubble measured %@ (theory %.3f)", pp, schedule.rawValue,
                             microBatches, r.perSecond, r.bubble.map { String(format: "%.3f", $0) }.joined(separator: ", "), r.bubbleTheory))
            }
            return
        }
        let n = threads ?? CPUBackend.defaultThreads
        var backend: (any Backend)!
        try runReportingErrors { backend = try deviceOptions.backend(cpuThreads: n) }
        let peak = Bench.peakGflops(on: backend)
        let workloads = workload == "all" ? Workload.reference : [Workload(rawValue: workload)!]
        if !json {
            let on = deviceOptions.device == .cpu
                ? "\(n) thread(s) of \(CPUInfo.modelName ?? "an unnamed processor"), kernels \(CPUBackend.kernelISA), GEMMs on \(CPUBackend.gemmLibrary), sgemm peak \(String(format: "%.1f", peak)) GFLOP/s (OPENBLAS_CORETYPE=\(ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] ?? "auto"))"
                : "\(backend.name), float32 sgemm peak \(String(format: "%.1f", peak)) GFLOP/s"
            print("loom bench — \(on)" + (precision == .float32 ? "" : ", \(precision.rawValue) matrix products"
                + (deviceOptions.device == .cpu
                    ? " (\(BF16GEMMPath.description)), convolutions (\(OneDNNConvolution.bf16Description))" : "")))
        }
        for w in workloads {
            let xla = backend as? XLABackend  // its counters restart with the timed steps (GEMMCounting)
            let r = try Bench.run(w, backend: backend, steps: steps, repeats: repeats, peak: peak, precision: precision)
            if let c = xla?.counts, !json {
                let runs = Double(max(c.executions, 1))
                print(String(format: "      xla, timed steps: %d programs compiled (%.1f s), %d runs: %.2f ms writing and finding a program, %.2f ms starting it and waiting for it (per run)",
                             c.compilations, c.compileSeconds, c.executions, 1e3 * c.traceSeconds / runs, 1e3 * c.runSeconds / runs))
            }
            if json {
                print(r.json)
            } else {
                print(String(format: "%@  %10.1f %@  %6.2f ms/step  %6.1f GFLOP/s (%4.1f%% of peak)",
                             w.rawValue.padding(toLength: 8, withPad: " ", startingAt: 0), r.perSecond, r.unit, r.stepMilliseconds,
                             r.gflops, 100 * r.gflops / peak))
                if let shares = r.timeShare {
                    let named = KernelClass.allCases.map(\.name) + ["other"]
                    print("      time: " + named.compactMap { name in
                        shares[name].map { String(format: "%@ %.1f%%", name, 100 * $0) }
                    }.joined(separator: ", "))
                }
                if let rates = r.crossCoreGbps {
                    print(String(format: "      two CPUs handed data to each other at %.0f GB/s before, %.0f after (a 2-thread step follows it: docs/benchmarks.md)",
                                 rates[0], rates[1]))
                }
                if let mode = r.streamStores { print("      results both threads read stored past the caches: \(mode) (LOOM_STREAM_STORES)") }
                if let s = r.streamedHandOvers {
                    print("      results both threads read stored past the caches in \(s.streamed) of \(s.measurements) checks"
                          + (s.lastRatio.map { String(format: " (last: plain stores %.2f× as slow)", $0) } ?? ""))
                }
            }
        }
    }

    func runGeneration() throws {
        var backend: (any Backend)!
        try runReportingErrors { backend = try deviceOptions.backend(cpuThreads: threads ?? CPUBackend.defaultThreads) }
        let r = try GenerationBench.run(backend: backend)
        if json { print(r.json); return }
        let c = GenerationBench.config
        print("loom bench generate — gpt \(c.layers) layers d\(c.dModel), context \(c.contextLength), batch 1, greedy, on \(r.device)")
        print(String(format: "prompt of %d tokens: %.2f ms; then %d tokens at %.1f tokens/s", GenerationBench.promptLength,
                     r.promptMilliseconds, r.tokens, r.perSecond))
        print(String(format: "ms per token, first 64 / last 64: %.3f / %.3f with the KV cache; %.3f / %.3f recomputing the window",
                     r.firstTokensMilliseconds, r.lastTokensMilliseconds, r.uncachedFirstMilliseconds, r.uncachedLastMilliseconds))
    }

    func runDataParallel(_ ranks: Int) throws {
        let workloads = workload == "all" ? Workload.reference : [Workload(rawValue: workload)!]
        for w in workloads {
            let r = try Bench.runDataParallel(w, ranks: ranks, zero: zero, steps: steps, repeats: repeats)
            if json { print(r.json) } else {
                print(String(format: "%@ dp %d zero %d: %10.1f %@ (%d ranks x 1 thread), scaling efficiency %.3f vs %d x one single-threaded rank; per rank %@ held between steps, %@ at the step's peak",
                             w.rawValue, ranks, zero, r.perSecond, r.unit, ranks, r.scalingEfficiency ?? 0, ranks,
                             MemoryMeter.format(r.heldBytes ?? 0), MemoryMeter.format(r.peakBytes)))
                for (what, split) in [("held", r.heldSplit), ("peak", r.peakSplit)] {
                    guard let split else { continue }
                    print("  \(what): " + MemoryCategory.allCases.map { String(format: "%@ %.1f MiB", $0.name, Double(split[$0]) / 1048576) }
                        .joined(separator: ", "))
                }
            }
        }
    }

    func runComm() throws {
        let rows: [CommBench.Row]
        if MPICommunicator.launchedByMPI {
            let world = try MPICommunicator.world()
            rows = try CommBench.run(world)
            world.finalize()
            guard world.rank == 0 else { return }
        } else {
            rows = try InProcessWorld.run(size: dp ?? 2) { try CommBench.run($0) }[0]
        }
        if json { rows.forEach { print($0.json) }; return }
        print("all-reduce (sum, float32) over \(rows.first?.ranks ?? 0) ranks, \(MPICommunicator.launchedByMPI ? "MPI" : "in-process threads")")
        print("     bytes    time(us)  algbw(GB/s)  busbw(GB/s)   MPI_Allreduce(us)  MPI busbw(GB/s)")
        for r in rows {
            var line = String(format: "%10d  %10.1f  %11.3f  %11.3f", r.bytes, r.seconds * 1e6, r.algGBps, r.busGBps)
            if let raw = r.rawSeconds {
                line += String(format: "   %17.1f  %15.3f", raw * 1e6, Double(r.bytes) / raw / 1e9 * 2 * Double(r.ranks - 1) / Double(r.ranks))
            }
            print(line)
        }
    }
}
