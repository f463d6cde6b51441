import LoomCore
import LoomDistributed
import LoomNN

/// ZeRO stages 1, 2 and 3 (Rajbhandari et al., 2020): optimizer state sharded across the
/// data-parallel group. Parameters are laid out in flat segments (stages 1 and 2:
/// `DataParallel`'s gradient buckets; stage 3: `FullyShardedParameters`' units), each
/// padded to a multiple of the rank count; rank r owns chunk r of every segment. The
/// gradients are reduce-scattered so that r receives the average of its chunk, and r
/// updates that chunk with an optimizer (and state) of 1/N the size. Under stages 1 and 2
/// an all-gather then brings every rank the whole updated parameters; under stage 3 the
/// chunks are the parameters, gathered unit by unit when they are used.
///
/// The updates are the same elementwise operations as the unsharded optimizer's, on the
/// same averaged gradients, so a ZeRO run follows the plain data parallel run.
/// Checkpoints hold the full per-parameter state under the unsharded names
/// (`stateTensors()`, `loadState`), so they load into any number of ranks, sharded or not.
public final class ZeroOptimizer: Optimizer {
    /// A flat segment: its members (indices into `parameters`), each member's element
    /// offset, the padded length, and this rank's chunk of the averaged gradient.
    public typealias Segment = (members: [Int], offsets: [Int], padded: Int, shardGrad: Tensor?)

    public let parameters: [(name: String, tensor: Tensor)]
    private let communicator: Communicator
    private let layout: [Segment]
    private let shards: [Tensor]    // this rank's chunk of each segment's parameters
    private let inner: Optimizer    // over `shards`
    /// Stages 1 and 2: each segment's flat parameters, of which `shards` are views; the
    /// all-gather after a step fills them in place (stage 3: none, the chunks are all).
    private let buffers: [Tensor]

    public var learningRate: Float {
        get { inner.learningRate }
        set { inner.learningRate = newValue }
    }

    public var stepCount: Int {
        get { inner.stepCount }
        set { inner.stepCount = newValue }
    }

    /// Stages 1 and 2 over `dp`'s buckets: shards `template`'s kind, settings, step count
    /// and (if it has any) state.
    public convenience init(dataParallel dp: DataParallel, template: Optimizer) throws {
        precondition(dp.zero, "ZeroOptimizer needs DataParallel(zero: 1 or 2)")
        let rank = dp.communicator.rank, ranks = dp.communicator.size
        // This rank's chunk of each bucket's flat parameters: a view, updated in place.
        let shards = zip(dp.layout, dp.parameterBuffers).map { bucket, values in
            parameter(values.view([bucket.padded / ranks], offset: rank * (bucket.padded / ranks)))
        }
        try self.init(parameters: dp.parameters, communicator: dp.communicator, layout: dp.layout, shards: shards,
                      gatheringInto: dp.parameterBuffers, template: template)
    }

    /// Over given segments whose chunks `shards` this rank holds. `buffers`: each
    /// segment's whole flat parameters, of which the shards are views, all-gathered after
    /// each step (stage 3: none; the shards are the parameters' only persistent values).
    /// `template`'s parameters are `parameters`, in the same order.
    public init(parameters: [(name: String, tensor: Tensor)], communicator: Communicator, layout: [Segment], shards: [Tensor],
                gatheringInto buffers: [Tensor] = [], template: Optimizer) throws {
        precondition(buffers.isEmpty || buffers.count == shards.count, "ZeroOptimizer: a buffer per segment, or none")
        self.parameters = parameters
        self.communicator = communicator
        self.layout = layout
        self.shards = shards
        self.buffers = buffers
        inner = template.withParameters(shards.enumerated().map { ("bucket.\($0.offset)", $0.element) })
        inner.stepCount = template.stepCount
        // Resuming: take this rank's chunk of the template's full per-parameter state.
        let saved = Dictionary(uniqueKeysWithValues: template.namedState())
        if !saved.isEmpty {
            try loadState { name, _ in
                guard let t = saved[name] else { throw LoomError.invalidArgument("ZeRO: the optimizer to shard has no state '\(name)'") }
                return t
            }
        }
    }

    public func step() throws {
        for (b, bucket) in layout.enumerated() { shards[b].grad = bucket.shardGrad }
        try inner.step()
        // In place: the chunk is this rank's part of the buffer the parameters point into.
        for (shard, values) in zip(shards, buffers) { try communicator.allGather(shard, into: values) }
    }

    /// Clips by the global gradient norm, computed from the shards (one all-reduce of a
    /// scalar per group). With the model split across ranks, only the parameters `counts`
    /// accepts are summed here, and the sums are added across `groups` (see the free
    /// `clipGradNorm`). Returns the norm before clipping.
    @discardableResult
    public func clipGradNorm(maxNorm: Float, counting counts: ((Tensor) -> Bool)? = nil, across groups: [Communicator] = []) throws -> Float {
        let grads = layout.compactMap(\.shardGrad)
        guard let backend = grads.first?.backend else { return 0 }
        var local = 0.0
        if let counts {
            // The counted parameters' elements that lie in this rank's chunk of each bucket.
            for (bucket, g) in zip(layout, grads) {
                for (slot, i) in bucket.members.enumerated() where counts(parameters[i].tensor) {
                    for piece in chunkPieces(count: parameters[i].tensor.count, at: bucket.offsets[slot], chunk: g, from: communicator.rank * g.count) {
                        local += backend.sumOfSquares([try piece.make()])
                    }
                }
            }
        } else {
            local = backend.sumOfSquares(grads)
        }
        var total = try communicator.sum([local])[0]
        for group in groups where group.size > 1 { total = try group.sum([total])[0] }
        let norm = Float(total.squareRoot())
        let scale = maxNorm / (norm + 1e-6)
        if scale < 1 { for g in grads { g.backend.scalar(.mul, g, scale, into: g) } }
        return norm
    }

    /// Each rank reads its chunk of every state tensor, one parameter's at a time.
    public func loadState(_ value: (_ name: String, _ like: Tensor) throws -> Tensor) throws {
        try inner.materializeState()
        for s in inner.state() {
            let segment = layout[s.parameter]
            for (k, i) in segment.members.enumerated() {
                let p = parameters[i].tensor
                // Read only what this rank's chunk holds part of.
                guard let piece = chunkPieces(count: p.count, at: segment.offsets[k], chunk: s.tensor, from: communicator.rank * s.tensor.count).first
                else { continue }
                let v = try value(parameters[i].name + "." + s.slot, p)
                s.tensor.backend.copy(v.flatView(from: piece.offset, count: piece.count), into: try piece.make())
            }
        }
    }

    /// The full per-parameter state under the unsharded optimizer's names, as checkpoint
    /// entries whose pieces are this rank's chunks (every rank gives the same entries, in
    /// order; the ranks' pieces tile each). Nothing is gathered.
    public func stateEntries() throws -> [CheckpointEntry] {
        try inner.materializeState()
        return inner.state().flatMap { s -> [CheckpointEntry] in
            let segment = layout[s.parameter], lo = communicator.rank * s.tensor.count
            return segment.members.enumerated().map { k, i in
                let p = parameters[i].tensor
                return CheckpointEntry(name: parameters[i].name + "." + s.slot, dtype: s.tensor.dtype, shape: p.shape, sharding: p.sharding,
                                       pieces: chunkPieces(count: p.count, at: segment.offsets[k], chunk: s.tensor, from: lo))
            }
        }
    }

    /// None here: the state is sharded (`stateEntries()` gives it as a checkpoint holds it).
    public func state() -> [OptimizerState] { [] }

    public func materializeState() throws { try inner.materializeState() }

    public func withParameters(_ parameters: [(name: String, tensor: Tensor)]) -> Optimizer { inner.withParameters(parameters) }
}

/// The piece of a tensor of `count` elements at `offset` in a flat segment that this
/// rank's chunk holds (`chunk`: the segment's elements [lo, lo + chunk.count)), as a view
/// of the chunk; none where they do not overlap.
func chunkPieces(count: Int, at offset: Int, chunk: Tensor, from lo: Int) -> [TensorPiece] {
    let a = max(lo, offset), b = min(lo + chunk.count, offset + count)
    return a < b ? [TensorPiece(offset: a - offset, count: b - a) { chunk.flatView(from: a - lo, count: b - a) }] : []
}
