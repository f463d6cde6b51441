import Foundation
import LoomCore

/// Ranks as threads of one process, sharing memory: the same training code as under
/// mpirun, in unit tests and on one machine.
///
/// Reductions are deterministic: rank r sums chunk r over ranks 0, 1, ..., n-1 in that
/// order, and every rank copies the same result, so all ranks end bit-identical.
public final class InProcessWorld: @unchecked Sendable {
    public let size: Int
    public let timeout: Double
    fileprivate let lock = NSCondition()
    fileprivate var arrived = 0
    fileprivate var generation = 0
    fileprivate var slots: [UnsafeMutableRawPointer?]
    /// What each rank's current collective is (kind and size), compared after the first
    /// rendezvous so that mismatched collectives fail instead of pairing up.
    fileprivate var descriptors: [String]
    fileprivate var extra: [(color: Int, key: Int)]
    fileprivate var mailbox: [MailKey: [[UInt8]]] = [:]
    fileprivate var children: [Int: [Int: InProcessWorld]] = [:]  // split generation -> color -> world
    fileprivate var failed: String?

    public init(size: Int, timeout: Double = 120) {
        self.size = size
        self.timeout = timeout
        slots = Array(repeating: nil, count: size)
        descriptors = Array(repeating: "", count: size)
        extra = Array(repeating: (0, 0), count: size)
        present = Array(repeating: false, count: size)
    }

    /// The communicator of each rank.
    public func communicators() -> [InProcessCommunicator] {
        (0..<size).map { InProcessCommunicator(world: self, rank: $0) }
    }

    /// Runs `body` on `size` threads, one per rank, and returns their results in rank
    /// order. If one rank fails, the others' pending operations fail too (instead of
    /// waiting for the timeout), and the first failure is rethrown.
    public static func run<T>(size: Int, timeout: Double = 120, _ body: @escaping (InProcessCommunicator) throws -> T) throws -> [T] {
        let world = InProcessWorld(size: size, timeout: timeout)
        let comms = world.communicators()
        let results = Box([Result<T, Error>?](repeating: nil, count: size))
        let resultLock = NSLock()
        let group = DispatchGroup()
        for r in 0..<size {
            group.enter()
            let t = Thread {
                // A rank whose thread ends without returning (Thread.exit, as a process is
                // killed) is seen as dead by the thread-exit hook: the others fail at once
                // instead of waiting for the timeout.
                let watch = RankThreadWatch {
                    let e = CommError("rank \(r): its thread ended without returning (the rank died)")
                    world.abort("\(e)")
                    resultLock.lock(); results.value[r] = .failure(e); resultLock.unlock()
                    group.leave()
                }
                watch.install()
                let res = Result { try body(comms[r]) }
                watch.returned = true
                if case .failure(let e) = res { world.abort("rank \(r) failed: \(e)") }
                resultLock.lock(); results.value[r] = res; resultLock.unlock()
                group.leave()
            }
            t.stackSize = 16 << 20
            t.start()
        }
        group.wait()
        // Report the first failure in rank order, preferring a root cause over the
        // "another rank failed" errors it caused.
        let failures = results.value.compactMap { r -> Error? in if case .failure(let e)? = r { return e }; return nil }
        if let root = failures.first(where: { !"\($0)".contains("aborted because") }) ?? failures.first { throw root }
        return results.value.map { try! $0!.get() }
    }

    /// Fails every pending and later operation of this world and of every group split
    /// from it (a rank that died inside a tensor- or pipeline-parallel group must not leave
    /// the others of that group waiting for the timeout).
    func abort(_ why: String) {
        lock.lock()
        if failed == nil { failed = why }
        let subgroups = children.values.flatMap(\.values)
        lock.broadcast()
        lock.unlock()
        for g in subgroups { g.abort(why) }
    }

    /// Every rank arrives, then all leave together. Throws on timeout, naming the ranks
    /// that did not arrive.
    fileprivate func rendezvous(rank: Int, op: String, timeout: Double? = nil) throws {
        let timeout = timeout ?? self.timeout
        lock.lock()
        defer { lock.unlock() }
        let gen = generation
        arrived += 1
        present[rank] = true
        // The last to arrive checks too: a failed peer's buffers must not be read.
        if let failed { throw CommError("rank \(rank): \(op) aborted because \(failed)") }
        if arrived == size {
            arrived = 0
            generation += 1
            for i in present.indices { present[i] = false }
            lock.broadcast()
            return
        }
        let deadline = Date().addingTimeInterval(timeout)
        while generation == gen {
            if let failed { throw CommError("rank \(rank): \(op) aborted because \(failed)") }
            if !lock.wait(until: deadline) && generation == gen {
                let missing = present.indices.filter { !present[$0] }
                failed = "rank \(rank): \(op) timed out after \(Int(timeout)) s waiting for rank(s) \(missing.map(String.init).joined(separator: ", "))"
                lock.broadcast()
                throw CommError(failed!)
            }
        }
    }

    /// Which ranks have arrived at the current rendezvous (guarded by `lock`).
    fileprivate var present: [Bool] = []
}

/// Calls `died` when the thread that installed it ends without having set `returned`
/// (a thread-specific value's destructor runs at every thread exit, `pthread_exit` included).
final class RankThreadWatch: @unchecked Sendable {
    var returned = false
    let died: () -> Void
    init(died: @escaping () -> Void) { self.died = died }

    func install() { pthread_setspecific(RankThreadWatch.key, Unmanaged.passRetained(self).toOpaque()) }

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { p in
            guard let p else { return }
            let watch = Unmanaged<RankThreadWatch>.fromOpaque(p).takeRetainedValue()
            if !watch.returned { watch.died() }
        }
        return key
    }()
}

fileprivate struct MailKey: Hashable { let from: Int, to: Int, tag: Int }

public final class InProcessCommunicator: Communicator, @unchecked Sendable {
    public let rank: Int
    public var size: Int { world.size }
    public var timeout: Double { world.timeout }
    let world: InProcessWorld
    /// Collectives run here, one at a time, in the order they were started.
    private let queue: DispatchQueue

    init(world: InProcessWorld, rank: Int) {
        self.world = world
        self.rank = rank
        queue = DispatchQueue(label: "loom.comm.rank\(rank)")
    }

    private func sync(_ op: String, timeout: Double? = nil) throws {
        try world.rendezvous(rank: rank, op: op, timeout: timeout)
    }

    /// The first rendezvous of a collective: publishes this rank's buffer and what the
    /// collective is ("all-reduce of 1024 float32"), and fails on every rank, naming both
    /// sides, when another rank arrived in a different collective or with another size.
    private func enter(_ label: String, _ what: String, buffer: UnsafeMutableRawPointer?, timeout: Double? = nil) throws {
        world.lock.lock(); world.slots[rank] = buffer; world.descriptors[rank] = what; world.lock.unlock()
        try sync(label, timeout: timeout)
        world.lock.lock(); let all = world.descriptors; world.lock.unlock()
        if let other = all.indices.first(where: { all[$0] != what }) {
            throw CommError("rank \(rank): \(what) (\(label)) met rank \(other)'s \(all[other]): the ranks called different collectives")
        }
    }

    /// Runs a collective on the rank's queue and waits for it.
    private func blocking(_ body: @escaping () throws -> Void) throws {
        var failure: Error?
        queue.sync { do { try body() } catch { failure = error } }
        if let failure { throw failure }
    }

    /// Runs `body` on the rank's queue and completes `request` with its outcome. The queued
    /// work lets go of `input` and `output` before the request completes, so a waiter that
    /// then drops its last reference to a buffer frees it at once (ZeRO frees buckets and
    /// gathered units so).
    private func enqueue(_ request: CommRequest, _ input: Tensor, _ output: Tensor,
                         _ body: @escaping (Tensor, Tensor) throws -> Void) -> CommRequest {
        let tensors = TensorPair(input, output)
        queue.async {
            let failure: Error? = {
                guard let (input, output) = tensors.take() else { return nil }
                do { try body(input, output); return nil } catch { return error }
            }()
            request.complete(failure)
        }
        return request
    }

    public func allReduceAsync(_ tensor: Tensor, _ op: ReduceKind, label: String) -> CommRequest {
        let request = CommRequest(label: label)
        queue.async { [self] in
            do {
                try requireFloat32(tensor, label)
                let h = HostBuffer(tensor)
                try reduce(h.floats, count: h.count, op: op, label: label, scatterInto: nil)
                h.commit()
                request.complete(nil)
            } catch { request.complete(error) }
        }
        return request
    }

    /// Rank r sums chunk r over ranks in rank order into a scratch block; then every rank
    /// copies all chunks (all-reduce) or only its own (reduce-scatter).
    private func reduce(_ p: UnsafeMutablePointer<Float>, count n: Int, op: ReduceKind, label: String,
                        scatterInto out: UnsafeMutablePointer<Float>?) throws {
        let w = size
        let chunk = (n + w - 1) / w
        let lo = min(n, rank * chunk), hi = min(n, lo + chunk)
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: max(hi - lo, 1))
        defer { scratch.deallocate() }
        try enter(label, "\(out == nil ? "all-reduce" : "reduce-scatter") of \(n) float32", buffer: UnsafeMutableRawPointer(p))
        let inputs = (0..<w).map { world.slots[$0]!.assumingMemoryBound(to: Float.self) }
        if hi > lo {
            scratch.update(from: inputs[0] + lo, count: hi - lo)
            for k in 1..<w { let src = inputs[k] + lo; for i in 0..<(hi - lo) { scratch[i] += src[i] } }
            if op == .average { let s = 1 / Float(w); for i in 0..<(hi - lo) { scratch[i] *= s } }
        }
        try sync(label)  // everyone has read the inputs: now they may be overwritten
        world.lock.lock(); world.slots[rank] = UnsafeMutableRawPointer(scratch); world.lock.unlock()
        try sync(label)
        if let out {
            if hi > lo { out.update(from: scratch, count: hi - lo) }
        } else {
            for k in 0..<w {
                let klo = min(n, k * chunk), khi = min(n, klo + chunk)
                if khi > klo { (p + klo).update(from: world.slots[k]!.assumingMemoryBound(to: Float.self), count: khi - klo) }
            }
        }
        try sync(label)  // scratch blocks stay alive until every rank has copied
    }

    public func broadcast(_ tensor: Tensor, root: Int) throws {
        try blocking { [self] in
            let h = HostBuffer(tensor, download: rank == root)
            try enter("broadcast from rank \(root)", "broadcast of \(h.bytes.count) bytes from rank \(root)", buffer: h.bytes.baseAddress)
            if rank != root { h.bytes.baseAddress!.copyMemory(from: world.slots[root]!, byteCount: h.bytes.count) }
            try withExtendedLifetime(h) { try sync("broadcast from rank \(root)") }  // the root's bytes stay until all have copied
            h.commit()
        }
    }

    public func allGatherAsync(_ input: Tensor, into output: Tensor, label: String) -> CommRequest {
        let request = CommRequest(label: label)
        guard output.count == input.count * size else {
            request.complete(CommError("rank \(rank): \(label): \(describe(input.shape)) x \(size) ranks into \(describe(output.shape))"))
            return request
        }
        return enqueue(request, input, output) { [self] input, output in
            let hi = HostBuffer(input), ho = HostBuffer(output, download: false)
            try enter(label, "all-gather of \(hi.bytes.count) bytes per rank", buffer: hi.bytes.baseAddress)
            for k in 0..<size {
                let destination = ho.bytes.baseAddress! + k * hi.bytes.count
                // In place (the input is this rank's block of the output): nothing to copy.
                if destination != world.slots[k]! { destination.copyMemory(from: world.slots[k]!, byteCount: hi.bytes.count) }
            }
            try withExtendedLifetime(hi) { try sync(label) }  // this rank's bytes stay until all have copied
            ho.commit()
        }
    }

    public func reduceScatter(_ input: Tensor, into output: Tensor, _ op: ReduceKind) throws {
        guard input.count == output.count * size else {
            throw CommError("rank \(rank): reduce-scatter of \(describe(input.shape)) over \(size) ranks into \(describe(output.shape))")
        }
        try blocking { [self] in
            try requireFloat32(input, "reduce-scatter")
            let hi = HostBuffer(input), ho = HostBuffer(output, download: false)
            try withExtendedLifetime(hi) { try reduce(hi.floats, count: hi.count, op: op, label: "reduce-scatter", scatterInto: ho.floats) }
            ho.commit()
        }
    }

    public func reduceScatterAsync(_ input: Tensor, into output: Tensor, _ op: ReduceKind, label: String) -> CommRequest {
        let request = CommRequest(label: label)
        guard input.count == output.count * size else {
            request.complete(CommError("rank \(rank): \(label): \(describe(input.shape)) over \(size) ranks into \(describe(output.shape))"))
            return request
        }
        return enqueue(request, input, output) { [self] input, output in
            try requireFloat32(input, label)
            let hi = HostBuffer(input), ho = HostBuffer(output, download: false)
            try withExtendedLifetime(hi) { try reduce(hi.floats, count: hi.count, op: op, label: label, scatterInto: ho.floats) }
            ho.commit()
        }
    }

    public func send(_ tensor: Tensor, to peer: Int, tag: Int) throws {
        let staged = HostBuffer(tensor)
        let bytes = withExtendedLifetime(staged) { Array(staged.bytes) }
        world.lock.lock()
        world.mailbox[MailKey(from: rank, to: peer, tag: tag), default: []].append(bytes)
        world.lock.broadcast()
        world.lock.unlock()
    }

    public func receive(into tensor: Tensor, from peer: Int, tag: Int) throws {
        let key = MailKey(from: peer, to: rank, tag: tag)
        let deadline = Date().addingTimeInterval(timeout)
        world.lock.lock()
        defer { world.lock.unlock() }
        while world.mailbox[key]?.isEmpty ?? true {
            if let failed = world.failed { throw CommError("rank \(rank): receive from rank \(peer) (tag \(tag)) aborted because \(failed)") }
            if !world.lock.wait(until: deadline) && (world.mailbox[key]?.isEmpty ?? true) {
                throw CommError("rank \(rank): receive from rank \(peer) (tag \(tag)) timed out after \(Int(timeout)) s")
            }
        }
        let bytes = world.mailbox[key]!.removeFirst()
        guard bytes.count == tensor.byteCount else {
            throw CommError("rank \(rank): message from rank \(peer) (tag \(tag)) has \(bytes.count) bytes, expected \(tensor.dtype) \(describe(tensor.shape)) (\(tensor.byteCount) bytes)")
        }
        let h = HostBuffer(tensor, download: false)
        bytes.withUnsafeBytes { h.bytes.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        h.commit()
    }

    public func barrier(timeout: Double?) throws {
        // Two rendezvous: no rank may start its next collective (and overwrite its
        // descriptor) while another is still comparing this one's.
        try blocking { [self] in try enter("barrier", "barrier", buffer: nil, timeout: timeout); try sync("barrier") }
    }

    public func split(color: Int, key: Int) throws -> Communicator {
        var result: Communicator?
        try blocking { [self] in
            world.lock.lock(); world.extra[rank] = (color, key); world.lock.unlock()
            try sync("split")
            world.lock.lock(); let all = world.extra; world.lock.unlock()
            let members = (0..<size).filter { all[$0].color == color }.sorted { (all[$0].key, $0) < (all[$1].key, $1) }
            // The first member creates the sub-world; the others pick it up after a sync.
            let gen = world.generation
            if members.first == rank {
                world.lock.lock()
                world.children[gen, default: [:]][color] = InProcessWorld(size: members.count, timeout: timeout)
                world.lock.unlock()
            }
            try sync("split")
            world.lock.lock()
            let sub = world.children[gen]![color]!
            world.lock.unlock()
            result = InProcessCommunicator(world: sub, rank: members.firstIndex(of: rank)!)
            try sync("split")
        }
        return result!
    }
}
