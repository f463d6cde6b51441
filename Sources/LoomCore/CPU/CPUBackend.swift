import CLoomKernels
import COpenBLAS
import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// The reference backend: GEMMs on oneDNN or OpenBLAS (`SGEMM.swift`), convolutions on
/// oneDNN, its own causal attention (`CPU+Attention.swift`), the vectorised C kernels of
/// CLoomKernels (GELU, softmax, layer norm, optimizer steps; compiled for SSE2, AVX2 and
/// AVX-512, one picked by the processor) and Swift SIMD loops for the rest, split across
/// `threads` cores.
public final class CPUBackend: Backend, GEMMCounting, @unchecked Sendable {
    /// The process-wide CPU backend, using every core (or `LOOM_THREADS`).
    public static let shared = CPUBackend(threads: CPUBackend.defaultThreads)

    public let device = Device.cpu
    public var name: String { "cpu(\(threads) threads)" }
    /// Threads for Loom's own kernels.
    public let threads: Int

    /// FLOPs issued to matrix products (GEMMs, convolutions, attention's products; 2mnk
    /// per product) and seconds spent in each class of kernel, since the last
    /// `resetCounters()`. `loom bench` reports GFLOP/s and where a step's time goes from these.
    /// Threads may share a backend (a loader's prefetch thread and the step, or tasks that
    /// issue kernels), so the counters are kept under a lock.
    public var gemmFlops: Double { counterLock.withLock { flops } }
    public var kernelSeconds: [Double] { counterLock.withLock { seconds } }
    public var gemmSeconds: Double { kernelSeconds[KernelClass.gemm.rawValue] }
    public func resetCounters() { counterLock.withLock { flops = 0; seconds = seconds.map { _ in 0 } } }
    private let counterLock = SpinLock()
    private var flops: Double = 0
    private var seconds = [Double](repeating: 0, count: KernelClass.allCases.count)
    /// Adds the time since `start` (and any product FLOPs) to a kernel class.
    @inline(__always)
    func count(_ kind: KernelClass, flops: Double = 0, since start: Double) {
        let elapsed = monotonicSeconds() - start
        counterLock.withLock {
            self.flops += flops
            seconds[kind.rawValue] += elapsed
        }
    }

    /// The vector width the C kernels run at on this processor: "avx512", "avx2" or
    /// "baseline" (SSE2); `LOOM_CPU_ISA` caps it.
    public static var kernelISA: String { String(cString: loom_isa_name(loom_kernel_isa())) }

    /// The library the products run on: "onednn" or "openblas" (`LOOM_GEMM` chooses by hand).
    public static var gemmLibrary: String { SGEMMLibrary.selected.rawValue }

    public static var defaultThreads: Int {
        if let s = getenv("LOOM_THREADS"), let n = Int(String(cString: s)), n > 0 { return n }
        return max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    }

    public init(threads: Int) {
        self.threads = max(1, threads)
        CPUBackend.configureOnce
    }

    /// oneDNN convolution primitives by geometry (`CPU+Conv.swift`).
    let convolutions = ConvolutionCache()

    /// Convolutions run on oneDNN's direct kernels unless `LOOM_CONV=im2col` (im2col +
    /// OpenBLAS, Loom's own; kept for comparison and where oneDNN builds no primitive).
    static let useOneDNN: Bool = getenv("LOOM_CONV").map { String(cString: $0) != "im2col" } ?? true

    /// One thread pool for everything: OpenBLAS runs single-threaded and Loom splits each
    /// GEMM across its own threads (see `gemm`). With OpenBLAS's own pool, its idle
    /// threads spin in sched_yield while Loom's elementwise kernels run, and took a sixth
    /// of the GPT step's CPU time here.
    private static let configureOnce: Void = {
        openblas_set_num_threads(1)
    }()

    /// Freed blocks by exact size, for reuse. A training step allocates the same sizes
    /// every step; glibc would hand blocks over 128 KiB back to the kernel on free, and
    /// each step would then page-fault its activations in again. Shared by every CPU
    /// backend in the process; at most 4 GiB is kept.
    static let cache = BlockCache(limitBytes: 4 << 30)

    // MARK: Memory

    public func allocate(bytes: Int) throws -> Storage {
        let size = max(bytes, 64)
        let raw: UnsafeMutableRawPointer
        if let cached = CPUBackend.cache.take(size) {
            raw = cached
        } else {
            var p: UnsafeMutableRawPointer?
            let rc = posix_memalign(&p, 64, size)
            guard rc == 0, let p else { throw allocationError(bytes: bytes, device: .cpu, detail: "posix_memalign returned \(rc)") }
            raw = p
        }
        return Storage(device: .cpu, byteCount: size, handle: UInt(bitPattern: raw)) { handle, size in
            CPUBackend.cache.give(UnsafeMutableRawPointer(bitPattern: handle)!, size)
        }
    }

    public func upload(_ source: UnsafeRawBufferPointer, to tensor: Tensor) {
        precondition(source.count == tensor.byteCount, "upload: \(source.count) bytes into \(tensor.dtype) \(describe(tensor.shape))")
        UnsafeMutableRawPointer(tensor.ptr).copyMemory(from: source.baseAddress!, byteCount: source.count)
    }

    public func download(_ tensor: Tensor, into destination: UnsafeMutableRawBufferPointer) {
        precondition(destination.count == tensor.byteCount, "download: \(tensor.dtype) \(describe(tensor.shape)) into \(destination.count) bytes")
        destination.baseAddress!.copyMemory(from: UnsafeRawPointer(tensor.ptr), byteCount: destination.count)
    }

    public func fill(_ tensor: Tensor, value: Float) {
        let p = tensor.ptr, n = tensor.count
        switch tensor.dtype {
        case .int32:
            let q = tensor.intPtr
            for i in 0..<n { q[i] = Int32(value) }
        case .bfloat16, .float16:
            let bits = tensor.dtype == .bfloat16 ? BFloat16Bits.from(value) : Float16(value).bitPattern
            tensor.halfPtr.update(repeating: bits, count: n)
        case .float32:
            if value == 0 { memset(p, 0, n * 4); return }
            p.update(repeating: value, count: n)
        }
    }

    public func copy(_ source: Tensor, into destination: Tensor) {
        precondition(source.count == destination.count && source.dtype == destination.dtype,
                     "copy: \(source.dtype) \(describe(source.shape)) into \(destination.dtype) \(describe(destination.shape))")
        memmove(destination.ptr, source.ptr, source.byteCount)
    }

    public func cast(_ x: Tensor, into y: Tensor) {
        precondition(x.count == y.count && x.dtype.isFloatingPoint && y.dtype.isFloatingPoint,
                     "cast: \(x.dtype) \(describe(x.shape)) into \(y.dtype) \(describe(y.shape))")
        if x.dtype == y.dtype { copy(x, into: y); return }
        let n = x.count
        // Through float32: every conversion here is exact except the narrowing one.
        parallelFor(n, grain: 1 << 15, threads: threads) { r in
            for i in r {
                let f: Float
                switch x.dtype {
                case .bfloat16: f = BFloat16Bits.float(x.halfPtr[i])
                case .float16: f = Float(Float16(bitPattern: x.halfPtr[i]))
                default: f = x.ptr[i]
                }
                switch y.dtype {
                case .bfloat16: y.halfPtr[i] = BFloat16Bits.from(f)
                case .float16: y.halfPtr[i] = Float16(f).bitPattern
                default: y.ptr[i] = f
                }
            }
        }
    }

    public func synchronize() {}

    // MARK: Linear algebra

    public func gemm(_ a: GEMMOperand, _ b: GEMMOperand, _ c: GEMMOperand, m: Int, n: Int, k: Int, batch: Int,
                     alpha: Float, beta: Float) {
        if a.tensor.dtype == .bfloat16 || b.tensor.dtype == .bfloat16 {
            // bf16 operands, widened: a product of two bf16 values (8-bit mantissas) is
            // exact in float32, so sgemm on the widened values is a bf16 GEMM that
            // accumulates in float32, which is what cuBLAS does with them too.
            precondition(a.tensor.dtype == b.tensor.dtype && c.tensor.dtype == .float32,
                         "gemm: operands \(a.tensor.dtype) and \(b.tensor.dtype) into \(c.tensor.dtype): both float32 or both bfloat16, into float32")
            gemm(widened(a, rows: a.transposed ? k : m, cols: a.transposed ? m : k, batch: batch),
                 widened(b, rows: b.transposed ? n : k, cols: b.transposed ? k : n, batch: batch),
                 c, m: m, n: n, k: k, batch: batch, alpha: alpha, beta: beta)
            return
        }
        let start = monotonicSeconds()
        defer { count(.gemm, flops: 2 * Double(m) * Double(n) * Double(k) * Double(batch), since: start) }
        let pa = a.tensor.ptr + a.offset, pb = b.tensor.ptr + b.offset, pc = c.tensor.ptr + c.offset
        let work = Double(m) * Double(n) * Double(k)
        // Split across threads: by batch entry when there are several, else by rows of C
        // (or columns, when C is short and wide). Each piece is a single-threaded sgemm.
        let pieces: Int = work * Double(batch) < 131_072 ? 1 : threads
        if batch >= pieces {
            parallelFor(batch, grain: 1, threads: pieces) { r in
                for i in r {
                    sgemm(a, pa + i * a.batchStride, b, pb + i * b.batchStride, pc + i * c.batchStride, c.ld,
                          m: m, n: n, k: k, alpha: alpha, beta: beta)
                }
            }
            return
        }
        let byRows = m >= n || n < 16 * pieces
        let total = byRows ? m : n
        let perPiece: Int = (total + pieces - 1) / pieces
        let chunk: Int = (perPiece + 7) / 8 * 8  // multiples of 8: whole SIMD panels
        let count: Int = (total + chunk - 1) / chunk
        for i in 0..<batch {
            let pa: UnsafeMutablePointer<Float> = pa + i * a.batchStride
            let pb: UnsafeMutablePointer<Float> = pb + i * b.batchStride
            let pc: UnsafeMutablePointer<Float> = pc + i * c.batchStride
            DispatchQueue.concurrentPerform(iterations: count) { piece in
                let lo = piece * chunk, len = min(chunk, total - lo)
                if byRows {  // rows lo..<lo+len of C need rows of op(A)
                    let aStart = a.transposed ? pa + lo : pa + lo * a.ld
                    sgemm(a, aStart, b, pb, pc + lo * c.ld, c.ld, m: len, n: n, k: k, alpha: alpha, beta: beta)
                } else {     // columns of C need columns of op(B)
                    let bStart = b.transposed ? pb + lo * b.ld : pb + lo
                    sgemm(a, pa, b, bStart, pc + lo, c.ld, m: m, n: len, k: k, alpha: alpha, beta: beta)
                }
            }
        }
    }

    /// A bf16 operand's matrices (stored `rows` x `cols` each, `batch` of them) as a new
    /// float32 operand over just the span they cover.
    private func widened(_ op: GEMMOperand, rows: Int, cols: Int, batch: Int) -> GEMMOperand {
        let span = (batch - 1) * op.batchStride + (rows - 1) * op.ld + cols
        let wide: Tensor
        do { wide = try Tensor(uninitialized: [span], on: self) } catch { fatalError("gemm: \(error)") }
        let src = op.tensor.halfPtr + op.offset, dst = wide.ptr
        parallelFor(span, grain: 1 << 15, threads: threads) { r in
            for i in r { dst[i] = BFloat16Bits.float(src[i]) }
        }
        var result = op
        result.tensor = wide
        result.offset = 0
        return result
    }

    @inline(__always)
    private func sgemm(_ a: GEMMOperand, _ pa: UnsafePointer<Float>, _ b: GEMMOperand, _ pb: UnsafePointer<Float>,
                       _ pc: UnsafeMutablePointer<Float>, _ ldc: Int, m: Int, n: Int, k: Int, alpha: Float, beta: Float) {
        LoomCore.sgemm(transA: a.transposed, transB: b.transposed, m: m, n: n, k: k, alpha: alpha, pa, lda: a.ld, pb, ldb: b.ld,
                       beta: beta, pc, ldc: ldc)
    }
}

/// What a CPU kernel's time counts as in `loom bench`'s breakdown of a step.
public enum KernelClass: Int, CaseIterable, Sendable {
    case gemm, attention, convolution, elementwise, softmax, norm, reduction, loss, optimizer, embedding, memory

    public var name: String { String(describing: self) }
}

/// Seconds on a monotonic clock.
@inline(__always)
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

/// A bounded free list of host blocks keyed by size.
final class BlockCache: @unchecked Sendable {
    private var free: [Int: [UnsafeMutableRawPointer]] = [:]
    private var cachedBytes = 0
    private let limit: Int
    private let lock = SpinLock()

    init(limitBytes: Int) { limit = limitBytes }

    func take(_ size: Int) -> UnsafeMutableRawPointer? {
        lock.withLock {
            guard let p = free[size]?.popLast() else { return nil }
            cachedBytes -= size
            return p
        }
    }

    func give(_ p: UnsafeMutableRawPointer, _ size: Int) {
        let kept: Bool = lock.withLock {
            guard cachedBytes + size <= limit else { return false }
            free[size, default: []].append(p)
            cachedBytes += size
            return true
        }
        if !kept { Glibc.free(p) }
    }
}
