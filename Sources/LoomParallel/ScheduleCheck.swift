/// Runs a schedule on paper: every receive must meet the matching send (same micro-batch,
/// same kind, in order), and the whole must finish — a schedule that would hang is
/// reported, with where each stage is stuck, before anything runs. Times it with a cost
/// model to predict each stage's bubble and counts the activations each keeps alive.
public struct ScheduleCheck: Sendable {
    public struct Report: Sendable {
        /// Idle share of each stage's span from its first instruction to the last stage's end.
        public var bubble: [Double]
        /// The most micro-batches whose activations a stage holds at once (micro-batch ×
        /// chunk units, for interleaved schedules).
        public var peakInFlight: [Int]
        public var makespan: Double
        public var instructionCounts: [[Instruction.Kind: Int]]
    }

    public struct Failure: Error, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    /// Costs of one micro-batch on one stage, in any unit.
    public var forwardCost = 1.0
    public var backwardCost = 2.0
    /// Relative cost of each piece of the model (piece j = chunk × stages + stage), when
    /// the pieces are not balanced; nil: all equal.
    public var pieceCosts: [Double]?

    public init(forwardCost: Double = 1, backwardCost: Double = 2, pieceCosts: [Double]? = nil) {
        self.forwardCost = forwardCost
        self.backwardCost = backwardCost
        self.pieceCosts = pieceCosts
    }

    private struct Message: Equatable { let mb: Int; let chunk: Int; let ready: Double }
    private struct Channel: Hashable { let from: Int; let to: Int; let gradient: Bool }

    public func run(_ schedule: Schedule) throws -> Report {
        let k = schedule.stages
        let programs = (0..<k).map { schedule.program(stage: $0) }
        var pc = [Int](repeating: 0, count: k)
        var clock = [Double](repeating: 0, count: k)
        var busy = [Double](repeating: 0, count: k)
        // Messages in flight, in the order they were sent, per (sender, receiver, kind).
        var channels: [Channel: [Message]] = [:]
        var alive = [Int](repeating: 0, count: k), peak = [Int](repeating: 0, count: k)
        var counts = [[Instruction.Kind: Int]](repeating: [:], count: k)
        // A chunk is 1/chunks of a stage's layers.
        let (fwd, bwd) = (forwardCost / Double(schedule.chunks), backwardCost / Double(schedule.chunks))
        // A piece's share of the work relative to a balanced piece.
        let mean = (pieceCosts?.reduce(0, +) ?? 0) / Double(max(pieceCosts?.count ?? 1, 1))
        func weight(_ s: Int, _ c: Int) -> Double {
            guard let p = pieceCosts, p.count == schedule.pieces, mean > 0 else { return 1 }
            return p[schedule.piece(stage: s, chunk: c)] / mean
        }
        func piece(_ s: Int, _ c: Int) -> String { schedule.chunks == 1 ? "stage \(s)" : "stage \(s) chunk \(c)" }
        var progressed = true
        while progressed {
            progressed = false
            for s in 0..<k where pc[s] < programs[s].count {
                let ins = programs[s][pc[s]]
                switch ins {
                case let .recvActivation(mb, c), let .recvGradient(mb, c):
                    let gradient = ins.kind == .recvGradient
                    guard let peer = gradient ? schedule.next(stage: s, chunk: c) : schedule.previous(stage: s, chunk: c) else {
                        throw Failure(message: "\(piece(s, c)) receives \(gradient ? "a gradient" : "an activation") from no one")
                    }
                    let channel = Channel(from: peer.stage, to: s, gradient: gradient)
                    guard let msg = channels[channel]?.first else { continue }
                    guard msg.mb == mb && msg.chunk == peer.chunk else {
                        let what = gradient ? "the gradient" : "activation"
                        throw Failure(message: "\(piece(s, c)) expects \(what) of micro-batch \(mb) but \(piece(peer.stage, msg.chunk)) sent micro-batch \(msg.mb) first")
                    }
                    channels[channel]!.removeFirst()
                    clock[s] = max(clock[s], msg.ready)
                case let .sendActivation(mb, c), let .sendGradient(mb, c):
                    let gradient = ins.kind == .sendGradient
                    guard let peer = gradient ? schedule.previous(stage: s, chunk: c) : schedule.next(stage: s, chunk: c) else {
                        throw Failure(message: "\(piece(s, c)) sends \(gradient ? "a gradient" : "an activation") to no one")
                    }
                    channels[Channel(from: s, to: peer.stage, gradient: gradient), default: []].append(Message(mb: mb, chunk: c, ready: clock[s]))
                case let .forward(_, c):
                    clock[s] += fwd * weight(s, c); busy[s] += fwd * weight(s, c)
                    alive[s] += 1; peak[s] = max(peak[s], alive[s])
                case let .backward(_, c):
                    clock[s] += bwd * weight(s, c); busy[s] += bwd * weight(s, c)
                    alive[s] -= 1
                case .reduceGradients, .optimizerStep:
                    break
                }
                counts[s][ins.kind, default: 0] += 1
                pc[s] += 1
                progressed = true
            }
        }
        if let stuck = (0..<k).first(where: { pc[$0] < programs[$0].count }) {
            let at = (0..<k).filter { pc[$0] < programs[$0].count }.map { "stage \($0) at \(programs[$0][pc[$0]])" }
            throw Failure(message: "schedule \(schedule.kind.rawValue) deadlocks: stage \(stuck) waits forever (\(at.joined(separator: "; ")))")
        }
        if let (channel, _) = channels.first(where: { !$0.value.isEmpty }) {
            throw Failure(message: "stage \(channel.from) sends \(channel.gradient ? "gradients" : "activations") to stage \(channel.to) that nobody receives")
        }
        let makespan = clock.max() ?? 0
        return Report(bubble: busy.map { 1 - $0 / makespan }, peakInFlight: peak, makespan: makespan, instructionCounts: counts)
    }
}
