import CDNNL
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
    /// How fast each thread has run its share of recent bf16 products and attention heads
    /// (their splits follow it).
    public let speeds: ThreadSpeeds
    /// Whether results every thread reads next are stored past the caches, measured.
    public let handOvers: StreamedHandOvers

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

    /// `streaming`: how `handOvers` decides (nil: `LOOM_STREAM_STORES`, else measured).
    public init(threads: Int, streaming: StreamedHandOvers.Mode? = nil) {
        self.threads = max(1, threads)
        speeds = ThreadSpeeds(threads: self.threads)
        handOvers = StreamedHandOvers(mode: streaming ?? StreamedHandOvers.modeFromEnvironment)
        CPUBackend.configureOnce
    }

    /// oneDNN convolution primitives by geometry (`CPU+Conv.swift`).
    let convolutions = ConvolutionCache()
    let matmuls = MatmulCache()

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
        let start = monotonicSeconds()
        defer { count(.memory, flops: 0, since: start) }
        // The conversions a bf16 product reads its operands through: C kernels.
        if x.dtype == .float32 && y.dtype == .bfloat16 {
            let src = x.ptr, dst = y.halfPtr, stream = streamsRounding(of: x.shape)
            parallelFor(n, grain: 1 << 15, threads: threads) { r in
                let (from, to, count) = (src + r.lowerBound, dst + r.lowerBound, Int64(r.count))
                if stream { loom_f32_to_bf16_streaming(from, to, count) } else { loom_f32_to_bf16(from, to, count) }
            }
            return
        }
        if x.dtype == .bfloat16 && y.dtype == .float32 {
            let src = x.halfPtr, dst = y.ptr
            parallelFor(n, grain: 1 << 15, threads: threads) { r in loom_bf16_to_f32(src + r.lowerBound, dst + r.lowerBound, Int64(r.count)) }
            return
        }
        // Through float32: every conversion here is exact except the narrowing one. (The
        // pointers are taken once: each access marks the storage touched.)
        let (xs, xh, ys, yh) = (x.ptr, x.halfPtr, y.ptr, y.halfPtr)
        parallelFor(n, grain: 1 << 15, threads: threads) { r in
            for i in r {
                let f: Float
                switch x.dtype {
                case .bfloat16: f = BFloat16Bits.float(xh[i])
                case .float16: f = Float(Float16(bitPattern: xh[i]))
                default: f = xs[i]
                }
                switch y.dtype {
                case .bfloat16: yh[i] = BFloat16Bits.from(f)
                case .float16: yh[i] = Float16(f).bitPattern
                default: ys[i] = f
                }
            }
        }
    }

    /// Rows of the cast split across the threads, as `cast` splits them, each block of
    /// `castSumRows` rows summed on its own, then the blocks' sums added in order: one pass
    /// over x, and the same floats at any thread count.
    public func cast(_ x: Tensor, into y: Tensor, summingColumns columnSums: Tensor, rows: Int, cols: Int) {
        guard x.dtype == .float32, y.dtype == .bfloat16, columnSums.dtype == .float32, rows > 0, cols > 0 else {
            cast(x, into: y)
            reduce(.sum, x, outer: 1, n: rows, inner: cols, into: columnSums)
            return
        }
        precondition(x.count == rows * cols && y.count == x.count && columnSums.count == cols,
                     "cast summing columns: x \(describe(x.shape)), y \(describe(y.shape)), sums \(describe(columnSums.shape)) for [\(rows), \(cols)]")
        let start = monotonicSeconds()
        defer { count(.memory, flops: 0, since: start) }
        let px = x.ptr
        roundingSummingRows(rows: rows, cols: cols, into: y.halfPtr, summingColumns: columnSums.ptr) { r0, _, _ in UnsafePointer(px + r0 * cols) }
    }

    /// Rows a block of `cast(_:into:summingColumns:)` sums before the blocks are added: 64,
    /// so that a batch of 128 rows (the mlp's) goes to two threads, each rounding the rows of
    /// dY the op before it wrote there. In one block of 128, one thread read all of dY, half of
    /// it from the other core, and kept those lines, which that core's next write into the
    /// buffer then had to take back (mlp bf16 at 2 threads with the vCPUs on two L3s 3.6%
    /// faster over 18 pairs of runs, the same on one L3: docs/benchmarks.md).
    static let castSumRows = 64

    /// Whether a bf16 operand rounded now from a float32 activation of [rows, cols] is
    /// stored past the cores' caches: where it is shorter than it is wide and `handOvers`
    /// says so. The product that reads it next splits by columns (`pieces`), so every thread
    /// reads all of it. A tall activation's product splits by rows, each thread reading the
    /// rows it wrote, which streaming would send to memory and back.
    public func streamsRounding(rows: Int, cols: Int) -> Bool { rows < cols && streamsHandOvers() }

    /// Whether results every thread reads next are streamed now (`StreamedHandOvers`): its
    /// measurement runs on two of this backend's threads.
    func streamsHandOvers() -> Bool {
        handOvers.now(threads: threads) { body in
            parallelFor(2, grain: 1, threads: 2) { r in for id in r { body(id) } }
        }
    }

    /// `streamsRounding(rows:cols:)` for an activation of `shape`: its last axis the columns.
    func streamsRounding(of shape: [Int]) -> Bool {
        guard shape.count >= 2, let cols = shape.last, cols > 0 else { return false }
        return streamsRounding(rows: shape.reduce(1, *) / cols, cols: cols)
    }

    /// y [rows, cols] (bf16) = the float32 rows `source` gives, rounded, and (where `sums`)
    /// their column sums: blocks of `castSumRows` rows across the threads, each summed in row
    /// order, then the blocks' sums in order. `source(r0, n, buffer)` returns rows r0..<r0+n:
    /// where they lie, or computed into `buffer` (room for `n` rows: 4096 floats, or one row).
    func roundingSummingRows(rows: Int, cols: Int, into y: UnsafeMutablePointer<UInt16>, summingColumns sums: UnsafeMutablePointer<Float>?,
                             _ source: (Int, Int, UnsafeMutablePointer<Float>) -> UnsafePointer<Float>) {
        let block = Self.castSumRows, blocks = (rows + block - 1) / block, stream = streamsRounding(rows: rows, cols: cols)
        let partial = UnsafeMutablePointer<Float>.allocate(capacity: sums == nil ? 0 : blocks * cols)
        defer { partial.deallocate() }
        let step = max(1, 4096 / cols)  // rows a buffer holds
        parallelFor(blocks, grain: max(1, (1 << 15) / (block * cols)), threads: threads) { r in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: step * cols) { buffer in
                for b in r {
                    for r0 in stride(from: b * block, to: min(rows, (b + 1) * block), by: step) {
                        let n = min(step, rows - r0, (b + 1) * block - r0)
                        let rowsHere = source(r0, n, buffer.baseAddress!)
                        let (to, accumulate) = (y + r0 * cols, Int32(r0 == b * block ? 0 : 1))
                        switch (sums, stream) {
                        case (nil, false): loom_f32_to_bf16(rowsHere, to, Int64(n * cols))
                        case (nil, true): loom_f32_to_bf16_streaming(rowsHere, to, Int64(n * cols))
                        case (_, false): loom_f32_to_bf16_summing_rows(rowsHere, to, partial + b * cols, Int64(cols), 0, Int64(n), accumulate)
                        case (_, true):
                            loom_f32_to_bf16_summing_rows_streaming(rowsHere, to, partial + b * cols, Int64(cols), 0, Int64(n), accumulate)
                        }
                    }
                }
            }
        }
        guard let sums else { return }
        sums.update(from: partial, count: cols)
        for b in 1..<blocks { zip8(sums, partial + b * cols, sums, cols, +) }
    }

    public func synchronize() {}

    // MARK: Linear algebra

    public func gemm(_ a: GEMMOperand, _ b: GEMMOperand, _ c: GEMMOperand, m: Int, n: Int, k: Int, batch: Int,
                     alpha: Float, beta: Float) {
        if a.tensor.dtype == .bfloat16 || b.tensor.dtype == .bfloat16 {
            precondition(a.tensor.dtype == b.tensor.dtype && c.tensor.dtype == .float32,
                         "gemm: operands \(a.tensor.dtype) and \(b.tensor.dtype) into \(c.tensor.dtype): both float32 or both bfloat16, into float32")
            switch BF16GEMMPath.selected {
            case .kernel: bf16KernelGEMM(a, b, c, m: m, n: n, k: k, batch: batch, alpha: alpha, beta: beta); return
            case .onednn: if bf16GEMM(a, b, c, m: m, n: n, k: k, batch: batch, alpha: alpha, beta: beta) { return }
            case .widen: break
            }
            // bf16 operands, widened: a product of two bf16 values (8-bit mantissas) is
            // exact in float32, so sgemm on the widened values is a bf16 GEMM that
            // accumulates in float32, which is what cuBLAS does with them too.
            gemm(widened(a, rows: a.transposed ? k : m, cols: a.transposed ? m : k, batch: batch),
                 widened(b, rows: b.transposed ? n : k, cols: b.transposed ? k : n, batch: batch),
                 c, m: m, n: n, k: k, batch: batch, alpha: alpha, beta: beta)
            return
        }
        let start = monotonicSeconds()
        defer { count(.gemm, flops: 2 * Double(m) * Double(n) * Double(k) * Double(batch), since: start) }
        let pa = a.tensor.ptr, pb = b.tensor.ptr, pc = c.tensor.ptr
        split(a, b, c, m: m, n: n, k: k, batch: batch) { p in
            sgemm(a, pa + p.a, b, pb + p.b, pc + p.c, c.ld, m: p.m, n: p.n, k: k, alpha: alpha, beta: beta)
        }
    }

    /// One single-threaded product of a split: its operands' element offsets in their
    /// tensors, its m and n, and the first column of C it covers.
    struct GEMMPiece { var a: Int, b: Int, c: Int, m: Int, n: Int, column = 0 }

    /// How a product is spread over the threads, the same for every element type: by
    /// batch entry when there are several, else by rows of C (or columns, when C is short
    /// and wide): in even pieces, multiples of 8, or (`balancing` a shape) in proportion to
    /// the threads' recent speeds at that shape (`ThreadSpeeds`), rows in multiples of 8 and
    /// columns of 32, piece i for thread i (`measured` then names the shape to record).
    /// Aᵀ B (a weight gradient, dW [out, in] = dYᵀ X) goes by rows even when C is wide: the
    /// rows of dW a thread writes are then the rows the optimizer's even split gives it to
    /// update, so the gradient stays in the cache of the core that wrote it (mlp's bf16 step
    /// at 2 threads 3% faster; a line handed between cores costs most where their L3s
    /// differ: docs/benchmarks.md).
    private func pieces(_ a: GEMMOperand, _ b: GEMMOperand, _ c: GEMMOperand, m: Int, n: Int, k: Int, batch: Int,
                        balancing shape: ThreadSpeeds.Shape? = nil) -> (pieces: [GEMMPiece], threads: Int, measured: ThreadSpeeds.Shape?) {
        let entries = (0..<batch).map { GEMMPiece(a: a.offset + $0 * a.batchStride, b: b.offset + $0 * b.batchStride, c: c.offset + $0 * c.batchStride, m: m, n: n) }
        let threads: Int = Double(m) * Double(n) * Double(k) * Double(batch) < 131_072 ? 1 : self.threads
        if batch >= threads { return (entries, threads, nil) }
        let byRows = m >= n || n < 16 * threads || (a.transposed && !b.transposed && m >= 16 * threads)  // m: out features
        let ranges = shape.map { speeds.ranges(byRows ? m : n, pieces: threads, multiple: byRows ? 8 : 32, shape: $0) }
            ?? pieceRanges(byRows ? m : n, pieces: threads)
        return (entries.flatMap { e in
            ranges.map { lo, len in
                byRows  // rows lo..<lo+len of C need rows of op(A); columns of C, columns of op(B)
                    ? GEMMPiece(a: a.transposed ? e.a + lo : e.a + lo * a.ld, b: e.b, c: e.c + lo * c.ld, m: len, n: n)
                    : GEMMPiece(a: e.a, b: b.transposed ? e.b + lo * b.ld : e.b + lo, c: e.c + lo, m: m, n: len, column: lo)
            }
        }, threads, batch == 1 && ranges.count > 1 ? shape : nil)
    }

    /// Runs `body` on each piece of the product, across the threads.
    private func split(_ a: GEMMOperand, _ b: GEMMOperand, _ c: GEMMOperand, m: Int, n: Int, k: Int, batch: Int,
                       _ body: (GEMMPiece) -> Void) {
        let (list, threads, _) = pieces(a, b, c, m: m, n: n, k: k, batch: batch)
        parallelFor(list.count, grain: 1, threads: threads) { r in for i in r { body(list[i]) } }
    }

    /// `total` rows (or columns) in `pieces` ranges of whole SIMD panels (multiples of 8;
    /// the last may be shorter).
    private func pieceRanges(_ total: Int, pieces: Int) -> [(start: Int, count: Int)] {
        let chunk = ((total + pieces - 1) / pieces + 7) / 8 * 8
        return stride(from: 0, to: total, by: chunk).map { ($0, min(chunk, total - $0)) }
    }

    /// A linear layer's product: on Loom's bf16 kernel the bias is added as C is stored
    /// (one pass over C instead of three); elsewhere written into C first.
    public func gemm(_ a: GEMMOperand, _ b: GEMMOperand, _ c: GEMMOperand, m: Int, n: Int, k: Int, alpha: Float,
                     addingToEachRow bias: Tensor) throws {
        guard a.tensor.dtype == .bfloat16, BF16GEMMPath.selected == .kernel else {
            try gemmAfterWritingBias(a, b, c, m: m, n: n, k: k, alpha: alpha, bias: bias)
            return
        }
        precondition(b.tensor.dtype == .bfloat16 && c.tensor.dtype == .float32 && bias.dtype == .float32 && bias.count == n,
                     "gemm: operands \(a.tensor.dtype) and \(b.tensor.dtype) into \(c.tensor.dtype), bias \(bias.dtype) \(describe(bias.shape)) for \(n) columns")
        bf16KernelGEMM(a, b, c, m: m, n: n, k: k, batch: 1, alpha: alpha, beta: 0, bias: bias.ptr)
    }

    /// A bf16 product on Loom's AVX512-BF16 kernel (`GEMMBF16.c`), spread over the threads
    /// as float32's is but in proportion to the threads' recent speeds (`ThreadSpeeds`: the
    /// kernel computes every row and column of C alike whatever its piece, so the floats are
    /// the same), `bias` [n] (if any) added to every row of C as it is stored. Pieces cut
    /// from one product by rows of C share op(B): it is packed once, its panels split across
    /// the threads, rather than by every thread in full.
    private func bf16KernelGEMM(_ a: GEMMOperand, _ b: GEMMOperand, _ c: GEMMOperand, m: Int, n: Int, k: Int, batch: Int,
                                alpha: Float, beta: Float, bias: UnsafePointer<Float>? = nil) {
        let start = monotonicSeconds()
        defer { count(.gemm, flops: 2 * Double(m) * Double(n) * Double(k) * Double(batch), since: start) }
        if batch == 1 && threads > 1 && splitsAlongK(a, b, m: m, n: n, k: k) {
            splitK(a, b, c, m: m, n: n, k: k, alpha: alpha, beta: beta, bias: bias)
            return
        }
        let pa = a.tensor.halfPtr, pb = b.tensor.halfPtr, pc = c.tensor.ptr
        let (list, threads, measured) = pieces(a, b, c, m: m, n: n, k: k, batch: batch,
                                               balancing: Self.productShape(m: m, n: n, k: k, transA: a.transposed, transB: b.transposed))
        let work = list.map { Double($0.m) * Double($0.n) }
        let sharedB = list.count > 1 && k > 0 && list.allSatisfy { $0.b == list[0].b && $0.n == n }
        guard sharedB, let buffer = try? Tensor(uninitialized: [Int(loom_bf16_packed_b_words(Int64(k), Int64(n)))], on: self) else {
            // Pieces by columns write C in strips of every row, which the next op reads by rows.
            let product = list.count > 1 && list[0].n < n && streamsHandOvers() ? loom_bf16_gemm_streaming : loom_bf16_gemm
            timed(pieces: work, threads: threads, recording: measured) { i in
                let p = list[i]
                let done = product(a.transposed ? 1 : 0, b.transposed ? 1 : 0, Int64(p.m), Int64(p.n), Int64(k), alpha,
                                   pa + p.a, Int64(a.ld), pb + p.b, Int64(b.ld), beta, pc + p.c, Int64(c.ld),
                                   bias.map { $0 + p.column })
                precondition(done != 0, "bf16 gemm \(p.m)x\(p.n)x\(k): no memory for the packing buffers")
            }
            return
        }
        let packed = UnsafeMutableRawPointer(buffer.ptr).assumingMemoryBound(to: UInt32.self)
        let pack = streamsHandOvers() ? loom_bf16_pack_b_streaming : loom_bf16_pack_b  // every thread reads all of it
        let (panels, pairs) = ((n + 31) / 32, (k + 1) / 2)
        if b.transposed {  // by panels: a thread reads whole stored rows (columns of op(B))
            parallelFor(panels, grain: 1, threads: threads) { r in
                pack(1, Int64(k), Int64(r.lowerBound * 32), Int64(min(r.upperBound * 32, n)), 0, Int64(pairs), pb + list[0].b,
                     Int64(b.ld), packed)
            }
        } else {  // by pairs of rows: a thread reads whole rows, in order (by panels, each read half of every row)
            parallelFor(pairs, grain: 16, threads: threads) { r in
                pack(0, Int64(k), 0, Int64(n), Int64(r.lowerBound), Int64(r.upperBound), pb + list[0].b, Int64(b.ld), packed)
            }
        }
        let panelWords = Int64((k + 1) / 2 * 32)
        timed(pieces: work, threads: threads, recording: measured) { i in
            let p = list[i]
            let done = loom_bf16_gemm_packed_b(a.transposed ? 1 : 0, Int64(p.m), Int64(n), Int64(k), alpha, pa + p.a, Int64(a.ld),
                                               packed, panelWords, beta, pc + p.c, Int64(c.ld), bias)
            precondition(done != 0, "bf16 gemm \(p.m)x\(n)x\(k): no memory for the packing buffers")
        }
    }

    /// A product's shape as `speeds` knows it.
    public static func productShape(m: Int, n: Int, k: Int, transA: Bool, transB: Bool) -> ThreadSpeeds.Shape {
        [0, m, n, k, transA ? 1 : 0, transB ? 1 : 0]
    }

    /// `body(i)` for each of `work.count` pieces across the threads, piece i on team thread i;
    /// each piece's seconds over its `work[i]` go to `speeds` as its thread's rate at `shape`
    /// (nil: not recorded).
    func timed(pieces work: [Double], threads: Int, recording shape: ThreadSpeeds.Shape?, _ body: (Int) -> Void) {
        withUnsafeTemporaryAllocation(of: Double.self, capacity: work.count) { seconds in
            parallelFor(work.count, grain: 1, threads: threads) { r in
                for i in r {
                    let start = monotonicSeconds()
                    body(i)
                    seconds[i] = monotonicSeconds() - start
                }
            }
            if let shape { speeds.record(work: work, seconds: Array(seconds), shape: shape) }
        }
    }

    /// `0..<count` in contiguous ranges across the threads, in proportion to their recent
    /// speeds at work of `shape` (`ThreadSpeeds`), each range's time recorded for the next
    /// split. Only for work whose results do not depend on where the ranges fall.
    func balancedFor(_ count: Int, shape: ThreadSpeeds.Shape, _ body: (Range<Int>) -> Void) {
        let shares = speeds.ranges(count, pieces: min(threads, count), multiple: 1, shape: shape)
        timed(pieces: shares.map { Double($0.count) }, threads: threads, recording: shares.count > 1 ? shape : nil) { i in
            body(shares[i].start..<shares[i].start + shares[i].count)
        }
    }

    /// Whether a bf16 product (not tiny) goes to the threads along k (`splitK`) rather than by
    /// rows or columns of C. Two kinds:
    /// - deep (k at least 4 times m and n, and two of the kernel's 384-row blocks): a weight
    ///   gradient, k the tokens, both operands stored by the rows that each thread's share of
    ///   the step wrote;
    /// - short and wide with neither operand transposed (m < n, k at least 256 a thread): an
    ///   input gradient dX [rows, in] = dY W, B the weight [out, in] stored by its k rows. Split
    ///   by columns of C, each thread would read a strip of every row of W, half of them the
    ///   rows the optimizer's even split gives the other thread to rewrite, which then pays
    ///   for every line of its bf16 copy the first thread had read (the mlp's W₂ at 2 threads,
    ///   its SGD update with the vCPUs on two L3s 148 µs against 51 on one: docs/benchmarks.md).
    ///   Along k each thread reads the rows of W it rewrites, and its columns of dY.
    private func splitsAlongK(_ a: GEMMOperand, _ b: GEMMOperand, m: Int, n: Int, k: Int) -> Bool {
        guard m * n * k >= 1 << 20 else { return false }
        let deep = k >= 4 * max(m, n) && k >= 768
        let inputGradient = !a.transposed && !b.transposed && m < n && k >= 256 * threads
        return deep || inputGradient
    }

    /// A product split along k (`splitsAlongK`): each thread takes a range of the rows both
    /// operands are stored by, packs and multiplies them in its own cache, into C (the first
    /// range, with beta and the bias) or a partial product; the partials are then added to C
    /// in order, by rows. The same floats for the same thread count. C and the partials are
    /// read next by another thread than wrote them: stored past the caches where results
    /// both threads read are (`streamsHandOvers`).
    private func splitK(_ a: GEMMOperand, _ b: GEMMOperand, _ c: GEMMOperand, m: Int, n: Int, k: Int, alpha: Float, beta: Float,
                        bias: UnsafePointer<Float>?) {
        let chunk = ((k + threads - 1) / threads + 1) / 2 * 2  // even: a range starts on a pair
        let ranges = stride(from: 0, to: k, by: chunk).map { ($0, min(chunk, k - $0)) }
        guard let partials = try? Tensor(uninitialized: [max(1, (ranges.count - 1) * m * n)], on: self) else {
            preconditionFailure("bf16 gemm \(m)x\(n)x\(k) split along k: no memory for \(ranges.count - 1) partial products")
        }
        defer { withExtendedLifetime(partials) {} }
        let partial = partials.ptr, product = streamsHandOvers() ? loom_bf16_gemm_streaming : loom_bf16_gemm
        let pa = a.tensor.halfPtr + a.offset, pb = b.tensor.halfPtr + b.offset, pc = c.tensor.ptr + c.offset
        parallelFor(ranges.count, grain: 1, threads: threads) { r in
            for i in r {
                let (k0, kc) = ranges[i]
                let ak = a.transposed ? pa + k0 * a.ld : pa + k0, bk = b.transposed ? pb + k0 : pb + k0 * b.ld
                let (ci, ldc) = i == 0 ? (pc, c.ld) : (partial + (i - 1) * m * n, n)
                let done = product(a.transposed ? 1 : 0, b.transposed ? 1 : 0, Int64(m), Int64(n), Int64(kc), alpha,
                                   ak, Int64(a.ld), bk, Int64(b.ld), i == 0 ? beta : 0, ci, Int64(ldc), i == 0 ? bias : nil)
                precondition(done != 0, "bf16 gemm \(m)x\(n)x\(kc): no memory for the packing buffers")
            }
        }
        for i in 1..<ranges.count {
            let p = partial + (i - 1) * m * n
            parallelFor(m, grain: max(1, 4096 / max(n, 1)), threads: threads) { rows in
                for row in rows { zip8(pc + row * c.ld, p + row * n, pc + row * c.ld, n, +) }
            }
        }
    }

    /// A bf16 product on oneDNN's bf16 kernels, spread over the threads as float32's is;
    /// false (nothing done) when oneDNN has no fast kernel for one of its pieces.
    private func bf16GEMM(_ a: GEMMOperand, _ b: GEMMOperand, _ c: GEMMOperand, m: Int, n: Int, k: Int, batch: Int,
                          alpha: Float, beta: Float) -> Bool {
        let start = monotonicSeconds()
        func geometry(_ m: Int, _ n: Int) -> MatmulGeometry {
            MatmulGeometry(m: m, n: n, k: k, transA: a.transposed, transB: b.transposed, lda: a.ld, ldb: b.ld, ldc: c.ld, alpha: alpha, beta: beta)
        }
        // Every piece's geometry first: all on oneDNN, or none.
        let (list, threads, _) = pieces(a, b, c, m: m, n: n, k: k, batch: batch)
        guard Set(list.map { geometry($0.m, $0.n) }).allSatisfy(matmuls.supports) else { return false }
        let pa = a.tensor.halfPtr, pb = b.tensor.halfPtr, pc = c.tensor.ptr
        parallelFor(list.count, grain: 1, threads: threads) { r in
            for i in r {
                let p = list[i]
                _ = matmuls.with(geometry(p.m, p.n)) { matmul in
                    omp_set_num_threads(1)  // one thread per piece: an OpenMP team would spin on the cores the others use
                    matmul.run(a: UnsafeMutableRawPointer(pa + p.a), b: UnsafeMutableRawPointer(pb + p.b), c: UnsafeMutableRawPointer(pc + p.c))
                }
            }
        }
        count(.gemm, flops: 2 * Double(m) * Double(n) * Double(k) * Double(batch), since: start)
        return true
    }

    /// A bf16 tensor's values as a new float32 tensor (exact).
    func widened(_ t: Tensor) -> Tensor {  // (`cast` counts the time)
        let wide: Tensor
        do { wide = try Tensor(uninitialized: t.shape, on: self) } catch { fatalError("widen: \(error)") }
        cast(t, into: wide)
        return wide
    }

    /// A bf16 operand's matrices (stored `rows` x `cols` each, `batch` of them) as a new
    /// float32 operand over just the span they cover.
    private func widened(_ op: GEMMOperand, rows: Int, cols: Int, batch: Int) -> GEMMOperand {
        let start = monotonicSeconds()
        defer { count(.memory, flops: 0, since: start) }  // a conversion, as `cast`'s are
        let span = (batch - 1) * op.batchStride + (rows - 1) * op.ld + cols
        let wide: Tensor
        do { wide = try Tensor(uninitialized: [span], on: self) } catch { fatalError("gemm: \(error)") }
        let src = op.tensor.halfPtr + op.offset, dst = wide.ptr
        parallelFor(span, grain: 1 << 15, threads: threads) { r in loom_bf16_to_f32(src + r.lowerBound, dst + r.lowerBound, Int64(r.count)) }
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
