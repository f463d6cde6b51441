// The emulated NCCL: the collectives Loom's NCCL communicator calls, for ranks that are
// threads of one process (each with its own emulated device). As with NCCL, every call is
// queued on the caller's stream and returns at once; when the stream gets there it waits
// until every rank's stream has reached the same collective (the n-th of the communicator),
// then the last to arrive combines the ranks' buffers in rank order and writes each rank's
// result, and all go on. Initialisation is collective and blocking, as ncclCommInitRank's.
#include "LoomCUDAEmulator.h"
#include "Internal.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>

using namespace emu;

namespace {

// ncclResult_t, ncclDataType_t and ncclRedOp_t values.
enum : int { ncclSuccess = 0, ncclSystemError = 2, ncclInternalError = 3, ncclInvalidArgument = 4, ncclInvalidUsage = 5 };
enum : int { ncclInt8 = 0, ncclUint8 = 1, ncclInt32 = 2, ncclUint32 = 3, ncclInt64 = 4, ncclUint64 = 5, ncclFloat16 = 6, ncclFloat32 = 7,
             ncclFloat64 = 8, ncclBfloat16 = 9 };
enum : int { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4 };

size_t elementSize(int type) {
    switch (type) {
    case ncclInt8: case ncclUint8: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    default: return 0;
    }
}

struct Round {
    std::vector<const void*> send;
    std::vector<void*> recv;
    int arrived = 0, left = 0;
    bool done = false;
};

// The ranks of one communicator (one unique id).
struct Clique {
    int size;
    int joined = 0;
    std::mutex lock;
    std::condition_variable changed;
    std::map<uint64_t, Round> rounds;
    explicit Clique(int n) : size(n) {}
};

struct Comm {
    std::shared_ptr<Clique> clique;
    int rank;
    uint64_t next = 0;  // the sequence number of this rank's next collective
};

std::mutex registryLock;
std::map<std::string, std::shared_ptr<Clique>>& registry() { static std::map<std::string, std::shared_ptr<Clique>> r; return r; }

// Queues collective `seq` of `comm` on `stream`: `combine(round)` runs once, on the last
// rank to arrive, with every rank's buffers.
int enqueue(const char* call, Comm* comm, void* stream, const void* send, void* recv, std::function<void(Round&)> combine) {
    Context* ctx = currentContext();
    if (!ctx) return failWith(ncclInvalidUsage, std::string(call) + ": no current CUDA context on this thread");
    Stream* s = ctx->stream(stream);
    if (!s) return failWith(ncclInvalidArgument, std::string(call) + ": not a stream of the current context");
    std::shared_ptr<Clique> clique = comm->clique;
    uint64_t seq = comm->next++;
    int rank = comm->rank;
    s->enqueue([=](std::string&) {
        std::unique_lock<std::mutex> g(clique->lock);
        Round& r = clique->rounds[seq];
        if (r.send.empty()) { r.send.assign(clique->size, nullptr); r.recv.assign(clique->size, nullptr); }
        r.send[rank] = send;
        r.recv[rank] = recv;
        if (++r.arrived == clique->size) {
            combine(r);
            r.done = true;
            clique->changed.notify_all();
        } else {
            clique->changed.wait(g, [&] { return r.done; });
        }
        if (++r.left == clique->size) clique->rounds.erase(seq);
        return int(CUDA_SUCCESS);
    });
    return ncclSuccess;
}

// The ranks' float32 buffers combined elementwise in rank order (into a new buffer: a
// rank's send may be its own or another's receive buffer).
std::vector<float> reduce(const Round& r, size_t count, int op) {
    std::vector<float> out(static_cast<const float*>(r.send[0]), static_cast<const float*>(r.send[0]) + count);
    for (size_t k = 1; k < r.send.size(); ++k) {
        const float* x = static_cast<const float*>(r.send[k]);
        for (size_t i = 0; i < count; ++i) out[i] = op == ncclMax ? std::max(out[i], x[i]) : op == ncclMin ? std::min(out[i], x[i])
                                                    : op == ncclProd ? out[i] * x[i] : out[i] + x[i];
    }
    if (op == ncclAvg)
        for (float& v : out) v /= float(r.send.size());
    return out;
}

int checkReduction(const char* call, int type, int op) {
    if (type != ncclFloat32) return failWith(ncclInvalidArgument, std::string(call) + ": the emulated NCCL reduces float32 only");
    if (op < ncclSum || op > ncclAvg) return failWith(ncclInvalidArgument, std::string(call) + ": unknown reduction");
    return ncclSuccess;
}

}  // namespace

extern "C" {

struct ncclUniqueIdBytes { char internal[128]; };

int ncclGetVersion(int* version) { *version = 23007; return ncclSuccess; }  // answers as NCCL 2.30.7

const char* ncclGetErrorString(int result) {
    switch (result) {
    case ncclSuccess: return "no error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    default: return "unknown NCCL result";
    }
}

const char* ncclGetLastError(void*) { return loomEmulatorLastError(); }

int ncclGetUniqueId(ncclUniqueIdBytes* id) {
    static std::atomic<uint64_t> made{0};
    memset(id->internal, 0, sizeof id->internal);
    uint64_t state = Settings::shared().seed ^ (0x51ed27 + ++made), words[2] = {mix(state), made.load()};
    memcpy(id->internal, words, sizeof words);
    return ncclSuccess;
}

// Blocks until all `nranks` ranks have joined with the same id.
int ncclCommInitRank(Comm** comm, int nranks, ncclUniqueIdBytes id, int rank) {
    if (nranks < 1 || rank < 0 || rank >= nranks) return failWith(ncclInvalidArgument, "ncclCommInitRank: rank " + std::to_string(rank) + " of " +
                                                                 std::to_string(nranks));
    if (!currentContext()) return failWith(ncclInvalidUsage, "ncclCommInitRank: no current CUDA context on this thread");
    std::shared_ptr<Clique> clique;
    {
        std::lock_guard<std::mutex> g(registryLock);
        auto& c = registry()[std::string(id.internal, sizeof id.internal)];
        if (!c) c = std::make_shared<Clique>(nranks);
        clique = c;
    }
    if (clique->size != nranks) return failWith(ncclInvalidUsage, "ncclCommInitRank: ranks disagree on the communicator's size");
    {
        std::unique_lock<std::mutex> g(clique->lock);
        if (++clique->joined == clique->size) {  // the id has served: the ranks hold the clique now
            std::lock_guard<std::mutex> r(registryLock);
            registry().erase(std::string(id.internal, sizeof id.internal));
        }
        clique->changed.notify_all();
        clique->changed.wait(g, [&] { return clique->joined >= clique->size; });
    }
    *comm = new Comm{clique, rank};
    return ncclSuccess;
}

int ncclCommDestroy(Comm* comm) {
    delete comm;  // the clique goes with its last rank
    return ncclSuccess;
}
int ncclCommAbort(Comm* comm) { return ncclCommDestroy(comm); }
int ncclCommGetAsyncError(Comm*, int* error) { *error = ncclSuccess; return ncclSuccess; }

int ncclAllReduce(const void* send, void* recv, size_t count, int type, int op, Comm* comm, void* stream) {
    if (int e = checkReduction("ncclAllReduce", type, op)) return e;
    return enqueue("ncclAllReduce", comm, stream, send, recv, [=](Round& r) {
        std::vector<float> sum = reduce(r, count, op);
        for (void* out : r.recv) memcpy(out, sum.data(), count * 4);
    });
}

int ncclReduceScatter(const void* send, void* recv, size_t recvCount, int type, int op, Comm* comm, void* stream) {
    if (int e = checkReduction("ncclReduceScatter", type, op)) return e;
    return enqueue("ncclReduceScatter", comm, stream, send, recv, [=](Round& r) {
        std::vector<float> sum = reduce(r, recvCount * r.send.size(), op);
        for (size_t k = 0; k < r.recv.size(); ++k) memcpy(r.recv[k], sum.data() + k * recvCount, recvCount * 4);
    });
}

int ncclAllGather(const void* send, void* recv, size_t sendCount, int type, Comm* comm, void* stream) {
    size_t bytes = sendCount * elementSize(type);
    if (!elementSize(type)) return failWith(ncclInvalidArgument, "ncclAllGather: unknown data type");
    return enqueue("ncclAllGather", comm, stream, send, recv, [=](Round& r) {
        std::vector<char> all(bytes * r.send.size());
        for (size_t k = 0; k < r.send.size(); ++k) memcpy(all.data() + k * bytes, r.send[k], bytes);
        for (void* out : r.recv) memcpy(out, all.data(), all.size());
    });
}

int ncclBroadcast(const void* send, void* recv, size_t count, int type, int root, Comm* comm, void* stream) {
    size_t bytes = count * elementSize(type);
    if (!elementSize(type)) return failWith(ncclInvalidArgument, "ncclBroadcast: unknown data type");
    if (root < 0 || root >= comm->clique->size) return failWith(ncclInvalidArgument, "ncclBroadcast: root " + std::to_string(root));
    return enqueue("ncclBroadcast", comm, stream, send, recv, [=](Round& r) {
        std::vector<char> value(static_cast<const char*>(r.send[root]), static_cast<const char*>(r.send[root]) + bytes);
        for (void* out : r.recv) memcpy(out, value.data(), bytes);
    });
}

}  // extern "C"
