#pragma once
// What the emulator's parts share: errors, contexts with their sticky error, streams that
// run their work on a thread of their own, events, and device memory with guard pages.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace emu {

// CUresult values used here.
enum : int {
    CUDA_SUCCESS = 0, CUDA_ERROR_INVALID_VALUE = 1, CUDA_ERROR_OUT_OF_MEMORY = 2, CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200, CUDA_ERROR_INVALID_CONTEXT = 201, CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500, CUDA_ERROR_ILLEGAL_ADDRESS = 700, CUDA_ERROR_LAUNCH_FAILED = 719
};

/// The kernel runtime (KernelRuntime.inc) compiled into every module, and the magic that
/// starts the "CUBIN" the emulated NVRTC returns (then the shared object's size and bytes).
extern const char* const runtimeSource;
extern const char imageMagic[8];

/// Sets the calling thread's last error message (`loomEmulatorLastError`) and returns `status`.
int failWith(int status, const std::string& message);

/// The emulator's knobs, read once from the environment:
/// LOOM_CUDA_EMULATOR_SEED (block and thread order, stream delays; default 1) and
/// LOOM_CUDA_EMULATOR_DELAY_US (each queued operation first waits between half this and
/// all of it, in microseconds; default 0; `loomEmulatorSetDelay` sets it too).
struct Settings {
    uint64_t seed = 1;
    std::atomic<unsigned> delayMicroseconds{0};
    static Settings& shared();
};

/// splitmix64: the emulator's seeded random numbers.
inline uint64_t mix(uint64_t& state) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

struct Stream;

/// A device's primary context. Once work on one of its streams fails (a kernel's illegal
/// address, a divergent barrier), the error is sticky, as on a GPU: every later call in
/// the context answers it, until cuDevicePrimaryCtxReset.
struct Context {
    int device = 0;
    std::mutex lock;
    int sticky = CUDA_SUCCESS;
    std::string stickyMessage;
    std::vector<Stream*> streams;
    Stream* legacy = nullptr;  // the NULL stream

    static Context* of(void* handle);        // the handle cuDevicePrimaryCtxRetain gives, or null
    static void* handle(int device);
    int stickyError();                        // sets lastError when there is one
    void fail(int status, const std::string& message);
    Stream* stream(void* handle);             // a stream of this context; NULL is the legacy stream
    void synchronize();                       // waits for every stream
};

/// A unit of queued work: it returns CUDA_SUCCESS, or a status with `message` set.
using Work = std::function<int(std::string& message)>;

/// A stream: its work runs in order on a thread of its own, after the host call that
/// queued it has returned (as on a GPU). `ticket` counts what was queued, `done` what has
/// finished; an event is a stream and a ticket.
struct Stream {
    Context* context;
    std::mutex lock;
    std::condition_variable changed;
    std::deque<std::pair<uint64_t, Work>> queue;
    uint64_t ticket = 0, done = 0;
    bool stopping = false;
    uint64_t random;
    std::thread worker;

    explicit Stream(Context* c, uint64_t seed);
    ~Stream();                                // finishes the queue, then ends the worker
    uint64_t enqueue(Work work);              // the ticket of this work
    void waitFor(uint64_t ticket);            // until `done >= ticket`
    void synchronize() { uint64_t t; { std::lock_guard<std::mutex> g(lock); t = ticket; } waitFor(t); }

private:
    void run();
};

struct Event {
    std::mutex lock;
    Stream* stream = nullptr;  // where it was last recorded (null: never)
    uint64_t ticket = 0;
    /// Where it was last recorded, read once.
    std::pair<Stream*, uint64_t> recorded() {
        std::lock_guard<std::mutex> g(lock);
        return {stream, ticket};
    }
};

/// The calling thread's current context (cuCtxSetCurrent), or null.
Context* currentContext();

// ---- Device memory (DeviceMemory.cpp).

/// A block of device memory laid out so that the page after its last byte is a guard page
/// (an access past the end faults at once) and the bytes around it are red zones checked
/// after each launch that was given a pointer into it. New blocks are filled with 0xff
/// bytes (NaN in float32 and bf16), so a read of memory never written shows.
uint64_t allocateDevice(size_t bytes);
bool freeDevice(uint64_t address);            // false: not an address allocateDevice gave
/// Whether [address, address + bytes) lies inside one block.
bool insideBlock(uint64_t address, size_t bytes);
/// Checks the red zones of the blocks that any of `words` points into; "" or what was overwritten.
std::string checkRedZones(const uint64_t* words, size_t count);
/// Explains a faulting address: which block it is next to, or that it is outside all of them.
std::string describeAddress(uintptr_t address);

/// Runs `body` with memory faults (SIGSEGV, SIGBUS) trapped on this thread: answers
/// false and sets `faultAddress` if the body touched memory it may not.
bool runTrappingFaults(const std::function<void()>& body, uintptr_t& faultAddress);

// ---- Host memory from cuMemHostAlloc: pinned, so copies to and from it are truly asynchronous.
void notePinned(void* p, size_t bytes);
bool forgetPinned(void* p);
bool isPinned(const void* p, size_t bytes);

}  // namespace emu
