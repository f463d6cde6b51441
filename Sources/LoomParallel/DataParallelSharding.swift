import LoomCore
import LoomDistributed
import LoomNN

/// What a data group keeps whole on every rank and what it splits: the reduction of a
/// step's gradients, the optimizer and its state. PyTorch's FSDP calls the choice a
/// sharding strategy and DeepSpeed a ZeRO stage; here each is one conformer, and the plan
/// that holds one never asks which.
///
/// - `ReplicatedGradients`: every rank holds every gradient and the whole optimizer state
///   (DistributedDataParallel; with a data group of one, plain training).
/// - `ZeroSharding`: ZeRO stage 1 (each rank updates 1/N of every bucket, with 1/N of the
///   optimizer state) or 2 (and keeps only 1/N of the gradients).
/// - `FullySharding`: ZeRO stage 3 (and keeps only 1/N of the parameters between uses).
public protocol DataParallelSharding: GradientReduction {
    /// The optimizer a step updates with.
    var optimizer: Optimizer { get }
    /// The global L2 norm of the gradient, each element counted once: only parameters
    /// `counts` accepts (nil: all) are summed on this rank, and the sums are added across
    /// `groups` (the model-parallel ones). Every gradient is scaled down to `maxNorm` if
    /// the norm exceeds it. Collective.
    func clipGradNorm(maxNorm: Float, counting counts: ((Tensor) -> Bool)?, across groups: [Communicator]) throws -> Float
    /// The optimizer state as one process would hold it, under the unsharded optimizer's
    /// names (`blocks.0.mlp.fc.weight.exp_avg`), as checkpoint entries: every rank of the
    /// group gives the same entries, each with the pieces this rank writes (its chunk of
    /// sharded state; replicated state from the group's first rank). No communication.
    func optimizerStateEntries() throws -> [CheckpointEntry]
    /// Seconds blocked on gradient communication that backward did not hide, since the
    /// last call (nil: nothing to communicate); resets the count.
    func takeCommWaitSeconds() -> Double?
    /// Its collectives and the waits for them, for a trace (nil: nothing to communicate).
    var commTimeline: CommTimeline? { get }
    /// `tensors` (the module's, under their checkpoint names) as checkpoint entries, as
    /// `optimizerStateEntries`: ZeRO-3's parameters from each rank's chunks, the
    /// replicated ones from the group's first rank.
    func checkpointEntries(_ tensors: [(name: String, tensor: Tensor)]) -> [CheckpointEntry]
    /// Detaches whatever it hooked onto the parameters (ZeRO-3's stay sharded).
    func detach()
}

/// Tensors every rank of a data group holds alike, written by its first rank.
func replicatedEntries(_ tensors: [(name: String, tensor: Tensor)], rank: Int) -> [CheckpointEntry] {
    tensors.map { CheckpointEntry($0.name, $0.tensor, writes: rank == 0) }
}

/// The sharding ZeRO stage `zero` (0 to 3) names, over `parameters` on `group` (under
/// stages 0 to 2 every rank of the group starts from its first rank's parameters; stage 3
/// takes the `fullySharded` parameters the model was built with).
public func dataParallelSharding(zero: Int, parameters: [(name: String, tensor: Tensor)], optimizer: Optimizer, group: Communicator?,
                                 bucketBytes: Int, fullySharded: FullyShardedParameters? = nil) throws -> any DataParallelSharding {
    guard let group, group.size > 1 else { return ReplicatedGradients(optimizer: optimizer, dataParallel: nil) }
    if zero == 3 {
        guard let fullySharded else { throw LoomError.invalidArgument("zero 3: the model was not built with sharded parameters") }
        return FullySharding(parameters: fullySharded, optimizer: try fullySharded.optimizer(named: parameters, template: optimizer))
    }
    let dp = try DataParallel(parameters: parameters, communicator: group, bucketBytes: bucketBytes, zero: zero)
    return zero >= 1 ? try ZeroSharding(dataParallel: dp, template: optimizer) : ReplicatedGradients(optimizer: optimizer, dataParallel: dp)
}

/// Every rank holds every gradient (averaged by a bucketed all-reduce that overlaps
/// backward) and the whole optimizer state; without a `DataParallel`, one rank alone.
public final class ReplicatedGradients: DataParallelSharding {
    public let optimizer: Optimizer
    let dataParallel: DataParallel?

    public init(optimizer: Optimizer, dataParallel: DataParallel?) {
        self.optimizer = optimizer
        self.dataParallel = dataParallel
    }

    public func setOverlapsBackward(_ on: Bool) { dataParallel?.syncGradients = on }
    public func reduceGradients() throws { try dataParallel?.synchronize() }
    public func clipGradNorm(maxNorm: Float, counting counts: ((Tensor) -> Bool)?, across groups: [Communicator]) throws -> Float {
        try LoomParallel.clipGradNorm(optimizer.parameters, maxNorm: maxNorm, counting: counts ?? { _ in true }, across: groups)
    }
    public func optimizerStateEntries() throws -> [CheckpointEntry] {
        try optimizer.materializeState()
        return replicatedEntries(optimizer.namedState(), rank: dataParallel?.communicator.rank ?? 0)
    }
    public func checkpointEntries(_ tensors: [(name: String, tensor: Tensor)]) -> [CheckpointEntry] {
        replicatedEntries(tensors, rank: dataParallel?.communicator.rank ?? 0)
    }
    public func detach() { dataParallel?.detach() }

    public var commTimeline: CommTimeline? { dataParallel?.timeline }
    public func takeCommWaitSeconds() -> Double? {
        guard let dp = dataParallel else { return nil }
        defer { dp.resetTimers() }
        return dp.waitSeconds
    }
}

/// ZeRO stages 1 and 2: gradients reduce-scattered, each rank updating its chunk of every
/// bucket with 1/N of the optimizer state, then an all-gather of the parameters
/// (`ZeroOptimizer`); under stage 2 the whole gradients are released as their buckets
/// take them (`DataParallel.releasesGradients`).
public final class ZeroSharding: DataParallelSharding {
    let dataParallel: DataParallel
    let zero: ZeroOptimizer
    public var optimizer: Optimizer { zero }

    public init(dataParallel: DataParallel, template: Optimizer) throws {
        self.dataParallel = dataParallel
        zero = try ZeroOptimizer(dataParallel: dataParallel, template: template)
    }

    public func setOverlapsBackward(_ on: Bool) { dataParallel.syncGradients = on }
    public func reduceGradients() throws { try dataParallel.synchronize() }
    public func clipGradNorm(maxNorm: Float, counting counts: ((Tensor) -> Bool)?, across groups: [Communicator]) throws -> Float {
        try zero.clipGradNorm(maxNorm: maxNorm, counting: counts, across: groups)
    }
    public func optimizerStateEntries() throws -> [CheckpointEntry] { try zero.stateEntries() }
    public func checkpointEntries(_ tensors: [(name: String, tensor: Tensor)]) -> [CheckpointEntry] {
        replicatedEntries(tensors, rank: dataParallel.communicator.rank)
    }
    public func detach() { dataParallel.detach() }

    public var commTimeline: CommTimeline? { dataParallel.timeline }
    public func takeCommWaitSeconds() -> Double? {
        defer { dataParallel.resetTimers() }
        return dataParallel.waitSeconds
    }
}

/// ZeRO stage 3: parameters, gradients and optimizer state all sharded
/// (`FullyShardedParameters` gathers each unit around its forward and backward and
/// reduce-scatters its gradients; `ZeroOptimizer` steps the chunks in place).
public final class FullySharding: DataParallelSharding {
    let parameters: FullyShardedParameters
    let zero: ZeroOptimizer
    public var optimizer: Optimizer { zero }

    public init(parameters: FullyShardedParameters, optimizer: ZeroOptimizer) {
        self.parameters = parameters
        zero = optimizer
    }

    public func setOverlapsBackward(_ on: Bool) { parameters.syncGradients = on }
    public func reduceGradients() throws { try parameters.synchronize() }
    public func clipGradNorm(maxNorm: Float, counting counts: ((Tensor) -> Bool)?, across groups: [Communicator]) throws -> Float {
        try zero.clipGradNorm(maxNorm: maxNorm, counting: counts, across: groups)
    }
    public func optimizerStateEntries() throws -> [CheckpointEntry] { try zero.stateEntries() }
    public func detach() { parameters.detach() }
    public func checkpointEntries(_ tensors: [(name: String, tensor: Tensor)]) -> [CheckpointEntry] { parameters.checkpointEntries(tensors) }

    public var commTimeline: CommTimeline? { parameters.timeline }
    public func takeCommWaitSeconds() -> Double? {
        defer { parameters.resetTimers() }
        return parameters.waitSeconds
    }
}
