/// Runs a schedule on paper: every receive must meet the matching send (same micro-batch,
/// same kind, in order), and the whole must finish — a schedule that would hang is
/// reported, with where each stage is stuck, before anything runs. Times it with a cost
/// model to predict each stage's bubble and counts the activations each keeps alive.
public struct ScheduleCheck: Sendable {
    public struct Report: Sendable {
        /// Idle share of each stage's span from its first instruction to the last stage's end.
        public var bubble: [Double]
        /// The most micro-batches whose activations a stage holds at once.
        public var peakInFlight: [Int]
        public var makespan: Double
        public var instructionCounts: [[String: Int]]
    }

    public struct Failure: Error, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    /// Costs of one micro-batch on one stage, in any unit.
    public var forwardCost = 1.0
    public var backwardCost = 2.0

    public init(forwardCost: Double = 1, backwardCost: Double = 2) {
        self.forwardCost = forwardCost
        self.backwardCost = backwardCost
    }

    private struct Message: Equatable { let activation: Bool; let mb: Int; let ready: Double }

    public func run(_ schedule: Schedule) throws -> Report {
        let k = schedule.stages
        let programs = (0..<k).map { schedule.program(stage: $0) }
        var pc = [Int](repeating: 0, count: k)
        var clock = [Double](repeating: 0, count: k)
        var busy = [Double](repeating: 0, count: k)
        // channels[s]: activations from s to s+1; gradChannels[s]: gradients from s+1 to s.
        var activations = [[Message]](repeating: [], count: k), gradients = [[Message]](repeating: [], count: k)
        var alive = [Int](repeating: 0, count: k), peak = [Int](repeating: 0, count: k)
        var counts = [[String: Int]](repeating: [:], count: k)
        var progressed = true
        while progressed {
            progressed = false
            for s in 0..<k where pc[s] < programs[s].count {
                let ins = programs[s][pc[s]]
                switch ins {
                case .recvActivation(let mb):
                    guard s > 0, let msg = activations[s - 1].first else { continue }
                    guard msg.activation && msg.mb == mb else {
                        throw Failure(message: "stage \(s) expects activation of micro-batch \(mb) but stage \(s - 1) sent micro-batch \(msg.mb) first")
                    }
                    activations[s - 1].removeFirst()
                    clock[s] = max(clock[s], msg.ready)
                case .recvGradient(let mb):
                    guard s < k - 1, let msg = gradients[s].first else { continue }
                    guard msg.mb == mb else {
                        throw Failure(message: "stage \(s) expects the gradient of micro-batch \(mb) but stage \(s + 1) sent micro-batch \(msg.mb) first")
                    }
                    gradients[s].removeFirst()
                    clock[s] = max(clock[s], msg.ready)
                case .sendActivation(let mb):
                    guard s < k - 1 else { throw Failure(message: "stage \(s) is last but sends an activation") }
                    activations[s].append(Message(activation: true, mb: mb, ready: clock[s]))
                case .sendGradient(let mb):
                    guard s > 0 else { throw Failure(message: "stage 0 sends a gradient to no one") }
                    gradients[s - 1].append(Message(activation: false, mb: mb, ready: clock[s]))
                case .forward:
                    clock[s] += forwardCost; busy[s] += forwardCost
                    alive[s] += 1; peak[s] = max(peak[s], alive[s])
                case .backward:
                    clock[s] += backwardCost; busy[s] += backwardCost
                    alive[s] -= 1
                case .reduceGradients, .optimizerStep:
                    break
                }
                let name = "\(ins)".prefix { $0 != "(" }
                counts[s][String(name), default: 0] += 1
                pc[s] += 1
                progressed = true
            }
        }
        if let stuck = (0..<k).first(where: { pc[$0] < programs[$0].count }) {
            let at = (0..<k).filter { pc[$0] < programs[$0].count }.map { "stage \($0) at \(programs[$0][pc[$0]])" }
            throw Failure(message: "schedule \(schedule.kind.rawValue) deadlocks: stage \(stuck) waits forever (\(at.joined(separator: "; ")))")
        }
        for s in 0..<k where !activations[s].isEmpty || !gradients[s].isEmpty {
            throw Failure(message: "stage \(s) sends messages nobody receives")
        }
        let makespan = clock.max() ?? 0
        return Report(bubble: busy.map { 1 - $0 / makespan }, peakInFlight: peak, makespan: makespan, instructionCounts: counts)
    }
}
