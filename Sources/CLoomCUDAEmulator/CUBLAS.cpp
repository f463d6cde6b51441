// The emulated cuBLAS: strided-batched GEMMs queued on the handle's stream and run by
// OpenBLAS's cblas_sgemm argument for argument (column-major). With TF32 math the float32
// operands are first rounded to TF32 (10-bit mantissa), as tensor cores do; bf16 operands
// are widened exactly. Arguments are checked as cuBLAS checks them, with its status codes
// (CUBLAS_STATUS_INVALID_VALUE, 7, for a leading dimension shorter than a column), before
// anything is queued: OpenBLAS would print a line and leave C untouched instead.
#include "Internal.h"

#include <algorithm>
#include <array>
#include <functional>
#include <cstring>
#include <string>
#include <vector>

using namespace emu;

extern "C" void cblas_sgemm(int order, int transA, int transB, int m, int n, int k, float alpha, const float* a, int lda,
                            const float* b, int ldb, float beta, float* c, int ldc);


namespace {

// cublasStatus_t values.
const int CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_NOT_INITIALIZED = 1, CUBLAS_STATUS_INVALID_VALUE = 7,
          CUBLAS_STATUS_EXECUTION_FAILED = 13, CUBLAS_STATUS_NOT_SUPPORTED = 15;

struct EmulatedBLAS {
    Context* context;
    void* stream = nullptr;
    int mathMode = 0;
};

// cuBLAS's checks of a GEMM's sizes and leading dimensions (column-major: op(A) is m x k,
// op(B) is k x n, C is m x n).
int checkGEMM(const char* call, int transA, int transB, int m, int n, int k, int lda, int ldb, int ldc, int batch) {
    auto refuse = [&](const std::string& why) { return failWith(CUBLAS_STATUS_INVALID_VALUE, std::string(call) + ": " + why); };
    if (transA < 0 || transA > 2 || transB < 0 || transB > 2) return refuse("an operation that is not N, T or C");
    if (m < 0 || n < 0 || k < 0 || batch < 0)
        return refuse("a negative size (m " + std::to_string(m) + ", n " + std::to_string(n) + ", k " + std::to_string(k) + ", batch " +
                      std::to_string(batch) + ")");
    int rowsA = transA ? k : m, rowsB = transB ? n : k;
    if (lda < std::max(1, rowsA)) return refuse("lda " + std::to_string(lda) + " < max(1, " + std::to_string(rowsA) + ")");
    if (ldb < std::max(1, rowsB)) return refuse("ldb " + std::to_string(ldb) + " < max(1, " + std::to_string(rowsB) + ")");
    if (ldc < std::max(1, m)) return refuse("ldc " + std::to_string(ldc) + " < max(1, " + std::to_string(m) + ")");
    return CUBLAS_STATUS_SUCCESS;
}

// Queues the GEMM on the handle's stream; a fault inside it is the context's sticky error.
int enqueueGEMM(EmulatedBLAS* handle, const char* call, std::function<void()> gemm) {
    if (!handle || !handle->context) return failWith(CUBLAS_STATUS_NOT_INITIALIZED, std::string(call) + ": no cuBLAS handle");
    if (handle->context->stickyError()) return CUBLAS_STATUS_EXECUTION_FAILED;
    Stream* s = handle->context->stream(handle->stream);
    if (!s) return failWith(CUBLAS_STATUS_EXECUTION_FAILED, std::string(call) + ": the handle's stream was destroyed");
    std::string name = call;
    s->enqueue([=](std::string& message) {
        uintptr_t fault = 0;
        if (runTrappingFaults(gemm, fault)) return int(CUDA_SUCCESS);
        message = name + ": illegal memory access, " + describeAddress(fault);
        return int(CUDA_ERROR_ILLEGAL_ADDRESS);
    });
    return CUBLAS_STATUS_SUCCESS;
}

// Rounds a float to TF32 (sign, 8-bit exponent, 10-bit mantissa) to nearest even, as the
// tensor cores read their inputs.
float tf32(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu;
    memcpy(&x, &u, 4);
    return x;
}

// cudaDataType_t and cublasComputeType_t values the backend uses.
const int CUDA_R_32F = 0, CUDA_R_16BF = 14, CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_FAST_TF32 = 77;

// The column-major rows x cols matrix at p (leading dimension ld) as float32: bf16 widened
// (exact), float32 rounded to TF32 when asked.
std::vector<float> floatCopy(const void* p, int type, int rows, int cols, int ld, bool roundToTF32) {
    std::vector<float> out(size_t(ld) * cols);
    for (int j = 0; j < cols; ++j)
        for (int i = 0; i < rows; ++i) {
            size_t at = size_t(j) * ld + i;
            if (type == CUDA_R_16BF) {
                uint32_t u = uint32_t(static_cast<const uint16_t*>(p)[at]) << 16;
                memcpy(&out[at], &u, 4);
            } else {
                float x = static_cast<const float*>(p)[at];
                out[at] = roundToTF32 ? tf32(x) : x;
            }
        }
    return out;
}

// One column-major GEMM per batch entry through cblas_sgemm, the operands first made
// float32 (and TF32-rounded when asked) unless they already are and need no rounding.
int batchedGEMM(int type, bool roundToTF32, int transA, int transB, int m, int n, int k, float alpha, uint64_t a, int lda,
                long long strideA, uint64_t b, int ldb, long long strideB, float beta, uint64_t c, int ldc, long long strideC,
                int batch) {
    const int colMajor = 102, noTrans = 111, trans = 112;
    const size_t bytes = type == CUDA_R_16BF ? 2 : 4;
    for (int i = 0; i < batch; ++i) {
        const void* A = reinterpret_cast<const char*>(a) + bytes * strideA * i;
        const void* B = reinterpret_cast<const char*>(b) + bytes * strideB * i;
        float* C = reinterpret_cast<float*>(c) + strideC * i;
        if ((roundToTF32 || type != CUDA_R_32F) && k > 0) {
            std::vector<float> fa = floatCopy(A, type, transA ? k : m, transA ? m : k, lda, roundToTF32);
            std::vector<float> fb = floatCopy(B, type, transB ? n : k, transB ? k : n, ldb, roundToTF32);
            cblas_sgemm(colMajor, transA ? trans : noTrans, transB ? trans : noTrans, m, n, k, alpha, fa.data(), lda, fb.data(), ldb,
                        beta, C, ldc);
        } else {
            cblas_sgemm(colMajor, transA ? trans : noTrans, transB ? trans : noTrans, m, n, k, alpha, static_cast<const float*>(A), lda,
                        static_cast<const float*>(B), ldb, beta, C, ldc);
        }
    }
    return 0;
}


}  // namespace

extern "C" {

int cublasCreate_v2(EmulatedBLAS** handle) {
    Context* c = currentContext();
    if (!c) return failWith(CUBLAS_STATUS_NOT_INITIALIZED, "cublasCreate_v2: no current context on this thread");
    *handle = new EmulatedBLAS{c};
    return CUBLAS_STATUS_SUCCESS;
}
int cublasDestroy_v2(EmulatedBLAS* handle) { delete handle; return CUBLAS_STATUS_SUCCESS; }
int cublasSetStream_v2(EmulatedBLAS* handle, void* stream) {
    if (!handle->context->stream(stream)) return failWith(CUBLAS_STATUS_INVALID_VALUE, "cublasSetStream_v2: not a stream of the handle's context");
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}
int cublasSetMathMode(EmulatedBLAS* handle, int mode) {
    if (mode != 0 && mode != 1 && mode != 2 && mode != 3 && mode != 16) return failWith(CUBLAS_STATUS_INVALID_VALUE, "cublasSetMathMode: unknown mode");
    handle->mathMode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

int cublasSgemmStridedBatched(EmulatedBLAS* handle, int transA, int transB, int m, int n, int k, const float* alpha, uint64_t a, int lda,
                              long long strideA, uint64_t b, int ldb, long long strideB, const float* beta, uint64_t c, int ldc,
                              long long strideC, int batch) {
    const char* call = "cublasSgemmStridedBatched";
    if (int e = checkGEMM(call, transA, transB, m, n, k, lda, ldb, ldc, batch)) return e;
    bool tf32Math = handle->mathMode == 3;  // CUBLAS_TF32_TENSOR_OP_MATH
    float al = *alpha, be = *beta;  // host pointer mode: read at the call
    return enqueueGEMM(handle, call, [=] {
        batchedGEMM(CUDA_R_32F, tf32Math, transA, transB, m, n, k, al, a, lda, strideA, b, ldb, strideB, be, c, ldc, strideC, batch);
    });
}

// The mixed-precision GEMM: bf16 (or float32) A and B, float32 C, float32 accumulation.
int cublasGemmStridedBatchedEx(EmulatedBLAS* handle, int transA, int transB, int m, int n, int k, const void* alpha, uint64_t a, int aType,
                               int lda, long long strideA, uint64_t b, int bType, int ldb, long long strideB, const void* beta, uint64_t c,
                               int cType, int ldc, long long strideC, int batch, int computeType, int /* algo */) {
    const char* call = "cublasGemmStridedBatchedEx";
    if (int e = checkGEMM(call, transA, transB, m, n, k, lda, ldb, ldc, batch)) return e;
    if (aType != bType || (aType != CUDA_R_16BF && aType != CUDA_R_32F) || cType != CUDA_R_32F ||
        (computeType != CUBLAS_COMPUTE_32F && computeType != CUBLAS_COMPUTE_32F_FAST_TF32))
        return failWith(CUBLAS_STATUS_NOT_SUPPORTED, "the emulator's GemmEx takes bf16 or float32 A and B, float32 C and float32 compute");
    bool tf32Math = aType == CUDA_R_32F && (computeType == CUBLAS_COMPUTE_32F_FAST_TF32 || handle->mathMode == 3);
    float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
    return enqueueGEMM(handle, call, [=] {
        batchedGEMM(aType, tf32Math, transA, transB, m, n, k, al, a, lda, strideA, b, ldb, strideB, be, c, ldc, strideC, batch);
    });
}

}  // extern "C"
