import CNCCL
import Foundation
import LoomCore
import LoomDistributed

/// NCCL, resolved with `dlopen` (`libnccl.so.2`: the `nvidia-nccl-cu12`/`-cu13` wheels, or
/// the system's; `LOOM_CUDA_LIBS` directories first; the emulator's under
/// `LOOM_CUDA_EMULATOR`). Only what `NCCLCommunicator` calls.
public final class NCCL: @unchecked Sendable {
    public let library: DynamicLibrary
    typealias Result = Int32
    typealias Stream = OpaquePointer?
    let getVersion: @convention(c) (UnsafeMutablePointer<Int32>) -> Result
    let getErrorString: @convention(c) (Result) -> UnsafePointer<CChar>?
    let getLastError: @convention(c) (OpaquePointer?) -> UnsafePointer<CChar>?
    let getUniqueId: @convention(c) (UnsafeMutablePointer<ncclUniqueId>) -> Result
    let commInitRank: @convention(c) (UnsafeMutablePointer<OpaquePointer?>, Int32, ncclUniqueId, Int32) -> Result
    let commDestroy: @convention(c) (OpaquePointer?) -> Result
    let allReduce: @convention(c) (CUdeviceptr, CUdeviceptr, Int, Int32, Int32, OpaquePointer?, Stream) -> Result
    let reduceScatter: @convention(c) (CUdeviceptr, CUdeviceptr, Int, Int32, Int32, OpaquePointer?, Stream) -> Result
    let allGather: @convention(c) (CUdeviceptr, CUdeviceptr, Int, Int32, OpaquePointer?, Stream) -> Result
    let broadcast: @convention(c) (CUdeviceptr, CUdeviceptr, Int, Int32, Int32, OpaquePointer?, Stream) -> Result
    /// NCCL_VERSION_CODE: major * 10000 + minor * 100 + patch (2.30.7 is 23007).
    public let version: Int

    public static let candidates = ["libnccl.so.2", "libnccl.so"]

    public init(emulator: String? = DynamicLibrary.emulatorPath) throws {
        library = try DynamicLibrary(candidates: NCCL.candidates, purpose: "NCCL (libnccl.so.2, from the nvidia-nccl wheels or the system)",
                                     emulator: emulator)
        let l = library
        getVersion = try l.function("ncclGetVersion")
        getErrorString = try l.function("ncclGetErrorString")
        getLastError = try l.function("ncclGetLastError")
        getUniqueId = try l.function("ncclGetUniqueId")
        commInitRank = try l.function("ncclCommInitRank")
        commDestroy = try l.function("ncclCommDestroy")
        allReduce = try l.function("ncclAllReduce")
        reduceScatter = try l.function("ncclReduceScatter")
        allGather = try l.function("ncclAllGather")
        broadcast = try l.function("ncclBroadcast")
        var v: Int32 = 0
        let status = getVersion(&v)
        version = Int(v)
        try check(status, "ncclGetVersion")
    }

    /// "2.30.7".
    public var versionString: String { "\(version / 10000).\(version / 100 % 100).\(version % 100)" }

    func check(_ status: Result, _ call: String) throws {
        guard status != 0 else { return }
        let name = getErrorString(status).map { String(cString: $0) } ?? "unknown NCCL result"
        let detail = getLastError(nil).map { String(cString: $0) } ?? ""
        throw CUDAError(call: call, message: "\(name) (\(status))" + (detail.isEmpty ? "" : ": \(detail)"))
    }

    // ncclDataType_t and ncclRedOp_t values.
    static let int8: Int32 = 0, float32: Int32 = 7
    static func op(_ kind: ReduceKind) -> Int32 { kind == .sum ? 0 : 4 }  // ncclSum, ncclAvg
}

/// A `Communicator` whose collectives on this rank's GPU tensors are NCCL's, queued on the
/// backend's compute stream: nothing goes through host memory and the host never waits
/// (a request is complete once queued; later kernels on the stream see its result, and
/// the host sees it when it next waits for the stream). Everything else (host tensors,
/// send and receive, barriers) goes through `host`, the world it was made from, which
/// also carries NCCL's unique id from rank 0 to the others.
///
/// Made by `CUDABackend.deviceCommunicator(over:)` when every rank has a GPU of its own
/// (NCCL refuses two ranks on one GPU).
public final class NCCLCommunicator: Communicator, @unchecked Sendable {
    public let host: Communicator
    let backend: CUDABackend
    let nccl: NCCL
    private let comm: OpaquePointer?

    public var rank: Int { host.rank }
    public var size: Int { host.size }
    public var timeout: Double { host.timeout }

    /// Collective over `host`'s ranks: each calls it, and waits until all have.
    public init(host: Communicator, backend: CUDABackend, nccl: NCCL) throws {
        self.host = host
        self.backend = backend
        self.nccl = nccl
        var id = ncclUniqueId()
        if host.rank == 0 { try nccl.check(nccl.getUniqueId(&id), "ncclGetUniqueId") }
        let words = Tensor(indices: withUnsafeBytes(of: &id) { b in (0..<32).map { b.load(fromByteOffset: $0 * 4, as: Int32.self) } }, shape: [32])
        try host.broadcast(words, root: 0)
        withUnsafeMutableBytes(of: &id) { b in for (i, w) in words.ints.enumerated() { b.storeBytes(of: w, toByteOffset: i * 4, as: Int32.self) } }
        _ = backend.context.driver  // NCCL works in the calling thread's current context
        var c: OpaquePointer?
        try nccl.check(nccl.commInitRank(&c, Int32(host.size), id, Int32(host.rank)), "ncclCommInitRank(rank \(host.rank) of \(host.size))")
        comm = c
    }

    deinit { _ = nccl.commDestroy(comm) }

    private func onDevice(_ tensors: Tensor...) -> Bool { tensors.allSatisfy { $0.device == backend.device } }

    /// Queues `body`'s NCCL call on the compute stream: the request is complete when queued.
    private func queued(_ label: String, _ body: () throws -> Void) -> CommRequest {
        let request = CommRequest(label: label)
        do {
            _ = backend.context.driver  // this thread's current context
            try body()
            request.complete(nil)
        } catch {
            request.complete(CommError("rank \(rank): \(label): \(error)"))
        }
        return request
    }

    private func requireFloat32(_ t: Tensor, _ label: String) throws {
        guard t.dtype == .float32 else { throw CommError("\(label): reduces float32 tensors, got \(t.dtype) \(describe(t.shape))") }
    }

    public func allReduceAsync(_ tensor: Tensor, _ op: ReduceKind, label: String) -> CommRequest {
        guard onDevice(tensor) else { return host.allReduceAsync(tensor, op, label: label) }
        return queued(label) {
            try requireFloat32(tensor, label)
            let a = backend.address(tensor)
            try nccl.check(nccl.allReduce(a, a, tensor.count, NCCL.float32, NCCL.op(op), comm, backend.context.stream), "ncclAllReduce")
        }
    }

    public func broadcast(_ tensor: Tensor, root: Int) throws {
        guard onDevice(tensor) else { return try host.broadcast(tensor, root: root) }
        try queued("broadcast") {
            let a = backend.address(tensor)
            try nccl.check(nccl.broadcast(a, a, tensor.byteCount, NCCL.int8, Int32(root), comm, backend.context.stream), "ncclBroadcast")
        }.wait()
    }

    public func allGatherAsync(_ input: Tensor, into output: Tensor, label: String) -> CommRequest {
        guard onDevice(input, output) else { return host.allGatherAsync(input, into: output, label: label) }
        return queued(label) {
            guard output.byteCount == input.byteCount * size else {
                throw CommError("\(label): output \(describe(output.shape)) is not \(size) x input \(describe(input.shape))")
            }
            try nccl.check(nccl.allGather(backend.address(input), backend.address(output), input.byteCount, NCCL.int8, comm,
                                          backend.context.stream), "ncclAllGather")
        }
    }

    public func reduceScatter(_ input: Tensor, into output: Tensor, _ op: ReduceKind) throws {
        try reduceScatterAsync(input, into: output, op, label: "reduce-scatter").wait()
    }

    public func reduceScatterAsync(_ input: Tensor, into output: Tensor, _ op: ReduceKind, label: String) -> CommRequest {
        guard onDevice(input, output) else { return host.reduceScatterAsync(input, into: output, op, label: label) }
        return queued(label) {
            try requireFloat32(input, label)
            try requireFloat32(output, label)
            guard input.count == output.count * size else {
                throw CommError("\(label): input \(describe(input.shape)) is not \(size) x output \(describe(output.shape))")
            }
            try nccl.check(nccl.reduceScatter(backend.address(input), backend.address(output), output.count, NCCL.float32, NCCL.op(op),
                                              comm, backend.context.stream), "ncclReduceScatter")
        }
    }

    // Point to point through the host world: NCCL matches sends and receives by order, not
    // by tag, and a pipeline's schedule relies on tags.
    public func send(_ tensor: Tensor, to peer: Int, tag: Int) throws { try host.send(tensor, to: peer, tag: tag) }
    public func receive(into tensor: Tensor, from peer: Int, tag: Int) throws { try host.receive(into: tensor, from: peer, tag: tag) }
    public func barrier(timeout: Double?) throws { try host.barrier(timeout: timeout) }

    public func split(color: Int, key: Int) throws -> Communicator {
        try NCCLCommunicator(host: try host.split(color: color, key: key), backend: backend, nccl: nccl)
    }
}

extension CUDABackend: DeviceCommunication {
    /// NCCL when every rank of `world` has a GPU of its own and NCCL loads on every rank
    /// (`LOOM_NCCL=0` turns it off); otherwise nil, and collectives stage through host memory.
    public func deviceCommunicator(over world: Communicator) throws -> (communicator: Communicator?, note: String) {
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, 255)
        let node = Int32(truncatingIfNeeded: String(cString: name).utf8.reduce(UInt32(2_166_136_261)) { ($0 ^ UInt32($1)) &* 16_777_619 } & 0x7fff_ffff)
        var nccl: NCCL?, why = ""
        if ProcessInfo.processInfo.environment["LOOM_NCCL"] == "0" {
            why = "LOOM_NCCL=0"
        } else {
            do { nccl = try NCCL(emulator: context.emulator) } catch { why = "\(error)" }
        }
        // What every rank found: its node, its GPU, whether NCCL loaded, its process.
        let mine = Tensor(indices: [node, Int32(context.ordinal), nccl == nil ? 0 : 1, Int32(getpid())], shape: [4])
        let all = Tensor(indices: [Int32](repeating: 0, count: 4 * world.size), shape: [4 * world.size])
        try world.allGather(mine, into: all)
        let found = all.ints
        let places = (0..<world.size).map { "\(found[4 * $0]):\(found[4 * $0 + 1])" }
        if Set(places).count < world.size { return (nil, "through host memory (ranks share a GPU)") }
        if context.emulator != nil, Set((0..<world.size).map { "\(found[4 * $0]):\(found[4 * $0 + 3])" }).count > 1 {
            return (nil, "through host memory (the emulated NCCL joins the ranks of one process only)")
        }
        guard let nccl, (0..<world.size).allSatisfy({ found[4 * $0 + 2] == 1 }) else {
            return (nil, "through host memory (NCCL not loaded on every rank\(why.isEmpty ? "" : ": \(why)"))")
        }
        return (try NCCLCommunicator(host: world, backend: self, nccl: nccl), "NCCL \(nccl.versionString)\(context.emulator == nil ? "" : " (emulated)")")
    }
}
