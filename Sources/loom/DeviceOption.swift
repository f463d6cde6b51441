import LoomCore
import LoomCUDA

/// `--device cpu|cuda|cuda:N`. CUDA opens the driver (through dlopen) to name the GPU or
/// say why there is none; the op kernels that would run on it are not written yet, so a
/// CUDA run stops there with a one-line error instead of pretending.
func checkDevice(_ device: String) throws {
    if device == "cpu" { return }
    guard device == "cuda" || device.hasPrefix("cuda:"), let ordinal = device == "cuda" ? 0 : Int(device.dropFirst(5)), ordinal >= 0 else {
        throw LoomError.config("--device \(device): valid devices are cpu, cuda, cuda:N")
    }
    let context: CUDAContext
    do { context = try CUDAContext.open(device: ordinal) } catch {
        throw LoomError.config("--device \(device): \(error)")
    }
    throw LoomError.config("--device \(device): \(context.description) found, but Loom's CUDA op kernels are not written yet; run on the CPU (--device cpu)")
}
