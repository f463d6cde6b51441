import Foundation
import LoomCore
import LoomNN
import LoomParallel

/// The layout search of `loom plan CONFIG --ranks N`: every dp × tp × pp split of the
/// ranks, ZeRO stage, micro-batch count, schedule and recomputation Loom can run for the
/// model and global batch; each predicted by the `CostModel`; those that fit ranked by
/// step time, those that do not said by how much, and those Loom cannot run said why.
public struct Planner: Sendable {
    public let config: TrainConfig
    public let costs: CostModel

    public init(config: TrainConfig, model: ModelCosts, cluster: Cluster) {
        self.config = config
        costs = CostModel(model: model, cluster: cluster, config: config)
    }

    public struct Rejected: Sendable {
        public var layout: Layout
        public var reason: String
    }

    public struct Result: Sendable {
        /// Layouts that fit, fastest first.
        public var fitting: [Prediction]
        /// Layouts that would run out of memory, least over first.
        public var tooBig: [Prediction]
        /// Layouts Loom cannot run, with why.
        public var impossible: [Rejected]
    }

    /// Powers of two up to `n` that divide it, and `n`.
    static func splits(_ n: Int) -> [Int] { (1...max(n, 1)).filter { n % $0 == 0 } }

    /// Every layout of `ranks` ranks the search considers.
    public func candidates(ranks: Int) -> [Layout] {
        let model = costs.model
        var out: [Layout] = []
        for tp in Planner.splits(ranks) {
            for pp in Planner.splits(ranks / tp) {
                let dp = ranks / tp / pp
                if !model.tensorParallel && tp > 1 { out.append(Layout(dp: dp, tp: tp, pp: pp)); continue }
                if !model.pipelines && pp > 1 { out.append(Layout(dp: dp, tp: tp, pp: pp)); continue }
                let zeros = dp > 1 ? [0, 1, 2, 3] : [0]
                let perReplica = max(config.batchSize / dp, 1)
                let counts = (0...12).map { 1 << $0 }.filter { $0 <= perReplica && (pp == 1 || $0 >= pp) }
                for zero in zeros {
                    if pp == 1 {
                        for m in counts { out.append(Layout(dp: dp, tp: tp, pp: 1, zero: zero, microBatches: m)) }
                        continue
                    }
                    for m in counts {
                        for recompute in [false, true] {
                            out.append(Layout(dp: dp, tp: tp, pp: pp, zero: zero, microBatches: m, schedule: .gpipe, recompute: recompute))
                            out.append(Layout(dp: dp, tp: tp, pp: pp, zero: zero, microBatches: m, schedule: .oneFOneB, recompute: recompute))
                            out.append(Layout(dp: dp, tp: tp, pp: pp, zero: zero, microBatches: m, schedule: .interleaved, chunks: 2, recompute: recompute))
                        }
                    }
                }
            }
        }
        return out
    }

    /// Why Loom cannot run `layout` for this config (nil: it can).
    public func impossibility(_ l: Layout) -> String? {
        let model = costs.model
        if l.tp > 1 && !model.tensorParallel { return "tensor parallelism splits gpt models only (model.kind is \(config.model))" }
        if l.pp > 1 && !model.pipelines { return "the planner cuts only gpt models into pipeline stages (model.kind is \(config.model))" }
        if let g = model.gpt {
            if g.heads % l.tp != 0 { return "\(g.heads) heads are not divisible by tp \(l.tp)" }
            if g.vocabSize % l.tp != 0 { return "the vocabulary of \(g.vocabSize) tokens is not divisible by tp \(l.tp)" }
            let pieces = l.pp * l.chunks
            if pieces > 1 {
                if pieces > g.layers + (pieces > 2 ? 2 : 0) { return "\(g.layers) layers cannot be cut into \(pieces) pipeline pieces" }
                if model.balancedSplits[pieces] == nil {
                    do { _ = try GPT.balancedSplit(g, pieces: pieces) } catch { return "\(error)" }
                }
            }
        }
        if config.batchSize % (l.dp * l.microBatches) != 0 {
            return "batch \(config.batchSize) is not divisible by dp \(l.dp) x \(l.microBatches) micro-batches"
        }
        do {
            _ = try Schedule(l.schedule, stages: l.pp, microBatches: l.microBatches, chunks: l.schedule == .interleaved ? l.chunks : nil)
            var c = l.applied(to: config)
            if c.steps == 0 && c.epochs == 0 { c.steps = 1 }
            try ConfigFile.validate(c)
        } catch {
            return "\(error)"
        }
        return nil
    }

    public func plan(ranks: Int) throws -> Result {
        var fitting: [Prediction] = [], tooBig: [Prediction] = [], impossible: [Rejected] = []
        for l in candidates(ranks: ranks) {
            if let why = impossibility(l) { impossible.append(Rejected(layout: l, reason: why)); continue }
            let p = try costs.predict(l)
            if p.fits { fitting.append(p) } else { tooBig.append(p) }
        }
        // Fastest first; of equally fast ones, the one that holds less.
        fitting.sort { ($0.time.total, $0.memory.total) < ($1.time.total, $1.memory.total) }
        tooBig.sort { $0.memory.total < $1.memory.total }
        return Result(fitting: fitting, tooBig: tooBig, impossible: impossible)
    }
}
