import LoomCore
import LoomDistributed
import LoomParallel

/// What summary.json says of a pipeline run.
public struct PipelineReport: Encodable, Equatable {
    public var schedule: String
    public var stages: Int, microBatches: Int, chunks: Int
    public var recompute: Bool
    public var bubbleTheory: Double
    public var bubblePerStage: [Double]
    public var peakStepBytesPerStage: [Int]
    public var peakInFlightPerStage: [Int]

    enum CodingKeys: String, CodingKey {
        case schedule, stages, microBatches = "micro_batches", chunks, recompute, bubbleTheory = "bubble_theory"
        case bubblePerStage = "bubble_per_stage", peakStepBytesPerStage = "peak_step_bytes_per_stage"
        case peakInFlightPerStage = "peak_in_flight_per_stage"
    }
}

/// The trainer's pipeline-parallel side: a step through the stages and the summary's
/// per-stage measurements (the checkpoint's gathering across stages is the plan's,
/// `DistributedPlan.checkpointTensors` in ParallelPlan.swift).
extension Trainer {
    /// One step of this rank's pipeline stage over the batch cut into micro-batches. The
    /// loss is the last stage's; every stage receives it (for logging and the NaN check).
    func pipelineStep(_ batch: (inputs: Tensor, targets: Tensor), _ engine: PipelineEngine) throws -> Float {
        let m = config.microBatches, rows = batch.inputs.shape[0] / m
        let xs = try batch.inputs.split(Array(repeating: rows, count: m), axis: 0)
        let ys = try batch.targets.split(Array(repeating: rows, count: m), axis: 0)
        let start = monotonicSeconds()
        let loss = try engine.step(inputs: xs, targets: ys)
        pipelineStats.add(events: engine.events, wall: monotonicSeconds() - start, peakBytes: engine.peakStepBytes, inFlight: engine.peakInFlight)
        trace.record(step: state.step, engine.events)
        // Only the last stage has the loss; the others add zero.
        return Float(try groups!.pipeline.sum([engine.chunks.last!.isLast ? Double(loss!) : 0])[0])
    }

    /// "rank 3: dp 0, stage 1, tp 1" (the trace's track names).
    func rankLabel(_ rank: Int) -> String {
        guard let t = groups?.topology else { return "rank \(rank)" }
        let c = t.coordinates(of: rank)
        return "rank \(rank): dp \(c.dp), stage \(c.pp), tp \(c.tp)"
    }

    /// Collective: every stage's measured bubble, peak step memory and micro-batches in
    /// flight, for the summary (taken from data-parallel replica 0, TP rank 0).
    func report(_ engine: PipelineEngine) throws -> (report: PipelineReport, line: String) {
        let world = communicator!, t = groups!.topology
        let all = try Tensor.zeros([3 * world.size])
        try world.allGather(Tensor([Float(pipelineStats.bubble), Float(pipelineStats.peakBytes), Float(pipelineStats.peakInFlight)], shape: [3]),
                            into: all)
        let v = all.floats
        let ranks = (0..<t.pp).map { t.rank(dp: 0, pp: $0, tp: 0) }
        let bubble = ranks.map { Double(v[3 * $0]) }, bytes = ranks.map { Int(v[3 * $0 + 1]) }, inFlight = ranks.map { Int(v[3 * $0 + 2]) }
        let s = engine.schedule
        let report = PipelineReport(schedule: s.kind.rawValue, stages: s.stages, microBatches: s.microBatches, chunks: s.chunks,
                                    recompute: engine.recompute, bubbleTheory: rounded(s.theoreticalBubble, 4),
                                    bubblePerStage: bubble.map { rounded($0, 4) }, peakStepBytesPerStage: bytes,
                                    peakInFlightPerStage: inFlight)
        let line = "pipeline \(s.kind.rawValue), \(s.stages) stages, \(s.microBatches) micro-batches: bubble "
            + bubble.map { String(format: "%.3f", $0) }.joined(separator: "/") + String(format: " (theory %.3f), peak step memory ", s.theoreticalBubble)
            + bytes.map { String(format: "%.1f", Double($0) / 1048576) }.joined(separator: "/") + " MiB per stage"
        return (report, line)
    }
}
