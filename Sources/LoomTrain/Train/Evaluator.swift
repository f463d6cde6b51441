import LoomCore
import LoomData
import LoomDistributed
import LoomParallel

/// What an evaluation measured: mean loss per example (per token for language models),
/// and accuracy for classifiers.
public struct Evaluation: Equatable, Encodable {
    public var loss: Double
    public var accuracy: Double?

    enum CodingKeys: String, CodingKey { case loss = "val_loss", accuracy = "val_accuracy" }
}

/// Evaluates a model on a dataset in evaluation mode: on one rank, or as one rank of a
/// run whose data ranks each take every n-th batch and whose pipeline stages pass the
/// batch along (every rank of the run calls it together). `loom eval` uses it alone; the
/// trainer at every checkpoint.
public struct Evaluator {
    public let task: TrainTask
    /// Pipeline runs: the stage's engine, which runs the forward through the stages.
    public let pipeline: PipelineEngine?
    public let data: any Dataset
    public let batchSize: Int
    public let backend: any Backend
    public let isClassifier: Bool
    /// The ranks that split the data (each evaluates every size-th batch).
    public let dataGroup: Communicator?
    /// The pipeline's stages (the sums arrive on the last).
    public let pipelineGroup: Communicator?
    /// The precision of matrix products (the run's `train.precision`).
    public let precision: Precision

    public init(task: TrainTask, data: any Dataset, batchSize: Int, backend: any Backend, isClassifier: Bool,
                pipeline: PipelineEngine? = nil, dataGroup: Communicator? = nil, pipelineGroup: Communicator? = nil,
                precision: Precision = .float32) {
        self.task = task; self.data = data; self.batchSize = batchSize; self.backend = backend
        self.isClassifier = isClassifier; self.pipeline = pipeline; self.dataGroup = dataGroup; self.pipelineGroup = pipelineGroup
        self.precision = precision
    }

    /// Mean loss (and accuracy) over the first `maxBatches` batches, or all of them.
    /// `progress(done, total)` follows this rank's share of the batches.
    public func evaluate(maxBatches: Int? = nil, progress: ((Int, Int) -> Void)? = nil) throws -> Evaluation {
        try withPrecision(precision) { try evaluateBatches(maxBatches: maxBatches, progress: progress) }
    }

    private func evaluateBatches(maxBatches: Int?, progress: ((Int, Int) -> Void)?) throws -> Evaluation {
        let module = task.module
        module.eval()
        defer { module.train() }
        guard data.count > 0 else { throw LoomError.config("evaluation: the validation split is empty") }
        let batch = min(batchSize, data.count)
        var batches = (data.count + batch - 1) / batch  // the last batch may be partial
        if let maxBatches, maxBatches > 0 { batches = min(batches, maxBatches) }
        var lossSum = 0.0, correct = 0, count = 0
        let rank = dataGroup?.rank ?? 0, ranks = dataGroup?.size ?? 1
        let mine = Array(stride(from: rank, to: batches, by: ranks))
        for (done, b) in mine.enumerated() {
            defer { progress?(done + 1, mine.count) }
            let host = data.batch(Array((b * batch)..<min((b + 1) * batch, data.count)))
            let inputs = try host.inputs.to(backend), targets = try host.targets.to(backend)
            if let pipeline {
                if let r = try pipeline.evaluate(inputs: inputs, targets: targets) {
                    lossSum += r.lossSum; count += r.count
                    if isClassifier { correct += try ClassifierTask.correct(logits: r.output, targets: targets) }
                }
                continue
            }
            let r = try task.evaluate(inputs: inputs, targets: targets)
            lossSum += r.lossSum; correct += r.correct; count += r.count
        }
        if let group = pipelineGroup, group.size > 1 {
            let sums = try group.sum([lossSum, Double(count), Double(correct)])
            lossSum = sums[0]; count = Int(sums[1].rounded()); correct = Int(sums[2].rounded())
        }
        if let group = dataGroup, group.size > 1 {
            let sums = try group.sum([lossSum, Double(correct), Double(count)])
            lossSum = sums[0]; correct = Int(sums[1].rounded()); count = Int(sums[2].rounded())
        }
        return Evaluation(loss: lossSum / Double(max(count, 1)), accuracy: isClassifier ? Double(correct) / Double(max(count, 1)) : nil)
    }
}
