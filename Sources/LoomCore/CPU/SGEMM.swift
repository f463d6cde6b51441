import CDNNL
import COpenBLAS
#if canImport(Glibc)
import Glibc
#endif

/// The library behind every single-threaded float32 product on the CPU (the backend splits
/// GEMMs, attention heads and images across its own threads and calls this per piece).
///
/// oneDNN's sgemm (jit kernels for the processor: `avx512_core`, `avx2`) ran these models'
/// shapes 4-20% faster than OpenBLAS 0.3.21's on a Zen 4 core (the GPT's weight gradients,
/// K = 2048: 113 against 93 GFLOP/s; docs/benchmarks.md), so it is the default;
/// `LOOM_GEMM=openblas` keeps OpenBLAS for comparison.
enum SGEMMLibrary {
    case onednn, openblas

    static let selected: SGEMMLibrary = {
        if let s = getenv("LOOM_GEMM"), String(cString: s) == "openblas" { return .openblas }
        return .onednn
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
