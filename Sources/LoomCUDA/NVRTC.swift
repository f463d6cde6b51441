import Foundation

/// NVRTC, CUDA's run-time compiler, resolved with `dlopen`: CUDA C source -> CUBIN for
/// the device's exact architecture, which the driver loads. A compile error carries
/// NVRTC's log.
public final class NVRTC: @unchecked Sendable {
    public let library: DynamicLibrary
    typealias Status = Int32
    let create: @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UnsafePointer<CChar>, UnsafePointer<CChar>?, Int32,
                                UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<UnsafePointer<CChar>?>?) -> Status
    let compile: @convention(c) (OpaquePointer?, Int32, UnsafePointer<UnsafePointer<CChar>?>?) -> Status
    let cubinSize: @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int>) -> Status
    let cubin: @convention(c) (OpaquePointer?, UnsafeMutablePointer<UInt8>) -> Status
    let logSize: @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int>) -> Status
    let log: @convention(c) (OpaquePointer?, UnsafeMutablePointer<CChar>) -> Status
    let destroy: @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Status
    let errorString: @convention(c) (Status) -> UnsafePointer<CChar>?
    /// nvrtcVersion (absent from the emulator).
    let versionCall: (@convention(c) (UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Int32>) -> Status)?

    /// The sonames NVRTC has shipped under (CUDA 13, 12, 11.2+), then the unversioned one.
    public static let candidates = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so"]

    public init(emulator: String? = DynamicLibrary.emulatorPath) throws {
        library = try DynamicLibrary(candidates: NVRTC.candidates, purpose: "NVRTC (libnvrtc.so, from the CUDA toolkit or the nvidia-cuda-nvrtc wheel)",
                                     emulator: emulator)
        let l = library
        create = try l.function("nvrtcCreateProgram")
        compile = try l.function("nvrtcCompileProgram")
        cubinSize = try l.function("nvrtcGetCUBINSize")
        cubin = try l.function("nvrtcGetCUBIN")
        logSize = try l.function("nvrtcGetProgramLogSize")
        log = try l.function("nvrtcGetProgramLog")
        destroy = try l.function("nvrtcDestroyProgram")
        errorString = try l.function("nvrtcGetErrorString")
        versionCall = try? l.function("nvrtcVersion")
    }

    /// "13.0": the compiler's version, part of a compiled kernel's cache key (a new NVRTC
    /// must not be served an old one's CUBIN); "emulated" for the emulator.
    public var version: String {
        var major: Int32 = 0, minor: Int32 = 0
        guard let versionCall, versionCall(&major, &minor) == 0 else { return "emulated" }
        return "\(major).\(minor)"
    }

    /// The options every kernel is compiled with for `arch` (also part of the cache key).
    /// Precise math (no --use_fast_math): kernels are checked against the CPU at 1e-5.
    public static func options(arch: Int) -> [String] { ["--gpu-architecture=sm_\(arch)", "-default-device", "--std=c++17"] }

    func check(_ status: Status, _ call: String) throws {
        guard status != 0 else { return }
        throw CUDAError(call: call, message: "\(errorString(status).map { String(cString: $0) } ?? "unknown NVRTC status") (\(status))")
    }

    /// Compiles `source` for compute capability `arch` (e.g. 90) and returns the CUBIN.
    public func compile(source: String, name: String, arch: Int) throws -> [UInt8] {
        try compileReportingLog(source: source, name: name, arch: arch).binary
    }

    /// The CUBIN and NVRTC's log; with `verbose`, the log has ptxas's registers, shared
    /// memory and spills per kernel.
    public func compileReportingLog(source: String, name: String, arch: Int, verbose: Bool = false) throws -> (binary: [UInt8], log: String) {
        var program: OpaquePointer?
        try check(create(&program, source, name, 0, nil, nil), "nvrtcCreateProgram(\(name))")
        defer { _ = destroy(&program) }
        let options = NVRTC.options(arch: arch) + (verbose ? ["--ptxas-options=-v"] : [])
        let cOptions = options.map { strdup($0) }
        defer { cOptions.forEach { free($0) } }
        let status = cOptions.map { UnsafePointer<CChar>($0) }.withUnsafeBufferPointer { compile(program, Int32(options.count), $0.baseAddress) }
        if status != 0 {
            var n = 0
            _ = logSize(program, &n)
            var buffer = [CChar](repeating: 0, count: max(n, 1))
            _ = log(program, &buffer)
            throw CUDAError(call: "nvrtcCompileProgram(\(name))", message: String(cString: buffer).trimmingCharacters(in: .whitespacesAndNewlines))
        }
        var logBytes = 0
        _ = logSize(program, &logBytes)
        var logBuffer = [CChar](repeating: 0, count: max(logBytes, 1))
        _ = log(program, &logBuffer)
        var n = 0
        try check(cubinSize(program, &n), "nvrtcGetCUBINSize")
        var buffer = [UInt8](repeating: 0, count: n)
        try check(cubin(program, &buffer), "nvrtcGetCUBIN")
        return (buffer, String(cString: logBuffer))
    }
}

/// Compiled kernels, each compiled once per process and kept on disk (CUBIN) by the hash
/// of its source and target, so later runs skip NVRTC. `compile` and `load` are the seams: NVRTC
/// and the driver on a GPU, closures in tests.
public final class KernelCache<Kernel>: @unchecked Sendable {
    private let compile: (_ source: String, _ name: String) throws -> [UInt8]
    private let load: (_ binary: [UInt8], _ name: String) throws -> Kernel
    private let directory: String?
    private var kernels: [String: Kernel] = [:]
    private let lock = NSLock()
    public private(set) var compilations = 0

    public init(directory: String?, compile: @escaping (String, String) throws -> [UInt8],
                load: @escaping ([UInt8], String) throws -> Kernel) {
        self.directory = directory
        self.compile = compile
        self.load = load
    }

    /// The kernel `name` of `source` (the same source and name give the same kernel).
    public func kernel(_ name: String, source: String, target: String) throws -> Kernel {
        let key = KernelCache.digest(target + "\u{0}" + name + "\u{0}" + source)
        lock.lock()
        defer { lock.unlock() }
        if let k = kernels[key] { return k }
        let file = directory.map { "\($0)/\(key).cubin" }
        var binary = file.flatMap { FileManager.default.contents(atPath: $0) }.map { [UInt8]($0) }
        if binary == nil {
            binary = try compile(source, name)
            compilations += 1
            if let file, let directory {
                try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
                try? Data(binary!).write(to: URL(fileURLWithPath: file), options: .atomic)
            }
        }
        let k = try load(binary!, name)
        kernels[key] = k
        return k
    }

    /// FNV-1a, 64 bits, in hex: a stable file name for a kernel's source.
    static func digest(_ s: String) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return String(h, radix: 16)
    }
}
