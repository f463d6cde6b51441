import LoomCore
import LoomDistributed
import LoomNN

/// ZeRO stage 1 (Rajbhandari et al., 2020): optimizer state sharded across the
/// data-parallel group. Rank r owns chunk r of every gradient bucket: `DataParallel`
/// reduce-scatters the gradients so that r receives the average of its chunk, r updates
/// the parameters of that chunk with an optimizer (and state) of 1/N the size, and an
/// all-gather brings every rank the whole updated parameters.
///
/// The updates are the same elementwise operations as the unsharded optimizer's, on the
/// same averaged gradients, so a ZeRO run follows the plain data parallel run.
/// Checkpoints hold the full per-parameter state under the unsharded names
/// (`gatherState()`), so they load into any number of ranks, sharded or not.
public final class ZeroOptimizer: Optimizer {
    public let parameters: [(name: String, tensor: Tensor)]
    private let communicator: Communicator
    private let layout: [(members: [Int], offsets: [Int], padded: Int, shardGrad: Tensor?)]
    private let shards: [Tensor]    // this rank's chunk of each bucket's parameters
    private let inner: Optimizer    // over `shards`
    private var gathered: [(name: String, tensor: Tensor)] = []

    public var learningRate: Float {
        get { inner.learningRate }
        set { inner.learningRate = newValue }
    }

    public var stepCount: Int {
        get { inner.stepCount }
        set { inner.stepCount = newValue }
    }

    /// Shards `template`'s kind, settings, step count and (if it has any) state.
    public init(dataParallel dp: DataParallel, template: Optimizer) throws {
        precondition(dp.zero, "ZeroOptimizer needs DataParallel(zero: true)")
        parameters = dp.parameters
        communicator = dp.communicator
        layout = dp.layout
        let rank = communicator.rank, ranks = communicator.size
        var shards: [Tensor] = []
        for bucket in layout {
            let flat = try ZeroOptimizer.pack(bucket, dp.parameters.map(\.tensor))
            let chunk = bucket.padded / ranks
            shards.append(parameter(try flat.view([chunk], offset: rank * chunk).copied()))
        }
        self.shards = shards
        inner = template.withParameters(shards.enumerated().map { ("bucket.\($0.offset)", $0.element) })
        inner.stepCount = template.stepCount
        // Resuming: take this rank's chunk of the template's full per-parameter state.
        let saved = Dictionary(template.namedState().map { ($0.name, $0.tensor) }, uniquingKeysWith: { a, _ in a })
        if !saved.isEmpty {
            try inner.materializeState()
            for (name, t) in inner.namedState() {
                let (b, suffix) = ZeroOptimizer.split(name)
                let state = layout[b].members.map { saved[parameters[$0].name + suffix] }
                guard !state.contains(where: { $0 == nil }) else { continue }
                let flat = try ZeroOptimizer.pack(layout[b], state.map { $0! }, indices: Array(state.indices))
                t.backend.copy(flat.view([t.count], offset: rank * t.count), into: t)
            }
        }
    }

    public func step() throws {
        for (b, bucket) in layout.enumerated() { shards[b].grad = bucket.shardGrad }
        try inner.step()
        for (b, bucket) in layout.enumerated() {
            let flat = try Tensor(uninitialized: [bucket.padded], on: shards[b].backend)
            try communicator.allGather(shards[b], into: flat)
            for (slot, i) in bucket.members.enumerated() {
                let p = parameters[i].tensor
                p.backend.copy(flat.view(p.shape, offset: bucket.offsets[slot]), into: p)
            }
        }
    }

    /// Clips by the global gradient norm, computed from the shards (one all-reduce of a
    /// scalar per group). With the model split across ranks, only the parameters `counts`
    /// accepts are summed here, and the sums are added across `groups` (see the free
    /// `clipGradNorm`). Returns the norm before clipping.
    @discardableResult
    public func clipGradNorm(maxNorm: Float, counting counts: ((String) -> Bool)? = nil, across groups: [Communicator] = []) throws -> Float {
        let grads = layout.compactMap(\.shardGrad)
        guard let backend = grads.first?.backend else { return 0 }
        var local = 0.0
        if let counts {
            // The counted parameters' elements that lie in this rank's chunk of each bucket.
            for (bucket, g) in zip(layout, grads) {
                let lo = communicator.rank * g.count, hi = lo + g.count
                for (slot, i) in bucket.members.enumerated() where counts(parameters[i].name) {
                    let a = max(lo, bucket.offsets[slot]), b = min(hi, bucket.offsets[slot] + parameters[i].tensor.count)
                    if a < b { local += backend.sumOfSquares([g.view([b - a], offset: a - lo)]) }
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

    /// Collective (every rank calls it): gathers the sharded state into full tensors
    /// named as the unsharded optimizer names them, for `namedState()` and checkpoints.
    public func gatherState() throws {
        try inner.materializeState()
        var out: [(String, Tensor)] = []
        var byParameter: [String: [(Int, Tensor)]] = [:]  // suffix -> per-bucket gathered
        for (name, t) in inner.namedState() {
            let (b, suffix) = ZeroOptimizer.split(name)
            let flat = try Tensor(uninitialized: [layout[b].padded], on: t.backend)
            try communicator.allGather(t, into: flat)
            byParameter[suffix, default: []].append((b, flat))
        }
        for (suffix, flats) in byParameter.sorted(by: { $0.key < $1.key }) {
            for (b, flat) in flats {
                for (slot, i) in layout[b].members.enumerated() {
                    let p = parameters[i].tensor
                    out.append((parameters[i].name + suffix, try flat.view(p.shape, offset: layout[b].offsets[slot]).copied()))
                }
            }
        }
        gathered = out
    }

    /// The state last gathered by `gatherState()`.
    public func namedState() -> [(name: String, tensor: Tensor)] { gathered }

    public func materializeState() throws { try inner.materializeState() }

    public func withParameters(_ parameters: [(name: String, tensor: Tensor)]) -> Optimizer { inner.withParameters(parameters) }

    /// The bucket's members' tensors laid out flat, zero-padded.
    static func pack(_ bucket: (members: [Int], offsets: [Int], padded: Int, shardGrad: Tensor?), _ tensors: [Tensor],
                     indices: [Int]? = nil) throws -> Tensor {
        let flat = try Tensor.zeros([bucket.padded], on: tensors.first!.backend)
        for (slot, i) in bucket.members.enumerated() {
            let t = tensors[indices?[slot] ?? i]
            t.backend.copy(t, into: flat.view(t.shape, offset: bucket.offsets[slot]))
        }
        return flat
    }

    /// "bucket.3.exp_avg" -> (3, ".exp_avg").
    static func split(_ name: String) -> (Int, String) {
        let rest = name.dropFirst("bucket.".count)
        let digits = rest.prefix { $0.isNumber }
        return (Int(digits)!, String(rest.dropFirst(digits.count)))
    }
}
