/// One thing a pipeline stage does. Micro-batch `mb`; sends and receives go to the next
/// stage (activations) or the previous one (gradients).
public enum Instruction: Hashable, Sendable, CustomStringConvertible {
    case recvActivation(mb: Int)
    case forward(mb: Int)
    case sendActivation(mb: Int)
    case recvGradient(mb: Int)
    case backward(mb: Int)
    case sendGradient(mb: Int)
    /// Sum gradients that must agree across ranks (the tied embedding between first and
    /// last stage; data parallel replicas).
    case reduceGradients
    case optimizerStep

    public var description: String {
        switch self {
        case .recvActivation(let m): return "recvActivation(\(m))"
        case .forward(let m): return "forward(\(m))"
        case .sendActivation(let m): return "sendActivation(\(m))"
        case .recvGradient(let m): return "recvGradient(\(m))"
        case .backward(let m): return "backward(\(m))"
        case .sendGradient(let m): return "sendGradient(\(m))"
        case .reduceGradients: return "reduceGradients"
        case .optimizerStep: return "optimizerStep"
        }
    }
}

/// A pipeline schedule as a value: for each stage, its steps, each a list of
/// instructions. An engine executes it; `ScheduleCheck` verifies and times it without
/// running anything.
public struct Schedule: Equatable, Sendable {
    public enum Kind: String, CaseIterable, Sendable {
        case gpipe
        case oneFOneB = "1f1b"
    }

    public let kind: Kind
    public let stages: Int
    public let microBatches: Int
    /// steps[stage][step] = instructions.
    public let steps: [[[Instruction]]]

    public init(_ kind: Kind, stages: Int, microBatches: Int) {
        precondition(stages >= 1 && microBatches >= 1)
        self.kind = kind
        self.stages = stages
        self.microBatches = microBatches
        steps = (0..<stages).map { s in
            switch kind {
            case .gpipe: return Schedule.gpipe(stage: s, stages: stages, microBatches: microBatches)
            case .oneFOneB: return Schedule.oneFOneB(stage: s, stages: stages, microBatches: microBatches)
            }
        }
    }

    /// A schedule built from another by rewriting each stage's steps (tests build broken
    /// schedules this way, to check that they are rejected).
    public init(custom kind: Kind, stages: Int, microBatches: Int, rewrite: (Int, [[Instruction]]) -> [[Instruction]]) {
        let base = Schedule(kind, stages: stages, microBatches: microBatches)
        self.kind = kind
        self.stages = stages
        self.microBatches = microBatches
        steps = (0..<stages).map { rewrite($0, base.steps[$0]) }
    }

    /// The instructions of one stage, in order.
    public func program(stage: Int) -> [Instruction] { steps[stage].flatMap { $0 } }

    static func forwardStep(_ mb: Int, _ s: Int, _ k: Int) -> [Instruction] {
        (s > 0 ? [.recvActivation(mb: mb)] : []) + [.forward(mb: mb)] + (s < k - 1 ? [.sendActivation(mb: mb)] : [])
    }

    static func backwardStep(_ mb: Int, _ s: Int, _ k: Int) -> [Instruction] {
        (s < k - 1 ? [.recvGradient(mb: mb)] : []) + [.backward(mb: mb)] + (s > 0 ? [.sendGradient(mb: mb)] : [])
    }

    /// GPipe: every micro-batch forward, then every backward; M activations alive.
    static func gpipe(stage s: Int, stages k: Int, microBatches m: Int) -> [[Instruction]] {
        (0..<m).map { forwardStep($0, s, k) } + (0..<m).map { backwardStep($0, s, k) } + [[.reduceGradients, .optimizerStep]]
    }

    /// 1F1B (PipeDream-Flush): K - s - 1 warm-up forwards, then one forward and one
    /// backward alternately, then the remaining backwards. At most K - s micro-batches'
    /// activations are alive on stage s.
    static func oneFOneB(stage s: Int, stages k: Int, microBatches m: Int) -> [[Instruction]] {
        let warmup = min(k - s - 1, m)
        var steps = (0..<warmup).map { forwardStep($0, s, k) }
        for i in 0..<(m - warmup) {
            steps.append(forwardStep(warmup + i, s, k))
            steps.append(backwardStep(i, s, k))
        }
        for i in (m - warmup)..<m { steps.append(backwardStep(i, s, k)) }
        return steps + [[.reduceGradients, .optimizerStep]]
    }

    /// The bubble fraction of GPipe and 1F1B with balanced stages: (K - 1) / (M + K - 1).
    public var theoreticalBubble: Double { Double(stages - 1) / Double(microBatches + stages - 1) }
}
