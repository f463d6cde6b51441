// Contexts, streams and events of the emulated driver. A stream is a queue and a thread:
// the host call that queues work returns at once and the work runs later, in order, as on
// a GPU, so a missing synchronisation reads memory before the work that writes it has
// run. LOOM_CUDA_EMULATOR_DELAY_US makes each queued operation wait a seeded random time
// first, so such a race shows as a wrong result rather than depending on the scheduler.
#include "Internal.h"

#include <chrono>
#include <cstdlib>

namespace emu {

thread_local std::string lastError;

int failWith(int status, const std::string& message) {
    lastError = message;
    return status;
}

Settings& Settings::shared() {
    static Settings* s = [] {
        auto* s = new Settings();
        if (const char* v = getenv("LOOM_CUDA_EMULATOR_SEED"); v && *v) s->seed = strtoull(v, nullptr, 10);
        if (const char* v = getenv("LOOM_CUDA_EMULATOR_DELAY_US"); v && *v) s->delayMicroseconds = unsigned(strtoul(v, nullptr, 10));
        return s;
    }();
    return *s;
}

const int deviceCount = 4;

Context* Context::of(void* handle) {
    static Context* contexts = [] {
        auto* all = new Context[deviceCount];
        for (int d = 0; d < deviceCount; ++d) all[d].device = d;
        return all;
    }();
    uintptr_t h = reinterpret_cast<uintptr_t>(handle);
    if (h < 0x100 || h >= 0x100 + deviceCount) return nullptr;
    return &contexts[h - 0x100];
}

void* Context::handle(int device) { return reinterpret_cast<void*>(uintptr_t(0x100 + device)); }

int Context::stickyError() {
    std::lock_guard<std::mutex> g(lock);
    if (sticky != CUDA_SUCCESS) lastError = stickyMessage;
    return sticky;
}

void Context::fail(int status, const std::string& message) {
    std::lock_guard<std::mutex> g(lock);
    if (sticky != CUDA_SUCCESS) return;  // the first error is the one the context keeps
    sticky = status;
    stickyMessage = message + " (an earlier asynchronous error: the context is unusable until reset)";
}

Stream* Context::stream(void* handle) {
    std::lock_guard<std::mutex> g(lock);
    if (!handle) {
        if (!legacy) legacy = new Stream(this, Settings::shared().seed ^ 0x5eed);
        return legacy;
    }
    for (Stream* s : streams)
        if (s == handle) return s;
    return nullptr;
}

void Context::synchronize() {
    std::vector<Stream*> all;
    {
        std::lock_guard<std::mutex> g(lock);
        all = streams;
        if (legacy) all.push_back(legacy);
    }
    for (Stream* s : all) s->synchronize();
}

Stream::Stream(Context* c, uint64_t seed) : context(c), random(seed) {
    worker = std::thread([this] { run(); });
}

Stream::~Stream() {
    {
        std::lock_guard<std::mutex> g(lock);
        stopping = true;
    }
    changed.notify_all();
    worker.join();
}

uint64_t Stream::enqueue(Work work) {
    uint64_t t;
    {
        std::lock_guard<std::mutex> g(lock);
        t = ++ticket;
        queue.emplace_back(t, std::move(work));
    }
    changed.notify_all();
    return t;
}

void Stream::waitFor(uint64_t t) {
    std::unique_lock<std::mutex> g(lock);
    changed.wait(g, [&] { return done >= t; });
}

void Stream::run() {
    for (;;) {
        std::pair<uint64_t, Work> item;
        {
            std::unique_lock<std::mutex> g(lock);
            changed.wait(g, [&] { return stopping || !queue.empty(); });
            if (queue.empty()) return;  // stopping, and everything queued has run
            item = std::move(queue.front());
            queue.pop_front();
        }
        if (unsigned delay = Settings::shared().delayMicroseconds; delay > 0)
            std::this_thread::sleep_for(std::chrono::microseconds(delay / 2 + mix(random) % (delay / 2 + 1)));
        // After a failure the context is unusable: later work is not run (as on a GPU).
        bool failed;
        {
            std::lock_guard<std::mutex> g(context->lock);
            failed = context->sticky != CUDA_SUCCESS;
        }
        if (!failed) {
            std::string message;
            int status = item.second(message);
            if (status != CUDA_SUCCESS) context->fail(status, message);
        }
        {
            std::lock_guard<std::mutex> g(lock);
            done = item.first;
        }
        changed.notify_all();
    }
}

}  // namespace emu

extern "C" void loomEmulatorSetDelay(unsigned microseconds) { emu::Settings::shared().delayMicroseconds = microseconds; }
