import LoomParallel

/// One way to lay a run out over ranks: what `loom plan` searches, predicts and prints,
/// and what `loom train` runs when given the same flags.
///
///     dp 2 × tp 2 × pp 2, ZeRO-1, 1f1b with 8 micro-batches   (8 ranks)
///     -> loom train CONFIG --dp 2 --tp 2 --pp 2 --zero 1 --micro-batches 8 --schedule 1f1b
///
/// `microBatches` is the pipeline's micro-batches per step when `pp > 1`, else gradient
/// accumulation's (each data-parallel rank's shard split that many ways).
public struct Layout: Hashable, Sendable, CustomStringConvertible {
    public var dp = 1
    public var tp = 1
    public var pp = 1
    /// ZeRO stage over the data-parallel ranks (0: replicated).
    public var zero = 0
    public var microBatches = 1
    public var schedule: Schedule.Kind = .oneFOneB
    /// Interleaved: model chunks per stage (1 otherwise).
    public var chunks = 1
    /// Pipeline: activations recomputed in backward instead of kept.
    public var recompute = false

    public init(dp: Int = 1, tp: Int = 1, pp: Int = 1, zero: Int = 0, microBatches: Int = 1, schedule: Schedule.Kind = .oneFOneB,
                chunks: Int = 1, recompute: Bool = false) {
        self.dp = dp; self.tp = tp; self.pp = pp; self.zero = zero; self.microBatches = microBatches
        self.schedule = pp > 1 ? schedule : .oneFOneB
        self.chunks = pp > 1 && schedule == .interleaved ? chunks : 1
        self.recompute = pp > 1 && recompute
    }

    public var ranks: Int { dp * tp * pp }

    /// `config` laid out this way (the model, data and optimizer unchanged).
    public func applied(to config: TrainConfig) -> TrainConfig {
        var c = config
        c.dp = dp; c.tp = tp; c.pp = pp; c.zero = zero
        if pp > 1 {
            c.microBatches = microBatches; c.accumulationSteps = 1
            c.pipelineSchedule = schedule; c.recompute = recompute
            if schedule == .interleaved { c.chunks = chunks }
        } else {
            c.accumulationSteps = microBatches; c.recompute = false
        }
        return c
    }

    /// The flags of `loom train` that run this layout.
    public var flags: String {
        var f = ["--dp \(dp)", "--tp \(tp)", "--pp \(pp)"]
        if zero > 0 { f.append("--zero \(zero)") }
        if pp > 1 {
            f.append("--micro-batches \(microBatches) --schedule \(schedule.rawValue)")
            if schedule == .interleaved { f.append("--chunks \(chunks)") }
            if recompute { f.append("--recompute") }
        } else if microBatches > 1 {
            f.append("--accumulate \(microBatches)")
        }
        return f.joined(separator: " ")
    }

    /// "dp2 tp2 pp2 z1 1f1b m8 rc".
    public var description: String {
        var s = "dp\(dp) tp\(tp) pp\(pp)"
        if zero > 0 { s += " z\(zero)" }
        if pp > 1 { s += " \(schedule == .interleaved ? "int\(chunks)" : schedule.rawValue)" }
        if microBatches > 1 { s += " m\(microBatches)" }
        if recompute { s += " rc" }
        return s
    }
}
