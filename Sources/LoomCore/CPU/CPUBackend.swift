import COpenBLAS
import CSystem
#if canImport(Glibc)
import Glibc
#endif

/// The reference backend: OpenBLAS for GEMM, Swift SIMD loops for everything else,
/// split across `threads` cores.
public final class CPUBackend: Backend, @unchecked Sendable {
    /// The process-wide CPU backend, using every core (or `LOOM_THREADS`).
    public static let shared = CPUBackend(threads: CPUBackend.defaultThreads)

    public let device = Device.cpu
    public var name: String { "cpu(\(threads) threads, OpenBLAS \(blasThreads) threads)" }
    /// Threads for Loom's own kernels.
    public let threads: Int
    /// Threads OpenBLAS uses for GEMM (process-wide in OpenBLAS).
    public var blasThreads: Int { Int(openblas_get_num_threads()) }

    public static var defaultThreads: Int {
        if let s = getenv("LOOM_THREADS"), let n = Int(String(cString: s)), n > 0 { return n }
        return max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    }

    public init(threads: Int) {
        self.threads = max(1, threads)
        CPUBackend.configureAllocatorOnce
    }

    /// Sets the number of threads OpenBLAS uses (all CPU backends share it).
    public static func setBLASThreads(_ n: Int) { openblas_set_num_threads(Int32(max(1, n))) }

    /// glibc hands blocks over 128 KiB to mmap and back on free, so every activation
    /// of every step would page-fault fresh zero pages. Keeping them on the heap makes
    /// a training step's allocations recycle the previous step's memory.
    private static let configureAllocatorOnce: Void = {
        #if canImport(Glibc)
        _ = mallopt(M_MMAP_THRESHOLD, 1 << 30)
        _ = mallopt(M_TRIM_THRESHOLD, 1 << 30)
        #endif
    }()

    // MARK: Memory

    public func allocate(bytes: Int) -> Storage {
        var p: UnsafeMutableRawPointer?
        let rc = posix_memalign(&p, 64, max(bytes, 64))
        precondition(rc == 0 && p != nil, "CPUBackend: cannot allocate \(bytes) bytes")
        return Storage(device: .cpu, byteCount: bytes, raw: p!) { raw, _ in free(raw) }
    }

    public func upload(_ source: UnsafeRawBufferPointer, to tensor: Tensor) {
        UnsafeMutableRawPointer(tensor.ptr).copyMemory(from: source.baseAddress!, byteCount: source.count)
    }

    public func download(_ tensor: Tensor, into destination: UnsafeMutableRawBufferPointer) {
        destination.baseAddress!.copyMemory(from: UnsafeRawPointer(tensor.ptr), byteCount: destination.count)
    }

    public func fill(_ tensor: Tensor, value: Float) {
        let p = tensor.ptr, n = tensor.count
        if tensor.dtype == .int32 {
            let q = tensor.intPtr
            for i in 0..<n { q[i] = Int32(value) }
            return
        }
        if value == 0 { memset(p, 0, n * 4); return }
        p.update(repeating: value, count: n)
    }

    public func copy(_ source: Tensor, into destination: Tensor) {
        precondition(source.count == destination.count)
        memmove(destination.ptr, source.ptr, source.count * 4)
    }

    public func synchronize() {}

    // MARK: Linear algebra

    public func gemm(_ a: GEMMOperand, _ b: GEMMOperand, _ c: GEMMOperand, m: Int, n: Int, k: Int, batch: Int,
                     alpha: Float, beta: Float) {
        let ta = a.transposed ? CblasTrans : CblasNoTrans
        let tb = b.transposed ? CblasTrans : CblasNoTrans
        let pa = a.tensor.ptr + a.offset, pb = b.tensor.ptr + b.offset, pc = c.tensor.ptr + c.offset
        for i in 0..<batch {
            cblas_sgemm(CblasRowMajor, ta, tb, Int32(m), Int32(n), Int32(k), alpha,
                        pa + i * a.batchStride, Int32(a.ld), pb + i * b.batchStride, Int32(b.ld), beta,
                        pc + i * c.batchStride, Int32(c.ld))
        }
    }
}
