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
    func evaluate(inputs: Tensor, targets: Tensor) throws -> EvaluationSums
}

/// Image classification (mlp, cnn, resnet): cross-entropy and accuracy.
public final class ClassifierTask: TrainTask {
    public let model: any UnaryLayer
    public var module: Module { model }
    /// The model's forward runs as this sharding's root unit (ZeRO-3).
    let sharding: (any UnitSharding)?

    public init(model: any UnaryLayer, sharding: (any UnitSharding)? = nil) { self.model = model; self.sharding = sharding }

    public func loss(inputs: Tensor, targets: Tensor) throws -> Tensor {
        try logits(inputs).crossEntropy(targets: targets)
    }

    private func logits(_ inputs: Tensor) throws -> Tensor { try sharding.forward(nil) { try model(inputs) } }

    public func evaluate(inputs: Tensor, targets: Tensor) throws -> EvaluationSums {
        let logits = try withoutGrad { try self.logits(inputs) }
        let n = targets.count
        let loss = try logits.crossEntropy(targets: targets).item
        return EvaluationSums(lossSum: Double(loss) * Double(n), correct: try ClassifierTask.correct(logits: logits, targets: targets), count: n)
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
    /// The model's forward runs as this sharding's root unit (ZeRO-3).
    let sharding: (any UnitSharding)?

    public init(model: GPT, sharding: (any UnitSharding)? = nil) { self.model = model; self.sharding = sharding }

    public func loss(inputs: Tensor, targets: Tensor) throws -> Tensor {
        try model.loss(logits: sharding.forward(nil) { try model(inputs) }, targets: targets)
    }

    public func evaluate(inputs: Tensor, targets: Tensor) throws -> EvaluationSums {
        let loss = try withoutGrad { try self.loss(inputs: inputs, targets: targets) }
        return EvaluationSums(lossSum: Double(loss.item) * Double(targets.count), count: targets.count)
    }
}
