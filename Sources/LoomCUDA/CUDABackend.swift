import Foundation
import LoomCore

/// Loom's `Backend` on an NVIDIA GPU: device memory from the caching allocator, every op
/// a kernel of `CUDAKernels` (compiled once per process by NVRTC for the device's own
/// architecture and cached on disk), GEMMs through cuBLAS, all queued on one stream;
/// input batches arrive on a second, copy stream (`BatchStaging`).
///
/// Host code sees device memory only through `upload` and `download` (which waits for
/// the stream). A kernel that fails to launch stops the process with the driver's
/// message: the `Backend` calls do not throw, as a CUDA error leaves the context unusable.
///
/// Under the emulator (`LOOM_CUDA_EMULATOR`, tests only) the same code runs against
/// Loom's CPU stand-in for the driver, NVRTC and cuBLAS: the kernels' CUDA C source is
/// compiled by the host compiler and each CUDA thread runs as a fiber.
public final class CUDABackend: Backend, GEMMCounting, @unchecked Sendable {
    public let context: CUDAContext
    public let device: Device
    public var name: String { context.description }
    let blas: CUBLAS
    private let module: CUDAModule
    /// Input batches on the copy stream (`stage`).
    let stager: BatchStager
    /// Index checks, read when the host next waits (`deferredErrors`).
    let indexFaults: IndexFaults
    /// Pinned host buffers for collectives and checkpoints (`HostBuffer`), on the copy stream.
    let staging: PinnedStaging
    /// Partial sums for `sumOfSquares`.
    let partialsAddress: CUdeviceptr
    static let partialSlots = 4096
    /// GEMM FLOPs queued since `resetCounters()` (the time they take is on the device).
    public internal(set) var gemmFlops: Double = 0
    public func resetCounters() { gemmFlops = 0 }
    /// Times the host has waited for the device (downloads and synchronisations): a step
    /// should wait once, for its loss.
    public var hostWaits: Int { waits.withLock { waitCount } }
    private var waitCount = 0
    private let waits = NSLock()
    func countHostWait() { waits.withLock { waitCount += 1 } }

    /// Opens GPU `ordinal` (or the emulator's), compiles or loads the kernels and registers
    /// itself for `.cuda(ordinal)`. `allowTF32`: matrix products on TF32 tensor cores.
    /// `emulator`: Loom's CPU emulator instead of a GPU (tests; `LOOM_CUDA_EMULATOR`).
    public init(device ordinal: Int = 0, allowTF32: Bool = false, emulator: String? = DynamicLibrary.emulatorPath) throws {
        context = try CUDAContext.open(device: ordinal, emulator: emulator)
        device = .cuda(ordinal)
        blas = try CUBLAS(stream: context.stream, allowTF32: allowTF32, emulator: context.emulator)
        module = try CUDAModule(context: context)
        stager = try BatchStager(context: context)
        indexFaults = try IndexFaults(context: context)
        staging = PinnedStaging(context: context)
        partialsAddress = try context.allocator.allocate(CUDABackend.partialSlots * 4)
        Backends.register(self)
    }

    deinit {
        context.allocator.free(partialsAddress)
    }

    // MARK: Launching

    /// The device address of a tensor's first element.
    @inline(__always)
    func address(_ t: Tensor) -> CUdeviceptr {
        precondition(t.device == device, "\(name): a tensor on \(t.device) was passed to a kernel of \(device)")
        return CUdeviceptr(t.storage.handle) + CUdeviceptr(t.offset * t.dtype.byteSize)
    }

    /// `body`'s value; a CUDA failure stops the process with the driver's message (the
    /// `Backend` calls do not throw, and a failed CUDA call leaves the context unusable).
    func orStop<T>(_ body: () throws -> T) -> T {
        do { return try body() } catch { fatalError("\(name): \(error)") }
    }

    /// Launches `kernel` over `grid` blocks of `block` threads on the stream.
    func launch(_ kernel: String, grid: Int, block: Int, _ arguments: [KernelArgument]) {
        orStop { try module.launch(kernel, grid: grid, block: block, arguments, stream: context.stream) }
    }

    /// Blocks for an elementwise grid-stride loop over `n` items.
    static func elementwiseGrid(_ n: Int) -> Int { max(1, min((n + 255) / 256, 4096)) }

    /// Threads for a row kernel over rows of `cols`: a multiple of 32, at most 256.
    static func rowBlock(_ cols: Int) -> Int { min(256, max(32, (cols + 31) / 32 * 32)) }

    func elementwise(_ kernel: String, count n: Int, _ arguments: [KernelArgument]) {
        guard n > 0 else { return }
        launch(kernel, grid: CUDABackend.elementwiseGrid(n), block: 256, arguments)
    }

    func check(_ status: Int32, _ call: String) {
        orStop { try context.driver.check(status, call) }
    }

    // MARK: Memory

    public func allocate(bytes: Int) throws -> Storage {
        let address: CUdeviceptr
        do { address = try context.allocator.allocate(max(bytes, 1)) } catch {
            throw allocationError(bytes: bytes, device: device, detail: "\(error)")
        }
        let allocator = context.allocator
        return Storage(device: device, byteCount: bytes, handle: UInt(address)) { handle, _ in allocator.free(CUdeviceptr(handle)) }
    }

    public func upload(_ source: UnsafeRawBufferPointer, to tensor: Tensor) {
        orStop { try context.copy(source, toDevice: address(tensor)) }
    }

    /// Waits for the stream (a copy into pageable memory does); the index-check record, if
    /// a check ran since it was last read, comes back with it at no extra wait.
    public func download(_ tensor: Tensor, into destination: UnsafeMutableRawBufferPointer) {
        orStop {
            let reading = try indexFaults.queueRead()
            try context.copy(fromDevice: address(tensor), into: destination)
            if reading { indexFaults.read() }
        }
        countHostWait()
    }

    public func synchronize() {
        orStop { try context.synchronize() }
        countHostWait()
    }

    public func deferredErrors() throws {
        if try indexFaults.queueRead() {  // no copy since the last check: wait for it here
            synchronize()
            indexFaults.read()
        }
        try indexFaults.throwPending()
    }

    public func fill(_ tensor: Tensor, value: Float) {
        let n = tensor.count
        switch tensor.dtype {
        case .float32: elementwise("fill_f32", count: n, [.pointer(address(tensor)), .float(value), .int64(n)])
        case .int32: elementwise("fill_i32", count: n, [.pointer(address(tensor)), .int32(Int32(value)), .int64(n)])
        case .bfloat16: elementwise("fill_u16", count: n, [.pointer(address(tensor)), .uint16(BFloat16Bits.from(value)), .int64(n)])
        case .float16: elementwise("fill_u16", count: n, [.pointer(address(tensor)), .uint16(Float16(value).bitPattern), .int64(n)])
        }
    }

    public func copy(_ source: Tensor, into destination: Tensor) {
        guard source.byteCount > 0 else { return }
        check(context.driver.cuMemcpyDtoDAsync(address(destination), address(source), source.byteCount, context.stream), "cuMemcpyDtoDAsync_v2")
    }

    public func cast(_ x: Tensor, into y: Tensor) {
        if x.dtype == y.dtype { copy(x, into: y); return }
        let kernel: String
        switch (x.dtype, y.dtype) {
        case (.float32, .bfloat16): kernel = "cast_f32_bf16"
        case (.bfloat16, .float32): kernel = "cast_bf16_f32"
        case (.float32, .float16): kernel = "cast_f32_f16"
        case (.float16, .float32): kernel = "cast_f16_f32"
        case (.bfloat16, .float16): kernel = "cast_bf16_f16"
        case (.float16, .bfloat16): kernel = "cast_f16_bf16"
        default: fatalError("\(name): no cast from \(x.dtype) to \(y.dtype)")
        }
        elementwise(kernel, count: x.count, [.pointer(address(x)), .pointer(address(y)), .int64(x.count)])
    }

    /// Queues a check of `indices` against `lower..<upper` (`ignore` passes); a fault is
    /// thrown by `deferredErrors` once the host has waited for the stream.
    func checkIndices(_ indices: Tensor, lower: Int, upper: Int, ignore: Int32, as check: IndexFaults.Check) {
        elementwise("check_indices_i32", count: indices.count,
                    [.pointer(address(indices)), .int64(indices.count), .int32(Int32(lower)), .int32(Int32(upper)), .int32(ignore),
                     .int32(check.rawValue), .pointer(indexFaults.record)])
        indexFaults.noteQueued()
    }
}

/// One argument of a kernel launch, as the kernel's C parameter list declares it.
public enum KernelArgument {
    case pointer(CUdeviceptr)
    case int32(Int32)
    case int64(Int)
    case uint64(UInt64)
    case uint16(UInt16)
    case float(Float)
    /// A struct passed by value, laid out as C lays it out.
    case bytes([UInt8])

    var bytes: [UInt8] {
        switch self {
        case .pointer(let v): return withUnsafeBytes(of: v) { Array($0) }
        case .int32(let v): return withUnsafeBytes(of: v) { Array($0) }
        case .int64(let v): return withUnsafeBytes(of: Int64(v)) { Array($0) }
        case .uint64(let v): return withUnsafeBytes(of: v) { Array($0) }
        case .uint16(let v): return withUnsafeBytes(of: v) { Array($0) }
        case .float(let v): return withUnsafeBytes(of: v) { Array($0) }
        case .bytes(let b): return b
        }
    }

    /// A C struct of `long long` arrays and a trailing `int` (padded to 8 bytes), e.g.
    /// `struct { long long shape[8]; long long a[8]; long long b[8]; int rank; }`.
    public static func arrays(_ arrays: [[Int]], count: Int32) -> KernelArgument {
        var out: [UInt8] = []
        for a in arrays {
            precondition(a.count <= 8, "kernel arrays hold at most 8 axes")
            for i in 0..<8 { out += withUnsafeBytes(of: Int64(i < a.count ? a[i] : 0)) { Array($0) } }
        }
        out += withUnsafeBytes(of: count) { Array($0) } + [0, 0, 0, 0]
        return .bytes(out)
    }

    /// A C struct of `int` fields.
    public static func ints(_ values: [Int]) -> KernelArgument {
        .bytes(values.flatMap { v in withUnsafeBytes(of: Int32(v)) { Array($0) } })
    }
}
