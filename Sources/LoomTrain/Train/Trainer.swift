import Foundation
import LoomCore
import LoomData
import LoomDistributed
import LoomNN
import LoomParallel

/// The result of a run, as summary.json records it.
public struct RunSummary {
    public var name: String
    public var steps: Int
    public var epochs: Double
    public var trainLoss: Float
    public var validationLoss: Double
    public var validationAccuracy: Double?
    public var throughput: Double
    public var unit: String
    public var wallSeconds: Double
    public var parameters: Int

    public var json: String {
        var f = ["\"name\": \(SafeTensors.jsonString(name))", "\"steps\": \(steps)", "\"epochs\": \(String(format: "%.4f", epochs))",
                 "\"train_loss\": \(trainLoss)", "\"val_loss\": \(validationLoss)"]
        if let validationAccuracy { f.append("\"val_accuracy\": \(validationAccuracy)") }
        f += ["\"\(unit == "tokens/s" ? "tokens_per_s" : "samples_per_s")\": \(String(format: "%.1f", throughput))",
              "\"wall_s\": \(String(format: "%.3f", wallSeconds))", "\"parameters\": \(parameters)"]
        return "{\n  " + f.joined(separator: ",\n  ") + "\n}\n"
    }
}

/// Runs a training job: data in the background, steps, periodic evaluation, atomic
/// checkpoints and the run directory's outputs.
public final class Trainer {
    public let config: TrainConfig
    public let runDirectory: String
    public let setup: Setup
    public let backend: any Backend
    private var state: RunState
    /// Stop (after checkpointing) once this step is done, as if interrupted.
    public var stopAt: Int?
    public var quiet = false
    /// All ranks of the run (nil: one process).
    public let communicator: Communicator?
    /// The ranks that hold the same model part and split the data (data parallelism).
    private let dataGroup: Communicator?
    /// The tensor-parallel model, when the GPT is split across ranks.
    private let tensorParallel: TensorParallelGPT?
    private let dataParallel: DataParallel?
    /// The optimizer training uses: the setup's, or its ZeRO-sharded form.
    public let optimizer: Optimizer
    /// This rank's index in the data group: which shard of each batch it takes.
    private var rank: Int { dataGroup?.rank ?? 0 }
    private var isLeader: Bool { (communicator?.rank ?? 0) == 0 }

    /// A new run, or a resumed one when `resume` names a run directory. With a
    /// communicator of N ranks, this is one rank of an N-way data-parallel run: call `run()`
    /// on every rank.
    public init(config: TrainConfig, backend: any Backend = CPUBackend.shared, resume: String? = nil,
                communicator: Communicator? = nil) throws {
        var c = config
        // World = dp x tp ranks; tensor parallelism varies fastest (Topology).
        var groups: ProcessGroups?
        if let communicator {
            guard communicator.size % c.tp == 0 else {
                throw LoomError.config("parallel.tp = \(c.tp) does not divide the \(communicator.size) ranks")
            }
            c.dp = communicator.size / c.tp
            if c.tp > 1 { groups = try ProcessGroups(topology: Topology(dp: c.dp, tp: c.tp), world: communicator) }
        }
        c.data = resolveDataPath(c.data)
        if !c.labels.isEmpty { c.labels = resolveDataPath(c.labels) }
        try ConfigFile.validate(c)
        self.backend = backend
        dataGroup = groups?.data ?? communicator
        if let resume {
            let (file, _, tokenizer) = try TrainingCheckpoint.peek(resume)
            setup = try Setup(c, backend: backend, tokenizer: tokenizer, tensorGroup: groups?.tensor)
            let tp = (setup.task as? LanguageModelTask)?.model as? TensorParallelGPT
            state = try TrainingCheckpoint.restore(file, path: resume, into: setup, slice: tp.map { m in { try m.shard($0, $1) } })
            runDirectory = resume
        } else {
            setup = try Setup(c, backend: backend, tensorGroup: groups?.tensor)
            state = RunState(step: 0, elapsedSeconds: 0, bestValidationLoss: nil)
            runDirectory = c.out + "/" + (c.name.isEmpty ? "run" : c.name)
        }
        self.config = c
        self.communicator = communicator
        tensorParallel = (setup.task as? LanguageModelTask)?.model as? TensorParallelGPT
        // Every rank of a data group starts from its first rank's parameters (broadcast inside).
        let params = setup.task.module.namedParameters()
        if let comm = dataGroup, comm.size > 1 {
            let dp = try DataParallel(parameters: params, communicator: comm, bucketBytes: c.bucketKB << 10, zero: c.zero == 1)
            dataParallel = dp
            optimizer = c.zero == 1 ? try ZeroOptimizer(dataParallel: dp, template: setup.optimizer) : setup.optimizer
        } else {
            dataParallel = nil
            optimizer = setup.optimizer
        }
    }

    /// Steps completed (including those before a resume).
    public var step: Int { state.step }

    public var unit: String { config.isLanguageModel ? "tokens/s" : "samples/s" }
    public var stepsPerEpoch: Int { setup.train.count / config.batchSize }
    public var totalSteps: Int { config.steps > 0 ? config.steps : config.epochs * stepsPerEpoch }

    func schedule() -> LRSchedule {
        switch config.learningRateSchedule {
        case .constant(let lr): return .constant(lr)
        case let .cosine(peak, warmup, minimum): return .warmupCosine(peak: peak, warmup: warmup, total: totalSteps, minimum: minimum)
        }
    }

    @discardableResult
    public func run() throws -> RunSummary {
        let resumed = state.step > 0
        var log: MetricsLog?
        if isLeader {
            try FileManager.default.createDirectory(atPath: runDirectory, withIntermediateDirectories: true)
            try writeTextAtomically(ConfigFile.render(config), to: runDirectory + "/config.toml")
            log = try MetricsLog(path: runDirectory + "/metrics.jsonl", keepThrough: resumed ? state.step : nil)
        }
        let sampler = try EpochSampler(count: setup.train.count, globalBatch: config.batchSize, seed: UInt64(config.seed),
                                       rank: rank, worldSize: dataGroup?.size ?? 1)
        let end = min(totalSteps, stopAt ?? totalSteps)
        let loader = PrefetchLoader(dataset: setup.train, sampler: sampler, start: state.step, end: end)
        defer { loader.stop() }
        let progress = Progress(total: totalSteps)
        let lrs = schedule()
        let itemsPerStep = config.batchSize * (config.isLanguageModel ? config.context : 1)
        let evalEvery = config.evalEvery > 0 ? config.evalEvery : stepsPerEpoch
        let startStep = state.step, startElapsed = state.elapsedSeconds
        let t0 = monotonicSeconds()
        var windowStart = t0, windowSteps = 0
        dataParallel?.resetTimers()
        var lastLoss: Float = .nan
        var lastEval: (loss: Double, accuracy: Double?)?
        let quiet = self.quiet || !isLeader
        if !quiet {
            progress.note("loom train \(config.name): \(config.model), \(setup.task.module.parameterCount) parameters, "
                + "\(setup.train.count) train / \(setup.validation.count) validation examples, \(totalSteps) steps"
                + (resumed ? ", resuming at step \(startStep)" : "")
                + ((dataGroup?.size ?? 1) > 1 ? ", data parallel over \(dataGroup!.size) ranks" : "")
                + (config.tp > 1 ? ", tensor parallel over \(config.tp) ranks" : "") + " -> \(runDirectory)/")
        }

        setup.task.module.train()
        while let batch = loader.next() {
            let step = state.step
            let lr = lrs.learningRate(at: step)
            optimizer.learningRate = lr
            lastLoss = try optimizerStep(batch)
            guard lastLoss.isFinite else {
                throw LoomError.invalidArgument("loss became \(lastLoss) at step \(step + 1) (lr \(lr)); lower train.lr or set train.grad_clip")
            }
            state.step += 1
            windowSteps += 1
            let now = monotonicSeconds()
            state.elapsedSeconds = startElapsed + (now - t0)
            let epoch = Double(state.step) / Double(stepsPerEpoch)
            let isLog = state.step % config.logEvery == 0 || state.step == end
            if isLog {
                // The logged loss is the global batch's: the mean of the ranks' shard means.
                if let comm = dataGroup, comm.size > 1 { lastLoss = Float(try comm.average(Double(lastLoss))) }
                let window = now - windowStart
                let rate = Double(windowSteps * itemsPerStep) / max(window, 1e-9)
                var record = MetricRecord(step: state.step, epoch: epoch, elapsedSeconds: state.elapsedSeconds, loss: lastLoss, lr: lr,
                                          throughput: rate, throughputUnit: unit)
                if let dp = dataParallel {
                    record.commWaitSeconds = dp.waitSeconds
                    record.computeSeconds = window - dp.waitSeconds
                    dp.resetTimers()
                }
                log?.append(record)
                windowStart = now; windowSteps = 0
            }
            if !quiet {
                let rate = Double((state.step - startStep) * itemsPerStep) / max(now - t0, 1e-9)
                progress.update(step: state.step, epoch: epoch, loss: lastLoss, throughput: rate, unit: unit,
                                elapsed: now - t0, startStep: startStep, force: isLog)
            }
            if state.step % evalEvery == 0 || state.step == end {
                let e = try evaluateAndCheckpoint(log: log, epoch: epoch)
                lastEval = e
                if !quiet {
                    progress.note(String(format: "step %d: val_loss %.4f", state.step, e.loss)
                                  + (e.accuracy.map { String(format: ", val_accuracy %.2f%%", 100 * $0) } ?? "") + " (checkpoint saved)")
                }
            }
        }
        if !quiet { progress.finish() }
        let wall = monotonicSeconds() - t0
        let e = try lastEval ?? evaluate(full: true)
        let summary = RunSummary(name: config.name, steps: state.step, epochs: Double(state.step) / Double(stepsPerEpoch),
                                 trainLoss: lastLoss, validationLoss: e.loss, validationAccuracy: e.accuracy,
                                 throughput: Double((state.step - startStep) * itemsPerStep) / max(wall, 1e-9), unit: unit,
                                 wallSeconds: state.elapsedSeconds, parameters: setup.task.module.parameterCount)
        if isLeader { try writeTextAtomically(summary.json, to: runDirectory + "/summary.json") }
        return summary
    }

    /// One optimizer step on this rank's shard of the global batch. Gradient accumulation:
    /// K micro-batches, each loss scaled by 1/K; gradients stay local until the last
    /// micro-batch's backward. Returns the mean loss of the micro-batches.
    private func optimizerStep(_ batch: (inputs: Tensor, targets: Tensor)) throws -> Float {
        optimizer.zeroGrad()
        let k = config.accumulationSteps
        let rows = batch.inputs.shape[0] / k
        var lossSum: Float = 0
        for micro in 0..<k {
            let x = k == 1 ? batch.inputs : try batch.inputs.slice(axis: 0, (micro * rows)..<((micro + 1) * rows))
            let y = k == 1 ? batch.targets : try batch.targets.slice(axis: 0, (micro * rows)..<((micro + 1) * rows))
            dataParallel?.syncGradients = micro == k - 1
            let loss = try setup.task.loss(inputs: x, targets: y)
            try (k == 1 ? loss : loss.scaled(1 / Float(k))).backward()
            lossSum += loss.item
        }
        try dataParallel?.synchronize()
        if config.gradClip > 0 {
            if let zero = optimizer as? ZeroOptimizer {
                try zero.clipGradNorm(maxNorm: Float(config.gradClip))
            } else {
                clipGradNorm(setup.task.module.parameters, maxNorm: Float(config.gradClip))
            }
        }
        try optimizer.step()
        return lossSum / Float(k)
    }

    /// Evaluates (on every rank), then rank 0 logs, checkpoints and redraws the plot.
    private func evaluateAndCheckpoint(log: MetricsLog?, epoch: Double) throws -> (loss: Double, accuracy: Double?) {
        let e = try evaluate(full: state.step == totalSteps)
        state.bestValidationLoss = min(state.bestValidationLoss ?? .infinity, e.loss)
        try (optimizer as? ZeroOptimizer)?.gatherState()  // collective: every rank
        // Tensor parallelism: every rank gathers the shards into full tensors (collective).
        let full = try tensorParallel.map { tp in
            try TrainingCheckpoint.localTensors(setup: setup, optimizer: optimizer).map { name, t in
                (name, try tp.gather(String(name.drop { $0 != "." }.dropFirst()), t))
            }
        }
        if let log {
            log.append(MetricRecord(step: state.step, epoch: epoch, elapsedSeconds: state.elapsedSeconds, throughputUnit: unit,
                                    validationLoss: e.loss, validationAccuracy: e.accuracy))
            // Written once, by rank 0: every rank holds the same parameters and state.
            try TrainingCheckpoint.save(to: runDirectory, config: config, setup: setup, optimizer: optimizer, state: state, tensors: full)
            try writePlot(log)
        }
        return e
    }

    /// Mean validation loss (and accuracy for classifiers) in evaluation mode, over
    /// `eval_batches` batches, or the whole validation split when `full` (the final
    /// evaluation of a run always is).
    public func evaluate(full: Bool = false) throws -> (loss: Double, accuracy: Double?) {
        let module = setup.task.module
        module.eval()
        defer { module.train() }
        let data = setup.validation
        let batch = min(config.batchSize, data.count)
        var batches = (data.count + batch - 1) / batch  // the last batch may be partial
        if config.evalBatches > 0 && !full { batches = min(batches, config.evalBatches) }
        var lossSum = 0.0, correct = 0, count = 0
        let ranks = dataGroup?.size ?? 1
        for b in stride(from: rank, to: batches, by: ranks) {  // each data rank evaluates every ranks-th batch
            let xy = data.batch(Array((b * batch)..<min((b + 1) * batch, data.count)))
            let r = try setup.task.evaluate(inputs: xy.inputs, targets: xy.targets)
            lossSum += r.lossSum; correct += r.correct; count += r.count
        }
        if let comm = dataGroup, comm.size > 1 {
            let sums = try comm.sum([lossSum, Double(correct), Double(count)])
            lossSum = sums[0]; correct = Int(sums[1].rounded()); count = Int(sums[2].rounded())
        }
        return (lossSum / Double(max(count, 1)), config.isLanguageModel ? nil : Double(correct) / Double(max(count, 1)))
    }

    /// Detaches data-parallel hooks (the trainer's parameters become plain again).
    public func finish() { dataParallel?.detach() }

    private func writePlot(_ log: MetricsLog) throws {
        let train = log.records.compactMap { r in r.loss.map { (r.step, Double($0)) } }
        let val = log.records.compactMap { r in r.validationLoss.map { (r.step, $0) } }
        try writeTextAtomically(LossPlot.svg(train: train, validation: val, title: "\(config.name): loss"), to: runDirectory + "/loss.svg")
    }
}

/// A relative data path is looked up from the working directory first, then from the
/// directories above the loom executable (so `loom train` finds the repository's data/
/// when run from elsewhere).
public func resolveDataPath(_ path: String) -> String {
    if path.hasPrefix("/") || FileManager.default.fileExists(atPath: path) { return path }
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
    for _ in 0..<5 {
        let candidate = dir.appendingPathComponent(path).path
        if FileManager.default.fileExists(atPath: candidate) { return candidate }
        dir = dir.deletingLastPathComponent()
    }
    return path
}
