import Foundation
import LoomCore
import LoomDistributed
import LoomNN
import LoomParallel

/// The gpt workload as a pipeline: K stages (in-process ranks, one thread each), the
/// workload's batch of 16 sequences cut into M micro-batches.
public enum PipelineBench {
    public struct Result: Encodable {
        public var perSecond: Double
        /// Per stage: 1 - (time in forward and backward) / step time, measured.
        public var bubble: [Double]
        public var bubbleTheory: Double
        /// The checker's prediction for this split, with the cost model's piece costs
        /// (the last piece also carries the head and loss), per stage.
        public var bubblePredicted: [Double]
        public var stages: Int, microBatches: Int, schedule: String

        enum CodingKeys: String, CodingKey {
            case workload, perSecond = "per_s", unit, stages = "pp", microBatches = "micro_batches", schedule
            case bubbleFraction = "bubble_fraction", bubble = "bubble_per_stage", bubbleTheory = "bubble_theory"
            case bubblePredicted = "bubble_predicted_per_stage"
        }

        public func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode("gpt", forKey: .workload)
            try c.encode(rounded(perSecond, 1), forKey: .perSecond)
            try c.encode("tokens/s", forKey: .unit)
            try c.encode(stages, forKey: .stages)
            try c.encode(microBatches, forKey: .microBatches)
            try c.encode(schedule, forKey: .schedule)
            try c.encode(rounded(bubble.reduce(0, +) / Double(max(bubble.count, 1)), 4), forKey: .bubbleFraction)
            try c.encode(bubble.map { rounded($0, 4) }, forKey: .bubble)
            try c.encode(rounded(bubbleTheory, 4), forKey: .bubbleTheory)
            try c.encode(bubblePredicted.map { rounded($0, 4) }, forKey: .bubblePredicted)
        }

        public var json: String { JSONOutput.string(self) }
    }

    /// `mpiWorld`: run one stage per MPI process instead of in-process ranks.
    public static func run(stages: Int, microBatches m: Int, schedule kind: Schedule.Kind, steps: Int = 10, warmup: Int = 3,
                           trace: String? = nil, mpiWorld: MPICommunicator? = nil) throws -> Result {
        let batch = 16, context = 128
        guard batch % m == 0 else { throw LoomError.config("--micro-batches \(m) must divide the workload's 16 sequences") }
        let rows = batch / m
        var rng = Philox(seed: 1000)
        let x = Tensor(indices: (0..<(batch * context)).map { _ in Int32(rng.nextInt(below: 256)) }, shape: [batch, context])
        let y = Tensor(indices: (0..<(batch * context)).map { _ in Int32(rng.nextInt(below: 256)) }, shape: [batch, context])
        let xs = try (0..<m).map { try x.slice(axis: 0, ($0 * rows)..<(($0 + 1) * rows)) }
        let ys = try (0..<m).map { try y.slice(axis: 0, ($0 * rows)..<(($0 + 1) * rows)) }
        let schedule = try Schedule(kind, stages: stages, microBatches: m)
        let body = { (comm: Communicator) throws -> (Double, Double, [PipelineEvent]) in
            let backend = CPUBackend(threads: 1)
            let full = try GPT(.bench, seed: 0, on: backend)
            let model = try PipelineStageModel(cutting: full, schedule: schedule, stage: comm.rank)
            let engine = try PipelineEngine(schedule: schedule, chunks: model.chunks, comm: comm, backend: backend)
            let optimizer = Adam.adamW(model.namedParameters(), lr: 3e-4)
            for _ in 0..<warmup { try engine.step(inputs: xs, targets: ys, optimizer: optimizer) }
            try comm.barrier()
            var busy = 0.0, events: [PipelineEvent] = []
            let t0 = monotonicSeconds()
            for _ in 0..<steps {
                try engine.step(inputs: xs, targets: ys, optimizer: optimizer)
                busy += engine.events.filter(\.instruction.isCompute).reduce(0) { $0 + $1.seconds }
                events = engine.events  // the last step, for the trace
            }
            try comm.barrier()
            return (monotonicSeconds() - t0, busy, events)
        }
        var runs: [(Double, Double, [PipelineEvent])]
        if let world = mpiWorld {
            // Under an MPI launcher each process is one stage; rank 0 collects the others'
            // busy time (wall times agree up to the closing barrier).
            let mine = try body(world)
            let all = try Tensor.zeros([2 * world.size])
            try world.allGather(Tensor([Float(mine.0), Float(mine.1)], shape: [2]), into: all)
            let v = all.floats
            runs = (0..<world.size).map { r -> (Double, Double, [PipelineEvent]) in
                (Double(v[2 * r]), Double(v[2 * r + 1]), r == world.rank ? mine.2 : [])
            }
        } else {
            runs = try InProcessWorld.run(size: stages) { try body($0) }
        }
        let wall = runs.map(\.0).max()!
        if let trace {
            let perRank = runs.enumerated().map { TraceRecorder.events($1.2, step: steps - 1, track: $0) }
            try TraceRecorder.writeFile(perRank, labels: runs.indices.map { "rank \($0)" }, to: trace)
        }
        let costs = GPT.pieceCosts(.bench, split: try GPT.balancedSplit(.bench, pieces: schedule.pieces))
        let predicted = try ScheduleCheck(pieceCosts: costs).run(schedule).bubble
        return Result(perSecond: Double(batch * context * steps) / wall, bubble: runs.map { 1 - $0.1 / wall },
                      bubbleTheory: schedule.theoreticalBubble, bubblePredicted: predicted, stages: stages, microBatches: m, schedule: kind.rawValue)
    }
}
