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
    /// Makes `optimizer.state()` the whole optimizer state, as one process would hold it,
    /// for a checkpoint. Collective.
    func gatherOptimizerState() throws
    /// Seconds blocked on gradient communication that backward did not hide, since the
    /// last call (nil: nothing to communicate); resets the count.
    func takeCommWaitSeconds() -> Double?
    /// `tensors` (the module's, under their checkpoint names) with every parameter's
    /// values whole on this rank: ZeRO-3 gathers copies, the others hold them already.
    /// Collective.
    func wholeValues(_ tensors: [(name: String, tensor: Tensor)]) throws -> [(name: String, tensor: Tensor)]
    /// Detaches whatever it hooked onto the parameters (ZeRO-3's stay sharded).
    func detach()
}

extension DataParallelSharding {
    public func wholeValues(_ tensors: [(name: String, tensor: Tensor)]) throws -> [(name: String, tensor: Tensor)] { tensors }
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
    public func gatherOptimizerState() throws { try optimizer.materializeState() }
    public func detach() { dataParallel?.detach() }

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
    public func gatherOptimizerState() throws { try zero.gatherState() }
    public func detach() { dataParallel.detach() }

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
    public func gatherOptimizerState() throws { try zero.gatherState() }
    public func detach() { try parameters.detach() }

    public func wholeValues(_ tensors: [(name: String, tensor: Tensor)]) throws -> [(name: String, tensor: Tensor)] {
        let copies = try parameters.wholeCopies()
        return tensors.map { ($0.name, copies[ObjectIdentifier($0.tensor)] ?? $0.tensor) }
    }

    public func takeCommWaitSeconds() -> Double? {
        defer { parameters.resetTimers() }
        return parameters.waitSeconds
    }
}
