import LoomCore

/// One thing a pipeline rank does. Micro-batch `mb` of model chunk `chunk` (the rank's
/// virtual stage: always 0 except in interleaved schedules). Activations go to the next
/// piece of the model, gradients to the previous one (`Schedule.next`/`previous`).
public enum Instruction: Hashable, Sendable, CustomStringConvertible {
    case recvActivation(mb: Int, chunk: Int)
    case forward(mb: Int, chunk: Int)
    case sendActivation(mb: Int, chunk: Int)
    case recvGradient(mb: Int, chunk: Int)
    case backward(mb: Int, chunk: Int)
    case sendGradient(mb: Int, chunk: Int)
    /// Sum gradients that must agree across ranks (the tied embedding between first and
    /// last stage; data parallel replicas).
    case reduceGradients
    case optimizerStep

    /// What an instruction does, without its micro-batch and chunk.
    public enum Kind: String, CaseIterable, Sendable {
        case recvActivation, forward, sendActivation, recvGradient, backward, sendGradient, reduceGradients, optimizerStep
    }

    public var kind: Kind {
        switch self {
        case .recvActivation: return .recvActivation
        case .forward: return .forward
        case .sendActivation: return .sendActivation
        case .recvGradient: return .recvGradient
        case .backward: return .backward
        case .sendGradient: return .sendGradient
        case .reduceGradients: return .reduceGradients
        case .optimizerStep: return .optimizerStep
        }
    }

    /// Work on a micro-batch (forward or backward): what a stage's bubble leaves idle.
    public var isCompute: Bool { kind == .forward || kind == .backward }

    public var microBatch: Int? {
        switch self {
        case let .recvActivation(m, _), let .forward(m, _), let .sendActivation(m, _),
             let .recvGradient(m, _), let .backward(m, _), let .sendGradient(m, _): return m
        case .reduceGradients, .optimizerStep: return nil
        }
    }

    public var chunk: Int? {
        switch self {
        case let .recvActivation(_, c), let .forward(_, c), let .sendActivation(_, c),
             let .recvGradient(_, c), let .backward(_, c), let .sendGradient(_, c): return c
        case .reduceGradients, .optimizerStep: return nil
        }
    }

    /// `forward(3)`, `backward(0, chunk 1)`, `optimizerStep`: the name traces show.
    public var description: String {
        guard let mb = microBatch, let chunk else { return kind.rawValue }
        return chunk == 0 ? "\(kind.rawValue)(\(mb))" : "\(kind.rawValue)(\(mb), chunk \(chunk))"
    }
}

/// A pipeline schedule as a value: for each stage (rank of the pipeline group), its
/// steps, each a list of instructions. An engine executes it; `ScheduleCheck` verifies
/// and times it without running anything.
///
/// The model is cut into `stages × chunks` pieces. Piece j runs on stage j mod K as its
/// chunk j / K: with one chunk, stage s holds piece s; interleaved schedules give each
/// stage `chunks` pieces spread along the model (Narayanan et al., 2021), which shrinks
/// the bubble by that factor at the price of more messages.
public struct Schedule: Equatable, Sendable {
    public enum Kind: String, CaseIterable, Sendable {
        case gpipe
        case oneFOneB = "1f1b"
        case interleaved
    }

    public let kind: Kind
    public let stages: Int
    public let microBatches: Int
    /// Model chunks (virtual stages) per stage: 1, or more for interleaved schedules.
    public let chunks: Int
    /// steps[stage][step] = instructions.
    public let steps: [[[Instruction]]]

    /// `chunks`: virtual stages per stage, interleaved schedules only (default 2).
    public init(_ kind: Kind, stages: Int, microBatches: Int, chunks: Int? = nil) throws {
        let v = chunks ?? (kind == .interleaved ? 2 : 1)
        guard stages >= 1, microBatches >= 1 else {
            throw LoomError.config("pipeline: stages (\(stages)) and micro-batches (\(microBatches)) must be at least 1")
        }
        guard kind == .interleaved || v == 1 else { throw LoomError.config("pipeline: only the interleaved schedule has chunks (got \(v))") }
        if kind == .interleaved {
            guard stages >= 2 else { throw LoomError.config("pipeline: interleaved needs at least 2 stages") }
            guard v >= 2 else { throw LoomError.config("pipeline: interleaved needs at least 2 chunks per stage (got \(v))") }
            guard microBatches % stages == 0 else {
                throw LoomError.config("pipeline: interleaved needs micro-batches (\(microBatches)) to be a multiple of stages (\(stages))")
            }
        }
        self.kind = kind
        self.stages = stages
        self.microBatches = microBatches
        self.chunks = v
        let shape = (stages, microBatches, v)
        steps = (0..<stages).map { s in
            switch kind {
            case .gpipe: return Schedule.gpipe(stage: s, shape)
            case .oneFOneB: return Schedule.oneFOneB(stage: s, shape)
            case .interleaved: return Schedule.interleaved(stage: s, shape)
            }
        }
    }

    /// A schedule built from another by rewriting each stage's steps (tests build broken
    /// schedules this way, to check that they are rejected).
    public init(custom kind: Kind, stages: Int, microBatches: Int, rewrite: (Int, [[Instruction]]) -> [[Instruction]]) throws {
        let base = try Schedule(kind, stages: stages, microBatches: microBatches)
        self.kind = kind
        self.stages = stages
        self.microBatches = microBatches
        chunks = base.chunks
        steps = (0..<stages).map { rewrite($0, base.steps[$0]) }
    }

    /// The instructions of one stage, in order.
    public func program(stage: Int) -> [Instruction] { steps[stage].flatMap { $0 } }

    /// Pieces of the model: stages × chunks.
    public var pieces: Int { stages * chunks }
    /// Which piece of the model chunk `c` of stage `s` is.
    public func piece(stage s: Int, chunk c: Int) -> Int { c * stages + s }
    /// Where piece `s, c` sends activations (nil: it is the last piece).
    public func next(stage s: Int, chunk c: Int) -> (stage: Int, chunk: Int)? {
        let j = piece(stage: s, chunk: c) + 1
        return j < pieces ? (j % stages, j / stages) : nil
    }
    /// Where piece `s, c` receives activations from (nil: it is the first piece).
    public func previous(stage s: Int, chunk c: Int) -> (stage: Int, chunk: Int)? {
        let j = piece(stage: s, chunk: c) - 1
        return j >= 0 ? (j % stages, j / stages) : nil
    }

    /// The message tag of micro-batch `mb`'s activation (or gradient) entering piece `s, c`'s
    /// successor: distinct for every message of a step.
    public func tag(mb: Int, stage s: Int, chunk c: Int, gradient: Bool) -> Int {
        (piece(stage: s, chunk: c) * microBatches + mb) * 2 + (gradient ? 1 : 0)
    }

    typealias Shape = (stages: Int, microBatches: Int, chunks: Int)

    static func forwardStep(_ mb: Int, _ s: Int, _ c: Int, _ shape: Shape) -> [Instruction] {
        let j = c * shape.stages + s, last = shape.stages * shape.chunks - 1
        return (j > 0 ? [.recvActivation(mb: mb, chunk: c)] : []) + [.forward(mb: mb, chunk: c)]
            + (j < last ? [.sendActivation(mb: mb, chunk: c)] : [])
    }

    static func backwardStep(_ mb: Int, _ s: Int, _ c: Int, _ shape: Shape) -> [Instruction] {
        let j = c * shape.stages + s, last = shape.stages * shape.chunks - 1
        return (j < last ? [.recvGradient(mb: mb, chunk: c)] : []) + [.backward(mb: mb, chunk: c)]
            + (j > 0 ? [.sendGradient(mb: mb, chunk: c)] : [])
    }

    /// Every program ends so: the gradients made whole, then the update, which the
    /// engine leaves to its caller (the same clipping and update for every layout).
    static let epilogue: [Instruction] = [.reduceGradients, .optimizerStep]

    /// GPipe: every micro-batch forward, then every backward; M activations alive.
    static func gpipe(stage s: Int, _ shape: Shape) -> [[Instruction]] {
        let m = shape.microBatches
        return (0..<m).map { forwardStep($0, s, 0, shape) } + (0..<m).map { backwardStep($0, s, 0, shape) } + [epilogue]
    }

    /// 1F1B (PipeDream-Flush): K - s - 1 warm-up forwards, then one forward and one
    /// backward alternately, then the remaining backwards. At most K - s micro-batches'
    /// activations are alive on stage s.
    static func oneFOneB(stage s: Int, _ shape: Shape) -> [[Instruction]] {
        let (k, m) = (shape.stages, shape.microBatches)
        let warmup = min(k - s - 1, m)
        var steps = (0..<warmup).map { forwardStep($0, s, 0, shape) }
        for i in 0..<(m - warmup) {
            steps.append(forwardStep(warmup + i, s, 0, shape))
            steps.append(backwardStep(i, s, 0, shape))
        }
        for i in (m - warmup)..<m { steps.append(backwardStep(i, s, 0, shape)) }
        return steps + [epilogue]
    }

    /// Interleaved 1F1B (Megatron-LM): forward units go through the chunks in groups of K
    /// micro-batches (chunk 0 for micro-batches 0..K-1, chunk 1 for the same, ..., then the
    /// next K micro-batches); backward units do the same with the chunks reversed. Stage s
    /// runs 2(K - s - 1) + (v - 1)K forward units before its first backward, then
    /// alternates, then drains.
    static func interleaved(stage s: Int, _ shape: Shape) -> [[Instruction]] {
        let (k, m, v) = (shape.stages, shape.microBatches, shape.chunks)
        let units = m * v
        func forwardUnit(_ u: Int) -> (mb: Int, chunk: Int) { ((u / (k * v)) * k + u % k, (u / k) % v) }
        func backwardUnit(_ u: Int) -> (mb: Int, chunk: Int) { ((u / (k * v)) * k + u % k, v - 1 - (u / k) % v) }
        let warmup = min(2 * (k - s - 1) + (v - 1) * k, units)
        var steps: [[Instruction]] = []
        for u in 0..<warmup { let f = forwardUnit(u); steps.append(forwardStep(f.mb, s, f.chunk, shape)) }
        for i in 0..<(units - warmup) {
            let f = forwardUnit(warmup + i), b = backwardUnit(i)
            steps.append(forwardStep(f.mb, s, f.chunk, shape))
            steps.append(backwardStep(b.mb, s, b.chunk, shape))
        }
        for u in (units - warmup)..<units { let b = backwardUnit(u); steps.append(backwardStep(b.mb, s, b.chunk, shape)) }
        return steps + [epilogue]
    }

    /// The bubble fraction with balanced stages: (K - 1) / (vM + K - 1), where v is the
    /// number of chunks per stage (1 for GPipe and 1F1B).
    public var theoreticalBubble: Double { Double(stages - 1) / Double(chunks * microBatches + stages - 1) }
}
