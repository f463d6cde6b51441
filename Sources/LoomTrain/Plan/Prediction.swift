import LoomCore
import LoomParallel

/// What a layout is predicted to cost on a cluster, per rank and per step, with where
/// the bytes and the seconds go.
public struct Prediction: Sendable {
    public var layout: Layout
    /// The most any rank holds at its peak, split as `MemoryMeter` splits what it measures.
    public var memory: MemoryBreakdown
    public var time: TimeBreakdown
    /// The pipeline stage whose rank peaks highest.
    public var peakStage: Int
    public var fits: Bool
    /// Tokens (or examples) per second over the whole job.
    public var throughput: Double
    /// Model FLOPs per second per rank (forward and backward GEMMs, 6·params·tokens style:
    /// what the layout computes, recomputation not counted).
    public var modelFlopsPerRank: Double
}

/// Bytes of a rank at its peak.
public struct MemoryBreakdown: Sendable {
    public var parameters = 0.0, gradients = 0.0, optimizerState = 0.0, activations = 0.0, communication = 0.0
    public var total: Double { parameters + gradients + optimizerState + activations + communication }
    public var named: [(String, Double)] {
        [("parameters", parameters), ("gradients", gradients), ("optimizer_state", optimizerState), ("activations", activations),
         ("communication", communication)]
    }
}

/// Seconds of one optimizer step.
public struct TimeBreakdown: Sendable {
    /// Forward and backward of every micro-batch on the slowest stage, pipeline bubble
    /// included (the schedule's makespan).
    public var compute = 0.0
    /// Of `compute`: the collectives inside forward and backward (tensor-parallel
    /// all-reduces, synchronised batch norm's) and the pipeline's sends.
    public var collectives = 0.0
    public var pipelineSends = 0.0
    /// The share of the pipeline's makespan its slowest stage is idle.
    public var bubble = 0.0
    /// Data-parallel gradient (and ZeRO parameter) communication not hidden under backward.
    public var dataParallel = 0.0
    /// Clipping and the optimizer's update.
    public var update = 0.0
    /// Extra time when a node's ranks outnumber its cores and take turns (CPU).
    public var sharing = 0.0
    public var total: Double { compute + dataParallel + update + sharing }
}

/// The memory and time models: a layout's pieces (`ModelCosts`) on a `Cluster`.
public struct CostModel: Sendable {
    public let model: ModelCosts
    public let cluster: Cluster
    public let config: TrainConfig

    public init(model: ModelCosts, cluster: Cluster, config: TrainConfig) {
        self.model = model; self.cluster = cluster; self.config = config
    }

    /// Examples one rank runs per micro-batch.
    public func microBatch(_ l: Layout) -> Int { config.batchSize / (l.dp * l.microBatches) }

    /// Threads each rank runs with (a CPU's cores divided among a node's ranks, as `loom
    /// train` divides them).
    func threads(_ l: Layout) -> Int {
        cluster.device.cores > 0 ? max(1, cluster.device.cores / min(l.ranks, cluster.devicesPerNode)) : 1
    }

    public func predict(_ l: Layout) throws -> Prediction {
        let b = microBatch(l)
        let virtual = l.pp * l.chunks
        let pieces = try model.stages(pp: virtual, tp: l.tp, microBatch: b, split: nil)
        let schedule = l.pp > 1 ? try Schedule(l.schedule, stages: l.pp, microBatches: l.microBatches,
                                                 chunks: l.schedule == .interleaved ? l.chunks : nil) : nil
        // The chunks (virtual pieces) each stage holds.
        let held: [[Int]] = (0..<l.pp).map { s in (0..<l.chunks).map { c in c * l.pp + s } }
        let threads = threads(l)

        // Time of one micro-batch through each virtual piece, forward and backward: its
        // kernels' (`work`), and its waits on other ranks (tensor-parallel all-reduces,
        // the pipeline's sends).
        var workF = [Double](repeating: 0, count: virtual), workB = workF, waitTime = workF, sendTime = workF
        for (j, ps) in pieces.enumerated() {
            for p in ps {
                let (f, bk, waits) = pieceSeconds(p, tp: l.tp, dp: l.dp, threads: threads)
                workF[j] += f - waits; workB[j] += bk - waits; waitTime[j] += 2 * waits
            }
            if l.pp > 1 {
                let link = l.tp * l.pp <= cluster.devicesPerNode ? cluster.intraNode : cluster.interNode
                sendTime[j] = 2 * (link.latency + (ps.last?.output ?? 0) / link.bandwidth)
            }
            if l.recompute { workB[j] += workF[j] }
        }
        // Ranks that outnumber a node's cores take turns on them: each one's kernels run
        // that many times slower (processor sharing), its waits do not.
        let onNode = min(l.ranks, cluster.devicesPerNode)
        let sharing = cluster.device.cores > 0 ? max(1, Double(onNode) / Double(cluster.device.cores)) : 1

        // The step's forward-backward: the schedule's makespan, or K micro-batches in a row.
        func run(slowedBy slow: Double) throws -> (makespan: Double, report: ScheduleCheck.Report?) {
            let fwd = (0..<virtual).map { slow * workF[$0] + (waitTime[$0] + sendTime[$0]) / 2 }
            let bwd = (0..<virtual).map { slow * workB[$0] + (waitTime[$0] + sendTime[$0]) / 2 }
            guard let schedule else { return (Double(l.microBatches) * (fwd[0] + bwd[0]), nil) }
            let check = ScheduleCheck(forwardCost: fwd.reduce(0, +) / Double(l.pp), backwardCost: bwd.reduce(0, +) / Double(l.pp),
                                      pieceCosts: zip(fwd, bwd).map { $0 + $1 })
            let r = try check.run(schedule)
            return (r.makespan, r)
        }
        let (compute, report) = try run(slowedBy: 1)
        let inFlight = report?.peakInFlight ?? [Int](repeating: 1, count: l.pp)
        let bubble = report?.bubble.max() ?? 0
        let idle = report.map { $0.bubble.reduce(0, +) / Double(max($0.bubble.count, 1)) } ?? 0
        // A pipeline's idle stages leave their cores to the busy ones: the ranks that take
        // turns are the busy share of them.
        let busy = sharing > 1 ? max(1, sharing * (1 - idle)) : 1
        let shared = busy > 1 ? try run(slowedBy: busy).makespan : compute
        let bwd = (0..<virtual).map { workB[$0] + (waitTime[$0] + sendTime[$0]) / 2 }
        let perStageWaits = (0..<l.pp).map { s in held[s].reduce(0.0) { $0 + waitTime[$1] } * Double(l.microBatches) }
        let perStageSend = (0..<l.pp).map { s in held[s].reduce(0.0) { $0 + sendTime[$1] } * Double(l.microBatches) }

        // Memory of each stage's rank.
        var peak = MemoryBreakdown(), peakStage = 0
        var stageParams = [Double](repeating: 0, count: l.pp)
        for s in 0..<l.pp {
            let mine = held[s].flatMap { pieces[$0] }
            let params = mine.reduce(0) { $0 + $1.parameters }
            stageParams[s] = params
            let m = memory(l, pieces: mine, chunks: held[s].map { pieces[$0] }, params: params, inFlight: inFlight[s])
            if m.total > peak.total { peak = m; peakStage = s }
        }

        // Data-parallel communication and the update, on the stage with the most parameters.
        let params = stageParams.max() ?? 0
        let dpTime = dataParallelSeconds(l, params: params, backward: bwd.max() ?? 0)
        let update = updateSeconds(l, params: params, threads: threads)

        var time = TimeBreakdown()
        time.compute = compute
        time.collectives = perStageWaits.max() ?? 0
        time.pipelineSends = perStageSend.max() ?? 0
        time.bubble = bubble
        time.dataParallel = dpTime
        time.update = update
        time.sharing = (shared - compute) + (busy - 1) * update
        let items = Double(config.batchSize * (config.isLanguageModel ? config.context : 1))
        let gemmFlops = pieces.flatMap { $0 }.reduce(0.0) { $0 + 3 * $1.forwardFlops }
        let modelFlops = gemmFlops * Double(l.microBatches * l.dp * l.tp)  // every rank's share, the whole step
        return Prediction(layout: l, memory: peak, time: time, peakStage: peakStage,
                          fits: peak.total <= cluster.device.memoryBytes, throughput: items / time.total,
                          modelFlopsPerRank: modelFlops / Double(l.ranks) / time.total)
    }

    /// Forward and backward seconds of one micro-batch through a piece, and of each, the
    /// collectives inside it (tensor-parallel all-reduces, synchronised batch norm's).
    func pieceSeconds(_ p: PieceCost, tp: Int, dp: Int = 1, threads: Int) -> (forward: Double, backward: Double, collectives: Double) {
        let precision = config.precision, c = cluster, slot = c.slot(threads)
        var f = 0.0, b = 0.0
        for g in p.gemms {
            f += c.gemmSeconds(g, threads: threads, precision: precision)
            b += g.backward.reduce(0) { $0 + c.gemmSeconds($1, threads: threads, precision: precision) }
        }
        if let op = p.attention, let (af, ab) = c.attentionSeconds(op, threads: threads) {
            f += af; b += ab
        } else {
            for g in p.attentionGEMMs {
                let s = c.gemmSeconds(g, threads: threads, precision: precision)
                f += s; b += 2 * s
            }
        }
        let conv = (c.device.convolution ?? c.device.matmulFloat32)[slot]
        f += p.convolutionFlops / conv; b += 2 * p.convolutionFlops / conv
        for k in p.kernels {
            let (kf, kb) = c.kernelSeconds(k, threads: threads)
            f += kf; b += kb
        }
        let bw = c.device.memoryBandwidth[slot]
        f += p.streamed / bw; b += 2 * p.streamed / bw
        f += Double(p.ops) * c.device.opOverhead; b += 2 * Double(p.ops) * c.device.opOverhead
        let scale = c.device.stepScale.count == c.device.threads.count ? c.device.stepScale[slot] : 1
        f *= scale; b *= scale
        var waits = 0.0
        if tp > 1 {
            let link = tp <= c.devicesPerNode ? c.intraNode : c.interNode
            waits = p.tensorAllReduces.reduce(0) { $0 + Collective.allReduce(bytes: $1, ranks: tp, link: link) }
        }
        // Synchronised batch norm's small all-reduces over the data group, split between
        // forward and backward like the tensor-parallel ones.
        if dp > 1 && config.syncBatchNorm {
            let link = dp * tp <= c.devicesPerNode ? c.intraNode : c.interNode
            waits += p.dataAllReduces.reduce(0) { $0 + Collective.allReduce(bytes: $1, ranks: dp, link: link) } / 2
        }
        return (f + waits, b + waits, waits)
    }

    /// One rank's bytes at its peak: its pieces' parameters, gradients and optimizer state
    /// (by ZeRO stage), the communication buffers, and activations: the micro-batches in
    /// flight (the schedule's count) each keeping what its pieces keep, and one of them in
    /// backward. Backward runs the pieces last to first, freeing each one's activations and
    /// making its parameters' gradients, so the peak is the worst piece j of
    ///     (pieces 0...j's activations) + (j's backward scratch) + (gradients of pieces after j),
    /// or the end, every gradient made: early in backward for activation-heavy models, late
    /// for parameter-heavy ones.
    func memory(_ l: Layout, pieces: [PieceCost], chunks: [[PieceCost]], params: Double, inFlight: Int) -> MemoryBreakdown {
        let f = ModelCosts.f, dp = Double(l.dp), tp = Double(l.tp)
        var m = MemoryBreakdown()
        // ZeRO-3 holds its shard, and a gathered unit and the next one (prefetched) at a time.
        var units: [Int: Double] = [:]
        for p in pieces { units[p.unit ?? -1, default: 0] += p.unitParameters }
        let gathered = units.values.sorted(by: >).prefix(2).reduce(0, +)
        m.parameters = l.zero >= 3 ? f * params / dp + f * gathered / tp : f * params
        let perParam: Double
        switch config.optimizer {
        case .adam, .adamw: perParam = 2
        case .sgd: perParam = config.momentum > 0 ? 1 : 0
        }
        m.optimizerState = f * perParam * params / (l.zero >= 1 ? dp : 1)
        // Replicated and ZeRO-1 data parallelism all-reduce through a flat buffer of the gradients.
        m.communication = l.dp > 1 && l.zero <= 1 ? f * params : 0

        let keptPerUnit = chunks.map { $0.reduce(0) { $0 + $1.kept } }
        let avgKept = keptPerUnit.reduce(0, +) / Double(max(chunks.count, 1))
        // The micro-batch (× chunk) in backward, through the chunk's pieces in order. With
        // several micro-batches the earlier ones' gradients are whole throughout.
        let whole = f * params, accumulating = l.microBatches > 1
        var best = (activations: 0.0, gradients: accumulating ? whole : 0)
        for chunk in chunks {
            var before = 0.0
            for (j, p) in chunk.enumerated() {
                before += p.kept  // with recomputation: the same tensors, remade
                let activations = before + p.backwardScratch
                let gradients = accumulating ? whole : chunk[(j + 1)...].reduce(0) { $0 + f * $1.parameters }
                if activations + gradients > best.activations + best.gradients { best = (activations, gradients) }
            }
        }
        // Backward done: every gradient made, the activations gone.
        if whole > best.activations + best.gradients { best = (0, whole) }
        // The other micro-batches in flight keep what their pieces keep (with recomputation,
        // each piece's input only).
        let others = Double(max(inFlight - 1, 0))
        let inputs = chunks.map { $0.first?.output ?? 0 }.reduce(0, +) / Double(max(chunks.count, 1))
        m.activations = others * (l.recompute ? inputs : avgKept) + best.activations
        // Gradients: those made so far in this backward; with several micro-batches the
        // earlier ones' are whole; ZeRO keeps its shard of them too.
        let shard: Double = l.zero >= 1 ? f * params / dp : 0
        m.gradients = best.gradients + shard
        return m
    }

    /// Exposed seconds of the data group's gradient reduction (and ZeRO's parameter
    /// gathers): bucketed all-reduce overlaps backward but the last bucket's does not.
    func dataParallelSeconds(_ l: Layout, params: Double, backward: Double) -> Double {
        guard l.dp > 1 else { return 0 }
        let f = ModelCosts.f
        let link = l.ranks <= cluster.devicesPerNode ? cluster.intraNode : cluster.interNode
        let bytes = f * params
        var total: Double
        switch l.zero {
        case 0: total = Collective.allReduce(bytes: bytes, ranks: l.dp, link: link)
        case 1, 2: total = Collective.reduceScatter(bytes: bytes, ranks: l.dp, link: link) + Collective.allGather(bytes: bytes, ranks: l.dp, link: link)
        default:
            // Parameters gathered for forward and again for backward, gradients reduce-scattered.
            total = 2 * Collective.allGather(bytes: bytes, ranks: l.dp, link: link) + Collective.reduceScatter(bytes: bytes, ranks: l.dp, link: link)
        }
        let bucket = min(bytes, Double(config.bucketKB * 1024))
        let last = Collective.allReduce(bytes: bucket, ranks: l.dp, link: link)
        return max(last, total - backward)
    }

    /// The update: clipping reads the gradients, the optimizer reads and writes parameters,
    /// gradients and its state (each rank its ZeRO shard).
    func updateSeconds(_ l: Layout, params: Double, threads: Int) -> Double {
        let shard = params / (l.zero >= 1 ? Double(l.dp) : 1)
        let state: Double
        switch config.optimizer {
        case .adam, .adamw: state = 2
        case .sgd: state = config.momentum > 0 ? 1 : 0
        }
        let bytes = ModelCosts.f * (params + shard * (3 + 2 * state))
        let slot = cluster.slot(threads)
        let scale = cluster.device.stepScale.count == cluster.device.threads.count ? cluster.device.stepScale[slot] : 1
        return scale * (bytes / cluster.device.memoryBandwidth[slot] + 20 * cluster.device.opOverhead)
    }
}

/// The α–β cost of the collectives as Loom's communicators run them (ring algorithms):
/// S bytes over n ranks on a link of latency α and bandwidth β.
public enum Collective {
    /// Reduce-scatter then all-gather: 2(n-1) steps of S/n bytes.
    public static func allReduce(bytes: Double, ranks n: Int, link: Cluster.Link) -> Double {
        guard n > 1 else { return 0 }
        return 2 * Double(n - 1) * (link.latency + bytes / Double(n) / link.bandwidth)
    }
    public static func allGather(bytes: Double, ranks n: Int, link: Cluster.Link) -> Double {
        guard n > 1 else { return 0 }
        return Double(n - 1) * (link.latency + bytes / Double(n) / link.bandwidth)
    }
    public static func reduceScatter(bytes: Double, ranks n: Int, link: Cluster.Link) -> Double {
        allGather(bytes: bytes, ranks: n, link: link)
    }
}
