import ArgumentParser
import Foundation
import LoomCore
import LoomCUDA
import LoomParallel
import LoomTrain
import LoomXLA

// Values the command line shares with the TOML reader: each enum's cases are the valid
// values, listed by --help and by the error for a bad one.
extension ModelKind: ExpressibleByArgument {}
extension OptimizerKind: ExpressibleByArgument {}
extension Schedule.Kind: ExpressibleByArgument {}
extension Precision: ExpressibleByArgument {}

extension Device: ExpressibleByArgument {
    /// `cpu`, `cuda` (GPU 0), `cuda:N`, `xla` (device 0 of the PJRT plugin), `xla:N`, `tpu`
    /// (TPU chip 0, through libtpu) or `tpu:N`.
    public init?(argument: String) {
        if argument == "cpu" { self = .cpu; return }
        for (name, make) in [("cuda", Device.cuda), ("xla", Device.xla), ("tpu", Device.tpu)] {
            if argument == name { self = make(0); return }
            guard argument.hasPrefix(name + ":") else { continue }
            guard let n = Int(argument.dropFirst(name.count + 1)), n >= 0 else { return nil }
            self = make(n)
            return
        }
        return nil
    }

    /// Four entries: with more, swift-argument-parser lists them on lines of their own.
    public static var allValueStrings: [String] { ["cpu", "cuda[:N]", "xla[:N]", "tpu[:N]"] }
}

/// `--device` and `--tf32`, declared once for train, eval, generate and bench.
struct DeviceOptions: ParsableArguments {
    @Option(help: "Device: cpu, cuda / cuda:N (an NVIDIA GPU), xla / xla:N (a PJRT plugin's device: XLA:CPU, or the plugin LOOM_PJRT_PLUGIN names), tpu / tpu:N (a TPU chip through libtpu; docs/xla.md). With several ranks, rank r uses device N + local rank r.")
    var device: Device = .cpu
    @Flag(help: "CUDA: matrix products on TF32 tensor cores (10-bit mantissa inputs, float32 accumulation), as PyTorch's allow_tf32.")
    var tf32 = false

    /// The backend for the process's `localRank`-th rank: a CPU backend with `cpuThreads`
    /// threads (nil: the shared one), or a CUDA backend on GPU (N + localRank) mod the
    /// number of GPUs. A machine without the driver gets a one-line error naming it.
    func backend(localRank: Int = 0, cpuThreads: Int? = nil) throws -> any Backend {
        if let (first, kind) = xlaDevice {
            do {
                let count = try XLABackend.deviceCount(kind: kind)
                return try XLABackend(index: (first + localRank) % count, kind: kind)
            } catch {
                throw LoomError.config("--device \(device): \(error)")
            }
        }
        guard case .cuda(let first) = device else {
            return cpuThreads.map { CPUBackend(threads: $0) } ?? CPUBackend.shared
        }
        do {
            let count = try CUDADriver().deviceCount()
            return try CUDABackend(device: count > 0 ? (first + localRank) % count : first, allowTF32: tf32)
        } catch {
            throw LoomError.config("--device \(device): \(error)")
        }
    }

    /// The first device and the plugin kind of an XLA device (`xla:N` or `tpu:N`).
    private var xlaDevice: (Int, PJRTPlugin.Kind)? {
        switch device {
        case .xla(let n): return (n, .cpu)
        case .tpu(let n): return (n, .tpu)
        default: return nil
        }
    }

    /// Commands (or modes) that run on the CPU only say so instead of ignoring the flag.
    func requireCPU(_ what: String) throws {
        guard device == .cpu else {
            throw LoomError.config("--device \(device): \(what) run on the CPU only so far (train, eval, generate and bench's training workloads run on CUDA, XLA and TPUs)")
        }
    }
}

/// A relative data path is looked up from the working directory first, then from the
/// directories above the loom executable (so `loom train` finds the repository's data/
/// when run from elsewhere). The library takes paths as given; the command line resolves.
func resolveDataPath(_ path: String) -> String {
    if path.isEmpty || path.hasPrefix("/") || FileManager.default.fileExists(atPath: path) { return path }
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
    for _ in 0..<5 {
        let candidate = dir.appendingPathComponent(path).path
        if FileManager.default.fileExists(atPath: candidate) { return candidate }
        dir = dir.deletingLastPathComponent()
    }
    return path
}
