import XCTest
import LoomCore
import LoomDistributed
import LoomNN
import LoomParallel

/// Pipeline parallelism reproduces the single-process GPT losses (same global batch, cut
/// into micro-batches), for each schedule, M = 4 and 8, on 2 and 4 stages.
final class PipelineTests: XCTestCase {
    let config = GPTConfig(vocabSize: 64, contextLength: 16, layers: 4, dModel: 32, heads: 4, dropout: 0)
    let batch = 8, steps = 20

    func data(_ step: Int) -> (Tensor, Tensor) {
        var rng = Philox(seed: 21).derived(UInt64(step))
        let t = (0..<(batch * 17)).map { _ in Int32(rng.nextInt(below: 64)) }
        var x: [Int32] = [], y: [Int32] = []
        for r in 0..<batch { x += t[(r * 17)..<(r * 17 + 16)]; y += t[(r * 17 + 1)..<(r * 17 + 17)] }
        return (Tensor(indices: x, shape: [batch, 16]), Tensor(indices: y, shape: [batch, 16]))
    }

    func singleProcess() throws -> [Float] {
        let model = try GPT(config, seed: 9)
        let opt = Adam.adamW(model.namedParameters(), lr: 3e-4)
        return try (0..<steps).map { s in
            let (x, y) = data(s)
            opt.zeroGrad()
            let l = try model.loss(tokens: x, targets: y)
            try l.backward(); try opt.step()
            return l.item
        }
    }

    func pipeline(_ kind: Schedule.Kind, stages: Int, microBatches m: Int) throws -> (losses: [Float], peak: [Int]) {
        let runs = try InProcessWorld.run(size: stages) { comm -> ([Float], Int) in
            let full = try GPT(self.config, seed: 9, on: CPUBackend(threads: 1))
            let stage = try PipelineGPTStage(sharding: full, stage: comm.rank, stages: stages)
            let engine = try PipelineEngine(schedule: Schedule(kind, stages: stages, microBatches: m), model: stage,
                                            optimizer: Adam.adamW(stage.namedParameters(), lr: 3e-4), comm: comm)
            var losses: [Float] = []
            let rows = self.batch / m
            for s in 0..<self.steps {
                let (x, y) = self.data(s)
                let xs = try (0..<m).map { try x.slice(axis: 0, ($0 * rows)..<(($0 + 1) * rows)) }
                let ys = try (0..<m).map { try y.slice(axis: 0, ($0 * rows)..<(($0 + 1) * rows)) }
                if let l = try engine.step(tokens: xs, targets: ys, hidden: [rows, 16, self.config.dModel]) { losses.append(l) }
            }
            return (losses, engine.peakInFlight)
        }
        return (runs.last!.0, runs.map(\.1))
    }

    func testEverySchedulePipelineMatchesSingleProcess() throws {
        let single = try singleProcess()
        for (kind, stages, m) in [(Schedule.Kind.gpipe, 2, 4), (.gpipe, 2, 8), (.oneFOneB, 2, 4), (.oneFOneB, 2, 8),
                                  (.oneFOneB, 4, 8), (.gpipe, 4, 4)] {
            let run = try pipeline(kind, stages: stages, microBatches: m)
            XCTAssertEqual(run.losses.count, steps)
            for (s, (a, b)) in zip(run.losses, single).enumerated() {
                XCTAssertLessThanOrEqual(abs(a - b) / b, 1e-5, "\(kind.rawValue) pp \(stages) M \(m) step \(s): \(a) vs \(b)")
            }
            // The engine kept alive what the schedule predicts.
            let predicted = try ScheduleCheck().run(Schedule(kind, stages: stages, microBatches: m)).peakInFlight
            XCTAssertEqual(run.peak, predicted, "\(kind.rawValue) pp \(stages) M \(m)")
        }
    }
}
