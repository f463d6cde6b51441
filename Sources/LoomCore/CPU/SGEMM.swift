import CDNNL
import CLoomKernels
import COpenBLAS
#if canImport(Glibc)
import Glibc
#endif

/// The library behind every single-threaded float32 product on the CPU (the backend splits
/// GEMMs, attention heads and images across its own threads and calls this per piece).
///
/// Measured on a Zen 4 core (docs/benchmarks.md): with AVX-512, oneDNN's sgemm ran these
/// models' shapes 4-20% faster than OpenBLAS 0.3.21's (the GPT's weight gradients, K = 2048:
/// 113 against 93 GFLOP/s); held to AVX2 (`ONEDNN_MAX_CPU_ISA=AVX2`), oneDNN's products
/// with a transposed A fell to 69-75 GFLOP/s where OpenBLAS's Haswell kernels ran 105. So:
/// oneDNN where the kernels run AVX-512, OpenBLAS elsewhere. `LOOM_GEMM=openblas|onednn`
/// chooses by hand. The choice is fixed per process, so a run is bit-reproducible.
enum SGEMMLibrary: String {
    case onednn, openblas

    static let selected: SGEMMLibrary = {
        let automatic: SGEMMLibrary = loom_kernel_isa() == LOOM_ISA_AVX512 ? .onednn : .openblas
        guard let s = getenv("LOOM_GEMM") else { return automatic }
        if let library = SGEMMLibrary(rawValue: String(cString: s)) { return library }
        fputs("loom: LOOM_GEMM=\(String(cString: s)) is not one of onednn, openblas; using \(automatic.rawValue)\n", stderr)
        return automatic
    }()
}

/// C = alpha · op(A) · op(B) + beta · C, row-major, on the calling thread alone.
@inline(__always)
func sgemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, _ a: UnsafePointer<Float>, lda: Int,
           _ b: UnsafePointer<Float>, ldb: Int, beta: Float, _ c: UnsafeMutablePointer<Float>, ldc: Int) {
    switch SGEMMLibrary.selected {
    case .onednn:
        // oneDNN's OpenMP runtime takes its team size from the calling thread: one.
        omp_set_num_threads(1)
        let status = dnnl_sgemm(transA ? 84 : 78, transB ? 84 : 78, Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda),  // "T" : "N"
                                b, Int64(ldb), beta, c, Int64(ldc))
        precondition(status == dnnl_success, "dnnl_sgemm \(m)x\(n)x\(k) (lda \(lda), ldb \(ldb), ldc \(ldc)) failed: status \(status.rawValue)")
    case .openblas:
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
}
