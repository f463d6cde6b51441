import LoomCore
import LoomDistributed
import LoomNN
import LoomParallel

/// The model a run trains, as a typed value: read from the configuration's [model]
/// section (`TrainConfig.modelSpec`), built for this rank by `build`. Adding a model is
/// one case here, its branch of `build`, and its `ModelKind` name for the config file.
public enum ModelSpec: Equatable, Sendable {
    /// Fully connected layers of these sizes between the input and the classes.
    case mlp(hidden: [Int])
    /// Two convolutions and a linear head, with a residual block after the second when `residual`.
    case cnn(residual: Bool)
    /// ResNet-20/32/56 (CIFAR-style) or 18/34 (ImageNet-style); width 0: the paper's.
    case resnet(depth: Int, width: Int)
    /// A GPT whose vocabulary is the data's tokenizer's.
    case gpt(layers: Int, dModel: Int, heads: Int, context: Int, dropout: Float)

    public var kind: ModelKind {
        switch self {
        case .mlp: return .mlp
        case .cnn: return .cnn
        case .resnet: return .resnet
        case .gpt: return .gpt
        }
    }

    /// The GPT this spec describes, for a tokenizer of `vocabularySize` tokens (nil: not a GPT).
    public func gptConfig(vocabularySize: Int) -> GPTConfig? {
        guard case let .gpt(layers, dModel, heads, context, dropout) = self else { return nil }
        return GPTConfig(vocabSize: vocabularySize, contextLength: context, layers: layers, dModel: dModel, heads: heads, dropout: dropout)
    }

    /// A pipeline stage's share of the model: of `pieces` pieces (`split[i]` layers in
    /// piece i; nil: the model's balanced split), the ones it holds.
    public struct StageShare: Equatable, Sendable {
        public var pieces: Int
        public var held: [Int]
        public var split: [Int]?
        public init(pieces: Int, held: [Int], split: [Int]?) { self.pieces = pieces; self.held = held; self.split = split }
    }

    /// A model built for one rank: the module (whole, or this rank's tensor-parallel part)
    /// as a pipeline can cut it, and the loss and evaluation it trains with.
    public struct Built {
        public let model: any PipelineModel
        public let task: TrainTask
    }

    /// The model for data of `input`, initialised from `seed` (the same values in every
    /// layout), made with `context`'s groups as its layers are made: a GPT's parallel
    /// layers split across the tensor group; batch norm shares its statistics over the
    /// data group when `syncBatchNorm`. `sharding` (ZeRO-3): the model's parameters are
    /// sharded as it is built, a GPT's and a ResNet's blocks as units of their own, the
    /// rest (all of an MLP or CNN) as the root unit. `stage`: the pipeline pieces this rank holds, whose
    /// values alone a GPT keeps (an image model is built whole and cut).
    public func build(for input: ModelInput, seed: UInt64, context: ParallelContext = .single, syncBatchNorm: Bool = true,
                      sharding: (any UnitSharding)? = nil, stage: StageShare? = nil, on backend: any Backend) throws -> Built {
        let batchNormGroup = syncBatchNorm && (context.data?.size ?? 1) > 1 ? context.data : nil
        switch (self, input) {
        case let (.gpt, .tokens(vocabulary)):
            let config = gptConfig(vocabularySize: vocabulary)!
            let part = try stage.map { try GPT.Part(config, pieces: $0.pieces, holding: $0.held, split: $0.split) }
            let gpt = try GPT(config, seed: seed, on: backend, tensorGroup: context.tensor, sharding: sharding, keeping: part)
            return Built(model: gpt, task: LanguageModelTask(model: gpt, sharding: sharding))
        case let (.mlp(hidden), .images(shape, classes)):
            return try classifier(MLP(sizes: [shape.reduce(1, *)] + hidden + [classes], seed: seed, on: backend), sharding)
        case let (.cnn(residual), .images(shape, classes)):
            try requireImages(shape)
            return try classifier(CNN(residual: residual, imageShape: shape, classes: classes, seed: seed, batchNormGroup: batchNormGroup, on: backend),
                                  sharding)
        case let (.resnet(depth, width), .images(shape, classes)):
            try requireImages(shape)
            return try classifier(try ResNet(depth: depth, width: width, channels: shape[0], classes: classes, seed: seed,
                                             batchNormGroup: batchNormGroup, sharding: sharding, on: backend), sharding)
        case (.gpt, .images):
            throw LoomError.config("model.kind = \"gpt\" reads text, not images")
        case (_, .tokens):
            throw LoomError.config("model.kind = \"\(kind)\" reads images, not text")
        }
    }

    private func classifier(_ model: any UnaryLayer & PipelineModel, _ sharding: (any UnitSharding)?) throws -> Built {
        try sharding?.shard([model], as: nil)
        return Built(model: model, task: ClassifierTask(model: model, sharding: sharding))
    }

    private func requireImages(_ shape: [Int]) throws {
        guard shape.count == 3, shape[1] >= 4, shape[2] >= 4 else {
            throw LoomError.shapeMismatch("\(kind) takes images [C, H, W] of at least 4x4; the data has examples of shape \(describe(shape))")
        }
    }
}

extension TrainConfig {
    /// The [model] section as a typed value.
    public var modelSpec: ModelSpec {
        switch model {
        case .mlp: return .mlp(hidden: hidden)
        case .cnn: return .cnn(residual: residual)
        case .resnet: return .resnet(depth: depth, width: width)
        case .gpt: return .gpt(layers: layers, dModel: dModel, heads: heads, context: context, dropout: Float(dropout))
        }
    }

    /// The GPT this configuration describes, for a tokenizer of `vocabularySize` tokens.
    public func gptConfig(vocabularySize: Int) -> GPTConfig {
        ModelSpec.gpt(layers: layers, dModel: dModel, heads: heads, context: context, dropout: Float(dropout)).gptConfig(vocabularySize: vocabularySize)!
    }
}
