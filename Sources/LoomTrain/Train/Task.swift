import Foundation
import LoomCore
import LoomData
import LoomDistributed
import LoomNN
import LoomParallel

/// What the trainer needs of a model: its module tree, a loss on a batch, and
/// evaluation sums on a batch.
public protocol TrainTask: AnyObject {
    var module: Module { get }
    func loss(inputs: Tensor, targets: Tensor) throws -> Tensor
    /// Sum of per-example (per-token) losses, number correct, number counted.
    func evaluate(inputs: Tensor, targets: Tensor) throws -> (lossSum: Double, correct: Int, count: Int)
}

/// Image classification (mlp, cnn, resnet): cross-entropy and accuracy.
public final class ClassifierTask: TrainTask {
    public let model: any UnaryLayer
    public var module: Module { model }

    public init(model: any UnaryLayer) { self.model = model }

    public func loss(inputs: Tensor, targets: Tensor) throws -> Tensor {
        try model(inputs).crossEntropy(targets: targets)
    }

    public func evaluate(inputs: Tensor, targets: Tensor) throws -> (lossSum: Double, correct: Int, count: Int) {
        let logits = try withoutGrad { try model(inputs) }
        let n = targets.count
        let loss = try logits.crossEntropy(targets: targets).item
        return (Double(loss) * Double(n), try ClassifierTask.correct(logits: logits, targets: targets), n)
    }

    /// How many rows' largest logit is at their target class.
    public static func correct(logits: Tensor, targets: Tensor) throws -> Int {
        zip(try logits.argmax(axis: -1).ints, targets.ints).filter { $0 == $1 }.count
    }
}

/// Next-token prediction (gpt, whole or split across a tensor-parallel group):
/// cross-entropy per token (no accuracy is reported).
public final class LanguageModelTask: TrainTask {
    public let model: GPT
    public var module: Module { model }

    public init(model: GPT) { self.model = model }

    public func loss(inputs: Tensor, targets: Tensor) throws -> Tensor {
        try model.loss(tokens: inputs, targets: targets)
    }

    public func evaluate(inputs: Tensor, targets: Tensor) throws -> (lossSum: Double, correct: Int, count: Int) {
        let loss = try withoutGrad { try model.loss(tokens: inputs, targets: targets) }
        return (Double(loss.item) * Double(targets.count), 0, targets.count)
    }
}

/// This rank's stage of a pipeline-parallel model. It trains through a `PipelineEngine`
/// (micro-batches flow between the stages), so it has no loss of its own.
public final class PipelineTask: TrainTask {
    public let model: PipelineStageModel
    public var module: Module { model }

    public init(model: PipelineStageModel) { self.model = model }

    public func loss(inputs: Tensor, targets: Tensor) throws -> Tensor {
        throw LoomError.invalidArgument("a pipeline stage computes no loss alone; train it through PipelineEngine")
    }

    public func evaluate(inputs: Tensor, targets: Tensor) throws -> (lossSum: Double, correct: Int, count: Int) {
        throw LoomError.invalidArgument("a pipeline stage evaluates through PipelineEngine.evaluate")
    }
}

/// Where a rank sits in a pipeline: the schedule and its stage.
public struct PipelinePlacement {
    public let schedule: Schedule
    public let stage: Int
    public init(schedule: Schedule, stage: Int) { self.schedule = schedule; self.stage = stage }
}

/// Data, model and optimizer as a configuration describes them.
public struct Setup {
    /// The seed of the train/validation split of image data (fixed: the split does not
    /// change with the training seed).
    public static let splitSeed: UInt64 = 0x5EED
    public let train: any Dataset
    public let validation: any Dataset
    public let tokenizer: Tokenizer?
    /// Characters of the text that a saved tokenizer had never seen, read as its unknown
    /// token (resuming or evaluating on other text); said once by the commands.
    public let unseenCharacters: Int
    /// Language models: validation tokens per validation character over ln 2, so that
    /// bits per character = validation loss (nats per token) x this.
    public let bitsPerCharacterPerNat: Double?
    /// Images other than MNIST's: the per-channel normalisation applied (saved in checkpoints).
    public let normalization: ChannelNormalization?
    public let task: TrainTask
    public let optimizer: Optimizer
    /// The group the model's sharded tensors are split across (tensor parallelism).
    public let tensorGroup: Communicator?

    /// The image format `c` names or its path implies (`data.format = "auto"`).
    public static func imageFormat(_ c: TrainConfig) throws -> ImageFormat {
        guard c.format == .auto else { return c.format }
        let path = c.data
        if path.hasSuffix(".npz") || path.hasSuffix(".npy") { return .numpy }
        if !c.labels.isEmpty { return .idx }
        if path.hasSuffix(".bin") { return .cifar }
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
            return names.contains { $0.hasPrefix("data_batch_") || $0 == "train.bin" } ? .cifar : .png
        }
        return .csv
    }

    /// `tokenizer`: the vocabulary a checkpoint was trained with (so resumed and
    /// evaluated runs tokenize as the original run did).
    /// `tensorGroup`: with more than one rank, the GPT is split across it.
    /// `pipeline`: the GPT is cut into pieces, and this rank holds its stage's.
    public init(_ c: TrainConfig, backend: any Backend, tokenizer saved: Tokenizer? = nil,
                normalization savedNormalization: ChannelNormalization? = nil,
                tensorGroup: Communicator? = nil, pipeline: PipelinePlacement? = nil) throws {
        let seed = UInt64(c.seed)
        let split = c.pipelineSplit.isEmpty ? nil : c.pipelineSplit
        if c.isLanguageModel {
            let file = saved == nil && !c.tokenizerFile.isEmpty ? try Tokenizer.load(c.tokenizerFile) : nil
            let corpus = try TextCorpus(path: c.data, validationFraction: c.validationFraction, tokenizer: saved ?? file, fit: c.tokenizer,
                                        vocabularySize: c.vocabSize)
            tokenizer = corpus.tokenizer
            unseenCharacters = corpus.unseenCharacters
            bitsPerCharacterPerNat = Double(corpus.validation.count) / Double(max(corpus.validationCharacters, 1)) / 0.6931471805599453  // ln 2
            normalization = nil
            train = TokenWindows(tokens: corpus.train, context: c.context)
            validation = TokenWindows(tokens: corpus.validation, context: c.context)
            // A window is context + 1 tokens (inputs and the targets one further).
            for (part, tokens, windows) in [("training", corpus.train.count, train.count), ("validation", corpus.validation.count, validation.count)]
            where windows == 0 {
                throw LoomError.config("'\(c.data)': the \(part) split has \(tokens) tokens, fewer than one window of model.context + 1 = "
                    + "\(c.context + 1); use a longer text, a smaller model.context or another data.validation_fraction (\(c.validationFraction))")
            }
            let group = (tensorGroup?.size ?? 1) > 1 ? tensorGroup : nil
            self.tensorGroup = group
            let gpt = try GPT(c.gptConfig(vocabularySize: corpus.tokenizer.count), seed: seed, on: backend, tensorGroup: group)
            if let p = pipeline {
                task = PipelineTask(model: try PipelineStageModel(cutting: gpt, schedule: p.schedule, stage: p.stage, split: split))
            } else {
                task = LanguageModelTask(model: gpt)
            }
        } else {
            let format = try Setup.imageFormat(c)
            let loaded: ImageDataset
            switch format {
            case .csv: loaded = try MNIST.loadCSV(c.data)
            case .idx: loaded = try MNIST.loadIDX(images: c.data, labels: c.labels)
            case .cifar: loaded = try ImageFiles.loadCIFAR(c.data)
            case .numpy: loaded = try ImageFiles.loadNumPy(c.data, labels: c.labels)
            case .png, .auto: loaded = try ImageFiles.loadPNGFolder(c.data).0
            }
            // Rows are shuffled once, with a fixed seed, before the split: files are often
            // sorted by label (the bundled MNIST subset is), and a split of sorted rows
            // would validate on classes the model never trained on.
            var splitRNG = Philox(seed: Setup.splitSeed)
            let all = loaded.reordered(splitRNG.permutation(loaded.count))
            let cut = all.count - Int(Double(all.count) * c.validationFraction)
            guard cut > 0 && cut < all.count else {
                throw LoomError.config("data.validation_fraction \(c.validationFraction) leaves no training or no validation rows of \(all.count)")
            }
            tokenizer = nil
            unseenCharacters = 0
            bitsPerCharacterPerNat = nil
            self.tensorGroup = nil
            var train = all.subset(0..<cut), validation = all.subset(cut..<all.count)
            // MNIST's readers normalise with MNIST's statistics; other images with the
            // training split's per-channel statistics, kept in the checkpoint.
            if format == .csv || format == .idx {
                normalization = nil
            } else {
                let stats = savedNormalization ?? ChannelNormalization(of: train)
                train = stats.apply(train); validation = stats.apply(validation)
                normalization = stats
            }
            self.train = c.cropPadding > 0 || c.flip ? AugmentedImages(train, cropPadding: c.cropPadding, flip: c.flip, seed: seed) : train
            self.validation = validation
            let model: any UnaryLayer & PipelineModel
            let shape = all.shape
            switch c.model {
            case .mlp: model = MLP(sizes: [all.features] + c.hidden + [all.classes], seed: seed, on: backend)
            case .cnn, .resnet, .gpt:
                guard shape.count == 3, shape[1] >= 4, shape[2] >= 4 else {
                    throw LoomError.shapeMismatch("\(c.model) takes images [C, H, W] of at least 4x4; '\(c.data)' has examples of shape \(describe(shape))")
                }
                if c.model == .resnet {
                    model = try ResNet(depth: c.depth, width: c.width, channels: shape[0], classes: all.classes, seed: seed, on: backend)
                } else {
                    model = CNN(residual: c.residual, imageShape: shape, classes: all.classes, seed: seed, on: backend)
                }
            }
            if let p = pipeline {
                task = PipelineTask(model: try PipelineStageModel(cutting: model, schedule: p.schedule, stage: p.stage, split: split))
            } else {
                task = ClassifierTask(model: model)
            }
        }
        let params = task.module.namedParameters()
        switch c.optimizer {
        case .sgd:
            optimizer = SGD(params, lr: Float(c.lr), momentum: Float(c.momentum), weightDecay: Float(c.weightDecay), nesterov: c.nesterov)
        case .adam:
            optimizer = Adam(params, lr: Float(c.lr), weightDecay: Float(c.weightDecay))
        case .adamw:
            optimizer = Adam.adamW(params, lr: Float(c.lr), weightDecay: Float(c.weightDecay))
        }
    }
}
