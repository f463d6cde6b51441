import LoomCore
import LoomDistributed
import LoomNN
import LoomParallel

/// How this rank's part of a run combines with the other ranks': what the training loop
/// asks after backward and at a checkpoint, the same questions for every layout. Two
/// implementations: `SingleProcessPlan` (one rank: nothing to combine) and
/// `DistributedPlan` (data parallel, replicated or ZeRO-sharded, tensor and pipeline
/// parallel, and their combinations).
///
/// The plan is the step schedule's `GradientReduction`: a schedule asks it to reduce at
/// the same points whatever the layout.
public protocol ParallelPlan: GradientReduction {
    /// The optimizer training steps with (the setup's, or its ZeRO-sharded form).
    var optimizer: Optimizer { get }
    /// The global L2 norm of the whole model's gradient, each element counted once; if
    /// it exceeds `maxNorm`, every gradient is scaled down to it (pass .infinity to only
    /// measure). Collective.
    func clipGradients(maxNorm: Float) throws -> Float
    /// The whole model's parameter count. Collective.
    func parameterCount() throws -> Int
    /// The whole model's tensors and optimizer state under their checkpoint names, and
    /// the dropout generators, as one process would hold them: on the rank that writes
    /// the checkpoint (`writesCheckpoint`). Each tensor is made when the writer takes it
    /// (sharded ones are gathered then); the makes are collective, so every other rank
    /// makes them all too, in order, and then every rank calls `checkpointWritten`.
    func checkpointTensors() throws -> (tensors: [LazyTensor], dropout: DropoutGenerators)
    /// After a checkpoint's tensors were made (ZeRO-3 releases what it gathered).
    func checkpointWritten() throws
    /// Whether this rank writes the run's files (rank 0).
    var writesCheckpoint: Bool { get }
    /// Seconds blocked on gradient communication that backward did not hide, since the
    /// last call (nil: no data parallelism); resets the count.
    func takeCommWaitSeconds() -> Double?
    /// Data parallelism's collectives and the waits for them, for a trace (nil: none).
    var commTimeline: CommTimeline? { get }
    /// Detaches the hooks data parallelism put on the parameters.
    func detach()
}

/// One process: gradients, norms and state are already whole.
public final class SingleProcessPlan: ParallelPlan {
    public let optimizer: Optimizer
    let setup: Setup

    init(setup: Setup) {
        self.setup = setup
        optimizer = setup.optimizer
    }

    public func setOverlapsBackward(_ on: Bool) {}
    public func reduceGradients() throws {}
    public func takeCommWaitSeconds() -> Double? { nil }
    public var commTimeline: CommTimeline? { nil }
    public func detach() {}
    public func clipGradients(maxNorm: Float) throws -> Float { clipGradNorm(setup.module.parameters, maxNorm: maxNorm) }
    public func parameterCount() throws -> Int { setup.module.parameterCount }
    public var writesCheckpoint: Bool { true }

    public func checkpointTensors() throws -> (tensors: [LazyTensor], dropout: DropoutGenerators) {
        try optimizer.materializeState()
        return (TrainingCheckpoint.localTensors(setup: setup, optimizer: optimizer).map { LazyTensor($0.name, $0.tensor) },
                DropoutGenerators(of: setup.module))
    }
    public func checkpointWritten() throws {}
}

/// One rank of a run over several: a data group that splits the batch (its
/// `DataParallelSharding`: bucketed all-reduce overlapping backward, ZeRO-1/2's
/// reduce-scatter and sharded optimizer, or ZeRO-3's sharded parameters), and when the model is split, a tensor group
/// (sharded parameters) and a pipeline group (this rank's pieces).
public final class DistributedPlan: ParallelPlan {
    let setup: Setup
    let world: Communicator
    /// The model-parallel groups (nil: data parallelism only).
    let groups: ProcessGroups?
    /// What the data group replicates and what it splits.
    let sharding: any DataParallelSharding

    /// Every rank of a data group starts from its first rank's parameters (broadcast).
    init(setup: Setup, bucketBytes: Int, zero: Int) throws {
        self.setup = setup
        world = setup.context.world!
        groups = setup.context.groups
        sharding = try dataParallelSharding(zero: zero, parameters: setup.module.namedParameters(), optimizer: setup.optimizer,
                                            group: setup.context.data, bucketBytes: bucketBytes, fullySharded: setup.fullySharded)
    }

    public var optimizer: Optimizer { sharding.optimizer }
    public var writesCheckpoint: Bool { world.rank == 0 }
    public func setOverlapsBackward(_ on: Bool) { sharding.setOverlapsBackward(on) }
    public func reduceGradients() throws { try sharding.reduceGradients() }
    public func detach() { sharding.detach() }
    public func takeCommWaitSeconds() -> Double? { sharding.takeCommWaitSeconds() }
    public var commTimeline: CommTimeline? { sharding.commTimeline }

    /// Whether this rank's copy of a parameter is the one that counts when the whole
    /// model's elements are summed (parameter count, gradient norm): shards on every TP
    /// rank, TP-replicated tensors on TP rank 0, a parameter tied across pipeline stages
    /// on the first stage holding it.
    func countsOnce(_ t: Tensor) -> Bool {
        guard let groups else { return true }
        if groups.pipeline.rank != 0, setup.steps.sharedParameters.contains(where: { $0 === t }) { return false }
        return groups.tensor.rank == 0 || t.sharding != nil
    }

    public func clipGradients(maxNorm: Float) throws -> Float {
        try sharding.clipGradNorm(maxNorm: maxNorm, counting: groups == nil ? nil : countsOnce, across: groups.map { [$0.tensor, $0.pipeline] } ?? [])
    }

    public func parameterCount() throws -> Int {
        guard let groups else { return setup.module.parameterCount }
        let mine = setup.module.parameters.filter(countsOnce).reduce(0) { $0 + $1.count }
        return Int(try groups.pipeline.sum(groups.tensor.sum([Double(mine)]))[0])
    }

    public func checkpointTensors() throws -> (tensors: [LazyTensor], dropout: DropoutGenerators) {
        var tensors = sharding.checkpointValues(setup.module.namedTensors().map { ("model." + $0.name, $0.tensor) })
            + (try sharding.optimizerStateTensors()).map { $0.renamed("optim." + $0.name) }
        // Tensor parallelism: every rank gathers the shards into whole tensors.
        if let group = setup.tensorGroup {
            tensors = tensors.map { item in
                guard let sharding = item.sharding, group.size > 1 else { return item }
                var whole = item.shape
                whole[sharding.axis] *= group.size
                return item.map(shape: whole) { try $0.unshard(group) }
            }
        }
        let dropout = DropoutGenerators(of: setup.module)
        guard let groups, groups.pipeline.size > 1 else { return (tensors, dropout) }
        let made = try tensors.map { ($0.name, try $0.make()) }
        let (all, merged) = try gatherStages(made, dropout, groups)
        return (all.map { LazyTensor($0.name, $0.tensor) }, merged)
    }

    public func checkpointWritten() throws { try sharding.checkpointWritten() }

    /// Stages other than 0 of rank 0's pipeline send their tensors and dropout generators
    /// to it; rank 0 returns them all (tied parameters and their state once, from the
    /// first stage). Other ranks hold copies of these and send nothing.
    private func gatherStages(_ mine: [(name: String, tensor: Tensor)], _ generators: DropoutGenerators, _ groups: ProcessGroups) throws
        -> (tensors: [(name: String, tensor: Tensor)], dropout: DropoutGenerators) {
        guard groups.data.rank == 0 && groups.tensor.rank == 0 else { return (mine, generators) }
        let pipe = groups.pipeline, tag = 1 << 20
        if pipe.rank != 0 {
            try pipe.send(named: mine, metadata: ["dropout": generators.serialized], to: 0, tag: tag)
            return (mine, generators)
        }
        let backend = optimizer.parameters.first?.tensor.backend ?? DefaultBackend.current
        var all = mine, names = Set(mine.map(\.name)), merged = generators
        for stage in 1..<pipe.size {
            let (tensors, meta) = try pipe.receiveNamed(from: stage, tag: tag, on: backend)
            for (name, t) in tensors where names.insert(name).inserted { all.append((name, t)) }
            let theirs = try DropoutGenerators(serialized: meta["dropout"] ?? "") {
                LoomError.io("stage \(stage)'s dropout generators are not \($0)")
            }
            merged = merged.merging(theirs)
        }
        return (all, merged)
    }
}
