import Foundation
import LoomCore
import LoomDistributed

/// A layout run for real on this machine's in-process ranks: what `loom plan --measure`
/// sets next to the prediction, and how docs/planning.md's accuracy table was made.
///
/// Every rank trains `warmup + steps` steps of the config laid out as given, its tensors
/// charged to a `MemoryMeter` from before the model is built; the peak is the meter's
/// high-water mark over the training steps, from what the built rank holds (loading the
/// data before, and the evaluation and checkpoint after, are not steps), the step time
/// the median of rank 0's last `steps`.
public struct LayoutMeasurement: Sendable {
    public var layout: Layout
    /// Median seconds per optimizer step after the warm-up.
    public var stepSeconds: Double
    /// The highest any rank's bytes went during the steps, and that rank's split then.
    public var peakBytes: Int
    public var peakSplit: MemorySplit
    /// Each rank's peak, by rank.
    public var rankPeaks: [Int]

    /// Trains `config` laid out as `layout` in this process (threads divided among the
    /// ranks, as `loom train` divides them). `limit`: each rank's memory budget.
    public static func measure(_ config: TrainConfig, _ layout: Layout, steps: Int = 8, warmup: Int = 3,
                               threads: Int = CPUBackend.defaultThreads, limit: Int? = nil) throws -> LayoutMeasurement {
        var c = layout.applied(to: config)
        c.steps = warmup + steps
        c.evalEvery = c.steps
        c.evalBatches = 1
        c.logEvery = c.steps
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("loom-measure-\(ProcessInfo.processInfo.processIdentifier)-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        c.out = dir
        c.name = "measure"
        let ranks = layout.ranks
        let perRank = max(1, threads / ranks)
        func one(_ comm: InProcessCommunicator?, rank: Int) throws -> (times: [Double], peak: Int, split: MemorySplit) {
            let meter = MemoryMeter(limit: limit, label: "rank \(rank)")
            return try MemoryMeter.measuring(meter) {
                let trainer = try Trainer(config: c, backend: CPUBackend(threads: perRank), communicator: comm)
                defer { trainer.finish() }
                trainer.quiet = true
                // The steps' peak, from what the built rank holds (reading and tokenizing the
                // data can pass it for a moment before the model exists: not a step's).
                meter.resetPeak()
                var times: [Double] = [], peak = 0, split = MemorySplit()
                var last = monotonicSeconds()
                trainer.afterStep = { step in
                    let now = monotonicSeconds()
                    if step > warmup { times.append(now - last) }
                    last = now
                    if step == warmup + steps { peak = meter.peakBytes; split = meter.peakSplit }
                }
                try trainer.run()
                return (times, peak, split)
            }
        }
        let results = ranks == 1 ? [try one(nil, rank: 0)]
            : try InProcessWorld.run(size: ranks, timeout: Double(c.timeoutSeconds)) { try one($0, rank: $0.rank) }
        let times = results[0].times.sorted()
        let top = results.max { $0.peak < $1.peak }!
        return LayoutMeasurement(layout: layout, stepSeconds: times[times.count / 2], peakBytes: top.peak, peakSplit: top.split,
                                 rankPeaks: results.map(\.peak))
    }
}
