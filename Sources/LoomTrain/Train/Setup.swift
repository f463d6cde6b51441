import LoomCore
import LoomData
import LoomDistributed
import LoomNN
import LoomParallel

/// A run's parts as a configuration describes them, for one rank: the data side
/// (`TrainingData`), the model built from its typed spec with the parallel context's
/// groups, the step schedule that trains this rank's part of it, and the optimizer.
public struct Setup {
    public let data: TrainingData
    public let spec: ModelSpec
    /// How a step runs on this rank (whole model, or a pipeline stage).
    public let steps: StepSchedule
    public let optimizer: Optimizer
    /// The groups the model was built with.
    public let context: ParallelContext
    /// ZeRO-3: the model's parameters, sharded over the data group as it was built (nil:
    /// every rank holds its part of the model whole).
    public let fullySharded: FullyShardedParameters?

    /// `tokenizer`, `normalization`: what a checkpoint's run used. `context`: the run's
    /// ranks and groups (every rank of the world makes its setup together when the model
    /// is split: a pipeline's engine splits a group).
    public init(_ c: TrainConfig, backend: any Backend, context: ParallelContext = .single, tokenizer saved: Tokenizer? = nil,
                normalization: ChannelNormalization? = nil) throws {
        data = try TrainingData(c, tokenizer: saved, normalization: normalization)
        spec = c.modelSpec
        self.context = context
        if c.zero == 3, context.pipeline == nil, let group = context.data, group.size > 1 {
            fullySharded = FullyShardedParameters(communicator: group, backend: backend)
        } else {
            fullySharded = nil
        }
        let schedule = try context.pipeline.map { _ in
            try Schedule(c.pipelineSchedule, stages: c.pp, microBatches: c.microBatches, chunks: c.pipelineSchedule == .interleaved ? c.chunks : nil)
        }
        let split = c.pipelineSplit.isEmpty ? nil : c.pipelineSplit
        var share: ModelSpec.StageShare?  // a pipeline stage keeps the values of its pieces only
        if let schedule, let pipeline = context.pipeline {
            share = ModelSpec.StageShare(pieces: schedule.pieces, held: (0..<schedule.chunks).map { schedule.piece(stage: pipeline.rank, chunk: $0) },
                                         split: split)
        }
        let built: ModelSpec.Built
        do {
            built = try spec.build(for: data.input, seed: UInt64(c.seed), context: context, syncBatchNorm: c.syncBatchNorm,
                                   sharding: fullySharded, stage: share, on: backend)
        } catch LoomError.shapeMismatch(let why) {
            throw LoomError.shapeMismatch("'\(c.data)': \(why)")
        }
        if let pipeline = context.pipeline, let schedule {
            let stage = try PipelineStageModel(cutting: built.model, schedule: schedule, stage: pipeline.rank, split: split)
            steps = try PipelinedSteps(stage: stage, schedule: schedule, context: context, recompute: c.recompute,
                                       isClassifier: !c.isLanguageModel, backend: backend)
        } else {
            steps = AccumulatedSteps(task: built.task, microBatches: c.accumulationSteps)
        }
        optimizer = Setup.optimizer(c, for: steps.module.namedParameters())
    }

    /// The optimizer `c` names, over `parameters`.
    static func optimizer(_ c: TrainConfig, for parameters: [(name: String, tensor: Tensor)]) -> Optimizer {
        switch c.optimizer {
        case .sgd:
            return SGD(parameters, lr: Float(c.lr), momentum: Float(c.momentum), weightDecay: Float(c.weightDecay), nesterov: c.nesterov)
        case .adam:
            return Adam(parameters, lr: Float(c.lr), weightDecay: Float(c.weightDecay))
        case .adamw:
            return Adam.adamW(parameters, lr: Float(c.lr), weightDecay: Float(c.weightDecay))
        }
    }

    /// This rank's modules.
    public var module: Module { steps.module }
    public var train: any Dataset { data.train }
    public var validation: any Dataset { data.validation }
    public var tokenizer: Tokenizer? { data.tokenizer }
    public var unseenCharacters: Int { data.unseenCharacters }
    public var bitsPerCharacterPerNat: Double? { data.bitsPerCharacterPerNat }
    public var normalization: ChannelNormalization? { data.normalization }
    /// The group the model's sharded tensors are split across (tensor parallelism).
    public var tensorGroup: Communicator? { context.tensor }
}
