import LoomCore
import LoomDistributed
import LoomParallel

/// The trainer's pipeline-parallel side: a step through the stages, the checkpoint's
/// gathering across stages, and the summary's per-stage measurements.
extension Trainer {
    /// One step of this rank's pipeline stage over the batch cut into micro-batches. The
    /// loss is the last stage's; every stage receives it (for logging and the NaN check).
    func pipelineStep(_ batch: (inputs: Tensor, targets: Tensor), _ engine: PipelineEngine) throws -> Float {
        let m = config.microBatches, rows = batch.inputs.shape[0] / m
        let xs = try batch.inputs.split(Array(repeating: rows, count: m), axis: 0)
        let ys = try batch.targets.split(Array(repeating: rows, count: m), axis: 0)
        let start = monotonicSeconds()
        let loss = try engine.step(tokens: xs, targets: ys, hidden: [rows, config.context, config.dModel])
        pipelineStats.add(events: engine.events, wall: monotonicSeconds() - start, peakBytes: engine.peakStepBytes, inFlight: engine.peakInFlight)
        trace.record(step: state.step, engine.events)
        // Only the last stage has the loss; the others add zero.
        return Float(try groups!.pipeline.sum([engine.chunks.last!.isLast ? Double(loss!) : 0])[0])
    }

    /// Stages other than 0 of rank 0's pipeline send their tensors and dropout generators
    /// to it; rank 0 returns them all (the tied embedding and its state once, from stage
    /// 0). Other ranks hold copies of these and send nothing.
    func gatherStages(_ mine: [(name: String, tensor: Tensor)], _ groups: ProcessGroups) throws
        -> ([(name: String, tensor: Tensor)], String) {
        let generators = TrainingCheckpoint.dropoutEntry(setup.task.module)
        guard groups.data.rank == 0 && groups.tensor.rank == 0 else { return (mine, generators) }
        let pipe = groups.pipeline, tag = 1 << 20
        if pipe.rank != 0 {
            try pipe.send(named: mine, metadata: ["dropout": generators], to: 0, tag: tag)
            return (mine, generators)
        }
        var all = mine, names = Set(mine.map(\.name)), entries = [generators]
        for stage in 1..<pipe.size {
            let (tensors, meta) = try pipe.receiveNamed(from: stage, tag: tag, on: backend)
            for (name, t) in tensors where names.insert(name).inserted { all.append((name, t)) }
            entries.append(meta["dropout"] ?? "")
        }
        return (all, entries.filter { !$0.isEmpty }.joined(separator: ";"))
    }

    /// "rank 3: dp 0, stage 1, tp 1" (the trace's track names).
    func rankLabel(_ rank: Int) -> String {
        guard let t = groups?.topology else { return "rank \(rank)" }
        let c = t.coordinates(of: rank)
        return "rank \(rank): dp \(c.dp), stage \(c.pp), tp \(c.tp)"
    }

    /// Collective: every stage's measured bubble, peak step memory and micro-batches in
    /// flight, for the summary (taken from data-parallel replica 0, TP rank 0).
    func report(_ engine: PipelineEngine) throws -> (json: String, line: String) {
        let world = communicator!, t = groups!.topology
        let all = try Tensor.zeros([3 * world.size])
        try world.allGather(Tensor([Float(pipelineStats.bubble), Float(pipelineStats.peakBytes), Float(pipelineStats.peakInFlight)], shape: [3]),
                            into: all)
        let v = all.floats
        let ranks = (0..<t.pp).map { t.rank(dp: 0, pp: $0, tp: 0) }
        let bubble = ranks.map { Double(v[3 * $0]) }, bytes = ranks.map { Int(v[3 * $0 + 1]) }, inFlight = ranks.map { Int(v[3 * $0 + 2]) }
        let s = engine.schedule
        let f4 = { (x: Double) in String(format: "%.4f", x) }
        let json = "{\"schedule\": \"\(s.kind.rawValue)\", \"stages\": \(s.stages), \"micro_batches\": \(s.microBatches), \"chunks\": \(s.chunks), "
            + "\"recompute\": \(engine.recompute), \"bubble_theory\": \(f4(s.theoreticalBubble)), "
            + "\"bubble_per_stage\": [\(bubble.map(f4).joined(separator: ", "))], "
            + "\"peak_step_bytes_per_stage\": [\(bytes.map(String.init).joined(separator: ", "))], "
            + "\"peak_in_flight_per_stage\": [\(inFlight.map(String.init).joined(separator: ", "))]}"
        let line = "pipeline \(s.kind.rawValue), \(s.stages) stages, \(s.microBatches) micro-batches: bubble "
            + bubble.map { String(format: "%.3f", $0) }.joined(separator: "/") + String(format: " (theory %.3f), peak step memory ", s.theoreticalBubble)
            + bytes.map { String(format: "%.1f", Double($0) / 1048576) }.joined(separator: "/") + " MiB per stage"
        return (json, line)
    }
}
