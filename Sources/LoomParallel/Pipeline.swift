import LoomCore
import LoomDistributed
import LoomNN

/// Executes a `Schedule` on one stage: forward and backward of micro-batches on each of
/// the stage's model chunks, activations and gradients exchanged with the pieces before
/// and after, and the gradient reduction. The schedule is checked (`ScheduleCheck`)
/// before the first step.
///
/// The engine is a forward-backward function (Megatron's `forward_backward_func`): it
/// runs the program up to its `optimizerStep`, which is the caller's. What happens
/// there (clipping, skipping a non-finite step, the update) is the same for every
/// layout, so it is not the engine's.
public final class PipelineEngine {
    public let schedule: Schedule
    /// This stage's pieces of the model, in chunk order.
    public let chunks: [any PipelinePiece]
    /// Where received activations and gradients are made.
    public let backend: any Backend
    let comm: Communicator
    let embeddingGroup: Communicator?
    /// Activation recomputation: forward keeps only each piece's input, and backward runs
    /// the piece's forward again (with the same dropout masks) before differentiating it.
    public var recompute = false
    /// The most micro-batches (× chunks) whose activations this stage held at once, last step.
    public private(set) var peakInFlight = 0
    /// The most bytes the last step held beyond what it started with: activations kept
    /// for backward, received messages, gradients, temporaries.
    public private(set) var peakStepBytes = 0
    private let memory = MemoryMeter()
    /// What ran in the last step, with start and end times (seconds), for traces and
    /// bubble measurement.
    public private(set) var events: [PipelineEvent] = []

    /// Every stage of the pipeline group calls this together (it splits a sub-group for
    /// the tied embedding).
    public init(schedule: Schedule, chunks: [any PipelinePiece], comm: Communicator, backend: any Backend = DefaultBackend.current) throws {
        let s = comm.rank
        let placed = chunks.enumerated().allSatisfy { c, piece in
            piece.isFirst == (schedule.previous(stage: s, chunk: c) == nil) && piece.isLast == (schedule.next(stage: s, chunk: c) == nil)
        }
        guard comm.size == schedule.stages, chunks.count == schedule.chunks, placed else {
            throw CommError("pipeline of \(schedule.stages) stages × \(schedule.chunks) chunks on a group of \(comm.size): "
                + "stage \(s) holds \(chunks.count) piece(s), first/last \(chunks.map { ($0.isFirst, $0.isLast) }), which the schedule does not place there")
        }
        _ = try ScheduleCheck().run(schedule)
        self.schedule = schedule
        self.chunks = chunks
        self.backend = backend
        self.comm = comm
        // The stages holding tied parameters (a GPT's first and last) sum their gradients.
        tiedParameters = PipelineStageModel(chunks: chunks).tiedParameters
        let tied = schedule.stages > 1 && !tiedParameters.isEmpty
        let group = try comm.split(color: tied ? 0 : 1, key: comm.rank)
        embeddingGroup = tied ? group : nil
    }

    public convenience init(schedule: Schedule, model: any PipelinePiece, comm: Communicator, backend: any Backend = DefaultBackend.current) throws {
        try self.init(schedule: schedule, chunks: [model], comm: comm, backend: backend)
    }

    /// Parameters this stage shares with another (a tied embedding).
    public let tiedParameters: [Tensor]

    var stage: Int { comm.rank }

    /// One optimizer step alone: gradients zeroed, `forwardBackward` with nothing to
    /// reduce beyond the stages, the update. Returns the mean loss on the last piece's
    /// stage, nil elsewhere.
    @discardableResult
    public func step(inputs: [Tensor], targets: [Tensor], optimizer: Optimizer) throws -> Float? {
        optimizer.zeroGrad()
        let loss = try forwardBackward(inputs: inputs, targets: targets, gradients: LocalGradients())
        try optimizer.step()
        return loss
    }

    /// Forward and backward of one step's micro-batches (`inputs[i]`, `targets[i]`; only
    /// the stage holding the first piece reads inputs, only the one holding the last
    /// targets), adding into the gradients the caller zeroed. At the schedule's
    /// `reduceGradients` the tied parameters are summed across stages, then `gradients`
    /// reduces across the data-parallel replicas; it returns at `optimizerStep`.
    /// Returns the mean loss on the last piece's stage, nil elsewhere.
    public func forwardBackward(inputs: [Tensor], targets: [Tensor], gradients: any GradientReduction) throws -> Float? {
        let m = schedule.microBatches, first = chunks.first!.isFirst, last = chunks.last!.isLast
        guard inputs.count == m || !first, targets.count == m || !last else {
            throw LoomError.invalidArgument("pipeline step: \(m) micro-batches expected, got \(first ? inputs.count : targets.count)")
        }
        events.removeAll(keepingCapacity: true)
        return try MemoryMeter.measuring(memory) {
            let start = memory.liveBytes
            memory.resetPeak()
            defer { peakStepBytes = memory.peakBytes - start }
            return try run(inputs: inputs, targets: targets, gradients: gradients)
        }
    }

    private func run(inputs batch: [Tensor], targets: [Tensor], gradients reduction: any GradientReduction) throws -> Float? {
        let m = schedule.microBatches, v = chunks.count
        func grid<T>() -> [[T?]] { Array(repeating: Array(repeating: nil, count: m), count: v) }
        var inputs: [[Tensor?]] = grid(), outputs: [[Tensor?]] = grid(), gradients: [[Tensor?]] = grid()
        var sentShapes: [[[Int]?]] = grid()  // the shape of each activation sent (its gradient comes back in it)
        var masks: [[[Philox]?]] = grid()  // dropout generators before each forward, for recomputation
        var lossSum: Float = 0, alive = 0
        peakInFlight = 0
        // Gradients stay local through the micro-batches; the data-parallel reduction
        // runs once, at reduceGradients (after the tied parameters' sum).
        reduction.setOverlapsBackward(false)

        /// Forward of piece `c` on micro-batch `mb`: the output to send, or the loss
        /// (scaled by 1/M: the step's loss is the mean over micro-batches) on the last piece.
        func forward(_ c: Int, _ mb: Int) throws -> Tensor {
            let piece = chunks[c]
            let out = try piece(piece.isFirst ? batch[mb] : inputs[c][mb]!)
            guard piece.isLast else { return out }
            return try piece.loss(logits: out, targets: targets[mb])
        }

        for ins in schedule.program(stage: stage) {
            let t0 = monotonicSeconds()
            switch ins {
            case let .recvActivation(mb, c):
                let from = schedule.previous(stage: stage, chunk: c)!
                let x = try receiveActivation(from: from.stage, tag: schedule.tag(mb: mb, stage: from.stage, chunk: from.chunk, gradient: false),
                                              on: backend)
                x.requiresGrad = true
                inputs[c][mb] = x
            case let .forward(mb, c):
                var out: Tensor
                if recompute {
                    masks[c][mb] = dropoutStates(c)
                    out = try withoutGrad { try forward(c, mb) }
                } else {
                    out = try forward(c, mb)
                }
                if chunks[c].isLast { lossSum += out.item; out = recompute ? out : try out.scaled(1 / Float(m)) }
                outputs[c][mb] = out
                alive += 1; peakInFlight = max(peakInFlight, alive)
            case let .sendActivation(mb, c):
                try sendActivation(outputs[c][mb]!, to: schedule.next(stage: stage, chunk: c)!.stage,
                                   tag: schedule.tag(mb: mb, stage: stage, chunk: c, gradient: false))
                sentShapes[c][mb] = outputs[c][mb]!.shape
                if recompute { outputs[c][mb] = nil }  // nothing to keep: backward recomputes it
            case let .recvGradient(mb, c):
                let from = schedule.next(stage: stage, chunk: c)!
                let g = try Tensor(uninitialized: sentShapes[c][mb]!, on: backend)
                sentShapes[c][mb] = nil
                try comm.receive(into: g, from: from.stage, tag: schedule.tag(mb: mb, stage: stage, chunk: c, gradient: true))
                gradients[c][mb] = g
            case let .backward(mb, c):
                var out = outputs[c][mb]
                if recompute {
                    let current = dropoutStates(c)
                    setDropoutStates(c, masks[c][mb]!)
                    out = try forward(c, mb)
                    if chunks[c].isLast { out = try out!.scaled(1 / Float(m)) }
                    setDropoutStates(c, current)
                    masks[c][mb] = nil
                }
                if chunks[c].isLast { try out!.backward() } else { try out!.backward(seed: gradients[c][mb]!) }
                outputs[c][mb] = nil; gradients[c][mb] = nil  // free the micro-batch's activations
                alive -= 1
            case let .sendGradient(mb, c):
                let to = schedule.previous(stage: stage, chunk: c)!
                try comm.send(inputs[c][mb]!.grad!, to: to.stage, tag: schedule.tag(mb: mb, stage: to.stage, chunk: to.chunk, gradient: true))
                inputs[c][mb] = nil
            case .reduceGradients:
                // Tied parameters (a GPT's token table: the first piece's lookup gradient
                // plus the last piece's head gradient), summed across the stages holding them.
                if let group = embeddingGroup {
                    for w in tiedParameters {
                        let g = try w.grad ?? Tensor.zeros(w.shape, on: w.backend)
                        try group.allReduce(g, .sum, label: "tied-parameter all-reduce")
                        w.grad = g
                    }
                }
                try reduction.reduceGradients()
            case .optimizerStep:
                break  // the caller's (see the type's comment); it is the program's last instruction
            }
            events.append(PipelineEvent(instruction: ins, start: t0, end: monotonicSeconds()))
        }
        return chunks.last!.isLast ? lossSum / Float(m) : nil
    }

    /// Activations travel with their shape (a header of 8 int32: rank, then the sizes), so
    /// pieces may change shape (an image model's) and batches may be partial (evaluation).
    private func sendActivation(_ x: Tensor, to peer: Int, tag: Int) throws {
        guard x.rank < 8 else { throw LoomError.shapeMismatch("pipeline: activation \(describe(x.shape)) has more than 7 axes") }
        let header = [Int32(x.rank)] + x.shape.map(Int32.init) + Array(repeating: 0, count: 7 - x.rank)
        try comm.send(Tensor(indices: header, shape: [8], on: x.backend), to: peer, tag: tag)
        try comm.send(x, to: peer, tag: tag)
    }

    private func receiveActivation(from peer: Int, tag: Int, on backend: any Backend) throws -> Tensor {
        let header = try Tensor(uninitialized: [8], dtype: .int32)
        try comm.receive(into: header, from: peer, tag: tag)
        let h = header.ints
        let x = try Tensor(uninitialized: h[0] == 0 ? [] : h[1...Int(h[0])].map(Int.init), on: backend)
        try comm.receive(into: x, from: peer, tag: tag)
        return x
    }

    private func dropoutStates(_ c: Int) -> [Philox] {
        chunks[c].descendants().compactMap { ($0.module as? Dropout)?.rng }
    }

    private func setDropoutStates(_ c: Int, _ states: [Philox]) {
        for (d, rng) in zip(chunks[c].descendants().compactMap { $0.module as? Dropout }, states) { d.rng = rng }
    }

    /// Forward only, for evaluation: the whole batch as one micro-batch through every
    /// piece in order. Returns the summed loss, the count it is over (tokens, examples)
    /// and the last piece's output on the last piece's stage, nil elsewhere. Every stage
    /// of the group calls it together.
    public func evaluate(inputs: Tensor, targets: Tensor) throws -> (lossSum: Double, count: Int, output: Tensor)? {
        try withoutGrad {
            var result: (Double, Int, Tensor)?
            for (c, piece) in chunks.enumerated() {
                var x = inputs
                if let from = schedule.previous(stage: stage, chunk: c) {
                    x = try receiveActivation(from: from.stage, tag: schedule.tag(mb: 0, stage: from.stage, chunk: from.chunk, gradient: false),
                                              on: backend)
                }
                let out = try piece(x)
                if let to = schedule.next(stage: stage, chunk: c) {
                    try sendActivation(out, to: to.stage, tag: schedule.tag(mb: 0, stage: stage, chunk: c, gradient: false))
                } else {
                    result = (Double(try piece.loss(logits: out, targets: targets).item) * Double(targets.count), targets.count, out)
                }
            }
            return result
        }
    }
}

/// One instruction a stage ran, with its start and end (monotonic seconds).
public struct PipelineEvent: Sendable {
    public var instruction: Instruction
    public var start: Double
    public var end: Double
    public var seconds: Double { end - start }
}
