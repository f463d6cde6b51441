// Loom's CUDA emulator: the driver API, NVRTC and cuBLAS calls of Loom's CUDA backend,
// answered on the CPU so that the backend's own code and its kernels' CUDA C source run
// in CI without a GPU. It proves logic, not speed; nothing here is used on a GPU.
//
// - Device memory is host memory from an arena of this library's own (every block is
//   tracked; freeing an unknown address is an error). Streams and events exist as tokens;
//   all work runs synchronously at the call.
// - "NVRTC" compiles the kernel source with the host C++ compiler, after the kernel
//   runtime (KernelRuntime.inc: CUDA threads as fibers) and one launcher per
//   `__global__` function, and returns the shared object as the "CUBIN".
// - cuBLAS's column-major SGEMM maps onto OpenBLAS's cblas_sgemm argument for argument;
//   with TF32 math the operands are first rounded to TF32 (10-bit mantissa), as tensor
//   cores do.
#include "LoomCUDAEmulator.h"

#include <dlfcn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace {

const char* runtimeSource =
#include "KernelRuntime.inc"
    ;

thread_local std::string lastError;

int failWith(int status, const std::string& message) {
    lastError = message;
    return status;
}

// CUresult values used here.
enum : int {
    CUDA_SUCCESS = 0, CUDA_ERROR_INVALID_VALUE = 1, CUDA_ERROR_OUT_OF_MEMORY = 2, CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200, CUDA_ERROR_INVALID_CONTEXT = 201, CUDA_ERROR_NOT_FOUND = 500, CUDA_ERROR_LAUNCH_FAILED = 719
};

const int deviceCount = 4;

struct Arena {
    std::mutex lock;
    std::map<uintptr_t, size_t> blocks;
    size_t bytes = 0;
};
Arena& arena() { static Arena a; return a; }

struct Module { void* handle; std::string path; };
struct Function { int (*launch)(void**, const unsigned*, unsigned, char*, size_t); std::string name; };

std::string temporaryDirectory() {
    const char* t = getenv("TMPDIR");
    return t && *t ? t : "/tmp";
}

// LOOM_CUDA_EMULATOR_PROFILE=1: the time spent in each kernel, printed to stderr at exit.
struct Profile {
    std::mutex lock;
    std::map<std::string, std::pair<double, long>> byKernel;
    bool enabled = getenv("LOOM_CUDA_EMULATOR_PROFILE") != nullptr;

    static Profile& shared() {
        static Profile* p = [] {
            auto* p = new Profile();
            if (p->enabled) atexit([] { shared().print(); });
            return p;
        }();
        return *p;
    }

    void print() {
        std::vector<std::pair<double, std::string>> rows;
        double total = 0;
        for (auto& [name, t] : byKernel) { rows.push_back({t.first, name}); total += t.first; }
        std::sort(rows.rbegin(), rows.rend());
        fprintf(stderr, "loom CUDA emulator: %.2f s in kernels\n", total);
        for (auto& [seconds, name] : rows)
            fprintf(stderr, "  %-34s %8.3f s %8ld launches\n", name.c_str(), seconds, byKernel[name].second);
    }

    struct Timer {
        std::string name;
        std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
        explicit Timer(const std::string& n) : name(n) {}
        ~Timer() {
            Profile& p = shared();
            if (!p.enabled) return;
            double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            std::lock_guard<std::mutex> g(p.lock);
            p.byKernel[name].first += s;
            p.byKernel[name].second += 1;
        }
    };
};

// The "CUBIN" the emulated NVRTC returns: this magic, the shared object's size, its bytes.
const char imageMagic[8] = {'L', 'O', 'O', 'M', 'E', 'M', 'U', '1'};

}  // namespace

extern "C" {

const char* loomEmulatorLastError(void) { return lastError.c_str(); }

const char* loomEmulatorRuntimeDigest(void) {
    static std::string digest = [] {
        uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a over the kernel runtime's source
        for (const char* c = runtimeSource; *c; ++c) h = (h ^ uint8_t(*c)) * 0x100000001b3ull;
        char out[17];
        snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(h));
        return std::string(out);
    }();
    return digest.c_str();
}

// ---------------------------------------------------------------- Driver API

int cuInit(unsigned) { return CUDA_SUCCESS; }
int cuDeviceGetCount(int* n) { *n = deviceCount; return CUDA_SUCCESS; }
int cuDeviceGet(int* d, int ordinal) {
    if (ordinal < 0 || ordinal >= deviceCount) return failWith(CUDA_ERROR_INVALID_DEVICE, "no emulated device " + std::to_string(ordinal));
    *d = ordinal;
    return CUDA_SUCCESS;
}
int cuDeviceGetName(char* name, int length, int) {
    snprintf(name, length, "Loom CUDA emulator (CPU)");
    return CUDA_SUCCESS;
}
int cuDeviceGetAttribute(int* value, int attribute, int) {
    switch (attribute) {
    case 75: *value = 9; break;    // compute capability major
    case 76: *value = 0; break;    // minor
    case 16: *value = 132; break;  // multiprocessors
    case 1: *value = 1024; break;  // max threads per block
    default: *value = 0;
    }
    return CUDA_SUCCESS;
}
// The driver's current context is per thread, as the real driver's is: a thread that never
// called cuCtxSetCurrent (a communicator's worker, a loader's thread) has none, and every
// call that works in a context answers CUDA_ERROR_INVALID_CONTEXT (201) there.
thread_local void* currentContext = nullptr;
#define REQUIRE_CONTEXT(call)                                                                          \
    if (!currentContext)                                                                               \
        return failWith(CUDA_ERROR_INVALID_CONTEXT, std::string(call) + ": no current context on this thread "  \
                        "(the driver's context is per thread: call cuCtxSetCurrent on it first)");

int cuDevicePrimaryCtxRetain(void** context, int device) { *context = reinterpret_cast<void*>(uintptr_t(0x100 + device)); return CUDA_SUCCESS; }
int cuCtxSetCurrent(void* context) { currentContext = context; return CUDA_SUCCESS; }

int cuMemAlloc_v2(uint64_t* pointer, size_t bytes) {
    REQUIRE_CONTEXT("cuMemAlloc_v2")
    void* p = nullptr;
    if (posix_memalign(&p, 256, bytes ? bytes : 1) != 0) return failWith(CUDA_ERROR_OUT_OF_MEMORY, "emulated device: out of memory");
    Arena& a = arena();
    std::lock_guard<std::mutex> g(a.lock);
    a.blocks[reinterpret_cast<uintptr_t>(p)] = bytes;
    a.bytes += bytes;
    *pointer = reinterpret_cast<uintptr_t>(p);
    return CUDA_SUCCESS;
}
int cuMemFree_v2(uint64_t pointer) {
    REQUIRE_CONTEXT("cuMemFree_v2")
    Arena& a = arena();
    {
        std::lock_guard<std::mutex> g(a.lock);
        auto it = a.blocks.find(uintptr_t(pointer));
        if (it == a.blocks.end()) return failWith(CUDA_ERROR_INVALID_VALUE, "cuMemFree of an address the emulated device did not allocate");
        a.bytes -= it->second;
        a.blocks.erase(it);
    }
    free(reinterpret_cast<void*>(pointer));
    return CUDA_SUCCESS;
}
int cuMemHostAlloc(void** p, size_t bytes, unsigned) {
    REQUIRE_CONTEXT("cuMemHostAlloc")
    return posix_memalign(p, 4096, bytes ? bytes : 1) == 0 ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
int cuMemFreeHost(void* p) {
    REQUIRE_CONTEXT("cuMemFreeHost")
    free(p);
    return CUDA_SUCCESS;
}
int cuMemcpyHtoDAsync_v2(uint64_t dst, const void* src, size_t n, void*) {
    REQUIRE_CONTEXT("cuMemcpyHtoDAsync_v2")
    memcpy(reinterpret_cast<void*>(dst), src, n);
    return CUDA_SUCCESS;
}
int cuMemcpyDtoHAsync_v2(void* dst, uint64_t src, size_t n, void*) {
    REQUIRE_CONTEXT("cuMemcpyDtoHAsync_v2")
    memcpy(dst, reinterpret_cast<void*>(src), n);
    return CUDA_SUCCESS;
}
int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t n, void*) {
    REQUIRE_CONTEXT("cuMemcpyDtoDAsync_v2")
    memmove(reinterpret_cast<void*>(dst), reinterpret_cast<void*>(src), n);
    return CUDA_SUCCESS;
}
int cuMemsetD8Async(uint64_t dst, unsigned char v, size_t n, void*) {
    REQUIRE_CONTEXT("cuMemsetD8Async")
    memset(reinterpret_cast<void*>(dst), v, n);
    return CUDA_SUCCESS;
}

int cuStreamCreate(void** stream, unsigned) { REQUIRE_CONTEXT("cuStreamCreate") static int tokens; *stream = &tokens; return CUDA_SUCCESS; }
int cuStreamSynchronize(void*) { REQUIRE_CONTEXT("cuStreamSynchronize") return CUDA_SUCCESS; }
int cuEventCreate(void** event, unsigned) { REQUIRE_CONTEXT("cuEventCreate") static int tokens; *event = &tokens; return CUDA_SUCCESS; }
int cuEventRecord(void*, void*) { REQUIRE_CONTEXT("cuEventRecord") return CUDA_SUCCESS; }
int cuStreamWaitEvent(void*, void*, unsigned) { REQUIRE_CONTEXT("cuStreamWaitEvent") return CUDA_SUCCESS; }
int cuEventSynchronize(void*) { REQUIRE_CONTEXT("cuEventSynchronize") return CUDA_SUCCESS; }
int cuEventDestroy_v2(void*) { REQUIRE_CONTEXT("cuEventDestroy_v2") return CUDA_SUCCESS; }

int cuModuleLoadData(void** module, const void* image) {
    REQUIRE_CONTEXT("cuModuleLoadData")
    const char* bytes = static_cast<const char*>(image);
    if (memcmp(bytes, imageMagic, 8) != 0)
        return failWith(CUDA_ERROR_INVALID_IMAGE, "the emulated driver loads only images from the emulated NVRTC (a real CUBIN was given)");
    uint64_t size;
    memcpy(&size, bytes + 8, 8);
    char path[4096];
    snprintf(path, sizeof path, "%s/loom-emu-module-XXXXXX", temporaryDirectory().c_str());
    int fd = mkstemp(path);
    if (fd < 0) return failWith(CUDA_ERROR_INVALID_IMAGE, std::string("cannot write the module to ") + path);
    bool written = write(fd, bytes + 16, size) == ssize_t(size);
    close(fd);
    void* handle = written ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : nullptr;
    std::string reason = handle ? "" : (dlerror() ?: "short write");
    unlink(path);
    if (!handle) return failWith(CUDA_ERROR_INVALID_IMAGE, "cannot load the emulated module: " + reason);
    *module = new Module{handle, path};
    return CUDA_SUCCESS;
}
int cuModuleGetFunction(void** function, void* module, const char* name) {
    REQUIRE_CONTEXT("cuModuleGetFunction")
    auto* m = static_cast<Module*>(module);
    void* launcher = dlsym(m->handle, (std::string("loom_emu_launch_") + name).c_str());
    if (!launcher) return failWith(CUDA_ERROR_NOT_FOUND, std::string("no kernel named ") + name + " in the module");
    *function = new Function{reinterpret_cast<int (*)(void**, const unsigned*, unsigned, char*, size_t)>(launcher), name};
    return CUDA_SUCCESS;
}
int cuLaunchKernel(void* function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned sharedBytes, void*, void** params, void**) {
    REQUIRE_CONTEXT("cuLaunchKernel")
    auto* f = static_cast<Function*>(function);
    const unsigned dims[6] = {gx, gy, gz, bx, by, bz};
    char error[1024] = {0};
    Profile::Timer timer(f->name);
    if (f->launch(params, dims, sharedBytes, error, sizeof error) != 0)
        return failWith(CUDA_ERROR_LAUNCH_FAILED, f->name + ": " + error);
    return CUDA_SUCCESS;
}

int cuGetErrorName(int status, const char** name) {
    switch (status) {
    case CUDA_SUCCESS: *name = "CUDA_SUCCESS"; break;
    case CUDA_ERROR_INVALID_VALUE: *name = "CUDA_ERROR_INVALID_VALUE"; break;
    case CUDA_ERROR_OUT_OF_MEMORY: *name = "CUDA_ERROR_OUT_OF_MEMORY"; break;
    case CUDA_ERROR_INVALID_DEVICE: *name = "CUDA_ERROR_INVALID_DEVICE"; break;
    case CUDA_ERROR_INVALID_IMAGE: *name = "CUDA_ERROR_INVALID_IMAGE"; break;
    case CUDA_ERROR_INVALID_CONTEXT: *name = "CUDA_ERROR_INVALID_CONTEXT"; break;
    case CUDA_ERROR_NOT_FOUND: *name = "CUDA_ERROR_NOT_FOUND"; break;
    case CUDA_ERROR_LAUNCH_FAILED: *name = "CUDA_ERROR_LAUNCH_FAILED"; break;
    default: return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

// ---------------------------------------------------------------- NVRTC

struct EmulatedProgram {
    std::string source, name, log;
    std::vector<char> image;
};

int nvrtcCreateProgram(EmulatedProgram** program, const char* source, const char* name, int, const char* const*, const char* const*) {
    *program = new EmulatedProgram{source, name ? name : "kernel", "", {}};
    return 0;
}
int nvrtcDestroyProgram(EmulatedProgram** program) { delete *program; *program = nullptr; return 0; }

const char* nvrtcGetErrorString(int status) {
    switch (status) {
    case 0: return "NVRTC_SUCCESS";
    case 6: return "NVRTC_ERROR_COMPILATION";
    case 7: return "NVRTC_ERROR_BUILTIN_OPERATION_FAILURE";
    default: return "NVRTC_ERROR_INTERNAL_ERROR";
    }
}

}  // extern "C"

namespace {

// The names of the `__global__ void NAME(` functions of a CUDA source.
std::vector<std::string> kernelNames(const std::string& source) {
    std::vector<std::string> names;
    size_t at = 0;
    while ((at = source.find("__global__", at)) != std::string::npos) {
        at += 10;
        size_t v = source.find("void", at);
        if (v == std::string::npos) break;
        size_t open = source.find('(', v);
        std::string name = source.substr(v + 4, open - v - 4);
        name.erase(0, name.find_first_not_of(" \t\n"));
        name.erase(name.find_last_not_of(" \t\n") + 1);
        names.push_back(name);
    }
    return names;
}

std::string hostCompiler() {
    if (const char* c = getenv("LOOM_CUDA_EMULATOR_CXX"); c && *c) return c;
    for (const char* candidate : {"c++", "clang++", "g++"}) {
        std::string probe = std::string("command -v ") + candidate + " >/dev/null 2>&1";
        if (system(probe.c_str()) == 0) return candidate;
    }
    return "c++";
}

std::string readFile(const std::string& path) {
    std::string out;
    if (FILE* f = fopen(path.c_str(), "rb")) {
        char buffer[65536];
        size_t n;
        while ((n = fread(buffer, 1, sizeof buffer, f)) > 0) out.append(buffer, n);
        fclose(f);
    }
    return out;
}

bool writeFile(const std::string& path, const std::string& text) {
    FILE* f = fopen(path.c_str(), "wb");
    if (!f) return false;
    bool ok = fwrite(text.data(), 1, text.size(), f) == text.size();
    return fclose(f) == 0 && ok;
}

}  // namespace

extern "C" {

int nvrtcCompileProgram(EmulatedProgram* p, int, const char* const*) {
    char dirTemplate[4096];
    snprintf(dirTemplate, sizeof dirTemplate, "%s/loom-emu-nvrtc-XXXXXX", temporaryDirectory().c_str());
    if (!mkdtemp(dirTemplate)) { p->log = "cannot make a temporary directory"; return 7; }
    std::string dir = dirTemplate;
    std::string file = "#line 1 \"loom-cuda-emulator-runtime\"\n" + std::string(runtimeSource) + "\n#line 1 \"" + p->name + "\"\n" + p->source + "\n";
    for (const std::string& k : kernelNames(p->source))
        file += "extern \"C\" int loom_emu_launch_" + k + "(void** p, const unsigned* d, unsigned s, char* e, size_t n) { return loom_emu::launch(&" +
                k + ", p, d, s, e, n); }\n";
    std::string cpp = dir + "/module.cpp", so = dir + "/module.so", log = dir + "/log.txt";
    int status = 6;
    if (writeFile(cpp, file)) {
        std::string command = hostCompiler() + " -std=c++17 -O2 -fPIC -shared -w -o " + so + " " + cpp + " > " + log + " 2>&1";
        int rc = system(command.c_str());
        p->log = readFile(log);
        if (rc == 0) {
            std::string binary = readFile(so);
            uint64_t size = binary.size();
            p->image.assign(imageMagic, imageMagic + 8);
            p->image.insert(p->image.end(), reinterpret_cast<char*>(&size), reinterpret_cast<char*>(&size) + 8);
            p->image.insert(p->image.end(), binary.begin(), binary.end());
            status = 0;
        } else if (p->log.empty()) {
            p->log = "the host compiler failed: " + command;
        }
    }
    for (const std::string& f : {cpp, so, log}) unlink(f.c_str());
    rmdir(dir.c_str());
    return status;
}
int nvrtcGetProgramLogSize(EmulatedProgram* p, size_t* n) { *n = p->log.size() + 1; return 0; }
int nvrtcGetProgramLog(EmulatedProgram* p, char* out) { memcpy(out, p->log.c_str(), p->log.size() + 1); return 0; }
int nvrtcGetCUBINSize(EmulatedProgram* p, size_t* n) { *n = p->image.size(); return 0; }
int nvrtcGetCUBIN(EmulatedProgram* p, char* out) { memcpy(out, p->image.data(), p->image.size()); return 0; }

// ---------------------------------------------------------------- cuBLAS

void cblas_sgemm(int order, int transA, int transB, int m, int n, int k, float alpha, const float* a, int lda,
                 const float* b, int ldb, float beta, float* c, int ldc);

struct EmulatedBLAS { int mathMode = 0; };

int cublasCreate_v2(EmulatedBLAS** handle) { *handle = new EmulatedBLAS(); return 0; }
int cublasDestroy_v2(EmulatedBLAS* handle) { delete handle; return 0; }
int cublasSetStream_v2(EmulatedBLAS*, void*) { return 0; }
int cublasSetMathMode(EmulatedBLAS* handle, int mode) { handle->mathMode = mode; return 0; }

}  // extern "C"

namespace {

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

extern "C" int cublasSgemmStridedBatched(EmulatedBLAS* handle, int transA, int transB, int m, int n, int k, const float* alpha,
                                         uint64_t a, int lda, long long strideA, uint64_t b, int ldb, long long strideB,
                                         const float* beta, uint64_t c, int ldc, long long strideC, int batch) {
    if (m < 0 || n < 0 || k < 0 || batch < 0) return failWith(7, "negative GEMM size");
    bool tf32Math = handle->mathMode == 3;  // CUBLAS_TF32_TENSOR_OP_MATH
    return batchedGEMM(CUDA_R_32F, tf32Math, transA, transB, m, n, k, *alpha, a, lda, strideA, b, ldb, strideB, *beta, c, ldc,
                       strideC, batch);
}

// The mixed-precision GEMM: bf16 (or float32) A and B, float32 C, float32 accumulation.
extern "C" int cublasGemmStridedBatchedEx(EmulatedBLAS* handle, int transA, int transB, int m, int n, int k, const void* alpha,
                                          uint64_t a, int aType, int lda, long long strideA, uint64_t b, int bType, int ldb,
                                          long long strideB, const void* beta, uint64_t c, int cType, int ldc, long long strideC,
                                          int batch, int computeType, int /* algo */) {
    if (m < 0 || n < 0 || k < 0 || batch < 0) return failWith(7, "negative GEMM size");
    if (aType != bType || (aType != CUDA_R_16BF && aType != CUDA_R_32F) || cType != CUDA_R_32F ||
        (computeType != CUBLAS_COMPUTE_32F && computeType != CUBLAS_COMPUTE_32F_FAST_TF32))
        return failWith(15, "the emulator's GemmEx takes bf16 or float32 A and B, float32 C and float32 compute");
    bool tf32Math = aType == CUDA_R_32F && (computeType == CUBLAS_COMPUTE_32F_FAST_TF32 || handle->mathMode == 3);
    return batchedGEMM(aType, tf32Math, transA, transB, m, n, k, *static_cast<const float*>(alpha), a, lda, strideA, b, ldb, strideB,
                       *static_cast<const float*>(beta), c, ldc, strideC, batch);
}
