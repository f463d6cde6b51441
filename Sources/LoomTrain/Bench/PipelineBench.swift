import Foundation
import LoomCore
import LoomDistributed
import LoomNN
import LoomParallel

/// The gpt workload as a pipeline: K stages (in-process ranks, one thread each), the
/// workload's batch of 16 sequences cut into M micro-batches.
public enum PipelineBench {
    public struct Result {
        public var perSecond: Double
        /// Per stage: 1 - (time in forward and backward) / step time, measured.
        public var bubble: [Double]
        public var bubbleTheory: Double
        /// The checker's prediction for this split, with the cost model's piece costs
        /// (the last piece also carries the head and loss), per stage.
        public var bubblePredicted: [Double]
        public var stages: Int, microBatches: Int, schedule: String

        public var json: String {
            let mean = bubble.reduce(0, +) / Double(max(bubble.count, 1))
            return "{\"workload\": \"gpt\", \"per_s\": \(String(format: "%.1f", perSecond)), \"unit\": \"tokens/s\", "
                + "\"pp\": \(stages), \"micro_batches\": \(microBatches), \"schedule\": \"\(schedule)\", "
                + "\"bubble_fraction\": \(String(format: "%.4f", mean)), \"bubble_per_stage\": [\(bubble.map { String(format: "%.4f", $0) }.joined(separator: ", "))], "
                + "\"bubble_theory\": \(String(format: "%.4f", bubbleTheory)), "
                + "\"bubble_predicted_per_stage\": [\(bubblePredicted.map { String(format: "%.4f", $0) }.joined(separator: ", "))]}"
        }
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
        let body = { (comm: Communicator) throws -> (Double, Double, [(String, Double, Double)]) in
            let full = try GPT(.bench, seed: 0, on: CPUBackend(threads: 1))
            let model = try PipelineStageModel(sharding: full, schedule: schedule, stage: comm.rank)
            let engine = try PipelineEngine(schedule: schedule, chunks: model.chunks, optimizer: Adam.adamW(model.namedParameters(), lr: 3e-4), comm: comm)
            for _ in 0..<warmup { try engine.step(tokens: xs, targets: ys, hidden: [rows, context, GPTConfig.bench.dModel]) }
            try comm.barrier()
            var busy = 0.0, events: [(String, Double, Double)] = []
            let t0 = monotonicSeconds()
            for _ in 0..<steps {
                try engine.step(tokens: xs, targets: ys, hidden: [rows, context, GPTConfig.bench.dModel])
                busy += engine.events.filter { $0.name.hasPrefix("forward") || $0.name.hasPrefix("backward") }
                    .reduce(0) { $0 + $1.end - $1.start }
                events = engine.events.map { ($0.name, $0.start, $0.end) }  // the last step, for the trace
            }
            try comm.barrier()
            return (monotonicSeconds() - t0, busy, events)
        }
        var runs: [(Double, Double, [(String, Double, Double)])]
        if let world = mpiWorld {
            // Under an MPI launcher each process is one stage; rank 0 collects the others'
            // busy time (wall times agree up to the closing barrier).
            let mine = try body(world)
            let all = try Tensor.zeros([2 * world.size])
            try world.allGather(Tensor([Float(mine.0), Float(mine.1)], shape: [2]), into: all)
            let v = all.floats
            runs = (0..<world.size).map { (Double(v[2 * $0]), Double(v[2 * $0 + 1]), $0 == world.rank ? mine.2 : []) }
        } else {
            runs = try InProcessWorld.run(size: stages) { try body($0) }
        }
        let wall = runs.map(\.0).max()!
        if let trace { try writeTrace(runs.map(\.2), to: trace) }
        let costs = PipelineGPTStage.pieceCosts(.bench, split: try PipelineGPTStage.balancedSplit(.bench, pieces: schedule.pieces))
        let predicted = try ScheduleCheck(pieceCosts: costs).run(schedule).bubble
        return Result(perSecond: Double(batch * context * steps) / wall, bubble: runs.map { 1 - $0.1 / wall },
                      bubbleTheory: schedule.theoreticalBubble, bubblePredicted: predicted, stages: stages, microBatches: m, schedule: kind.rawValue)
    }

    /// Chrome trace format (opens in Perfetto or chrome://tracing): one track per rank.
    public static func writeTrace(_ perRank: [[(String, Double, Double)]], to path: String) throws {
        let origin = perRank.flatMap { $0.map(\.1) }.min() ?? 0
        var events: [String] = []
        for (rank, list) in perRank.enumerated() {
            events.append("{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": 0, \"tid\": \(rank), \"args\": {\"name\": \"rank \(rank)\"}}")
            for (name, start, end) in list {
                events.append(String(format: "{\"name\": \"%@\", \"ph\": \"X\", \"pid\": 0, \"tid\": %d, \"ts\": %.1f, \"dur\": %.1f}",
                                     name, rank, (start - origin) * 1e6, (end - start) * 1e6))
            }
        }
        try ("{\"traceEvents\": [\n" + events.joined(separator: ",\n") + "\n]}\n").write(toFile: path, atomically: true, encoding: .utf8)
    }
}
