import ArgumentParser
import LoomCore
import LoomCUDA
import LoomParallel
import LoomTrain

// Values the command line shares with the TOML reader: each enum's cases are the valid
// values, listed by --help and by the error for a bad one.
extension ModelKind: ExpressibleByArgument {}
extension OptimizerKind: ExpressibleByArgument {}
extension Schedule.Kind: ExpressibleByArgument {}

extension Device: ExpressibleByArgument {
    /// `cpu`, `cuda` (GPU 0) or `cuda:N`.
    public init?(argument: String) {
        if argument == "cpu" { self = .cpu; return }
        if argument == "cuda" { self = .cuda(0); return }
        guard argument.hasPrefix("cuda:"), let n = Int(argument.dropFirst(5)), n >= 0 else { return nil }
        self = .cuda(n)
    }

    public static var allValueStrings: [String] { ["cpu", "cuda", "cuda:N"] }
}

/// `--device`, declared once for train, bench and generate.
struct DeviceOptions: ParsableArguments {
    @Option(help: "Device: cpu, or cuda / cuda:N (an NVIDIA GPU; its kernels are not written yet, see README).")
    var device: Device = .cpu

    /// CUDA opens the driver (through dlopen) to name the GPU or say why there is none;
    /// the op kernels that would run on it are not written yet, so a CUDA run stops there
    /// with a one-line error instead of pretending.
    func check() throws {
        guard case .cuda(let ordinal) = device else { return }
        let context: CUDAContext
        do { context = try CUDAContext.open(device: ordinal) } catch {
            throw LoomError.config("--device \(device): \(error)")
        }
        throw LoomError.config("--device \(device): \(context.description) found, but Loom's CUDA op kernels are not written yet; run on the CPU (--device cpu)")
    }
}
