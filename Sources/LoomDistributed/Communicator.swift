import LoomCore

/// How a collective combines values across ranks.
public enum ReduceKind: String, Sendable {
    case sum
    case average
}

/// A group of ranks that exchange tensors. Collectives must be called by every rank of
/// the group, in the same order; point-to-point messages are matched by (peer, tag).
///
/// Two implementations: `MPICommunicator` (Open MPI, started by mpirun or Slurm) and
/// `InProcessCommunicator` (ranks as threads of one process, for tests and single-machine
/// runs without mpirun). Training code sees only this protocol.
///
/// Tensors may live on any device: where the transport cannot read device memory, the
/// communicator stages through host buffers it owns (`HostBuffer`). Reductions take
/// float32; other operations move bytes of any dtype. Collectives work in place unless
/// they say otherwise.
public protocol Communicator: AnyObject, Sendable {
    var rank: Int { get }
    var size: Int { get }
    /// Seconds a collective or receive may wait before the run fails with a message
    /// naming the operation and the ranks it waited on.
    var timeout: Double { get }

    /// Starts `tensor = reduce(tensor over ranks)`; collectives run in the order started.
    func allReduceAsync(_ tensor: Tensor, _ op: ReduceKind, label: String) -> CommRequest
    /// Rank `root`'s values into every rank's `tensor`.
    func broadcast(_ tensor: Tensor, root: Int) throws
    /// Starts: every rank's `input` (all the same shape), concatenated in rank order into
    /// `output`; in order with the other collectives and not waited for (ZeRO-3 gathers
    /// the next unit's parameters while the current one computes). `input` may be this
    /// rank's block of `output` (in place: ZeRO-1/2's chunk of a flat buffer).
    func allGatherAsync(_ input: Tensor, into output: Tensor, label: String) -> CommRequest
    /// The reduction of `input` over ranks, of which this rank keeps chunk `rank` (of
    /// `size` equal chunks) in `output`.
    func reduceScatter(_ input: Tensor, into output: Tensor, _ op: ReduceKind) throws
    /// `reduceScatter`, started in order with the other collectives and not waited for.
    func reduceScatterAsync(_ input: Tensor, into output: Tensor, _ op: ReduceKind, label: String) -> CommRequest
    func send(_ tensor: Tensor, to peer: Int, tag: Int) throws
    func receive(into tensor: Tensor, from peer: Int, tag: Int) throws
    /// Every rank arrives, then all leave. `timeout`: how long to wait instead of the
    /// communicator's own (a rank writing a checkpoint may take longer than a collective).
    func barrier(timeout: Double?) throws
    /// Sub-groups: ranks with the same `color` form one, ordered by `key` (MPI_Comm_split).
    func split(color: Int, key: Int) throws -> Communicator
}

/// Two tensors a collective holds until it has run, then lets go (`take`), so that they
/// are not kept alive by the queued work after their request completes.
final class TensorPair: @unchecked Sendable {
    private var pair: (Tensor, Tensor)?
    init(_ a: Tensor, _ b: Tensor) { pair = (a, b) }
    func take() -> (Tensor, Tensor)? { defer { pair = nil }; return pair }
}

/// A collective in flight.
public final class CommRequest: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var error: Error?
    public let label: String
    /// When it was started, and when it completed (monotonic seconds; nil until then).
    public let issued = monotonicSeconds()
    public private(set) var completed: Double?

    public init(label: String) { self.label = label }

    /// Marks it complete (a communicator's own code, when the collective has run or is queued on a device stream).
    public func complete(_ error: Error?) {
        self.error = error
        completed = monotonicSeconds()
        done.signal()
    }

    /// Whether the collective has completed (without waiting).
    public var isComplete: Bool {
        guard done.wait(timeout: .now()) == .success else { return false }
        done.signal()
        return true
    }

    /// Blocks until the collective has completed; rethrows its failure.
    public func wait() throws {
        done.wait()
        done.signal()  // later waits return at once
        if let error { throw error }
    }
}

extension Communicator {
    /// Every rank's `input` (all the same shape), concatenated in rank order into `output`.
    public func allGather(_ input: Tensor, into output: Tensor) throws {
        try allGatherAsync(input, into: output, label: "all-gather").wait()
    }

    public func barrier() throws { try barrier(timeout: nil) }

    public func allReduce(_ tensor: Tensor, _ op: ReduceKind = .sum, label: String = "all-reduce") throws {
        try allReduceAsync(tensor, op, label: label).wait()
    }

    /// The mean of a host scalar over ranks (losses, metrics).
    public func average(_ value: Double) throws -> Double {
        let t = Tensor([Float(value)], shape: [1])
        try allReduce(t, .average, label: "average")
        return Double(t.item)
    }

    /// Sums of host scalars over ranks, in float64 (evaluation counts).
    public func sum(_ values: [Double]) throws -> [Double] {
        // Two floats per value (high and low part) keep integer counts exact past 2^24.
        var parts: [Float] = []
        for v in values { let hi = Float(v); parts += [hi, Float(v - Double(hi))] }
        let t = Tensor(parts, shape: [parts.count])
        try allReduce(t, .sum, label: "sum")
        let r = t.floats
        return (0..<values.count).map { Double(r[2 * $0]) + Double(r[2 * $0 + 1]) }
    }
}

import Dispatch

/// Reductions add float32 values; any other dtype is an error naming the operation.
func requireFloat32(_ t: Tensor, _ op: String) throws {
    guard t.dtype == .float32 else { throw CommError("\(op): reduces float32 tensors, got \(t.dtype) \(describe(t.shape))") }
}

/// Failures of distributed operations. Messages name the rank, the operation and
/// whom it waited on.
public struct CommError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
