import CDNNL
import CLoomKernels
import Foundation

// bf16 matrix products on oneDNN's matmul primitive, where the processor has AMX's tiles
// (or `LOOM_BF16_GEMM=onednn`); with AVX512-BF16 alone Loom's own kernel runs instead
// (`CLoomKernels/GEMMBF16.c`, which shares a packed operand across threads and serves the
// fused attention; docs/benchmarks.md has its speed).
// Operands bf16, accumulation and output float32: the semantics of the widened float32
// path (a product of two bf16 values is exact in float32), with the sums in another order.
//
// One primitive per geometry (oneDNN generates its code then), kept. The backend splits a
// product across its own threads as it splits float32's and runs each piece on one thread:
// with an OpenMP team per call, the team's idle threads spun in libgomp for 31% of a bf16
// GPT step. A geometry oneDNN would serve only with its reference (scalar) kernels is not
// used: the caller widens to float32 instead.

/// Which kernels a bf16 product runs on this machine.
public enum BF16GEMMPath: String, Sendable {
    /// Loom's own AVX512-BF16 kernel (`GEMMBF16.c`): the processor has vdpbf16ps and no AMX.
    case kernel
    /// oneDNN's bf16 matmul: the processor has AMX tiles (16x vdpbf16ps's multiply-adds),
    /// or `LOOM_BF16_GEMM=onednn`.
    case onednn
    /// Operands widened to float32, then sgemm (no bf16 instructions; or `LOOM_BF16_GEMM=widen`).
    case widen

    /// Fixed per process (a run is bit-reproducible): oneDNN where the processor has AMX, Loom's
    /// kernel where it has AVX512-BF16, else widening; `LOOM_BF16_GEMM=kernel|onednn|widen`
    /// chooses by hand (a path the processor cannot run falls back to widening).
    public static let selected: BF16GEMMPath = {
        let isa = dnnl_get_effective_cpu_isa().rawValue
        let hasAMX = isa & dnnl_cpu_isa_avx512_core_amx.rawValue == dnnl_cpu_isa_avx512_core_amx.rawValue
        let oneDNNHasBF16 = isa & dnnl_cpu_isa_avx512_core_bf16.rawValue == dnnl_cpu_isa_avx512_core_bf16.rawValue
        let kernelRuns = loom_cpu_has_avx512_bf16() != 0
        let automatic: BF16GEMMPath = hasAMX ? .onednn : kernelRuns ? .kernel : oneDNNHasBF16 ? .onednn : .widen
        guard let s = getenv("LOOM_BF16_GEMM") else { return automatic }
        switch BF16GEMMPath(rawValue: String(cString: s)) {
        case .kernel?: return kernelRuns ? .kernel : .widen
        case .onednn?: return oneDNNHasBF16 ? .onednn : .widen
        case .widen?: return .widen
        case nil:
            fputs("loom: LOOM_BF16_GEMM=\(String(cString: s)) is not one of kernel, onednn, widen; using \(automatic.rawValue)\n", stderr)
            return automatic
        }
    }()

    /// What `loom bench` prints: the path and the instructions it uses.
    public static var description: String {
        switch selected {
        case .kernel: return "loom kernel (avx512_bf16)"
        case .onednn: return "onednn (\(OneDNNMatmul.isaName))"
        case .widen: return "widened to float32"
        }
    }
}

/// The shape of one product C = alpha · op(A) · op(B) + beta · C, row-major, with each
/// operand's leading dimension (the backend splits batches and rows across its threads
/// and runs each piece alone).
struct MatmulGeometry: Hashable {
    var m: Int, n: Int, k: Int
    var transA: Bool, transB: Bool
    var lda: Int, ldb: Int, ldc: Int
    var alpha: Float, beta: Float
}

/// One geometry's primitive and the memory objects its calls point at the operands.
final class OneDNNMatmul {
    private let engine: dnnl_engine_t
    private let stream: dnnl_stream_t
    private var primitive: dnnl_primitive_t?
    private var a: dnnl_memory_t?, b: dnnl_memory_t?, c: dnnl_memory_t?

    /// nil when oneDNN has no fast kernel for the geometry.
    init?(_ g: MatmulGeometry) {
        var e: dnnl_engine_t?, s: dnnl_stream_t?
        guard dnnl_engine_create(&e, dnnl_cpu, 0) == dnnl_success, let e,
              dnnl_stream_create(&s, e, UInt32(dnnl_stream_default_flags.rawValue)) == dnnl_success, let s else { return nil }
        engine = e; stream = s
        func desc(_ rows: Int, _ cols: Int, ld: Int, transposed: Bool, _ type: dnnl_data_type_t) -> dnnl_memory_desc_t? {
            var md = dnnl_memory_desc_t()
            var dims = [Int64(rows), Int64(cols)]
            var strides = transposed ? [1, Int64(ld)] : [Int64(ld), 1]
            return dnnl_memory_desc_init_by_strides(&md, 2, &dims, type, &strides) == dnnl_success ? md : nil
        }
        guard var aMD = desc(g.m, g.k, ld: g.lda, transposed: g.transA, dnnl_bf16),
              var bMD = desc(g.k, g.n, ld: g.ldb, transposed: g.transB, dnnl_bf16),
              var cMD = desc(g.m, g.n, ld: g.ldc, transposed: false, dnnl_f32) else { return nil }
        var md = dnnl_matmul_desc_t()
        guard dnnl_matmul_desc_init(&md, &aMD, &bMD, nil, &cMD) == dnnl_success else { return nil }
        var attr: dnnl_primitive_attr_t?, ops: dnnl_post_ops_t?
        guard dnnl_primitive_attr_create(&attr) == dnnl_success, let attr else { return nil }
        defer { dnnl_primitive_attr_destroy(attr) }
        if g.alpha != 1 {
            var alpha = g.alpha
            guard dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha) == dnnl_success else { return nil }
        }
        if g.beta != 0 {
            guard dnnl_post_ops_create(&ops) == dnnl_success, let ops else { return nil }
            defer { dnnl_post_ops_destroy(ops) }
            guard dnnl_post_ops_append_sum(ops, g.beta) == dnnl_success, dnnl_primitive_attr_set_post_ops(attr, ops) == dnnl_success else { return nil }
        }
        var pd: dnnl_primitive_desc_t?
        guard dnnl_primitive_desc_create(&pd, &md, attr, e, nil) == dnnl_success, let pd else { return nil }
        defer { dnnl_primitive_desc_destroy(pd) }
        var info: UnsafePointer<CChar>?
        dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &info)
        guard let info, !String(cString: info).hasPrefix("ref") else { return nil }
        guard dnnl_primitive_create(&primitive, pd) == dnnl_success,
              dnnl_memory_create(&a, &aMD, e, nil) == dnnl_success, dnnl_memory_create(&b, &bMD, e, nil) == dnnl_success,
              dnnl_memory_create(&c, &cMD, e, nil) == dnnl_success else { return nil }
    }

    deinit {
        if let primitive { dnnl_primitive_destroy(primitive) }
        for m in [a, b, c] { if let m { dnnl_memory_destroy(m) } }
        dnnl_stream_destroy(stream)
        dnnl_engine_destroy(engine)
    }

    /// Runs the product on these operands (A and B bf16, C float32), on the calling thread's
    /// OpenMP team (the backend makes it one thread).
    func run(a pa: UnsafeMutableRawPointer, b pb: UnsafeMutableRawPointer, c pc: UnsafeMutableRawPointer) {
        dnnl_memory_set_data_handle_v2(a, pa, stream)
        dnnl_memory_set_data_handle_v2(b, pb, stream)
        dnnl_memory_set_data_handle_v2(c, pc, stream)
        var args = [dnnl_exec_arg_t(arg: DNNL_ARG_SRC, memory: a), dnnl_exec_arg_t(arg: DNNL_ARG_WEIGHTS, memory: b),
                    dnnl_exec_arg_t(arg: DNNL_ARG_DST, memory: c)]
        precondition(dnnl_primitive_execute(primitive, stream, 3, &args) == dnnl_success, "oneDNN bf16 matmul failed")
        dnnl_stream_wait(stream)
    }

    /// The instructions oneDNN's kernels use here ("avx512_core_bf16", "avx512_core_amx").
    static var isaName: String {
        switch dnnl_get_effective_cpu_isa() {
        case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx"
        case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16"
        default: return "isa \(dnnl_get_effective_cpu_isa().rawValue)"
        }
    }
}

/// Each geometry's primitives. An entry serves one call at a time, so each call checks
/// one out (in-process ranks share the CPU backend).
final class MatmulCache: @unchecked Sendable {
    private var idle: [MatmulGeometry: [OneDNNMatmul]] = [:]
    private var unsupported: Set<MatmulGeometry> = []
    private let lock = NSLock()

    /// Whether oneDNN has a fast kernel for the geometry (its primitive is built and kept
    /// the first time).
    func supports(_ g: MatmulGeometry) -> Bool { with(g) { _ in } }

    /// Runs `body` with the geometry's primitive to itself; false when oneDNN has none.
    func with(_ g: MatmulGeometry, _ body: (OneDNNMatmul) -> Void) -> Bool {
        lock.lock()
        if unsupported.contains(g) { lock.unlock(); return false }
        let entry = idle[g]?.popLast()
        lock.unlock()
        guard let matmul = entry ?? OneDNNMatmul(g) else {
            lock.lock(); unsupported.insert(g); lock.unlock()
            return false
        }
        body(matmul)
        lock.lock(); idle[g, default: []].append(matmul); lock.unlock()
        return true
    }
}
