import LoomCore
import LoomDistributed
import LoomNN

/// ZeRO stage 3 (fully sharded data parallelism, PyTorch's FSDP): between uses, each rank
/// of the data group keeps 1/N of every parameter, of its gradient and (with
/// `ZeroOptimizer`) of its optimizer state.
///
/// The model names its units as it builds them (`UnitSharding`): a GPT's blocks, and the
/// root (embeddings, final norm; the whole of a model that names no units). A unit's
/// parameters are laid out in flat segments padded to a multiple of the rank count, and
/// rank r keeps chunk r of each segment as a parameter of its own (`shards`). Then:
///
///     forward of unit u:   all-gather u's segments; parameters point into them;
///                          start gathering the next unit (prefetch); run u; release u
///     backward reaches u:  gather u again (and start on the unit before it)
///     u's last gradient:   reduce-scatter u's gradients into chunk r (`shardGrad`), drop
///                          the whole gradients, release u
///     after backward:      `synchronize` waits for the reductions; the optimizer steps
///                          the chunks; the next forward gathers the new values
///
/// So a rank holds its chunks, the root, and at most two other units whole at a time
/// (the one running and the one being gathered).
///
/// The root stays whole from its forward's start to its backward's end (it holds a GPT's
/// token table, read by the embedding first and the tied head last). Building the model
/// through `shard` keeps the whole of at most one unit at a time beside the chunks.
///
/// Every rank runs the same forwards and backwards in the same order, so the collectives
/// the hooks start match across ranks.
public final class FullyShardedParameters: UnitSharding {
    public let communicator: Communicator
    /// False during the first micro-steps of gradient accumulation: gradients then stay
    /// whole and local, and only the last micro-step's backward reduces.
    public var syncGradients = true
    /// Seconds the training thread spent blocked on gathers and reductions, since the last `resetTimers()`.
    public private(set) var waitSeconds = 0.0
    /// Its collectives and the waits for them, for a trace.
    public let timeline = CommTimeline()
    /// Gathers waited for since the last `resetTimers()`, and how many of them had already
    /// completed under earlier compute when they were needed (prefetch hid them).
    public private(set) var gathers = 0, gathersHidden = 0

    final class Segment {
        let tensors: [Tensor]
        let offsets: [Int]
        let padded: Int
        /// This rank's chunk [padded / N]: a parameter, what the optimizer updates.
        let shard: Tensor
        /// This rank's chunk of the averaged gradient [padded / N].
        let shardGrad: Tensor
        /// [padded] while its unit is gathered, or being gathered.
        var whole: Tensor?
        var gathering: CommRequest?
        init(tensors: [Tensor], offsets: [Int], padded: Int, shard: Tensor, shardGrad: Tensor) {
            self.tensors = tensors; self.offsets = offsets; self.padded = padded; self.shard = shard; self.shardGrad = shardGrad
        }
    }

    final class Unit {
        let name: String
        var segments: [Segment] = []
        var parameterCount: Int { segments.reduce(0) { $0 + $1.tensors.count } }
        /// Gradients still to arrive in the running backward.
        var pendingGradients = 0
        /// Its gradients were reduced this step.
        var reduced = false
        /// Its parameters point into the gathered segments.
        var bound = false
        init(name: String) { self.name = name }
    }

    private let backend: any Backend
    private let root = Unit(name: "root")
    private var units: [Unit]
    private var unitOfModule: [ObjectIdentifier: Unit] = [:]
    private var unitOfParameter: [ObjectIdentifier: Unit] = [:]
    /// Units in the order the running forward entered them, and the last whole forward's.
    private var order: [Unit] = [], lastOrder: [Unit] = []
    /// Gradient reductions started and not yet waited for, oldest first.
    private var inFlight: [(segment: Segment, whole: Tensor, request: CommRequest)] = []
    private static let maxInFlight = 2
    /// A failure in a backward hook (which cannot throw), for `synchronize`.
    private var hookError: Error?

    public init(communicator: Communicator, backend: any Backend) {
        self.communicator = communicator
        self.backend = backend
        units = [root]
    }

    // MARK: Building

    public func shard(_ modules: [Module], as module: Module?) throws {
        let unit: Unit
        if let module {
            if let known = unitOfModule[ObjectIdentifier(module)] { unit = known } else {
                unit = Unit(name: "unit \(units.count)")
                units.append(unit)
                unitOfModule[ObjectIdentifier(module)] = unit
            }
        } else {
            unit = root
        }
        var seen = Set<ObjectIdentifier>()
        let tensors = modules.flatMap { $0.namedParameters().map(\.tensor) }.filter {
            unitOfParameter[ObjectIdentifier($0)] == nil && seen.insert(ObjectIdentifier($0)).inserted
        }
        guard !tensors.isEmpty else { return }
        let ranks = communicator.size, rank = communicator.rank
        var offsets: [Int] = [], size = 0
        for t in tensors {
            guard t.dtype == .float32 else {
                throw LoomError.invalidArgument("zero 3: parameter \(describe(t.shape)) is \(t.dtype); sharded parameters are float32")
            }
            offsets.append(size); size += t.count
        }
        let padded = (size + ranks - 1) / ranks * ranks, chunk = padded / ranks
        // This rank's chunk straight from the tensors (no whole flat copy: building holds
        // one unit whole, not two).
        let shard = parameter(try Tensor.zeros([chunk], on: backend)), shardGrad = try Tensor.zeros([chunk], on: backend)
        shardGrad.tagMemory(.gradients)
        for (t, offset) in zip(tensors, offsets) {
            for piece in chunkPieces(count: t.count, at: offset, chunk: shard, from: rank * chunk) {
                backend.copy(t.flatView(from: piece.offset, count: piece.count), into: try piece.make())
            }
        }
        let segment = Segment(tensors: tensors, offsets: offsets, padded: padded, shard: shard, shardGrad: shardGrad)
        unit.segments.append(segment)
        for t in tensors {
            unitOfParameter[ObjectIdentifier(t)] = unit
            t.rebind(to: Storage.released(on: t.device), offset: 0)  // the whole values go
            t.onGradAccumulated = { [weak self] p in self?.gradientArrived(p) }
        }
    }

    // MARK: Forward and backward

    public func forward(_ module: Module?, _ body: () throws -> Tensor) throws -> Tensor {
        let unit = try self.unit(module)
        if unit === root { order = [] } else { order.append(unit) }
        try gather(unit)
        if let next = following(unit, in: lastOrder) { try prefetch(next) }
        let out = try body()
        if unit === root { lastOrder = order }
        let tracked = GradMode.isEnabled && out.requiresGrad
        // The root stays whole through the step; so does the unit whose forward ran last
        // (the previous step's order), which backward reaches first (as FSDP keeps it):
        // releasing it would only gather it again at once.
        if !tracked || (unit !== root && unit !== lastOrder.last) { try release(unit) }
        guard tracked else { return out }
        unit.pendingGradients = unit.parameterCount
        unit.reduced = false
        return Tensor.differentiable("gather \(unit.name) for backward", output: out.detach(), inputs: [out]) { [unowned self] g in
            try self.gather(unit)
            if let before = self.preceding(unit) { try self.prefetch(before) }
            return [g]
        }
    }

    private func unit(_ module: Module?) throws -> Unit {
        guard let module else { return root }
        guard let unit = unitOfModule[ObjectIdentifier(module)] else {
            throw LoomError.invalidArgument("zero 3: forward of a \(type(of: module)) that was not sharded as a unit")
        }
        return unit
    }

    /// The unit after `unit` in `sequence` (the root's successor is the first).
    private func following(_ unit: Unit, in sequence: [Unit]) -> Unit? {
        if unit === root { return sequence.first }
        guard let i = sequence.firstIndex(where: { $0 === unit }), i + 1 < sequence.count else { return nil }
        return sequence[i + 1]
    }

    /// The unit backward reaches after `unit`: the one before it in the forward (the
    /// root's backward starts with the last).
    private func preceding(_ unit: Unit) -> Unit? {
        if unit === root { return lastOrder.last }
        guard let i = lastOrder.firstIndex(where: { $0 === unit }), i > 0 else { return nil }
        return lastOrder[i - 1]
    }

    /// Starts gathering `unit`'s segments that are neither whole nor on their way. (A
    /// failed allocation is thrown, not skipped: every rank must start the same gathers.)
    private func prefetch(_ unit: Unit) throws {
        for segment in unit.segments where segment.whole == nil { try startGathering(segment, of: unit) }
    }

    private func startGathering(_ segment: Segment, of unit: Unit) throws {
        let whole = try Tensor(uninitialized: [segment.padded], on: backend)
        whole.tagMemory(.parameters)
        segment.whole = whole
        segment.gathering = communicator.allGatherAsync(segment.shard, into: whole, label: "all-gather of \(unit.name)")
    }

    /// Makes `unit`'s parameters whole: waits for (or starts and waits for) its gathers.
    private func gather(_ unit: Unit) throws {
        if unit.bound { return }
        let t0 = monotonicSeconds()
        defer { waitSeconds += monotonicSeconds() - t0 }
        for segment in unit.segments {
            if segment.whole == nil {
                try startGathering(segment, of: unit)
            } else if segment.gathering?.isComplete ?? true {
                gathersHidden += 1
            }
            gathers += 1
            if let request = segment.gathering {
                segment.gathering = nil
                try timeline.wait(request)
            }
            let whole = segment.whole!
            for (t, offset) in zip(segment.tensors, segment.offsets) { t.rebind(to: whole.storage, offset: whole.offset + offset) }
        }
        unit.bound = true
    }

    /// Drops `unit`'s whole values (their memory goes once the graph no longer reads them).
    private func release(_ unit: Unit) throws {
        for segment in unit.segments {
            if let request = segment.gathering { segment.gathering = nil; try timeline.wait(request) }
            segment.whole = nil
            for t in segment.tensors { t.rebind(to: Storage.released(on: t.device), offset: 0) }
        }
        unit.bound = false
    }

    private func gradientArrived(_ p: Tensor) {
        guard let unit = unitOfParameter[ObjectIdentifier(p)], unit.pendingGradients > 0 else { return }
        unit.pendingGradients -= 1
        guard unit.pendingGradients == 0 else { return }
        do {
            if syncGradients { try reduce(unit) }
            try release(unit)
        } catch {
            if hookError == nil { hookError = error }
        }
    }

    /// Starts reduce-scattering `unit`'s gradients (zeros for a parameter that got none)
    /// into each segment's `shardGrad`, and drops the whole gradients.
    private func reduce(_ unit: Unit) throws {
        unit.reduced = true
        for segment in unit.segments {
            let t0 = monotonicSeconds()
            while inFlight.count >= FullyShardedParameters.maxInFlight { try finishOldest() }
            waitSeconds += monotonicSeconds() - t0
            let flat = try Tensor(uninitialized: [segment.padded], on: backend)
            flat.tagMemory(.communication)
            if let last = segment.offsets.last, let tail = segment.tensors.last, last + tail.count < segment.padded {
                backend.fill(flat.view([segment.padded - last - tail.count], offset: last + tail.count), value: 0)
            }
            for (t, offset) in zip(segment.tensors, segment.offsets) {
                let dst = flat.view(t.shape, offset: offset)
                if let g = t.grad { backend.copy(g, into: dst) } else { backend.fill(dst, value: 0) }
                t.grad = nil
            }
            let request = communicator.reduceScatterAsync(flat, into: segment.shardGrad, .average, label: "reduce-scatter of \(unit.name)'s gradients")
            inFlight.append((segment, flat, request))
        }
    }

    private func finishOldest() throws {
        let oldest = inFlight.removeFirst()
        try timeline.wait(oldest.request)
    }

    /// Waits for every reduction (starting those of units whose backward did not run this
    /// step) and releases every unit: each rank's `shardGrad`s are then its chunks of the
    /// global batch's gradient.
    public func synchronize() throws {
        let t0 = monotonicSeconds()
        defer { waitSeconds += monotonicSeconds() - t0 }
        if let error = hookError { hookError = nil; throw error }
        for unit in units where !unit.reduced { try reduce(unit) }
        while !inFlight.isEmpty { try finishOldest() }
        for unit in units {
            unit.reduced = false
            unit.pendingGradients = 0
            try release(unit)
        }
    }

    public func resetTimers() { waitSeconds = 0; gathers = 0; gathersHidden = 0 }

    // MARK: Whole values, for checkpoints

    /// Whether `t` is one of the parameters this shards.
    public func holds(_ t: Tensor) -> Bool { unitOfParameter[ObjectIdentifier(t)] != nil }

    /// Where sharded parameter `t` lives: its unit, its segment, and its index there.
    private func place(of t: Tensor) -> (Unit, Segment, Int)? {
        guard let unit = unitOfParameter[ObjectIdentifier(t)] else { return nil }
        for segment in unit.segments { if let k = segment.tensors.firstIndex(where: { $0 === t }) { return (unit, segment, k) } }
        return nil
    }

    /// Sets parameter `t` to `value` (its shape): this rank keeps the part its chunk holds.
    /// Not collective: a checkpoint is loaded by every rank reading its own chunks.
    public func load(_ t: Tensor, from value: Tensor) throws {
        guard let (unit, segment, k) = place(of: t) else {
            throw LoomError.invalidArgument("zero 3: loading a parameter \(describe(t.shape)) that is not sharded")
        }
        guard value.count == t.count else { throw LoomError.shapeMismatch("zero 3: \(describe(value.shape)) into parameter \(describe(t.shape))") }
        for piece in chunkPieces(count: t.count, at: segment.offsets[k], chunk: segment.shard, from: communicator.rank * segment.shard.count) {
            backend.copy(value.flatView(from: piece.offset, count: piece.count), into: try piece.make())
        }
        if unit.bound { backend.copy(value, into: t) }
    }

    /// `tensors` (parameters under their checkpoint names, and buffers) as checkpoint
    /// entries: a sharded parameter's pieces are this rank's chunk of it (nothing is
    /// gathered), the rest are written by the group's first rank.
    public func checkpointEntries(_ tensors: [(name: String, tensor: Tensor)]) -> [CheckpointEntry] {
        let rank = communicator.rank
        return tensors.map { name, t in
            guard let (_, segment, k) = place(of: t) else { return CheckpointEntry(name, t, writes: rank == 0) }
            return CheckpointEntry(name: name, dtype: t.dtype, shape: t.shape, sharding: t.sharding,
                                   pieces: chunkPieces(count: t.count, at: segment.offsets[k], chunk: segment.shard, from: rank * segment.shard.count))
        }
    }

    // MARK: The optimizer's view

    /// The ZeRO optimizer over the chunks, its parameters named as `named` (the module's
    /// `namedParameters()`, the template's parameters) names them.
    public func optimizer(named: [(name: String, tensor: Tensor)], template: Optimizer) throws -> ZeroOptimizer {
        var index: [ObjectIdentifier: Int] = [:]
        for (i, p) in named.enumerated() { index[ObjectIdentifier(p.tensor)] = i }
        var layout: [ZeroOptimizer.Segment] = [], shards: [Tensor] = []
        for unit in units {
            for segment in unit.segments {
                let members = try segment.tensors.map { t in
                    guard let i = index[ObjectIdentifier(t)] else {
                        throw LoomError.invalidArgument("zero 3: a sharded parameter \(describe(t.shape)) is not among the model's parameters")
                    }
                    return i
                }
                layout.append((members, segment.offsets, segment.padded, segment.shardGrad))
                shards.append(segment.shard)
            }
        }
        let covered = Set(layout.flatMap(\.members))
        if let missing = named.indices.first(where: { !covered.contains($0) }) {
            throw LoomError.invalidArgument("zero 3: parameter '\(named[missing].name)' was not sharded (the model did not name it in a unit)")
        }
        return try ZeroOptimizer(parameters: named, communicator: communicator, layout: layout, shards: shards, template: template)
    }

    /// Detaches the gradient hooks; the parameters stay sharded (`checkpointEntries` reads them).
    public func detach() {
        for unit in units { for segment in unit.segments { for t in segment.tensors { t.onGradAccumulated = nil } } }
    }
}
