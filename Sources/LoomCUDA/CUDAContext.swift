import Foundation

/// One GPU, opened: the driver, the device's primary context, a compute stream, a copy
/// stream for input batches, and a caching allocator. `open` is what `--device cuda` calls first; on a machine without the
/// NVIDIA driver it throws a one-line error naming the library.
public final class CUDAContext: @unchecked Sendable {
    /// The driver, with this device's context made current on the calling thread first.
    /// The driver keeps the current context per thread: a collective's worker, a
    /// communicator's queue or a loader's thread has none until it is set, and every call
    /// there fails with CUDA_ERROR_INVALID_CONTEXT (201). Every call Loom makes goes
    /// through here, so no thread can miss it.
    public var driver: CUDADriver { binding.current() }
    private let binding: ContextBinding
    public let ordinal: Int
    public let name: String
    public let computeCapability: (major: Int, minor: Int)
    /// Streaming multiprocessors: how many blocks it takes to fill the device.
    public let multiprocessors: Int
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
        self.ordinal = ordinal
        let d = try driver.describe(device: ordinal)
        name = d.name
        computeCapability = (d.major, d.minor)
        multiprocessors = max(1, d.multiprocessors)
        var dev: Int32 = 0
        try driver.check(driver.cuDeviceGet(&dev, Int32(ordinal)), "cuDeviceGet")
        var context: OpaquePointer?
        try driver.check(driver.cuDevicePrimaryCtxRetain(&context, dev), "cuDevicePrimaryCtxRetain")
        let binding = ContextBinding(driver: driver, context: context)
        self.binding = binding
        let driver = binding.current()
        var s: OpaquePointer?
        try driver.check(driver.cuStreamCreate(&s, 1), "cuStreamCreate")  // CU_STREAM_NON_BLOCKING
        stream = s
        var c: OpaquePointer?
        try driver.check(driver.cuStreamCreate(&c, 1), "cuStreamCreate")
        copyStream = c
        // Under the emulator a block handed out again reads as NaN until written, as a new
        // one does (queued on the compute stream, after the work that used it last).
        let poison: ((CUdeviceptr, Int) throws -> Void)? = driver.isEmulated ? { [stream = s] address, bytes in
            let driver = binding.current()
            try driver.check(driver.cuMemsetD8Async(address, 0xff, bytes, stream), "cuMemsetD8Async")
        } : nil
        allocator = CachingAllocator(allocate: { bytes in
            let driver = binding.current()
            var p: CUdeviceptr = 0
            try driver.check(driver.cuMemAlloc(&p, bytes), "cuMemAlloc_v2(\(bytes) bytes)")
            return p
        }, release: { let driver = binding.current(); try driver.check(driver.cuMemFree($0), "cuMemFree_v2") }, reused: poison)
    }

    deinit {
        let driver = binding.current()
        _ = driver.cuStreamDestroy(stream)
        _ = driver.cuStreamDestroy(copyStream)
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
    public var emulator: String? { binding.driver.isEmulated ? binding.driver.library.path : nil }

    public var description: String {
        "cuda:\(ordinal) (\(name), sm_\(computeCapability.major)\(computeCapability.minor)\(binding.driver.isEmulated ? ", emulated on the CPU" : ""))"
    }
}

/// A device context and the one thing every thread must do before using it: make it
/// current. Which context each thread last made current is kept per thread (a pthread
/// key), so the driver is called only when a thread's context changes.
final class ContextBinding: @unchecked Sendable {
    let driver: CUDADriver
    let context: OpaquePointer?

    init(driver: CUDADriver, context: OpaquePointer?) {
        self.driver = driver
        self.context = context
    }

    private static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        return k
    }()

    /// The driver, with this context current on the calling thread.
    func current() -> CUDADriver {
        let mine = UnsafeMutableRawPointer(context)
        if pthread_getspecific(ContextBinding.key) != mine {
            // A failure here (a destroyed context) shows in the call that follows, with its name.
            if driver.cuCtxSetCurrent(context) == 0 { pthread_setspecific(ContextBinding.key, mine) }
        }
        return driver
    }
}
