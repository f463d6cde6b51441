import LoomCore
import LoomDistributed
import LoomNN
import LoomParallel

/// This rank's stage of a pipeline-parallel model, stepped by a `PipelineEngine`: the
/// shard of the batch cut into the schedule's micro-batches, activations and gradients
/// passed between the stages. The loss is the last stage's; every stage receives it
/// (for logging and the non-finite check).
public final class PipelinedSteps: StepSchedule {
    public let stage: PipelineStageModel
    public let engine: PipelineEngine
    let context: ParallelContext
    let pipeline: Communicator
    /// Whether the model is a classifier (the last stage counts correct predictions).
    let isClassifier: Bool
    private var stats = PipelineStats()
    public private(set) var lastStepSpans: [TimedSpan] = []

    /// Every rank of the pipeline group makes its stage's together (the engine splits a
    /// group for the tied parameters).
    public init(stage: PipelineStageModel, schedule: Schedule, context: ParallelContext, recompute: Bool, isClassifier: Bool,
                backend: any Backend) throws {
        guard let pipeline = context.pipeline else {
            throw LoomError.config("a pipeline of \(schedule.stages) stages needs parallel.pp = \(schedule.stages) ranks; the context has none")
        }
        self.stage = stage
        self.context = context
        self.pipeline = pipeline
        self.isClassifier = isClassifier
        engine = try PipelineEngine(schedule: schedule, chunks: stage.chunks, comm: pipeline, backend: backend)
        engine.recompute = recompute
    }

    public var module: Module { stage }
    public var sharedParameters: [Tensor] { stage.tiedParameters }
    private var holdsLoss: Bool { engine.chunks.last!.isLast }

    public func forwardBackward(inputs: Tensor, targets: Tensor, gradients: any GradientReduction) throws -> Float {
        let m = engine.schedule.microBatches, rows = inputs.shape[0] / m
        let xs = try inputs.split(Array(repeating: rows, count: m), axis: 0)
        let ys = try targets.split(Array(repeating: rows, count: m), axis: 0)
        let start = monotonicSeconds()
        let loss = try engine.forwardBackward(inputs: xs, targets: ys, gradients: gradients)
        stats.add(events: engine.events, wall: monotonicSeconds() - start, peakBytes: engine.peakStepBytes, inFlight: engine.peakInFlight)
        // The update is the trainer's, after this returns (the engine stops at optimizerStep).
        lastStepSpans = TraceRecorder.spans(engine.events.filter { $0.instruction != .optimizerStep })
        // Only the last stage has the loss; the others add zero.
        return Float(try pipeline.sum([holdsLoss ? Double(loss!) : 0])[0])
    }

    public func evaluate(inputs: Tensor, targets: Tensor) throws -> EvaluationSums {
        guard let r = try engine.evaluate(inputs: inputs, targets: targets) else { return EvaluationSums() }
        return EvaluationSums(lossSum: r.lossSum, correct: isClassifier ? try ClassifierTask.correct(logits: r.output, targets: targets) : 0,
                              count: r.count)
    }

    public func replicaTotal(_ sums: EvaluationSums) throws -> EvaluationSums { try sums.summed(over: pipeline) }

    /// Collective: every stage's measured bubble, peak step memory and micro-batches in
    /// flight (taken from data-parallel replica 0, TP rank 0).
    public func report() throws -> PipelineReport? {
        let world = context.world!, t = context.topology
        let all = try Tensor.zeros([3 * world.size])
        try world.allGather(Tensor([Float(stats.bubble), Float(stats.peakBytes), Float(stats.peakInFlight)], shape: [3]), into: all)
        let v = all.floats
        let ranks = (0..<t.pp).map { t.rank(dp: 0, pp: $0, tp: 0) }
        let s = engine.schedule
        return PipelineReport(schedule: s.kind.rawValue, stages: s.stages, microBatches: s.microBatches, chunks: s.chunks,
                              recompute: engine.recompute, bubbleTheory: rounded(s.theoreticalBubble, 4),
                              bubblePerStage: ranks.map { rounded(Double(v[3 * $0]), 4) }, peakStepBytesPerStage: ranks.map { Int(v[3 * $0 + 1]) },
                              peakInFlightPerStage: ranks.map { Int(v[3 * $0 + 2]) })
    }
}

/// What summary.json says of a pipeline run.
public struct PipelineReport: Encodable, Equatable {
    public var schedule: String
    public var stages: Int, microBatches: Int, chunks: Int
    public var recompute: Bool
    public var bubbleTheory: Double
    public var bubblePerStage: [Double]
    public var peakStepBytesPerStage: [Int]
    public var peakInFlightPerStage: [Int]

    enum CodingKeys: String, CodingKey {
        case schedule, stages, microBatches = "micro_batches", chunks, recompute, bubbleTheory = "bubble_theory"
        case bubblePerStage = "bubble_per_stage", peakStepBytesPerStage = "peak_step_bytes_per_stage"
        case peakInFlightPerStage = "peak_in_flight_per_stage"
    }

    /// The line the run prints: "pipeline 1f1b, 2 stages, 4 micro-batches: bubble …".
    public var line: String {
        "pipeline \(schedule), \(stages) stages, \(microBatches) micro-batches: bubble "
            + bubblePerStage.map { String(format: "%.3f", $0) }.joined(separator: "/") + String(format: " (theory %.3f), peak step memory ", bubbleTheory)
            + peakStepBytesPerStage.map { String(format: "%.1f", Double($0) / 1048576) }.joined(separator: "/") + " MiB per stage"
    }
}

/// A pipeline stage's measurements over a run: the share of each step it sat idle (the
/// bubble: 1 - time in forward and backward / step time), the most memory a step held
/// beyond its start, and the most micro-batches in flight. The first step of a process
/// is left out (it allocates optimizer state and warms caches).
struct PipelineStats {
    private(set) var steps = 0
    private var busy = 0.0, wall = 0.0
    private(set) var peakBytes = 0, peakInFlight = 0

    mutating func add(events: [PipelineEvent], wall w: Double, peakBytes p: Int, inFlight: Int) {
        steps += 1
        guard steps > 1 else { return }
        busy += events.filter(\.instruction.isCompute).reduce(0) { $0 + $1.seconds }
        wall += w
        peakBytes = max(peakBytes, p)
        peakInFlight = max(peakInFlight, inFlight)
    }

    var bubble: Double { wall > 0 ? 1 - busy / wall : .nan }
}
