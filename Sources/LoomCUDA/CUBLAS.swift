import Foundation

/// cuBLAS, resolved with `dlopen`: strided-batched SGEMM on a stream, TF32 tensor cores
/// when allowed (`allowTF32`, PyTorch's `torch.backends.cuda.matmul.allow_tf32`), and the
/// bf16 GEMM of mixed precision (bf16 operands, float32 accumulation and output).
public final class CUBLAS: @unchecked Sendable {
    public let library: DynamicLibrary
    typealias Status = Int32
    let create: @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Status
    let setStream: @convention(c) (OpaquePointer?, CUstream) -> Status
    let setMathMode: @convention(c) (OpaquePointer?, Int32) -> Status
    let sgemmStridedBatched: @convention(c) (OpaquePointer?, Int32, Int32, Int32, Int32, Int32, UnsafePointer<Float>, CUdeviceptr, Int32, Int64,
                                             CUdeviceptr, Int32, Int64, UnsafePointer<Float>, CUdeviceptr, Int32, Int64, Int32) -> Status
    let gemmStridedBatchedEx: @convention(c) (OpaquePointer?, Int32, Int32, Int32, Int32, Int32, UnsafeRawPointer, CUdeviceptr, Int32, Int32, Int64,
                                              CUdeviceptr, Int32, Int32, Int64, UnsafeRawPointer, CUdeviceptr, Int32, Int32, Int64, Int32,
                                              Int32, Int32) -> Status
    private var handle: OpaquePointer?

    public static let candidates = ["libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so"]

    public init(stream: CUstream, allowTF32: Bool, emulator: String? = DynamicLibrary.emulatorPath) throws {
        library = try DynamicLibrary(candidates: CUBLAS.candidates, purpose: "cuBLAS (libcublas.so)", emulator: emulator)
        let l = library
        create = try l.function("cublasCreate_v2")
        setStream = try l.function("cublasSetStream_v2")
        setMathMode = try l.function("cublasSetMathMode")
        sgemmStridedBatched = try l.function("cublasSgemmStridedBatched")
        gemmStridedBatchedEx = try l.function("cublasGemmStridedBatchedEx")
        try check(create(&handle), "cublasCreate_v2")
        try check(setStream(handle, stream), "cublasSetStream_v2")
        // CUBLAS_TF32_TENSOR_OP_MATH = 3, CUBLAS_DEFAULT_MATH = 0.
        try check(setMathMode(handle, allowTF32 ? 3 : 0), "cublasSetMathMode")
    }

    /// cuBLAS statuses by number (cublasStatus_t).
    static let names: [Int32: String] = [1: "CUBLAS_STATUS_NOT_INITIALIZED", 3: "CUBLAS_STATUS_ALLOC_FAILED", 7: "CUBLAS_STATUS_INVALID_VALUE",
                                         8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR", 13: "CUBLAS_STATUS_EXECUTION_FAILED",
                                         14: "CUBLAS_STATUS_INTERNAL_ERROR", 15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR"]

    func check(_ status: Status, _ call: String) throws {
        guard status != 0 else { return }
        throw CUDAError(call: call, message: "\(CUBLAS.names[status] ?? "unknown cuBLAS status") (\(status))")
    }

    /// Column-major C[b] = alpha · op(A[b]) · op(B[b]) + beta · C[b] for b in 0..<batch
    /// (row-major callers swap A and B).
    public func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: CUdeviceptr, lda: Int, strideA: Int,
                     b: CUdeviceptr, ldb: Int, strideB: Int, beta: Float, c: CUdeviceptr, ldc: Int, strideC: Int, batch: Int) throws {
        var alpha = alpha, beta = beta
        try check(sgemmStridedBatched(handle, transA ? 1 : 0, transB ? 1 : 0, Int32(m), Int32(n), Int32(k), &alpha, a, Int32(lda), Int64(strideA),
                                      b, Int32(ldb), Int64(strideB), &beta, c, Int32(ldc), Int64(strideC), Int32(batch)),
                  "cublasSgemmStridedBatched(\(m)x\(n)x\(k), batch \(batch))")
    }

    /// As `gemm`, with bf16 A and B (cudaDataType CUDA_R_16BF) and float32 C, accumulated
    /// in float32 (CUBLAS_COMPUTE_32F): the tensor cores' bf16 path.
    public func gemmBF16(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: CUdeviceptr, lda: Int, strideA: Int,
                         b: CUdeviceptr, ldb: Int, strideB: Int, beta: Float, c: CUdeviceptr, ldc: Int, strideC: Int, batch: Int) throws {
        var alpha = alpha, beta = beta
        let bf16: Int32 = 14, float32: Int32 = 0, compute32F: Int32 = 68, defaultAlgorithm: Int32 = -1
        try check(gemmStridedBatchedEx(handle, transA ? 1 : 0, transB ? 1 : 0, Int32(m), Int32(n), Int32(k), &alpha,
                                       a, bf16, Int32(lda), Int64(strideA), b, bf16, Int32(ldb), Int64(strideB), &beta,
                                       c, float32, Int32(ldc), Int64(strideC), Int32(batch), compute32F, defaultAlgorithm),
                  "cublasGemmStridedBatchedEx(bf16 \(m)x\(n)x\(k), batch \(batch))")
    }
}
