import ArgumentParser
import Foundation
import LoomCore
import LoomTrain

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Train the reference workloads (mlp, cnn, gpt) and report throughput and GFLOP/s.",
        discussion: """
        Each workload trains on a fixed random batch with the shapes, batch sizes and optimizers of
        the PyTorch/JAX references: mlp 784-512-512-10 (batch 128, SGD momentum), cnn two 5x5 convs
        (batch 64, SGD momentum), gpt 4 layers d128 context 128 (16 sequences, AdamW).
        GFLOP/s counts the GEMM work the backend issued; peak is a 1024^3 sgemm on the same threads.

        Examples:
          loom bench
          loom bench --workload gpt --threads 1 --json
        """
    )

    @Option(help: "Workload to run: mlp, cnn, gpt or all.")
    var workload: String = "all"

    @Option(help: "CPU threads for Loom's kernels and OpenBLAS (default: all cores or LOOM_THREADS).")
    var threads: Int?

    @Option(help: "Timed steps per run.")
    var steps: Int = 30

    @Flag(help: "Print one JSON object per workload.")
    var json = false

    func validate() throws {
        guard workload == "all" || Workload(rawValue: workload) != nil else {
            throw ValidationError("unknown workload '\(workload)'; valid: mlp, cnn, gpt, all")
        }
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
    }

    func run() throws {
        let n = threads ?? CPUBackend.defaultThreads
        let backend = CPUBackend(threads: n)
        let peak = Bench.peakGflops(on: backend)
        let workloads = workload == "all" ? Workload.allCases : [Workload(rawValue: workload)!]
        if !json {
            print("loom bench — \(n) thread(s), sgemm peak \(String(format: "%.1f", peak)) GFLOP/s (OPENBLAS_CORETYPE=\(ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] ?? "auto"))")
        }
        for w in workloads {
            let r = try Bench.run(w, backend: backend, steps: steps, peak: peak)
            if json {
                print(r.json)
            } else {
                print(String(format: "%@  %10.1f %@  %6.2f ms/step  %6.1f GFLOP/s (%4.1f%% of peak)  GEMM %4.1f%% of step",
                             w.rawValue.padding(toLength: 4, withPad: " ", startingAt: 0), r.perSecond, r.unit, r.stepMilliseconds,
                             r.gflops, 100 * r.gflops / peak, 100 * r.gemmFraction))
            }
        }
    }
}
