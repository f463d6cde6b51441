import Foundation
import LoomCore
import LoomData
import LoomDistributed
import LoomNN
import LoomParallel

/// Runs a training job: data in the background, steps, periodic evaluation, atomic
/// checkpoints and the run directory's outputs.
///
/// A step is the same whatever the layout: the setup's `StepSchedule` runs forward and
/// backward and has the `ParallelPlan` reduce the gradients; the plan clips; the
/// optimizer updates. What differs between layouts was chosen when the run was built
/// (`ParallelContext`, `Setup`, the plan) and is not asked again here.
public final class Trainer {
    public let config: TrainConfig
    public let runDirectory: String
    public let setup: Setup
    public let backend: any Backend
    var state: RunState
    /// Stop (after checkpointing) once this step is done, as if interrupted.
    public var stopAt: Int?
    public var quiet = false
    /// The run's ranks and this rank's groups.
    public var context: ParallelContext { setup.context }
    /// How this rank combines with the others: reduction, clipping, checkpoint gathering.
    let plan: ParallelPlan
    /// This run continues one that failed (a rank died, a collective timed out): which
    /// restart it is and why, recorded in metrics.jsonl.
    public var restart: (attempt: Int, cause: String)?
    /// Write a Chrome trace of the run's last steps here (rank 0 gathers every rank's).
    public var tracePath: String?
    /// Called on this rank after each optimizer step, before any logging or evaluation,
    /// with the number of steps done (how `LayoutMeasurement` times steps and reads the
    /// rank's memory high-water mark without counting evaluations).
    public var afterStep: ((Int) -> Void)?
    var trace = TraceRecorder()
    /// The optimizer training uses: the setup's, or its ZeRO-sharded form.
    public var optimizer: Optimizer { plan.optimizer }
    /// The ranks that hold the same model part and split the data (data parallelism).
    private var dataGroup: Communicator? { context.data }
    /// The global gradient norm of the last step.
    private var lastGradNorm: Float?
    /// Whether the last step's update was skipped (non-finite gradient, train.nonfinite = "skip").
    private var skippedLastStep = false
    /// Seconds of this process's run spent in evaluations and checkpoints.
    private var evaluationSeconds = 0.0
    /// Steps skipped this run.
    public private(set) var skippedSteps = 0
    /// How the ranks' device tensors travel ("NCCL 2.30.7", or why through host memory); nil on one rank or the CPU.
    public let collectivesNote: String?

    /// A new run, or a resumed one when `resume` names a run directory. With a
    /// communicator of N ranks, this is one rank of an N-rank run (laid out as the config's
    /// dp × tp × pp): call `run()` on every rank.
    /// `initFrom`: a new run whose model starts from that checkpoint's parameters (and
    /// tokenizer), e.g. an imported GPT-2 to fine-tune; its shape must be the config's.
    public init(config: TrainConfig, backend: any Backend = CPUBackend.shared, resume: String? = nil, initFrom: String? = nil,
                communicator: Communicator? = nil) throws {
        var c = config
        // On GPUs that communicate themselves (NCCL), collectives of device tensors go device to device.
        let (world, collectivesNote) = try deviceWorld(communicator, for: backend)
        self.collectivesNote = collectivesNote
        // World = dp x pp x tp ranks; tensor parallelism varies fastest (Topology).
        let context = try ParallelContext(world: world, tensor: c.tp, pipeline: c.pp)
        c.dp = context.topology.dp
        try ConfigFile.validate(c)
        self.backend = backend
        var resumed: SafeTensors.File?
        if let from = resume ?? initFrom {
            let file = try TrainingCheckpoint.peek(from).0
            let fresh = try TrainingCheckpoint.setup(c, backend: backend, from: file, path: from, context: context)
            setup = fresh
            if resume != nil {
                state = try TrainingCheckpoint.restore(file, path: from, into: fresh)
                resumed = file
            } else {
                try TrainingCheckpoint.restoreModel(file, path: from, into: fresh.module, tensorGroup: fresh.tensorGroup, sharded: fresh.fullySharded)
                state = RunState(step: 0, elapsedSeconds: 0, bestValidationLoss: nil)
            }
        } else {
            setup = try Setup(c, backend: backend, context: context)
            state = RunState(step: 0, elapsedSeconds: 0, bestValidationLoss: nil)
        }
        runDirectory = resume ?? c.runDirectory
        self.config = c
        plan = communicator == nil ? SingleProcessPlan(setup: setup) : try DistributedPlan(setup: setup, bucketBytes: c.bucketKB << 10, zero: c.zero)
        // Into the optimizer that trains: a sharded one reads only its chunks.
        if let file = resumed, let from = resume {
            try TrainingCheckpoint.restoreOptimizer(file, path: from, into: plan.optimizer, tensorGroup: setup.tensorGroup)
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
        let writer = (context.world?.rank ?? 0) == 0  // rank 0 writes the run's files
            ? try RunWriter(directory: runDirectory, config: config, resumedAt: resumed ? state.step : nil, totalSteps: totalSteps, quiet: quiet)
            : nil
        let sampler = try EpochSampler(count: setup.train.count, globalBatch: config.batchSize, seed: UInt64(config.seed),
                                       rank: dataGroup?.rank ?? 0, worldSize: dataGroup?.size ?? 1)
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
        plan.commTimeline?.isRecording = tracePath != nil
        var lastLoss: Float = .nan
        var lastEval: Evaluation?
        let parameters = try plan.parameterCount()
        writer?.note(openingLine(parameters: parameters, resumed: resumed))
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
        let failure = FaultInjection.rankDeath(rank: context.rank, inProcess: context.world is InProcessCommunicator)
        setup.module.train()
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
            afterStep?(state.step)
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
                _ = plan.commTimeline?.take()  // the evaluation's gathers are not a step's
                let spent = monotonicSeconds() - started
                evaluationSeconds += spent
                windowStart += spent  // logged throughput counts training steps only
            }
        }
        writer?.endProgress()
        let e = try lastEval ?? evaluate(full: true, showingOn: writer)
        let wall = monotonicSeconds() - t0
        if let tracePath { try trace.write(to: tracePath, world: context.world, label: context.label) }
        let report = try setup.steps.report()
        if let report { writer?.note(report.line) }
        var summary = RunSummary(name: config.name, steps: state.step, epochs: Double(state.step) / Double(stepsPerEpoch),
                                 trainLoss: lastLoss, validationLoss: e.loss, validationAccuracy: e.accuracy,
                                 throughput: Double((state.step - startStep) * itemsPerStep) / max(wall - evaluationSeconds, 1e-9), unit: unit,
                                 wallSeconds: state.elapsedSeconds, evaluationSeconds: evaluationSeconds, parameters: parameters)
        summary.pipeline = report
        summary.validationBitsPerCharacter = setup.bitsPerCharacterPerNat.map { e.loss * $0 }
        try writer?.writeSummary(summary)
        return summary
    }

    /// "loom train NAME: MODEL, N parameters, … -> runs/NAME/": what the run is, said once.
    private func openingLine(parameters: Int, resumed: Bool) -> String {
        let t = context.topology, c = config
        return "loom train \(c.name): \(c.model), \(parameters) parameters, "
            + "\(setup.train.count) train / \(setup.validation.count) validation examples, \(totalSteps) steps"
            + (resumed ? ", resuming at step \(state.step)" : "")
            + (t.dp > 1 ? ", data parallel over \(t.dp) ranks" : "")
            + (t.tp > 1 ? ", tensor parallel over \(t.tp) ranks" : "")
            + (t.pp > 1 ? ", pipeline of \(t.pp) stages (\(c.pipelineSchedule), \(c.microBatches) micro-batches)" : "")
            + (backend.device == .cpu ? "" : ", on \(backend.name)")
            + (collectivesNote.map { ", collectives: \($0)" } ?? "")
            + (c.precision == .float32 ? "" : ", \(c.precision.rawValue) matrix products")
            + " -> \(runDirectory)/"
    }

    /// One optimizer step on this rank's part of the global batch, the same for every
    /// layout: the schedule's forward and backward (gradients reduced when it returns),
    /// the norm measured and clipped, the update unless the step is skipped. Returns the
    /// step's mean loss.
    private func optimizerStep(_ batch: (inputs: Tensor, targets: Tensor)) throws -> Float {
        optimizer.zeroGrad()
        let loss = try setup.steps.forwardBackward(inputs: batch.inputs, targets: batch.targets, gradients: plan)
        try backend.deferredErrors()  // before the update: a bad index stops the run with its name
        let reduced = monotonicSeconds()
        try clipGradients()
        if !skippedLastStep { try optimizer.step() }
        trace.record(step: state.step, setup.steps.lastStepSpans + [TimedSpan(name: "optimizerStep", start: reduced, end: monotonicSeconds())]
                         + (plan.commTimeline?.take() ?? []))
        return loss
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
        case .stop:
            let first = setup.module.namedParameters().first { _, p in
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
        // Collective: every rank writes what it holds (its ZeRO chunks, tensor-parallel
        // slices, stage) into the one file; they wait for the slowest at a barrier of its
        // own timeout, so a slow disk does not look like a dead rank
        // (parallel.checkpoint_timeout_s).
        let (entries, dropout) = try plan.checkpointEntries()
        try TrainingCheckpoint.save(to: runDirectory, config: config, setup: setup, optimizer: optimizer, state: state, entries: entries,
                                    dropout: dropout, world: context.world, timeout: Double(config.checkpointTimeoutSeconds))
        try writer?.evaluation(e, step: state.step, epoch: epoch, elapsed: state.elapsedSeconds, unit: unit)
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
        let evaluator = Evaluator(steps: setup.steps, data: setup.validation, batchSize: config.batchSize, backend: backend,
                                  isClassifier: !config.isLanguageModel, dataGroup: dataGroup, precision: config.precision)
        return try evaluator.evaluate(maxBatches: full ? nil : config.evalBatches, progress: progress)
    }

    /// Detaches data-parallel hooks (the trainer's parameters become plain again).
    public func finish() { plan.detach() }
}
