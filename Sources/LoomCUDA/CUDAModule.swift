import Foundation

/// The kernels of `CUDAKernels` on one context: the module compiled for the device's own
/// architecture (NVRTC -> CUBIN, or the emulator's image) through `KernelCache`, loaded
/// once, and each function looked up once.
public final class CUDAModule: @unchecked Sendable {
    private let context: CUDAContext
    private let handle: OpaquePointer?
    private var functions: [String: OpaquePointer?] = [:]
    private let lock = NSLock()

    /// Where compiled modules are kept between processes: `LOOM_KERNEL_CACHE`, else
    /// `$XDG_CACHE_HOME/loom/kernels`, else `~/.cache/loom/kernels`.
    static var cacheDirectory: String {
        let env = ProcessInfo.processInfo.environment
        if let d = env["LOOM_KERNEL_CACHE"], !d.isEmpty { return d }
        let base = env["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? (NSHomeDirectory() + "/.cache")
        return base + "/loom/kernels"
    }

    /// The module of `source` (`name` in messages and the cache) on `context`.
    public init(context: CUDAContext, source: String = CUDAKernels.source, name: String = CUDAKernels.moduleName) throws {
        self.context = context
        let arch = context.computeCapability.major * 10 + context.computeCapability.minor
        let nvrtc = try NVRTC(emulator: context.emulator)
        let driver = context.driver
        // The emulator's images are not CUBINs: keep them apart in the cache. A CUBIN
        // depends on the compiler and its options as much as on the source.
        let target = (driver.emulatorRuntimeDigest.map { "emulated-\($0)-" } ?? "") + "sm_\(arch)"
            + " nvrtc \(nvrtc.version) " + NVRTC.options(arch: arch).joined(separator: " ")
        let cache = KernelCache<OpaquePointer?>(directory: CUDAModule.cacheDirectory,
            compile: { source, name in try nvrtc.compile(source: source, name: name, arch: arch) },
            load: { binary, name in
                var module: OpaquePointer?
                try binary.withUnsafeBytes { try driver.check(driver.cuModuleLoadData(&module, $0.baseAddress!), "cuModuleLoadData(\(name))") }
                return module
            })
        handle = try cache.kernel(name, source: source, target: target)
    }

    /// The kernel `name` of this module (for `cuLaunchKernel` with a grid of more than one axis).
    public func function(_ name: String) throws -> OpaquePointer? {
        try lock.withLock {
            if let f = functions[name] { return f }
            var f: OpaquePointer?
            try context.driver.check(context.driver.cuModuleGetFunction(&f, handle, name), "cuModuleGetFunction(\(name))")
            functions[name] = f
            return f
        }
    }

    /// Queues `name` over `grid` blocks of `block` threads. Each argument is copied at the
    /// call (the driver copies parameter values when it queues the launch).
    public func launch(_ name: String, grid: Int, block: Int, _ arguments: [KernelArgument], stream: CUstream) throws {
        let f = try function(name)
        // All argument values in one 16-byte-aligned block, each at an 8-aligned offset.
        let values = arguments.map(\.bytes)
        let offsets = values.reduce(into: [0]) { o, v in o.append(o.last! + (v.count + 7) / 8 * 8) }
        let packed = UnsafeMutableRawPointer.allocate(byteCount: max(offsets.last!, 8), alignment: 16)
        defer { packed.deallocate() }
        for (v, o) in zip(values, offsets) { v.withUnsafeBytes { packed.advanced(by: o).copyMemory(from: $0.baseAddress!, byteCount: v.count) } }
        var parameters: [UnsafeMutableRawPointer?] = offsets.dropLast().map { packed.advanced(by: $0) }
        let driver = context.driver
        try parameters.withUnsafeMutableBufferPointer { p in
            try driver.check(driver.cuLaunchKernel(f, UInt32(grid), 1, 1, UInt32(block), 1, 1, 0, stream, p.baseAddress, nil),
                             "cuLaunchKernel(\(name), grid \(grid), block \(block))")
        }
    }
}
