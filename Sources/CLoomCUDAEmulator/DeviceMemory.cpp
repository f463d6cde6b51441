// Device memory of the emulated driver, checked the way compute-sanitizer's memcheck and
// initcheck check it:
//
//     | guard page | red zone | block (256-byte aligned) | red zone | guard page |
//
// Each block is mapped on its own and placed so that it ends as close to the page after it
// as its 256-byte alignment allows (exactly, for sizes that are multiples of 256, which
// every block of Loom's caching allocator is). A kernel's read or write past the end lands
// on the guard page and faults at once; the fault is trapped and becomes the launch's
// CUDA_ERROR_ILLEGAL_ADDRESS naming the kernel and the block. Writes into the red zones
// (the bytes between the block and the guard pages) are found after the launch. A new
// block is filled with 0xff bytes, a NaN in float32 and bf16, so a kernel that reads
// memory nothing wrote gives NaN rather than a plausible zero.
#include "Internal.h"

#include <csetjmp>
#include <csignal>
#include <cstring>
#include <map>
#include <sys/mman.h>
#include <unistd.h>

namespace emu {

namespace {

const unsigned char redZoneByte = 0xa5;

struct Block {
    char* mapping;
    size_t mappingBytes;
    uintptr_t start;
    size_t size;
    char* usableBegin() const { return mapping + page(); }
    char* usableEnd() const { return mapping + mappingBytes - page(); }
    static size_t page() { static size_t p = size_t(sysconf(_SC_PAGESIZE)); return p; }
};

struct Arena {
    std::mutex lock;
    std::map<uintptr_t, Block> blocks;  // by start
};
Arena& arena() { static Arena a; return a; }

// The block whose mapping (guard pages included) holds `address`, if any. Caller holds the lock.
const Block* blockNear(uintptr_t address) {
    auto& blocks = arena().blocks;
    auto it = blocks.upper_bound(address);
    if (it != blocks.end() && address >= uintptr_t(it->second.mapping)) return &it->second;
    if (it == blocks.begin()) return nullptr;
    --it;
    const Block& b = it->second;
    return address < uintptr_t(b.mapping + b.mappingBytes) ? &b : nullptr;
}

std::string hex(uintptr_t v) {
    char s[32];
    snprintf(s, sizeof s, "0x%llx", static_cast<unsigned long long>(v));
    return s;
}

std::string describe(const Block& b) { return "the " + std::to_string(b.size) + "-byte block at " + hex(b.start); }

}  // namespace

uint64_t allocateDevice(size_t bytes) {
    const size_t page = Block::page();
    size_t size = bytes ? bytes : 1;
    size_t usable = (size + page - 1) / page * page;
    size_t total = usable + 2 * page;
    void* m = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return 0;
    char* mapping = static_cast<char*>(m);
    mprotect(mapping, page, PROT_NONE);
    mprotect(mapping + page + usable, page, PROT_NONE);
    Block b{mapping, total, (uintptr_t(mapping + page + usable) - size) & ~uintptr_t(255), size};
    memset(b.usableBegin(), redZoneByte, usable);
    memset(reinterpret_cast<void*>(b.start), 0xff, size);
    std::lock_guard<std::mutex> g(arena().lock);
    arena().blocks[b.start] = b;
    return b.start;
}

bool freeDevice(uint64_t address) {
    Block b;
    {
        std::lock_guard<std::mutex> g(arena().lock);
        auto it = arena().blocks.find(uintptr_t(address));
        if (it == arena().blocks.end()) return false;
        b = it->second;
        arena().blocks.erase(it);
    }
    munmap(b.mapping, b.mappingBytes);
    return true;
}

bool insideBlock(uint64_t address, size_t bytes) {
    std::lock_guard<std::mutex> g(arena().lock);
    const Block* b = blockNear(uintptr_t(address));
    return b && address >= b->start && address + bytes <= b->start + b->size;
}

std::string checkRedZones(const uint64_t* words, size_t count) {
    std::lock_guard<std::mutex> g(arena().lock);
    for (size_t i = 0; i < count; ++i) {
        const Block* b = blockNear(uintptr_t(words[i]));
        if (!b) continue;
        auto check = [&](const char* from, const char* to, const char* where) -> std::string {
            for (const char* p = from; p < to; ++p)
                if (static_cast<unsigned char>(*p) != redZoneByte)
                    return "wrote " + std::to_string(where[0] == 'b' ? uintptr_t(b->start) - uintptr_t(p) : uintptr_t(p) - (b->start + b->size) + 1) +
                           " byte(s) " + where + " " + describe(*b) + " (address " + hex(uintptr_t(p)) + ")";
            return "";
        };
        std::string e = check(b->usableBegin(), reinterpret_cast<const char*>(b->start), "before");
        if (e.empty()) e = check(reinterpret_cast<const char*>(b->start + b->size), b->usableEnd(), "past the end of");
        if (!e.empty()) return e;
    }
    return "";
}

std::string describeAddress(uintptr_t address) {
    std::lock_guard<std::mutex> g(arena().lock);
    const Block* b = blockNear(address);
    if (!b) return "address " + hex(address) + " is outside every block of device memory";
    if (address < b->start) return "address " + hex(address) + " is " + std::to_string(b->start - address) + " byte(s) before " + describe(*b);
    if (address >= b->start + b->size)
        return "address " + hex(address) + " is " + std::to_string(address - (b->start + b->size)) + " byte(s) past the end of " + describe(*b);
    return "address " + hex(address) + " is inside " + describe(*b);
}

// ---- Fault trapping. A worker thread that runs kernels installs an alternate signal stack
// (the fault may happen on a fiber's small stack) and a jump buffer; the handler jumps back
// to the launch with the faulting address. A fault anywhere else goes to whoever handled
// the signal before (the process's own crash handling).

namespace {

struct Trap {
    sigjmp_buf jump;
    bool armed = false;
    uintptr_t address = 0;
};
thread_local Trap trap;
struct sigaction previousSegv, previousBus;

void onFault(int signal, siginfo_t* info, void* context) {
    if (trap.armed) {
        trap.armed = false;
        trap.address = reinterpret_cast<uintptr_t>(info->si_addr);
        siglongjmp(trap.jump, 1);
    }
    // Not a kernel's fault: put the previous handler back; the instruction faults again there.
    sigaction(signal, signal == SIGSEGV ? &previousSegv : &previousBus, nullptr);
    (void)context;
}

void installHandler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction a;
        memset(&a, 0, sizeof a);
        a.sa_sigaction = onFault;
        a.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&a.sa_mask);
        sigaction(SIGSEGV, &a, &previousSegv);
        sigaction(SIGBUS, &a, &previousBus);
    });
    thread_local bool haveStack = false;
    if (!haveStack) {
        static const size_t bytes = 64 * 1024;
        stack_t s;
        s.ss_sp = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        s.ss_size = bytes;
        s.ss_flags = 0;
        if (s.ss_sp != MAP_FAILED) sigaltstack(&s, nullptr);
        haveStack = true;
    }
}

}  // namespace

bool runTrappingFaults(const std::function<void()>& body, uintptr_t& faultAddress) {
    installHandler();
    if (sigsetjmp(trap.jump, 1) != 0) {
        faultAddress = trap.address;
        return false;
    }
    trap.armed = true;
    body();
    trap.armed = false;
    return true;
}

// ---- Pinned host memory.

namespace {
std::mutex pinnedLock;
std::map<uintptr_t, size_t>& pinned() { static std::map<uintptr_t, size_t> m; return m; }
}  // namespace

void notePinned(void* p, size_t bytes) {
    std::lock_guard<std::mutex> g(pinnedLock);
    pinned()[uintptr_t(p)] = bytes;
}

bool forgetPinned(void* p) {
    std::lock_guard<std::mutex> g(pinnedLock);
    return pinned().erase(uintptr_t(p)) == 1;
}

bool isPinned(const void* p, size_t bytes) {
    std::lock_guard<std::mutex> g(pinnedLock);
    auto it = pinned().upper_bound(uintptr_t(p));
    if (it == pinned().begin()) return false;
    --it;
    return uintptr_t(p) >= it->first && uintptr_t(p) + bytes <= it->first + it->second;
}

}  // namespace emu
