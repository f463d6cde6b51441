import LoomCore
import LoomDistributed
import LoomNN
import LoomParallel

/// How this rank runs one training step's forward and backward, and one evaluation
/// batch, whatever the layout: Megatron's forward-backward function, as a value chosen
/// once when the run is built. `Trainer` and `Evaluator` call it and never ask which it
/// is.
///
///     trainer step:  optimizer.zeroGrad()
///                    loss = steps.forwardBackward(batch, gradients: plan)   <- the schedule
///                    norm = plan.clipGradients(...)                         <- the layout
///                    optimizer.step() unless the norm is not finite
///
/// Two conformers: `AccumulatedSteps` (the whole model on this rank, the batch in K
/// micro-batches whose gradients add up) and `PipelinedSteps` (this rank's stage of a
/// pipeline, driven by a `Schedule`). A new schedule (zero-bubble, say) is a new
/// conformer; the layout's side of a step (reduction, clipping, sharded state) is the
/// `ParallelPlan`'s.
public protocol StepSchedule: AnyObject {
    /// This rank's part of the model: what the optimizer, the plan and checkpoints see.
    var module: Module { get }
    /// Parameters this rank holds that another rank of the same model replica holds too
    /// (a GPT's token table, on a pipeline's first and last stages): the plan counts them
    /// once, on the first.
    var sharedParameters: [Tensor] { get }
    /// Forward and backward of this rank's shard of the global batch, adding into the
    /// gradients the caller zeroed. On return every gradient is the global batch's:
    /// `gradients` was asked to reduce. Returns the shard's mean loss, on every rank of
    /// the replica.
    func forwardBackward(inputs: Tensor, targets: Tensor, gradients: any GradientReduction) throws -> Float
    /// What the last `forwardBackward` ran, with start and end times (for traces).
    var lastStepSpans: [TimedSpan] { get }
    /// Forward only, in the module's current mode: the sums of one batch on this rank
    /// (zero on the ranks of a replica that compute no loss: a pipeline's first stages).
    /// Every rank of the replica calls it together.
    func evaluate(inputs: Tensor, targets: Tensor) throws -> EvaluationSums
    /// The replica's total of every rank's `sums` (a pipeline's stages add theirs).
    /// Collective over the replica.
    func replicaTotal(_ sums: EvaluationSums) throws -> EvaluationSums
    /// What the run's summary says of the schedule (a pipeline's bubble and memory per
    /// stage), nil when nothing. Collective over the world.
    func report() throws -> PipelineReport?
}

/// The sums an evaluation adds up: per-example (per-token) losses, correct predictions
/// (classifiers), examples (tokens) counted.
public struct EvaluationSums: Equatable, Sendable {
    public var lossSum = 0.0
    public var correct = 0
    public var count = 0

    public init(lossSum: Double = 0, correct: Int = 0, count: Int = 0) {
        self.lossSum = lossSum; self.correct = correct; self.count = count
    }

    public static func + (a: EvaluationSums, b: EvaluationSums) -> EvaluationSums {
        EvaluationSums(lossSum: a.lossSum + b.lossSum, correct: a.correct + b.correct, count: a.count + b.count)
    }

    /// The sums of every rank of `group`. Collective.
    public func summed(over group: Communicator?) throws -> EvaluationSums {
        guard let group, group.size > 1 else { return self }
        let s = try group.sum([lossSum, Double(correct), Double(count)])
        return EvaluationSums(lossSum: s[0], correct: Int(s[1].rounded()), count: Int(s[2].rounded()))
    }
}

/// The whole model on this rank: the batch shard in K micro-batches (gradient
/// accumulation), each loss scaled by 1/K, gradients local until the last micro-batch's
/// backward, whose reduction overlaps it. K = 1 is a plain step.
public final class AccumulatedSteps: StepSchedule {
    public let task: TrainTask
    public let microBatches: Int
    public private(set) var lastStepSpans: [TimedSpan] = []

    public init(task: TrainTask, microBatches: Int = 1) {
        self.task = task
        self.microBatches = microBatches
    }

    public var module: Module { task.module }
    public var sharedParameters: [Tensor] { [] }

    public func forwardBackward(inputs: Tensor, targets: Tensor, gradients: any GradientReduction) throws -> Float {
        let start = monotonicSeconds()
        let k = microBatches, rows = inputs.shape[0] / k
        var lossSum: Float = 0
        for micro in 0..<k {
            let x = k == 1 ? inputs : try inputs.slice(axis: 0, (micro * rows)..<((micro + 1) * rows))
            let y = k == 1 ? targets : try targets.slice(axis: 0, (micro * rows)..<((micro + 1) * rows))
            gradients.setOverlapsBackward(micro == k - 1)
            let loss = try task.loss(inputs: x, targets: y)
            try (k == 1 ? loss : loss.scaled(1 / Float(k))).backward()
            lossSum += loss.item
        }
        let computed = monotonicSeconds()
        try gradients.reduceGradients()
        lastStepSpans = [TimedSpan(name: "forward+backward", start: start, end: computed),
                         TimedSpan(name: "reduceGradients", start: computed, end: monotonicSeconds())]
        return lossSum / Float(k)
    }

    public func evaluate(inputs: Tensor, targets: Tensor) throws -> EvaluationSums { try task.evaluate(inputs: inputs, targets: targets) }
    public func replicaTotal(_ sums: EvaluationSums) throws -> EvaluationSums { sums }
    public func report() throws -> PipelineReport? { nil }
}
