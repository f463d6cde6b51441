import LoomCore
import LoomData
import LoomNN
import LoomParallel

/// Everything a training run is configured by. Read from TOML (`examples/*.toml`),
/// overridden by command-line flags, saved into the run directory and the checkpoint.
public struct TrainConfig: Equatable, Sendable {
    // [model]
    public var model = ModelKind.cnn
    public var residual = true          // cnn: a residual block after the second conv
    public var depth = 20               // resnet: 20, 32, 56 (CIFAR-style) or 18, 34 (ImageNet-style)
    public var width = 0                // resnet: channels of the first stage (0: the paper's, 16 or 64)
    public var hidden = [512, 512]      // mlp: hidden layer sizes
    public var layers = 4               // gpt
    public var dModel = 128
    public var heads = 4
    public var context = 128
    public var dropout = 0.0
    // [data]
    public var data = "data/mnist_5k.csv.gz"
    public var labels = ""              // IDX: the labels file (data is then the images file); .npy: the labels array
    public var format = ImageFormat.auto
    public var cropPadding = 0          // images: random crop of the image padded by this many pixels (0: off)
    public var flip = false             // images: random horizontal flips
    public var validationFraction = 0.2
    public var tokenizer = TokenizerKind.char  // gpt: how the text becomes tokens
    public var vocabSize = 4096         // bpe: tokens, bytes included
    public var tokenizerFile = ""       // gpt: a saved tokenizer instead of fitting one
    // [train]
    public var epochs = 0               // used when steps is 0
    public var steps = 0
    public var batchSize = 64
    public var accumulationSteps = 1    // micro-batches per optimizer step (each rank's shard split K ways)
    public var optimizer = OptimizerKind.adam
    public var lr = 1e-3
    public var momentum = 0.9
    public var nesterov = false
    public var weightDecay = 0.0
    public var schedule = LRScheduleKind.constant  // cosine: linear warm-up, cosine decay
    public var warmupSteps = 0
    public var minLR = 0.0
    public var gradClip = 0.0           // 0: off
    public var nonFinite = NonFiniteAction.stop
    public var precision = Precision.float32  // bf16: matrix products in bf16 (autocast)
    public var seed = 0
    public var logEvery = 10
    public var evalEvery = 0            // 0: every epoch
    public var evalBatches = 0          // 0: the whole validation split
    // [parallel]
    public var dp = 1                   // data-parallel ranks (under mpirun: world size / tp)
    public var tp = 1                   // tensor-parallel ranks (gpt): heads, MLP and vocabulary split
    public var pp = 1                   // pipeline stages (gpt): consecutive blocks per stage
    public var microBatches = 4         // pipeline: micro-batches per step (each data replica's batch split M ways)
    public var pipelineSchedule = Schedule.Kind.oneFOneB
    public var chunks = 2               // interleaved: model chunks (virtual stages) per stage
    public var recompute = false        // pipeline: recompute activations in backward instead of keeping them
    public var pipelineSplit: [Int] = [] // blocks per pipeline piece ([]: balanced by a cost model)
    public var bucketKB = 1024          // gradient bucket size
    public var zero = 0                 // ZeRO stage: 1 shards optimizer state across the data-parallel ranks, 2 also gradients, 3 also parameters
    public var syncBatchNorm = true     // batch norm statistics over the whole batch, not each rank's shard
    public var timeoutSeconds = 120     // a collective that waits longer fails the run
    public var checkpointTimeoutSeconds = 600  // how long ranks wait for rank 0 to write a checkpoint
    // [run]
    public var out = "runs"
    public var name = ""                // "": derived from the config file's name

    public init() {}

    /// Built-in configurations, the same as the files in examples/ (a test keeps them in step).
    public static func preset(_ name: String) throws -> TrainConfig {
        var c = TrainConfig()
        switch name {
        case "mnist-cnn":
            c.model = .cnn; c.residual = true; c.epochs = 8; c.batchSize = 64; c.optimizer = .adam; c.lr = 2e-3
            c.schedule = .cosine; c.warmupSteps = 20; c.minLR = 1e-4; c.evalEvery = 0
        case "mnist-mlp":
            c.model = .mlp; c.hidden = [512, 512]; c.epochs = 10; c.batchSize = 128; c.optimizer = .sgd; c.lr = 0.05
            c.momentum = 0.9; c.schedule = .cosine; c.minLR = 1e-3
        case "cifar-resnet20":
            c.model = .resnet; c.depth = 20; c.width = 0; c.data = "data/cifar-10-batches-bin"; c.validationFraction = 0.1
            c.cropPadding = 4; c.flip = true
            c.epochs = 30; c.batchSize = 128; c.optimizer = .sgd; c.lr = 0.1; c.momentum = 0.9; c.nesterov = true
            c.weightDecay = 5e-4; c.schedule = .cosine; c.warmupSteps = 200; c.minLR = 1e-3
            c.logEvery = 50; c.evalEvery = 0
        case "shakespeare-gpt":
            c.model = .gpt; c.layers = 4; c.dModel = 128; c.heads = 4; c.context = 128; c.dropout = 0
            c.data = "data/shakespeare.txt"; c.validationFraction = 0.1
            c.steps = 2500; c.batchSize = 16; c.optimizer = .adamw; c.lr = 3e-3; c.weightDecay = 0.1
            c.schedule = .cosine; c.warmupSteps = 100; c.minLR = 3e-4; c.gradClip = 1.0
            c.logEvery = 25; c.evalEvery = 250; c.evalBatches = 20
        default:
            throw LoomError.config("unknown preset '\(name)'; valid: \(presetNames.joined(separator: ", "))")
        }
        c.name = name
        return c
    }

    public static let presetNames = ["mnist-cnn", "mnist-mlp", "shakespeare-gpt", "cifar-resnet20"]

    public var isLanguageModel: Bool { model.isLanguageModel }

    /// Where a new run writes: `out/name` (`out/run` without a name).
    public var runDirectory: String { out + "/" + (name.isEmpty ? "run" : name) }

    /// Model chunks per pipeline stage: `chunks` for the interleaved schedule, else 1.
    public var chunksPerStage: Int { pipelineSchedule == .interleaved ? chunks : 1 }

    public var learningRateSchedule: LRScheduleValue {
        schedule == .cosine ? .cosine(peak: Float(lr), warmup: warmupSteps, minimum: Float(minLR)) : .constant(Float(lr))
    }
}

/// The schedule as configured; its length is only known once the data is loaded.
public enum LRScheduleValue: Equatable, Sendable {
    case constant(Float)
    case cosine(peak: Float, warmup: Int, minimum: Float)
}

extension TrainConfig {
    /// The configuration with its file paths (data, labels, tokenizer file) passed through
    /// `resolve`: the command line finds relative paths from where the binary lives; the
    /// library reads paths as given.
    public func resolvingPaths(_ resolve: (String) -> String) -> TrainConfig {
        var c = self
        c.data = resolve(data)
        if !labels.isEmpty { c.labels = resolve(labels) }
        if !tokenizerFile.isEmpty { c.tokenizerFile = resolve(tokenizerFile) }
        return c
    }
}
