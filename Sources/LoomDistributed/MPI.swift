import CMPI
import Foundation
import LoomCore

/// Open MPI behind the `Communicator` protocol, for runs started by `mpirun` (or
/// `loom launch`, or Slurm's `srun`).
///
/// Every MPI call of a process runs on one worker thread, in the order issued
/// (MPI_THREAD_SERIALIZED), so a non-blocking all-reduce started from backward proceeds
/// while the training thread computes. A watchdog turns a collective that does not
/// complete within `timeout` into a message naming the operation and the end of this
/// process; the launcher then ends the others. No MPI call is ever made off the MPI thread
/// (MPI_THREAD_SERIALIZED forbids it while that thread may be inside a collective), so
/// neither the watchdog nor `abort` calls MPI_Abort: they exit, and mpirun, which treats a
/// rank that exits without MPI_Finalize as a failed job, terminates the rest.
public final class MPICommunicator: Communicator, @unchecked Sendable {
    public let rank: Int
    public let size: Int
    public let timeout: Double
    private let comm: MPI_Comm
    private let worker: SerialWorker
    /// Sends posted with MPI_Isend and not yet complete, with the buffers they read
    /// (touched only on the MPI thread).
    private let pendingSends = Box<[(request: MPI_Request?, buffer: HostBuffer)]>([])
    /// `LOOM_CHECK_COLLECTIVES=1` (as PyTorch's TORCH_DISTRIBUTED_DEBUG=DETAIL): before
    /// each collective the ranks all-gather what they are calling (kind, size, dtype), and
    /// a mismatch fails on every rank naming both sides instead of pairing the wrong
    /// calls. Off by default: it adds a small all-gather to every collective.
    public let checksCollectives: Bool

    /// True when this process was started by an MPI launcher.
    /// This process's rank among those on its machine (Open MPI, Slurm, MPICH), else 0.
    public static var localRank: Int {
        let env = ProcessInfo.processInfo.environment
        for key in ["OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "LOCAL_RANK"] {
            if let v = env[key].flatMap(Int.init) { return v }
        }
        return 0
    }

    public static var launchedByMPI: Bool {
        let env = ProcessInfo.processInfo.environment
        return env["OMPI_COMM_WORLD_SIZE"] != nil || env["PMI_SIZE"] != nil || env["PMIX_RANK"] != nil
    }

    private static var initialized = false

    /// Initialises MPI (once per process) and returns the world communicator.
    public static func world(timeout: Double = 120) throws -> MPICommunicator {
        let worker = SerialWorker(name: "loom-mpi")
        var provided: Int32 = 0
        var rc: Int32 = 0
        worker.sync {
            if !initialized {
                rc = MPI_Init_thread(nil, nil, Int32(MPI_THREAD_SERIALIZED), &provided)
                initialized = true
            }
        }
        guard rc == MPI_SUCCESS else { throw CommError("MPI_Init_thread failed with code \(rc)") }
        OperationNote.installTerminationHandler()
        guard provided >= Int32(MPI_THREAD_SERIALIZED) else {
            throw CommError("MPI provides thread level \(provided); Loom needs MPI_THREAD_SERIALIZED")
        }
        return MPICommunicator(comm: loom_mpi_comm_world(), worker: worker, timeout: timeout)
    }

    private init(comm: MPI_Comm, worker: SerialWorker, timeout: Double) {
        var r: Int32 = 0, s: Int32 = 0
        worker.sync { MPI_Comm_rank(comm, &r); MPI_Comm_size(comm, &s) }
        self.comm = comm; self.worker = worker; self.timeout = timeout
        rank = Int(r); size = Int(s)
        checksCollectives = ProcessInfo.processInfo.environment["LOOM_CHECK_COLLECTIVES"].map { $0 != "0" && !$0.isEmpty } ?? false
    }

    /// Finalises MPI (call once, at the end of a run), under the watchdog: MPI_Finalize
    /// waits for the other ranks, and a dead one would keep it waiting forever.
    public func finalize() {
        worker.sync { [rank, timeout] in
            let watch = Watchdog.start(after: timeout) {
                Self.exitReporting("loom: error: rank \(rank): MPI_Finalize did not complete within \(Int(timeout)) s (a rank died or stopped responding)")
            }
            _ = completeSends()
            _ = MPI_Finalize()
            watch.cancel()
        }
    }

    /// Ends this process after a failure on it; the launcher ends the other ranks.
    public func abort(code: Int32 = 1) -> Never {
        fflush(stdout)
        _exit(code)
    }

    /// Writes `message` to stderr and ends the process at once, from any thread, without
    /// touching MPI.
    static func exitReporting(_ message: String) -> Never {
        FileHandle.standardError.write((message + "\n").data(using: .utf8)!)
        fflush(stdout)
        _exit(1)
    }

    private func check(_ rc: Int32, _ op: String) throws {
        guard rc == MPI_SUCCESS else { throw CommError("rank \(rank): \(op) failed with MPI error \(rc)") }
    }

    /// Runs `body` on the MPI thread under the watchdog. `collective`: what this rank is
    /// calling ("all-reduce of 1024 float32"), compared across ranks first when
    /// `checksCollectives` is on.
    private func run(_ op: String, collective: String? = nil, timeout: Double? = nil, _ body: @escaping () -> Int32) -> CommRequest {
        let timeout = timeout ?? self.timeout
        let request = CommRequest(label: op)
        worker.async { [self] in
            reapSends()
            OperationNote.set("rank \(rank): \(op)")
            defer { OperationNote.set("rank \(rank): idle between collectives") }
            let watch = Watchdog.start(after: timeout) { [rank, timeout] in
                Self.exitReporting("loom: error: rank \(rank): \(op) did not complete within \(Int(timeout)) s (a rank died or stopped responding); aborting the job")
            }
            defer { watch.cancel() }
            if checksCollectives, let collective, let mismatch = mismatch(collective, label: op) {
                request.complete(mismatch)
                return
            }
            let rc = body()
            do { try check(rc, op); request.complete(nil) } catch { request.complete(error) }
        }
        return request
    }

    /// All-gathers every rank's description of the collective it is in (on the MPI thread);
    /// the error names this rank's and the first other rank's that differs.
    private func mismatch(_ what: String, label: String) -> CommError? {
        let width = 128
        var mine = [CChar](repeating: 0, count: width)
        for (i, b) in what.utf8.prefix(width - 1).enumerated() { mine[i] = CChar(bitPattern: b) }
        var all = [CChar](repeating: 0, count: width * size)
        let rc = MPI_Allgather(&mine, Int32(width), loom_mpi_byte(), &all, Int32(width), loom_mpi_byte(), comm)
        guard rc == MPI_SUCCESS else { return CommError("rank \(rank): checking \(label) failed with MPI error \(rc)") }
        let described = String(cString: mine)
        for r in 0..<size {
            let theirs = all[(r * width)..<((r + 1) * width)].withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            if theirs != described {
                return CommError("rank \(rank): \(described) (\(label)) met rank \(r)'s \(theirs): the ranks called different collectives")
            }
        }
        return nil
    }

    public func allReduceAsync(_ tensor: Tensor, _ op: ReduceKind, label: String) -> CommRequest {
        if tensor.dtype != .float32 {
            let r = CommRequest(label: label)
            r.complete(CommError("rank \(rank): \(label): reduces float32 tensors, got \(tensor.dtype) \(describe(tensor.shape))"))
            return r
        }
        let n = tensor.count, scale = 1 / Float(size)
        return run(label, collective: "all-reduce of \(n) float32") { [comm] in
            let h = HostBuffer(tensor), p = h.floats
            let rc = MPI_Allreduce(loom_mpi_in_place(), p, Int32(n), loom_mpi_float(), loom_mpi_sum(), comm)
            if op == .average { for i in 0..<n { p[i] *= scale } }
            h.commit()
            return rc
        }
    }

    /// Seconds per plain `MPI_Allreduce` (sum, in place) of `tensor`, averaged over
    /// `iterations`, timed on the MPI thread between barriers: the baseline that
    /// Loom's all-reduce (which adds a hop to that thread) is compared against.
    public func rawAllReduceSeconds(_ tensor: Tensor, iterations: Int) -> Double {
        let h = HostBuffer(tensor), n = tensor.count, p = h.floats
        var seconds = 0.0
        withExtendedLifetime(h) {  // p points into h's staging copy
            worker.sync { [comm] in
                MPI_Barrier(comm)
                let t0 = monotonicSeconds()
                for _ in 0..<iterations { MPI_Allreduce(loom_mpi_in_place(), p, Int32(n), loom_mpi_float(), loom_mpi_sum(), comm) }
                MPI_Barrier(comm)
                seconds = (monotonicSeconds() - t0) / Double(iterations)
            }
        }
        return seconds
    }

    public func broadcast(_ tensor: Tensor, root: Int) throws {
        let h = HostBuffer(tensor, download: rank == root)
        try run("broadcast from rank \(root)", collective: "broadcast of \(h.bytes.count) bytes from rank \(root)") { [comm] in
            MPI_Bcast(h.bytes.baseAddress, Int32(h.bytes.count), loom_mpi_byte(), Int32(root), comm)
        }.wait()
        h.commit()
    }

    public func allGatherAsync(_ input: Tensor, into output: Tensor, label: String) -> CommRequest {
        guard output.count == input.count * size else {
            let r = CommRequest(label: label)
            r.complete(CommError("rank \(rank): \(label): \(describe(input.shape)) x \(size) ranks into \(describe(output.shape))"))
            return r
        }
        let n = Int32(input.byteCount), tensors = TensorPair(input, output)  // let go before the request completes
        return run(label, collective: "all-gather of \(n) bytes per rank") { [comm, rank] in
            guard let (input, output) = tensors.take() else { return 0 }
            let hi = HostBuffer(input), ho = HostBuffer(output, download: false)
            // The input may be this rank's block of the output (ZeRO's chunk of a flat
            // buffer): MPI then wants MPI_IN_PLACE, not aliased buffers.
            let inPlace = !ho.isStaged && hi.bytes.baseAddress == ho.bytes.baseAddress.map { $0 + Int(n) * rank }
            let send = inPlace ? loom_mpi_in_place() : UnsafeMutableRawPointer(hi.bytes.baseAddress)
            let rc = withExtendedLifetime(hi) { MPI_Allgather(send, n, loom_mpi_byte(), ho.bytes.baseAddress, n, loom_mpi_byte(), comm) }
            ho.commit()
            return rc
        }
    }

    public func reduceScatter(_ input: Tensor, into output: Tensor, _ op: ReduceKind) throws {
        try reduceScatterAsync(input, into: output, op, label: "reduce-scatter").wait()
    }

    public func reduceScatterAsync(_ input: Tensor, into output: Tensor, _ op: ReduceKind, label: String) -> CommRequest {
        guard input.count == output.count * size else {
            let r = CommRequest(label: label)
            r.complete(CommError("rank \(rank): \(label): \(describe(input.shape)) over \(size) ranks into \(describe(output.shape))"))
            return r
        }
        if input.dtype != .float32 || output.dtype != .float32 {
            let r = CommRequest(label: label)
            r.complete(CommError("rank \(rank): \(label): reduces float32 tensors, got \(input.dtype) into \(output.dtype)"))
            return r
        }
        let n = output.count, scale = 1 / Float(size), count = input.count
        let tensors = TensorPair(input, output)  // let go before the request completes (ZeRO-2 frees the bucket then)
        return run(label, collective: "reduce-scatter of \(count) float32") { [comm] in
            guard let (input, output) = tensors.take() else { return 0 }
            let hi = HostBuffer(input), ho = HostBuffer(output, download: false), po = ho.floats
            // hi's last use would otherwise be reading its pointer, before MPI reads through it.
            let rc = withExtendedLifetime(hi) { MPI_Reduce_scatter_block(hi.floats, po, Int32(n), loom_mpi_float(), loom_mpi_sum(), comm) }
            if op == .average { for i in 0..<n { po[i] *= scale } }
            ho.commit()
            return rc
        }
    }

    /// Non-blocking: the message is copied and posted with MPI_Isend, so two stages that
    /// send to each other at once (1F1B's activations and gradients cross) cannot block
    /// each other on messages above MPI's eager limit. Later MPI calls progress it;
    /// `barrier` and `finalize` complete every pending send.
    public func send(_ tensor: Tensor, to peer: Int, tag: Int) throws {
        // A host copy the send owns until it completes (the tensor may change meanwhile).
        let copy = HostBuffer(try tensor.copied())
        let n = Int32(copy.bytes.count), p = copy.bytes.baseAddress
        try run("send to rank \(peer) (tag \(tag))") { [comm, pendingSends] in
            var request: MPI_Request?
            let rc = MPI_Isend(p, n, loom_mpi_byte(), Int32(peer), Int32(tag), comm, &request)
            pendingSends.value.append((request, copy))
            return rc
        }.wait()
    }

    /// Drops the sends that have completed (on the MPI thread).
    private func reapSends() {
        pendingSends.value.removeAll { entry in
            var request = entry.request
            var done: Int32 = 0
            MPI_Test(&request, &done, loom_mpi_status_ignore())
            return done != 0
        }
    }

    /// Waits for every pending send (on the MPI thread).
    private func completeSends() -> Int32 {
        var rc = Int32(MPI_SUCCESS)
        for entry in pendingSends.value {
            var request = entry.request
            let r = MPI_Wait(&request, loom_mpi_status_ignore())
            if r != MPI_SUCCESS { rc = r }
        }
        pendingSends.value.removeAll()
        return rc
    }

    public func receive(into tensor: Tensor, from peer: Int, tag: Int) throws {
        let h = HostBuffer(tensor, download: false)
        try run("receive from rank \(peer) (tag \(tag))") { [comm] in
            MPI_Recv(h.bytes.baseAddress, Int32(h.bytes.count), loom_mpi_byte(), Int32(peer), Int32(tag), comm, loom_mpi_status_ignore())
        }.wait()
        h.commit()
    }

    public func barrier(timeout: Double?) throws {
        try run("barrier", collective: "barrier", timeout: timeout) { [self] in
            let rc = completeSends()
            return rc != MPI_SUCCESS ? rc : MPI_Barrier(comm)
        }.wait()
    }

    public func split(color: Int, key: Int) throws -> Communicator {
        let box = Box<MPI_Comm?>(nil)
        try run("split") { [comm] in MPI_Comm_split(comm, Int32(color), Int32(key), &box.value) }.wait()
        guard let sub = box.value else { throw CommError("rank \(rank): MPI_Comm_split returned no communicator") }
        return MPICommunicator(comm: sub, worker: worker, timeout: timeout)
    }
}

final class Box<T>: @unchecked Sendable {
    var value: T
    init(_ value: T) { self.value = value }
}

/// A thread that runs closures one at a time, in order.
final class SerialWorker: @unchecked Sendable {
    private let queue: DispatchQueue
    init(name: String) { queue = DispatchQueue(label: name) }
    func async(_ body: @escaping () -> Void) { queue.async(execute: body) }
    func sync(_ body: () -> Void) { queue.sync(execute: body) }
}

/// Calls `fire` unless cancelled within `seconds`.
final class Watchdog: @unchecked Sendable {
    private let item: DispatchWorkItem
    private init(_ item: DispatchWorkItem) { self.item = item }

    static func start(after seconds: Double, fire: @escaping () -> Void) -> Watchdog {
        let item = DispatchWorkItem(block: fire)
        DispatchQueue.global().asyncAfter(deadline: .now() + seconds, execute: item)
        return Watchdog(item)
    }

    func cancel() { item.cancel() }
}

/// What this rank's MPI thread is doing, for the message printed when the launcher
/// terminates the job (mpirun sends SIGTERM to every rank once one has died). The
/// handler only calls write(2) and _exit(2), which are async-signal-safe.
enum OperationNote {
    nonisolated(unsafe) static var buffer: UnsafeMutablePointer<CChar> = {
        let b = UnsafeMutablePointer<CChar>.allocate(capacity: 512)
        b.initialize(repeating: 0, count: 512)
        return b
    }()

    static func set(_ text: String) {
        let bytes = Array(text.utf8.prefix(500))
        for (i, c) in bytes.enumerated() { buffer[i] = CChar(bitPattern: c) }
        buffer[bytes.count] = 0
    }

    static func installTerminationHandler() {
        _ = buffer  // initialise before any signal can arrive
        set("starting")
        signal(SIGTERM) { _ in
            let head = "loom: error: stopped by the launcher (another rank exited or was killed) at: "
            _ = head.withCString { write(2, $0, strlen($0)) }
            _ = write(2, OperationNote.buffer, strlen(OperationNote.buffer))
            _ = write(2, "\n", 1)
            _exit(1)
        }
    }
}
