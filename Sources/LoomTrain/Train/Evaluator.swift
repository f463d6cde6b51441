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
/// run whose data ranks each take every n-th batch (every rank of the run calls it
/// together). The step schedule evaluates a batch on this rank's part of the model and
/// totals the replica's sums, whatever the layout. `loom eval` uses it alone; the
/// trainer at every checkpoint.
public struct Evaluator {
    public let steps: StepSchedule
    public let data: any Dataset
    public let batchSize: Int
    public let backend: any Backend
    public let isClassifier: Bool
    /// The ranks that split the data (each evaluates every size-th batch).
    public let dataGroup: Communicator?
    /// The precision of matrix products (the run's `train.precision`).
    public let precision: Precision

    public init(steps: StepSchedule, data: any Dataset, batchSize: Int, backend: any Backend, isClassifier: Bool,
                dataGroup: Communicator? = nil, precision: Precision = .float32) {
        self.steps = steps; self.data = data; self.batchSize = batchSize; self.backend = backend
        self.isClassifier = isClassifier; self.dataGroup = dataGroup; self.precision = precision
    }

    /// Mean loss (and accuracy) over the first `maxBatches` batches, or all of them.
    /// `progress(done, total)` follows this rank's share of the batches.
    public func evaluate(maxBatches: Int? = nil, progress: ((Int, Int) -> Void)? = nil) throws -> Evaluation {
        try withPrecision(precision) { try evaluateBatches(maxBatches: maxBatches, progress: progress) }
    }

    private func evaluateBatches(maxBatches: Int?, progress: ((Int, Int) -> Void)?) throws -> Evaluation {
        let module = steps.module
        module.eval()
        defer { module.train() }
        guard data.count > 0 else { throw LoomError.config("evaluation: the validation split is empty") }
        let batch = min(batchSize, data.count)
        var batches = (data.count + batch - 1) / batch  // the last batch may be partial
        if let maxBatches, maxBatches > 0 { batches = min(batches, maxBatches) }
        var sums = EvaluationSums()
        let rank = dataGroup?.rank ?? 0, ranks = dataGroup?.size ?? 1
        let mine = Array(stride(from: rank, to: batches, by: ranks))
        // Every data rank runs as many forwards (a fully sharded model's forward is
        // collective): a rank with one batch fewer evaluates its first again, uncounted.
        let forwards = (batches + ranks - 1) / ranks
        for done in 0..<forwards {
            let b = done < mine.count ? mine[done] : mine.first ?? 0
            let host = data.batch(Array((b * batch)..<min((b + 1) * batch, data.count)))
            let batchSums = try steps.evaluate(inputs: try host.inputs.to(backend), targets: try host.targets.to(backend))
            try backend.deferredErrors()
            guard done < mine.count else { continue }
            sums = sums + batchSums
            progress?(done + 1, mine.count)
        }
        let total = try steps.replicaTotal(sums).summed(over: dataGroup)
        let count = Double(max(total.count, 1))
        return Evaluation(loss: total.lossSum / count, accuracy: isClassifier ? Double(total.correct) / count : nil)
    }
}
