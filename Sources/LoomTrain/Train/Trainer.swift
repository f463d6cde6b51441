import Foundation
import LoomCore
import LoomData
import LoomDistributed
import LoomNN
import LoomParallel

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

/// Runs a training job: data in the background, steps, periodic evaluation, atomic
/// checkpoints and the run directory's outputs.
public final class Trainer {
    public let config: TrainConfig
    public let runDirectory: String
    public let setup: Setup
    public let backend: any Backend
    var state: RunState
    /// Stop (after checkpointing) once this step is done, as if interrupted.
    public var stopAt: Int?
    public var quiet = false
    /// All ranks of the run (nil: one process).
    public let communicator: Communicator?
    /// The ranks that hold the same model part and split the data (data parallelism).
    private let dataGroup: Communicator?
    /// The groups of each parallel axis, when the model is split (tp or pp > 1).
    let groups: ProcessGroups?
    /// How this rank combines with the others: reduction, clipping, checkpoint gathering.
    let plan: ParallelPlan
    /// Pipeline parallelism: runs this rank's stage of the schedule.
    let pipeline: PipelineEngine?
    var pipelineStats = PipelineStats()
    /// This run continues one that failed (a rank died, a collective timed out): which
    /// restart it is and why, recorded in metrics.jsonl.
    public var restart: (attempt: Int, cause: String)?
    /// Write a Chrome trace of the run's last steps here (rank 0 gathers every rank's).
    public var tracePath: String?
    var trace = TraceRecorder()
    /// The optimizer training uses: the setup's, or its ZeRO-sharded form.
    public var optimizer: Optimizer { plan.optimizer }
    /// This rank's index in the data group: which shard of each batch it takes.
    private var rank: Int { dataGroup?.rank ?? 0 }
    /// The global gradient norm of the last step.
    private var lastGradNorm: Float?
    /// Whether the last step's update was skipped (non-finite gradient, train.nonfinite = "skip").
    private var skippedLastStep = false
    /// Seconds of this process's run spent in evaluations and checkpoints.
    private var evaluationSeconds = 0.0
    /// Steps skipped this run.
    public private(set) var skippedSteps = 0

    /// A new run, or a resumed one when `resume` names a run directory. With a
    /// communicator of N ranks, this is one rank of an N-rank run (laid out as the config's
    /// dp × tp × pp): call `run()` on every rank.
    /// `initFrom`: a new run whose model starts from that checkpoint's parameters (and
    /// tokenizer), e.g. an imported GPT-2 to fine-tune; its shape must be the config's.
    public init(config: TrainConfig, backend: any Backend = CPUBackend.shared, resume: String? = nil, initFrom: String? = nil,
                communicator: Communicator? = nil) throws {
        var c = config
        // World = dp x pp x tp ranks; tensor parallelism varies fastest (Topology).
        var groups: ProcessGroups?
        if let communicator {
            guard communicator.size % (c.tp * c.pp) == 0 else {
                throw LoomError.config("parallel.tp = \(c.tp) x parallel.pp = \(c.pp) does not divide the \(communicator.size) ranks")
            }
            c.dp = communicator.size / (c.tp * c.pp)
            if c.tp * c.pp > 1 { groups = try ProcessGroups(topology: Topology(dp: c.dp, pp: c.pp, tp: c.tp), world: communicator) }
        } else if c.tp * c.pp > 1 {
            throw LoomError.config("parallel.tp = \(c.tp) x parallel.pp = \(c.pp) needs that many ranks; the trainer was given one process")
        }
        let schedule = c.pp > 1 ? try Schedule(c.pipelineSchedule, stages: c.pp, microBatches: c.microBatches,
                                               chunks: c.pipelineSchedule == .interleaved ? c.chunks : nil) : nil
        let placement = schedule.map { PipelinePlacement(schedule: $0, stage: groups!.pipeline.rank) }
        try ConfigFile.validate(c)
        self.backend = backend
        dataGroup = groups?.data ?? communicator
        self.groups = groups
        if let resume {
            let file = try TrainingCheckpoint.peek(resume).0
            setup = try TrainingCheckpoint.setup(c, backend: backend, from: file, path: resume, tensorGroup: groups?.tensor, pipeline: placement)
            state = try TrainingCheckpoint.restore(file, path: resume, into: setup)
            runDirectory = resume
        } else if let initFrom {
            let file = try TrainingCheckpoint.peek(initFrom).0
            setup = try TrainingCheckpoint.setup(c, backend: backend, from: file, path: initFrom, tensorGroup: groups?.tensor, pipeline: placement)
            try TrainingCheckpoint.restoreModel(file, path: initFrom, into: setup.task.module, tensorGroup: setup.tensorGroup)
            state = RunState(step: 0, elapsedSeconds: 0, bestValidationLoss: nil)
            runDirectory = c.runDirectory
        } else {
            setup = try Setup(c, backend: backend, tensorGroup: groups?.tensor, pipeline: placement)
            state = RunState(step: 0, elapsedSeconds: 0, bestValidationLoss: nil)
            runDirectory = c.runDirectory
        }
        self.config = c
        self.communicator = communicator
        let setup = self.setup
        if c.syncBatchNorm, let group = dataGroup, group.size > 1 {
            // Each rank normalises with the whole batch's statistics: the layout does not
            // change what the model computes.
            for (_, module) in setup.task.module.descendants() { (module as? BatchNorm)?.syncGroup = group }
        }
        if let communicator {
            plan = try DistributedPlan(setup: setup, world: communicator, groups: groups, bucketBytes: c.bucketKB << 10, zero: c.zero == 1)
        } else {
            plan = SingleProcessPlan(setup: setup)
        }
        if let schedule, let groups, let stage = (setup.task as? PipelineTask)?.model {
            // Gradients stay local through the micro-batches; the data-parallel reduction
            // runs once, at the schedule's reduceGradients (after the tied embedding's sum).
            plan.setOverlapsBackward(false)
            let engine = try PipelineEngine(schedule: schedule, chunks: stage.chunks, optimizer: plan.optimizer, comm: groups.pipeline)
            engine.recompute = c.recompute
            pipeline = engine
            engine.afterReduce = { [unowned self] in
                try self.plan.reduceGradients()
                try self.clipGradients()
            }
        } else {
            pipeline = nil
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
        let writer = plan.writesCheckpoint
            ? try RunWriter(directory: runDirectory, config: config, resumedAt: resumed ? state.step : nil, totalSteps: totalSteps, quiet: quiet)
            : nil
        let sampler = try EpochSampler(count: setup.train.count, globalBatch: config.batchSize, seed: UInt64(config.seed),
                                       rank: rank, worldSize: dataGroup?.size ?? 1)
        let end = min(totalSteps, stopAt ?? totalSteps)
        let loader = PrefetchLoader(dataset: setup.train, sampler: sampler, start: state.step, end: end)
        defer { loader.stop() }
        let lrs = schedule()
        let itemsPerStep = config.batchSize * (config.isLanguageModel ? config.context : 1)
        let evalEvery = config.evalEvery > 0 ? config.evalEvery : stepsPerEpoch
        let startStep = state.step, startElapsed = state.elapsedSeconds
        let t0 = monotonicSeconds()
        var windowStart = t0, windowSteps = 0
        _ = plan.takeCommWaitSeconds()
        var lastLoss: Float = .nan
        var lastEval: Evaluation?
        let parameters = try plan.parameterCount()
        if let writer {
            writer.note("loom train \(config.name): \(config.model), \(parameters) parameters, "
                + "\(setup.train.count) train / \(setup.validation.count) validation examples, \(totalSteps) steps"
                + (resumed ? ", resuming at step \(startStep)" : "")
                + ((dataGroup?.size ?? 1) > 1 ? ", data parallel over \(dataGroup!.size) ranks" : "")
                + (config.tp > 1 ? ", tensor parallel over \(config.tp) ranks" : "")
                + (config.pp > 1 ? ", pipeline of \(config.pp) stages (\(config.pipelineSchedule), \(config.microBatches) micro-batches)" : "")
                + (backend.device == .cpu ? "" : ", on \(backend.name)")
                + (config.precision == .float32 ? "" : ", \(config.precision.rawValue) matrix products")
                + " -> \(runDirectory)/")
        }

        if setup.unseenCharacters > 0, let tokenizer = setup.tokenizer {
            writer?.note("note: \(setup.unseenCharacters) characters of '\(config.data)' are not in the checkpoint's vocabulary; "
                         + "read as \(tokenizer.unknownDescription)")
        }
        if let restart {
            var r = MetricRecord(step: state.step, epoch: Double(state.step) / Double(stepsPerEpoch), elapsedSeconds: state.elapsedSeconds,
                                 throughputUnit: unit)
            r.restart = restart.attempt
            r.restartCause = restart.cause
            writer?.log(r)
            writer?.note("restart \(restart.attempt) at step \(state.step): \(restart.cause)")
        }
        let failure = FaultInjection.rankDeath(rank: communicator?.rank ?? 0, inProcess: communicator is InProcessCommunicator)
        setup.task.module.train()
        var batches = DeviceBatches(loader, on: backend)
        while let batch = try batches.next() {
            let step = state.step
            failure?.fire(at: step)
            let lr = lrs.learningRate(at: step)
            optimizer.learningRate = lr
            lastLoss = try withPrecision(config.precision) { try optimizerStep(batch) }
            if skippedLastStep { skippedSteps += 1 }
            guard lastLoss.isFinite || skippedLastStep else {
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
                record.gradNorm = lastGradNorm
                record.skippedSteps = config.nonFinite == .skip ? skippedSteps : nil
                if let wait = plan.takeCommWaitSeconds() {
                    record.commWaitSeconds = wait
                    record.computeSeconds = window - wait
                }
                writer?.log(record)
                windowStart = now; windowSteps = 0
            }
            writer?.progress(step: state.step, epoch: epoch, loss: lastLoss,
                             throughput: Double((state.step - startStep) * itemsPerStep) / max(now - t0 - evaluationSeconds, 1e-9), unit: unit,
                             elapsed: now - t0, startStep: startStep, force: isLog)
            if state.step % evalEvery == 0 || state.step == end {
                let started = monotonicSeconds()
                lastEval = try evaluateAndCheckpoint(writer, epoch: epoch)
                let spent = monotonicSeconds() - started
                evaluationSeconds += spent
                windowStart += spent  // logged throughput counts training steps only
            }
        }
        writer?.endProgress()
        let e = try lastEval ?? evaluate(full: true, showingOn: writer)
        let wall = monotonicSeconds() - t0
        if let tracePath { try trace.write(to: tracePath, world: communicator, label: rankLabel) }
        let pipelineReport = try pipeline.map { try report($0) }
        if let r = pipelineReport { writer?.note(r.line) }
        var summary = RunSummary(name: config.name, steps: state.step, epochs: Double(state.step) / Double(stepsPerEpoch),
                                 trainLoss: lastLoss, validationLoss: e.loss, validationAccuracy: e.accuracy,
                                 throughput: Double((state.step - startStep) * itemsPerStep) / max(wall - evaluationSeconds, 1e-9), unit: unit,
                                 wallSeconds: state.elapsedSeconds, evaluationSeconds: evaluationSeconds, parameters: parameters)
        summary.pipeline = pipelineReport?.report
        summary.validationBitsPerCharacter = setup.bitsPerCharacterPerNat.map { e.loss * $0 }
        try writer?.writeSummary(summary)
        return summary
    }

    /// One optimizer step on this rank's shard of the global batch. Gradient accumulation:
    /// K micro-batches, each loss scaled by 1/K; gradients stay local until the last
    /// micro-batch's backward. Returns the mean loss of the micro-batches.
    private func optimizerStep(_ batch: (inputs: Tensor, targets: Tensor)) throws -> Float {
        if let pipeline { return try pipelineStep(batch, pipeline) }
        let start = monotonicSeconds()
        optimizer.zeroGrad()
        let k = config.accumulationSteps
        let rows = batch.inputs.shape[0] / k
        var lossSum: Float = 0
        for micro in 0..<k {
            let x = k == 1 ? batch.inputs : try batch.inputs.slice(axis: 0, (micro * rows)..<((micro + 1) * rows))
            let y = k == 1 ? batch.targets : try batch.targets.slice(axis: 0, (micro * rows)..<((micro + 1) * rows))
            plan.setOverlapsBackward(micro == k - 1)
            let loss = try setup.task.loss(inputs: x, targets: y)
            try (k == 1 ? loss : loss.scaled(1 / Float(k))).backward()
            lossSum += loss.item
        }
        let computed = monotonicSeconds()
        try plan.reduceGradients()
        try clipGradients()
        let reduced = monotonicSeconds()
        if !skippedLastStep { try optimizer.step() }
        trace.record(step: state.step, [TraceRecorder.Span(name: "forward+backward", start: start, end: computed),
                                        TraceRecorder.Span(name: "reduceGradients", start: computed, end: reduced),
                                        TraceRecorder.Span(name: "optimizerStep", start: reduced, end: monotonicSeconds())])
        return lossSum / Float(k)
    }



    /// The global gradient norm of the whole model (every element counted once when it
    /// is split across tensor- or pipeline-parallel ranks), measured at every step before
    /// the update; clips by train.grad_clip when set. A norm that is not finite stops the
    /// run here, before the parameters (and so any later checkpoint) are touched, or marks
    /// the step skipped (train.nonfinite). Collective.
    private func clipGradients() throws {
        let norm = try plan.clipGradients(maxNorm: config.gradClip > 0 ? Float(config.gradClip) : .infinity)
        lastGradNorm = norm
        skippedLastStep = false
        guard !norm.isFinite else { return }
        switch config.nonFinite {
        case .skip:
            skippedLastStep = true
            pipeline?.skipOptimizerStep = true
        case .stop:
            let first = setup.task.module.namedParameters().first { _, p in
                p.grad.map { !$0.backend.sumOfSquares([$0]).isFinite } ?? false
            }?.name
            throw LoomError.invalidArgument("the gradient became \(norm) at step \(state.step + 1)"
                + (first.map { " (first parameter affected: \($0))" } ?? "")
                + "; the update was not applied and the last checkpoint is kept. Lower train.lr, set train.grad_clip, or set train.nonfinite = \"skip\"")
        }
    }

    /// Evaluates (on every rank), then rank 0 checkpoints and logs.
    private func evaluateAndCheckpoint(_ writer: RunWriter?, epoch: Double) throws -> Evaluation {
        let e = try evaluate(full: state.step == totalSteps, showingOn: writer)
        state.bestValidationLoss = min(state.bestValidationLoss ?? .infinity, e.loss)
        // Collective: shards, ZeRO state and other stages' tensors come whole to rank 0.
        let (full, dropout) = try plan.checkpointTensors()
        if let writer {
            // Written once, by rank 0: every rank holds the same parameters and state.
            try TrainingCheckpoint.save(to: runDirectory, config: config, setup: setup, optimizer: optimizer, state: state, tensors: full,
                                        dropout: dropout)
            try writer.evaluation(e, step: state.step, epoch: epoch, elapsed: state.elapsedSeconds, unit: unit)
        }
        // The others wait here, not in the next step's collective, while rank 0 writes: a
        // slow disk must not look like a dead rank (parallel.checkpoint_timeout_s).
        try communicator?.barrier(timeout: Double(config.checkpointTimeoutSeconds))
        return e
    }


    /// Mean validation loss (and accuracy for classifiers) in evaluation mode, over
    /// `eval_batches` batches, or the whole validation split when `full` (the final
    /// evaluation of a run always is). Collective: every rank of the run calls it.
    public func evaluate(full: Bool = false) throws -> Evaluation { try evaluate(full: full, showingOn: nil) }

    /// The whole validation split can take a while (85 s for a 57M-parameter GPT on 2
    /// cores): the writing rank shows how far it has got on `writer`.
    private func evaluate(full: Bool, showingOn writer: RunWriter?) throws -> Evaluation {
        let progress = full ? writer.map { w in { (done: Int, total: Int) in w.evaluating(batch: done, of: total) } } : nil
        return try evaluator.evaluate(maxBatches: full ? nil : config.evalBatches, progress: progress)
    }

    private var evaluator: Evaluator {
        Evaluator(task: setup.task, data: setup.validation, batchSize: config.batchSize, backend: backend,
                  isClassifier: !config.isLanguageModel, pipeline: pipeline, dataGroup: dataGroup,
                  pipelineGroup: pipeline == nil ? nil : groups?.pipeline, precision: config.precision)
    }

    /// Detaches data-parallel hooks (the trainer's parameters become plain again).
    public func finish() { plan.detach() }
}
