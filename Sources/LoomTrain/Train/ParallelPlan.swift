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
    /// The whole model's tensors and optimizer state under their checkpoint names, as one
    /// process would hold them, as entries of the checkpoint file: the same entries in the
    /// same order on every rank, each with the pieces this rank writes (what it holds:
    /// its ZeRO chunks, its tensor-parallel slices, its stage's tensors; a tensor several
    /// ranks hold alike is written by one). And the dropout generators, whole on rank 0.
    /// Collective over the pipeline group (the stages tell each other their entries).
    func checkpointEntries() throws -> (entries: [CheckpointEntry], dropout: DropoutGenerators)
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

    public func checkpointEntries() throws -> (entries: [CheckpointEntry], dropout: DropoutGenerators) {
        try optimizer.materializeState()
        return (TrainingCheckpoint.localTensors(setup: setup, optimizer: optimizer).map { CheckpointEntry($0.name, $0.tensor, writes: true) },
                DropoutGenerators(of: setup.module))
    }
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

    public func checkpointEntries() throws -> (entries: [CheckpointEntry], dropout: DropoutGenerators) {
        var entries = sharding.checkpointEntries(setup.module.namedTensors().map { ("model." + $0.name, $0.tensor) })
            + (try sharding.optimizerStateEntries()).map { $0.renamed("optim." + $0.name) }
        // Tensor parallelism: a slice's pieces placed in the whole tensor; what every
        // tensor rank holds alike, written by the first.
        if let group = setup.tensorGroup, group.size > 1 {
            entries = entries.map { e in
                if e.sharding != nil { return e.unsharded(rank: group.rank, ranks: group.size) }
                var mine = e
                if group.rank != 0 { mine.pieces = [] }
                return mine
            }
        }
        let dropout = DropoutGenerators(of: setup.module)
        guard let groups, groups.pipeline.size > 1 else { return (entries, dropout) }
        return try joinStages(entries, dropout, groups.pipeline)
    }

    /// The entries of every stage, in stage order, on every stage: each stage sends its
    /// entries' names, dtypes and shapes (and its dropout generators) to the first, which
    /// sends back the whole list, a tensor two stages hold (a tied embedding) listed once
    /// and written by the first stage holding it. A stage keeps its pieces of the entries
    /// it writes.
    private func joinStages(_ mine: [CheckpointEntry], _ generators: DropoutGenerators, _ pipe: Communicator) throws
        -> (entries: [CheckpointEntry], dropout: DropoutGenerators) {
        let tag = 1 << 20
        func encode(_ entries: [(CheckpointEntry, Int)]) -> String {
            entries.map { e, stage in "\(e.name)\t\(e.dtype.rawValue)\t\(e.shape.map(String.init).joined(separator: ","))\t\(stage)" }
                .joined(separator: "\n")
        }
        var list: String, merged = generators
        if pipe.rank == 0 {
            var all = mine.map { ($0, 0) }, names = Set(mine.map(\.name))
            for stage in 1..<pipe.size {
                let meta = try pipe.receiveNamed(from: stage, tag: tag).metadata
                for e in try decode(meta["entries"] ?? "", from: stage) where names.insert(e.0.name).inserted { all.append(e) }
                merged = merged.merging(try DropoutGenerators(serialized: meta["dropout"] ?? "") {
                    LoomError.io("stage \(stage)'s dropout generators are not \($0)")
                })
            }
            list = encode(all)
            for stage in 1..<pipe.size { try pipe.send(named: [], metadata: ["entries": list], to: stage, tag: tag) }
        } else {
            try pipe.send(named: [], metadata: ["entries": encode(mine.map { ($0, pipe.rank) }), "dropout": generators.serialized], to: 0, tag: tag)
            list = try pipe.receiveNamed(from: 0, tag: tag).metadata["entries"] ?? ""
        }
        let own = Dictionary(mine.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        return (try decode(list, from: 0).map { e, stage in stage == pipe.rank ? own[e.name] ?? e : e }, merged)
    }

    /// Entries (without pieces) and the stage that writes each, as `joinStages` sends them.
    private func decode(_ text: String, from stage: Int) throws -> [(CheckpointEntry, Int)] {
        try text.split(separator: "\n").map { line in
            let f = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            guard f.count == 4, let dtype = DType(rawValue: f[1]), let writer = Int(f[3]) else {
                throw LoomError.io("stage \(stage) sent a malformed checkpoint entry '\(line)'")
            }
            let shape = f[2].isEmpty ? [] : f[2].split(separator: ",").compactMap { Int($0) }
            return (CheckpointEntry(name: f[0], dtype: dtype, shape: shape, pieces: []), writer)
        }
    }
}
