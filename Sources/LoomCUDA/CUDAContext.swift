import Foundation

/// One GPU, opened: the driver, the device's primary context, a compute stream, a copy
/// stream for input batches, and a caching allocator. `open` is what `--device cuda` calls first; on a machine without the
/// NVIDIA driver it throws a one-line error naming the library.
public final class CUDAContext: @unchecked Sendable {
    public let driver: CUDADriver
    public let ordinal: Int
    public let name: String
    public let computeCapability: (major: Int, minor: Int)
    /// Where every kernel, GEMM and ordinary copy is queued.
    public let stream: CUstream
    /// Where `BatchStager` copies the next batch while the compute stream runs a step.
    public let copyStream: CUstream
    public let allocator: CachingAllocator

    /// `emulator`: the path of Loom's CPU emulator of the driver, NVRTC and cuBLAS, used
    /// instead of the NVIDIA libraries (tests; `LOOM_CUDA_EMULATOR` by default).
    public static func open(device ordinal: Int = 0, emulator: String? = DynamicLibrary.emulatorPath) throws -> CUDAContext {
        let driver = try CUDADriver(emulator: emulator)
        let count = try driver.deviceCount()
        guard ordinal < count else {
            throw CUDAError(call: "open", message: "cuda:\(ordinal) requested, the driver sees \(count) device\(count == 1 ? "" : "s")")
        }
        return try CUDAContext(driver: driver, ordinal: ordinal)
    }

    private init(driver: CUDADriver, ordinal: Int) throws {
        self.driver = driver
        self.ordinal = ordinal
        let d = try driver.describe(device: ordinal)
        name = d.name
        computeCapability = (d.major, d.minor)
        var dev: Int32 = 0
        try driver.check(driver.cuDeviceGet(&dev, Int32(ordinal)), "cuDeviceGet")
        var context: OpaquePointer?
        try driver.check(driver.cuDevicePrimaryCtxRetain(&context, dev), "cuDevicePrimaryCtxRetain")
        try driver.check(driver.cuCtxSetCurrent(context), "cuCtxSetCurrent")
        var s: OpaquePointer?
        try driver.check(driver.cuStreamCreate(&s, 1), "cuStreamCreate")  // CU_STREAM_NON_BLOCKING
        stream = s
        var c: OpaquePointer?
        try driver.check(driver.cuStreamCreate(&c, 1), "cuStreamCreate")
        copyStream = c
        allocator = CachingAllocator(allocate: { bytes in
            var p: CUdeviceptr = 0
            try driver.check(driver.cuMemAlloc(&p, bytes), "cuMemAlloc_v2(\(bytes) bytes)")
            return p
        }, release: { try driver.check(driver.cuMemFree($0), "cuMemFree_v2") })
    }

    /// Host bytes to device memory, queued on the stream (the source may be reused at once:
    /// pageable memory is staged before the call returns).
    public func copy(_ source: UnsafeRawBufferPointer, toDevice address: CUdeviceptr) throws {
        guard source.count > 0 else { return }
        try driver.check(driver.cuMemcpyHtoDAsync(address, source.baseAddress, source.count, stream), "cuMemcpyHtoDAsync_v2")
    }

    /// Device memory to host bytes; waits for the stream.
    public func copy(fromDevice address: CUdeviceptr, into destination: UnsafeMutableRawBufferPointer) throws {
        guard destination.count > 0 else { return }
        try driver.check(driver.cuMemcpyDtoHAsync(destination.baseAddress, address, destination.count, stream), "cuMemcpyDtoHAsync_v2")
        try synchronize()
    }

    /// Waits for everything queued on the stream.
    public func synchronize() throws {
        try driver.check(driver.cuStreamSynchronize(stream), "cuStreamSynchronize")
    }

    /// The emulator's path when this context is Loom's CPU emulator, not a GPU.
    public var emulator: String? { driver.isEmulated ? driver.library.path : nil }

    public var description: String {
        "cuda:\(ordinal) (\(name), sm_\(computeCapability.major)\(computeCapability.minor)\(driver.isEmulated ? ", emulated on the CPU" : ""))"
    }
}
