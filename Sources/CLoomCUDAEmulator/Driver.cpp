// Loom's CUDA emulator: the driver API, NVRTC and cuBLAS calls of Loom's CUDA backend,
// answered on the CPU so that the backend's own code and its kernels' CUDA C source run
// in CI without a GPU. It proves logic, not speed; nothing here is used on a GPU.
//
// It is meant to be stricter than a GPU, never more lenient, so that a defect that a real
// driver would refuse (or that would corrupt a result on one) fails a test here:
// - the current context is per thread: a call on a thread without one answers
//   CUDA_ERROR_INVALID_CONTEXT (201);
// - streams are asynchronous (Streams.cpp): work runs on the stream's own thread after
//   the call returns; events are fences; a copy to or from pageable host memory is staged
//   or waited for as the driver does, one to or from pinned memory is not;
// - a kernel's access outside device memory faults at once (guard pages) or is found after
//   the launch (red zones), new memory reads as NaN (DeviceMemory.cpp); an error in
//   queued work is sticky for the context, as on a GPU;
// - launches are checked against the hardware's limits with the driver's error codes;
// - blocks, and threads of a block, run in a seeded random order (KernelRuntime.inc).
//
// NVRTC.cpp compiles kernels with the host compiler; CUBLAS.cpp maps cuBLAS onto OpenBLAS;
// NCCL.cpp runs NCCL's collectives between in-process ranks.
#include "LoomCUDAEmulator.h"
#include "Internal.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>

using namespace emu;

namespace emu {
thread_local void* current = nullptr;
Context* currentContext() { return Context::of(current); }
extern thread_local std::string lastError;
}  // namespace emu

namespace {

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

// A loaded module. Its kernels run one at a time (`lock`): the kernel runtime keeps the
// running block and `__shared__` memory in the module's statics.
struct Module {
    void* handle;
    std::mutex lock;
};
using Launcher = int (*)(void**, const unsigned*, unsigned, unsigned long long, char*, size_t);
using ParameterSizes = int (*)(size_t*, int);
struct Function {
    Launcher launch;
    std::vector<size_t> parameterSizes;
    std::string name;
    Module* module;
};

std::string temporaryDirectory() {
    const char* t = getenv("TMPDIR");
    return t && *t ? t : "/tmp";
}

// The hardware's launch limits (every GPU since compute capability 3.0), as the driver
// checks them when the launch is queued.
const unsigned maxThreadsPerBlock = 1024, maxBlockZ = 64, maxGridYZ = 65535, maxGridX = 0x7fffffffu;
const unsigned maxSharedBytes = 48 * 1024;  // without cuFuncSetAttribute's opt-in
const size_t maxParameterBytes = 4096;

}  // namespace

// Every call that works in a context: refused on a thread without a current context
// (CUDA_ERROR_INVALID_CONTEXT, 201), and answering the context's sticky error, if any.
#define REQUIRE_CONTEXT(call)                                                                                   \
    Context* ctx = currentContext();                                                                            \
    if (!ctx)                                                                                                   \
        return failWith(CUDA_ERROR_INVALID_CONTEXT, std::string(call) + ": no current context on this thread "  \
                        "(the driver's context is per thread: call cuCtxSetCurrent on it first)");              \
    if (int sticky = ctx->stickyError()) return sticky;

#define REQUIRE_STREAM(call, handle, into)                                                                      \
    Stream* into = ctx->stream(handle);                                                                         \
    if (!into) return failWith(CUDA_ERROR_INVALID_HANDLE, std::string(call) + ": not a stream of the current context");

namespace {

// A copy's device range must lie inside one allocation, as the driver checks.
int checkRange(const char* call, uint64_t address, size_t n) {
    if (n == 0 || insideBlock(address, n)) return CUDA_SUCCESS;
    return failWith(CUDA_ERROR_INVALID_VALUE, std::string(call) + ": " + std::to_string(n) + " bytes at device address is not inside one "
                    "allocation (" + describeAddress(uintptr_t(address)) + ")");
}

// Waits for work a host call must see finished (a copy into pageable memory) and answers
// what it ended with.
int finish(Context* ctx, Stream* s, uint64_t ticket) {
    s->waitFor(ticket);
    return ctx->stickyError();
}

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

// ---------------------------------------------------------------- Devices and contexts

int cuInit(unsigned) { return CUDA_SUCCESS; }
int cuDeviceGetCount(int* n) { *n = 4; return CUDA_SUCCESS; }
int cuDeviceGet(int* d, int ordinal) {
    if (!Context::of(Context::handle(ordinal))) return failWith(CUDA_ERROR_INVALID_DEVICE, "no emulated device " + std::to_string(ordinal));
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
    case 1: *value = int(maxThreadsPerBlock); break;
    case 8: *value = int(maxSharedBytes); break;  // shared memory per block
    default: *value = 0;
    }
    return CUDA_SUCCESS;
}

int cuDevicePrimaryCtxRetain(void** context, int device) {
    if (!Context::of(Context::handle(device))) return failWith(CUDA_ERROR_INVALID_DEVICE, "no emulated device " + std::to_string(device));
    *context = Context::handle(device);
    return CUDA_SUCCESS;
}
int cuCtxSetCurrent(void* context) {
    if (context && !Context::of(context)) return failWith(CUDA_ERROR_INVALID_CONTEXT, "cuCtxSetCurrent: not a context");
    current = context;
    return CUDA_SUCCESS;
}
int cuCtxSynchronize(void) {
    REQUIRE_CONTEXT("cuCtxSynchronize")
    ctx->synchronize();
    return ctx->stickyError();
}
// Waits for the device's work and clears its sticky error: the primary context starts anew.
int cuDevicePrimaryCtxReset_v2(int device) {
    Context* c = Context::of(Context::handle(device));
    if (!c) return failWith(CUDA_ERROR_INVALID_DEVICE, "no emulated device " + std::to_string(device));
    c->synchronize();
    std::lock_guard<std::mutex> g(c->lock);
    c->sticky = CUDA_SUCCESS;
    c->stickyMessage.clear();
    return CUDA_SUCCESS;
}

// ---------------------------------------------------------------- Memory

int cuMemAlloc_v2(uint64_t* pointer, size_t bytes) {
    REQUIRE_CONTEXT("cuMemAlloc_v2")
    uint64_t p = allocateDevice(bytes);
    if (!p) return failWith(CUDA_ERROR_OUT_OF_MEMORY, "emulated device: out of memory");
    *pointer = p;
    return CUDA_SUCCESS;
}
// Like the driver's, a free waits for the device: queued work may still use the block.
int cuMemFree_v2(uint64_t pointer) {
    REQUIRE_CONTEXT("cuMemFree_v2")
    ctx->synchronize();
    if (!freeDevice(pointer)) return failWith(CUDA_ERROR_INVALID_VALUE, "cuMemFree of an address the emulated device did not allocate");
    return ctx->stickyError();
}
int cuMemHostAlloc(void** p, size_t bytes, unsigned) {
    REQUIRE_CONTEXT("cuMemHostAlloc")
    if (posix_memalign(p, 4096, bytes ? bytes : 1) != 0) return failWith(CUDA_ERROR_OUT_OF_MEMORY, "cuMemHostAlloc: out of memory");
    notePinned(*p, bytes ? bytes : 1);
    return CUDA_SUCCESS;
}
int cuMemFreeHost(void* p) {
    REQUIRE_CONTEXT("cuMemFreeHost")
    ctx->synchronize();
    if (!forgetPinned(p)) return failWith(CUDA_ERROR_INVALID_VALUE, "cuMemFreeHost of memory cuMemHostAlloc did not give");
    free(p);
    return CUDA_SUCCESS;
}

// Host to device. Pageable memory is staged before the call returns (the source may be
// reused at once); pinned memory is read when the copy runs, so the host must not change
// it before the stream gets there.
int cuMemcpyHtoDAsync_v2(uint64_t dst, const void* src, size_t n, void* stream) {
    REQUIRE_CONTEXT("cuMemcpyHtoDAsync_v2")
    REQUIRE_STREAM("cuMemcpyHtoDAsync_v2", stream, s)
    if (int e = checkRange("cuMemcpyHtoDAsync_v2", dst, n)) return e;
    if (n == 0) return CUDA_SUCCESS;
    if (isPinned(src, n)) {
        s->enqueue([=](std::string&) { memcpy(reinterpret_cast<void*>(dst), src, n); return 0; });
    } else {
        auto staged = std::make_shared<std::vector<char>>(static_cast<const char*>(src), static_cast<const char*>(src) + n);
        s->enqueue([=](std::string&) { memcpy(reinterpret_cast<void*>(dst), staged->data(), n); return 0; });
    }
    return CUDA_SUCCESS;
}
// Device to host. Into pageable memory the call waits for the copy (as the driver does);
// into pinned memory it returns at once and the bytes arrive when the stream gets there.
int cuMemcpyDtoHAsync_v2(void* dst, uint64_t src, size_t n, void* stream) {
    REQUIRE_CONTEXT("cuMemcpyDtoHAsync_v2")
    REQUIRE_STREAM("cuMemcpyDtoHAsync_v2", stream, s)
    if (int e = checkRange("cuMemcpyDtoHAsync_v2", src, n)) return e;
    if (n == 0) return CUDA_SUCCESS;
    uint64_t t = s->enqueue([=](std::string&) { memcpy(dst, reinterpret_cast<const void*>(src), n); return 0; });
    return isPinned(dst, n) ? CUDA_SUCCESS : finish(ctx, s, t);
}
int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t n, void* stream) {
    REQUIRE_CONTEXT("cuMemcpyDtoDAsync_v2")
    REQUIRE_STREAM("cuMemcpyDtoDAsync_v2", stream, s)
    if (int e = checkRange("cuMemcpyDtoDAsync_v2 (destination)", dst, n)) return e;
    if (int e = checkRange("cuMemcpyDtoDAsync_v2 (source)", src, n)) return e;
    s->enqueue([=](std::string&) { memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n); return 0; });
    return CUDA_SUCCESS;
}
int cuMemsetD8Async(uint64_t dst, unsigned char v, size_t n, void* stream) {
    REQUIRE_CONTEXT("cuMemsetD8Async")
    REQUIRE_STREAM("cuMemsetD8Async", stream, s)
    if (int e = checkRange("cuMemsetD8Async", dst, n)) return e;
    s->enqueue([=](std::string&) { memset(reinterpret_cast<void*>(dst), v, n); return 0; });
    return CUDA_SUCCESS;
}

// ---------------------------------------------------------------- Streams and events

int cuStreamCreate(void** stream, unsigned) {
    REQUIRE_CONTEXT("cuStreamCreate")
    static std::atomic<uint64_t> created{0};
    auto* s = new Stream(ctx, Settings::shared().seed * 0x100000001b3ull + ++created);
    std::lock_guard<std::mutex> g(ctx->lock);
    ctx->streams.push_back(s);
    *stream = s;
    return CUDA_SUCCESS;
}
int cuStreamDestroy_v2(void* stream) {
    REQUIRE_CONTEXT("cuStreamDestroy_v2")
    {
        std::lock_guard<std::mutex> g(ctx->lock);
        auto it = std::find(ctx->streams.begin(), ctx->streams.end(), stream);
        if (it == ctx->streams.end()) return failWith(CUDA_ERROR_INVALID_HANDLE, "cuStreamDestroy_v2: not a stream of the current context");
        ctx->streams.erase(it);
    }
    delete static_cast<Stream*>(stream);  // its queued work finishes first
    return CUDA_SUCCESS;
}
int cuStreamSynchronize(void* stream) {
    REQUIRE_CONTEXT("cuStreamSynchronize")
    REQUIRE_STREAM("cuStreamSynchronize", stream, s)
    s->synchronize();
    return ctx->stickyError();
}
int cuEventCreate(void** event, unsigned) {
    REQUIRE_CONTEXT("cuEventCreate")
    *event = new Event();
    return CUDA_SUCCESS;
}
// An event is where its stream's queue stands when it is recorded: it completes once the
// stream has run everything queued before it.
int cuEventRecord(void* event, void* stream) {
    REQUIRE_CONTEXT("cuEventRecord")
    REQUIRE_STREAM("cuEventRecord", stream, s)
    auto* e = static_cast<Event*>(event);
    std::lock_guard<std::mutex> g(e->lock);
    e->stream = s;
    std::lock_guard<std::mutex> gs(s->lock);
    e->ticket = s->ticket;
    return CUDA_SUCCESS;
}
// Work queued on `stream` after this call waits for the event (as recorded now).
int cuStreamWaitEvent(void* stream, void* event, unsigned) {
    REQUIRE_CONTEXT("cuStreamWaitEvent")
    REQUIRE_STREAM("cuStreamWaitEvent", stream, s)
    std::pair<Stream*, uint64_t> r = static_cast<Event*>(event)->recorded();
    Stream* on = r.first;
    uint64_t ticket = r.second;
    if (on && on != s) s->enqueue([=](std::string&) { on->waitFor(ticket); return 0; });
    return CUDA_SUCCESS;
}
int cuEventSynchronize(void* event) {
    REQUIRE_CONTEXT("cuEventSynchronize")
    std::pair<Stream*, uint64_t> r = static_cast<Event*>(event)->recorded();
    if (r.first) r.first->waitFor(r.second);
    return ctx->stickyError();
}
int cuEventDestroy_v2(void* event) {
    REQUIRE_CONTEXT("cuEventDestroy_v2")
    delete static_cast<Event*>(event);
    return CUDA_SUCCESS;
}

// ---------------------------------------------------------------- Modules and launches

int cuModuleLoadData(void** module, const void* image) {
    REQUIRE_CONTEXT("cuModuleLoadData")
    const char* bytes = static_cast<const char*>(image);
    if (memcmp(bytes, imageMagic, 8) != 0)
        return failWith(CUDA_ERROR_INVALID_IMAGE, "the emulated driver loads only images from this emulator's NVRTC "
                        "(a real CUBIN, or one from an older emulator, was given)");
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
    auto* m = new Module();
    m->handle = handle;
    *module = m;
    return CUDA_SUCCESS;
}
int cuModuleGetFunction(void** function, void* module, const char* name) {
    REQUIRE_CONTEXT("cuModuleGetFunction")
    auto* m = static_cast<Module*>(module);
    auto launcher = reinterpret_cast<Launcher>(dlsym(m->handle, (std::string("loom_emu_launch_") + name).c_str()));
    auto sizes = reinterpret_cast<ParameterSizes>(dlsym(m->handle, (std::string("loom_emu_parameters_") + name).c_str()));
    if (!launcher || !sizes) return failWith(CUDA_ERROR_NOT_FOUND, std::string("no kernel named ") + name + " in the module");
    auto* f = new Function{launcher, std::vector<size_t>(64), name, m};
    f->parameterSizes.resize(size_t(std::min(sizes(f->parameterSizes.data(), 64), 64)));
    *function = f;
    return CUDA_SUCCESS;
}

int cuLaunchKernel(void* function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned sharedBytes, void* stream, void** params, void** extra) {
    REQUIRE_CONTEXT("cuLaunchKernel")
    REQUIRE_STREAM("cuLaunchKernel", stream, s)
    auto* f = static_cast<Function*>(function);
    auto dims = [&] {
        return "grid (" + std::to_string(gx) + "," + std::to_string(gy) + "," + std::to_string(gz) + "), block (" + std::to_string(bx) +
               "," + std::to_string(by) + "," + std::to_string(bz) + ")";
    };
    uint64_t threads = uint64_t(bx) * by * bz;
    if (threads == 0 || uint64_t(gx) * gy * gz == 0)
        return failWith(CUDA_ERROR_INVALID_VALUE, f->name + ": an empty launch, " + dims());
    if (threads > maxThreadsPerBlock || bx > maxThreadsPerBlock || by > maxThreadsPerBlock || bz > maxBlockZ)
        return failWith(CUDA_ERROR_INVALID_VALUE, f->name + ": " + dims() + " exceeds the block limits (1024 threads; x and y at most 1024, "
                        "z at most 64)");
    if (gx > maxGridX || gy > maxGridYZ || gz > maxGridYZ)
        return failWith(CUDA_ERROR_INVALID_VALUE, f->name + ": " + dims() + " exceeds the grid limits (y and z at most 65535)");
    if (sharedBytes > maxSharedBytes)
        return failWith(CUDA_ERROR_INVALID_VALUE, f->name + ": " + std::to_string(sharedBytes) + " bytes of dynamic shared memory, more than "
                        "the 48 KB a block may have");
    if (extra) return failWith(CUDA_ERROR_INVALID_VALUE, f->name + ": the emulator takes kernel parameters only through kernelParams");
    // The parameters' values are copied now, as the driver copies them when it queues the launch.
    size_t total = 0;
    std::vector<size_t> offsets;
    for (size_t size : f->parameterSizes) {
        total = (total + 7) / 8 * 8;
        offsets.push_back(total);
        total += size;
    }
    if (total > maxParameterBytes)
        return failWith(CUDA_ERROR_INVALID_VALUE, f->name + ": " + std::to_string(total) + " bytes of parameters, more than the 4 KB a launch may pass");
    auto values = std::make_shared<std::vector<uint64_t>>((total + 7) / 8 + 1, 0);
    for (size_t i = 0; i < offsets.size(); ++i)
        memcpy(reinterpret_cast<char*>(values->data()) + offsets[i], params[i], f->parameterSizes[i]);
    static std::atomic<uint64_t> launches{0};
    uint64_t seedState = Settings::shared().seed ^ (0x2545f4914f6cdd1dull * ++launches);
    unsigned long long seed = mix(seedState);
    std::array<unsigned, 6> shape{gx, gy, gz, bx, by, bz};
    s->enqueue([=](std::string& message) {
        std::vector<void*> pointers;
        for (size_t o : offsets) pointers.push_back(reinterpret_cast<char*>(values->data()) + o);
        char error[1024] = {0};
        int status = 0;
        uintptr_t fault = 0;
        {
            std::lock_guard<std::mutex> running(f->module->lock);  // held here: a fault jumps back inside it
            Profile::Timer timer(f->name);
            bool clean = runTrappingFaults([&] { status = f->launch(pointers.data(), shape.data(), sharedBytes, seed, error, sizeof error); }, fault);
            if (!clean) {
                message = "kernel " + f->name + " (" + dims() + "): illegal memory access, " + describeAddress(fault);
                return int(CUDA_ERROR_ILLEGAL_ADDRESS);
            }
        }
        if (status != 0) {
            message = "kernel " + f->name + ": " + error;
            return int(CUDA_ERROR_LAUNCH_FAILED);
        }
        std::string overwritten = checkRedZones(values->data(), values->size());
        if (!overwritten.empty()) {
            message = "kernel " + f->name + " (" + dims() + ") " + overwritten;
            return int(CUDA_ERROR_ILLEGAL_ADDRESS);
        }
        return int(CUDA_SUCCESS);
    });
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
    case CUDA_ERROR_INVALID_HANDLE: *name = "CUDA_ERROR_INVALID_HANDLE"; break;
    case CUDA_ERROR_NOT_FOUND: *name = "CUDA_ERROR_NOT_FOUND"; break;
    case CUDA_ERROR_ILLEGAL_ADDRESS: *name = "CUDA_ERROR_ILLEGAL_ADDRESS"; break;
    case CUDA_ERROR_LAUNCH_FAILED: *name = "CUDA_ERROR_LAUNCH_FAILED"; break;
    default: return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

}  // extern "C"
