import LoomCore
import LoomDistributed
import LoomNN

/// One stage of a GPT cut into `stages` pieces of consecutive blocks: the first stage
/// also embeds tokens, the last also applies the final layer norm and the head. The head
/// is tied to the token embedding, so first and last stage each hold a copy of `wte`,
/// kept equal by summing their gradients (`PipelineEngine`'s reduceGradients).
public final class PipelineGPTStage: Module {
    public let stage: Int
    public let stages: Int
    public let wte: Embedding?   // first and last stage
    public let wpe: Embedding?   // first stage
    public let blocks: [TransformerBlock]
    public let lnf: LayerNorm?   // last stage
    /// Index in the full model of this stage's first block.
    public let firstBlock: Int

    /// `split`: blocks per stage (default: as even as possible).
    public init(sharding full: GPT, stage: Int, stages: Int, split: [Int]? = nil) throws {
        let layers = full.blocks.count
        let counts = split ?? (0..<stages).map { layers / stages + ($0 < layers % stages ? 1 : 0) }
        guard counts.count == stages, counts.reduce(0, +) == layers, counts.allSatisfy({ $0 >= 0 }) else {
            throw LoomError.config("pipeline split \(counts) does not cut \(layers) blocks into \(stages) stages")
        }
        self.stage = stage
        self.stages = stages
        firstBlock = counts[..<stage].reduce(0, +)
        blocks = Array(full.blocks[firstBlock..<(firstBlock + counts[stage])])
        wte = stage == 0 || stage == stages - 1 ? full.wte : nil
        wpe = stage == 0 ? full.wpe : nil
        lnf = stage == stages - 1 ? full.lnf : nil
    }

    public var isFirst: Bool { stage == 0 }
    public var isLast: Bool { stage == stages - 1 }

    /// First stage: int32 tokens [B, T] -> [B, T, C]; middle: [B, T, C] -> [B, T, C];
    /// last: [B, T, C] -> logits [B, T, V] (a one-stage pipeline: tokens -> logits).
    public func callAsFunction(_ input: Tensor) throws -> Tensor {
        var x = input
        if let wte, let wpe, isFirst {
            let t = input.shape[1]
            let positions = Tensor(indices: (0..<Int32(t)).map { $0 }, shape: [t], on: wte.weight.backend)
            x = try wte(input).add(wpe(positions))
        }
        for b in blocks { x = try b(x) }
        if let lnf, let wte, isLast { x = try lnf(x).matmul(wte.weight, transposeB: true) }
        return x
    }
}

/// Executes a `Schedule` on one stage: forward and backward of micro-batches, activations
/// and gradients exchanged with the neighbouring stages, gradient reduction and the
/// optimizer step. The schedule is checked (`ScheduleCheck`) before the first step.
public final class PipelineEngine {
    public let schedule: Schedule
    public let model: PipelineGPTStage
    public let optimizer: Optimizer
    let comm: Communicator
    let embeddingGroup: Communicator?
    /// The most micro-batches whose activations this stage held at once, last step.
    public private(set) var peakInFlight = 0
    /// What ran, with start and end times (seconds), for traces and bubble measurement.
    public private(set) var events: [(name: String, start: Double, end: Double)] = []

    /// Every stage of the pipeline group calls this together (it splits a sub-group for
    /// the tied embedding).
    public init(schedule: Schedule, model: PipelineGPTStage, optimizer: Optimizer, comm: Communicator) throws {
        guard comm.size == schedule.stages, comm.rank == model.stage else {
            throw CommError("pipeline of \(schedule.stages) stages on a group of \(comm.size) (stage \(model.stage), rank \(comm.rank))")
        }
        _ = try ScheduleCheck().run(schedule)
        self.schedule = schedule
        self.model = model
        self.optimizer = optimizer
        self.comm = comm
        let tied = schedule.stages > 1 && (model.isFirst || model.isLast)
        let group = try comm.split(color: tied ? 0 : 1, key: comm.rank)
        embeddingGroup = tied ? group : nil
    }

    /// One training step over micro-batches (`tokens[i]`, `targets[i]`; only the first
    /// stage reads tokens, only the last targets). `hidden` is the activation shape
    /// between stages. Returns the mean loss on the last stage, nil elsewhere.
    @discardableResult
    public func step(tokens: [Tensor], targets: [Tensor], hidden: [Int]) throws -> Float? {
        let m = schedule.microBatches
        guard tokens.count == m || !model.isFirst, targets.count == m || !model.isLast else {
            throw LoomError.invalidArgument("pipeline step: \(m) micro-batches expected")
        }
        let backend = optimizer.parameters.first!.tensor.backend
        var inputs = [Tensor?](repeating: nil, count: m), outputs = [Tensor?](repeating: nil, count: m)
        var gradients = [Tensor?](repeating: nil, count: m)
        var lossSum: Float = 0, alive = 0
        peakInFlight = 0
        events.removeAll(keepingCapacity: true)
        optimizer.zeroGrad()
        for ins in schedule.program(stage: model.stage) {
            let t0 = monotonicSeconds()
            switch ins {
            case .recvActivation(let mb):
                let x = Tensor(uninitialized: hidden, on: backend)
                try comm.receive(into: x, from: model.stage - 1, tag: 2 * mb)
                x.requiresGrad = true
                inputs[mb] = x
            case .forward(let mb):
                let input = model.isFirst ? tokens[mb] : inputs[mb]!
                var out = try model(input)
                if model.isLast {
                    let loss = try out.crossEntropy(targets: targets[mb])
                    lossSum += loss.item
                    out = loss.scaled(1 / Float(m))  // the step's loss is the mean over micro-batches
                }
                outputs[mb] = out
                alive += 1; peakInFlight = max(peakInFlight, alive)
            case .sendActivation(let mb):
                try comm.send(outputs[mb]!, to: model.stage + 1, tag: 2 * mb)
            case .recvGradient(let mb):
                let g = Tensor(uninitialized: hidden, on: backend)
                try comm.receive(into: g, from: model.stage + 1, tag: 2 * mb + 1)
                gradients[mb] = g
            case .backward(let mb):
                if model.isLast { try outputs[mb]!.backward() } else { try outputs[mb]!.backward(seed: gradients[mb]!) }
                outputs[mb] = nil; gradients[mb] = nil  // free the micro-batch's activations
                alive -= 1
            case .sendGradient(let mb):
                try comm.send(inputs[mb]!.grad!, to: model.stage - 1, tag: 2 * mb + 1)
                inputs[mb] = nil
            case .reduceGradients:
                // The tied embedding: first stage's lookup gradient + last stage's head gradient.
                if let group = embeddingGroup, let w = model.wte?.weight {
                    let g = w.grad ?? Tensor.zeros(w.shape, on: w.backend)
                    try group.allReduce(g, .sum, label: "tied-embedding all-reduce")
                    w.grad = g
                }
            case .optimizerStep:
                try optimizer.step()
            }
            events.append(("\(ins)", t0, monotonicSeconds()))
        }
        return model.isLast ? lossSum / Float(m) : nil
    }
}
