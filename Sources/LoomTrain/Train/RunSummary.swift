import Foundation
import LoomCore

/// The result of a run, as summary.json records it.
public struct RunSummary: Encodable {
    public var name: String
    public var steps: Int
    public var epochs: Double
    public var trainLoss: Float
    public var validationLoss: Double
    public var validationAccuracy: Double?
    /// Language models: the validation loss in bits per character of text (comparable
    /// across tokenizers).
    public var validationBitsPerCharacter: Double?
    public var throughput: Double
    public var unit: String
    public var wallSeconds: Double
    /// Of this run's wall time, the seconds spent evaluating and writing checkpoints (the
    /// throughput counts the rest: training).
    public var evaluationSeconds: Double = 0
    public var parameters: Int
    /// Pipeline runs: schedule, measured bubble and memory per stage.
    public var pipeline: PipelineReport?

    enum CodingKeys: String, CodingKey {
        case name, steps, epochs, trainLoss = "train_loss", validationLoss = "val_loss", validationAccuracy = "val_accuracy", validationBitsPerCharacter = "val_bits_per_char"
        case tokensPerSecond = "tokens_per_s", samplesPerSecond = "samples_per_s", wallSeconds = "wall_s", evaluationSeconds = "eval_s", parameters, pipeline
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(steps, forKey: .steps)
        try c.encode(rounded(epochs, 4), forKey: .epochs)
        try c.encode(trainLoss, forKey: .trainLoss)
        try c.encode(validationLoss, forKey: .validationLoss)
        try c.encodeIfPresent(validationAccuracy, forKey: .validationAccuracy)
        try c.encodeIfPresent(validationBitsPerCharacter.map { rounded($0, 4) }, forKey: .validationBitsPerCharacter)
        try c.encode(rounded(throughput, 1), forKey: unit == "tokens/s" ? .tokensPerSecond : .samplesPerSecond)
        try c.encode(rounded(wallSeconds, 3), forKey: .wallSeconds)
        try c.encode(rounded(evaluationSeconds, 3), forKey: .evaluationSeconds)
        try c.encode(parameters, forKey: .parameters)
        try c.encodeIfPresent(pipeline, forKey: .pipeline)
    }

    /// summary.json's text.
    public var json: String { JSONOutput.string(self, pretty: true) + "\n" }
}
