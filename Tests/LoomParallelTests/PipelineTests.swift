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

    func pipeline(_ kind: Schedule.Kind, stages: Int, microBatches m: Int, recompute: Bool = false,
                  config: GPTConfig? = nil) throws -> (losses: [Float], peak: [Int], bytes: [Int]) {
        let schedule = try Schedule(kind, stages: stages, microBatches: m)
        let runs = try InProcessWorld.run(size: stages) { comm -> ([Float], Int, Int) in
            let backend = CPUBackend(threads: 1)
            let full = try GPT(config ?? self.config, seed: 9, on: backend)
            let model = try PipelineStageModel(cutting: full, schedule: schedule, stage: comm.rank)
            let engine = try PipelineEngine(schedule: schedule, chunks: model.chunks, comm: comm, backend: backend)
            let optimizer = Adam.adamW(model.namedParameters(), lr: 3e-4)
            engine.recompute = recompute
            var losses: [Float] = []
            let rows = self.batch / m
            for s in 0..<self.steps {
                let (x, y) = self.data(s)
                let xs = try (0..<m).map { try x.slice(axis: 0, ($0 * rows)..<(($0 + 1) * rows)) }
                let ys = try (0..<m).map { try y.slice(axis: 0, ($0 * rows)..<(($0 + 1) * rows)) }
                if let l = try engine.step(inputs: xs, targets: ys, optimizer: optimizer) { losses.append(l) }
            }
            return (losses, engine.peakInFlight, engine.peakStepBytes)
        }
        return (runs[schedule.stages - 1].0, runs.map(\.1), runs.map(\.2))
    }

    func testEverySchedulePipelineMatchesSingleProcess() throws {
        let single = try singleProcess()
        for (kind, stages, m) in [(Schedule.Kind.gpipe, 2, 4), (.gpipe, 2, 8), (.oneFOneB, 2, 4), (.oneFOneB, 2, 8),
                                  (.oneFOneB, 4, 8), (.gpipe, 4, 4), (.interleaved, 2, 4), (.interleaved, 2, 8)] {
            let run = try pipeline(kind, stages: stages, microBatches: m)
            XCTAssertEqual(run.losses.count, steps)
            for (s, (a, b)) in zip(run.losses, single).enumerated() {
                XCTAssertLessThanOrEqual(abs(a - b) / b, 1e-5, "\(kind.rawValue) pp \(stages) M \(m) step \(s): \(a) vs \(b)")
            }
            // The engine kept alive what the schedule predicts.
            let predicted = try ScheduleCheck().run(try Schedule(kind, stages: stages, microBatches: m)).peakInFlight
            XCTAssertEqual(run.peak, predicted, "\(kind.rawValue) pp \(stages) M \(m)")
        }
    }

    func testRecomputationChangesNothingButMemory() throws {
        // With dropout: recomputation must replay each micro-batch's masks.
        var dropping = config
        dropping.dropout = 0.1
        for kind in [Schedule.Kind.oneFOneB, .interleaved] {
            let plain = try pipeline(kind, stages: 2, microBatches: 4, config: dropping)
            let again = try pipeline(kind, stages: 2, microBatches: 4, recompute: true, config: dropping)
            XCTAssertEqual(plain.losses, again.losses, "\(kind.rawValue)")
            // Stage 0 holds the most micro-batches; keeping only their inputs must show.
            XCTAssertLessThan(Double(again.bytes[0]), 0.8 * Double(plain.bytes[0]), "\(kind.rawValue): \(again.bytes) vs \(plain.bytes)")
        }
    }

    func testStagesKeepTheWholeModelsNames() throws {
        let full = try GPT(config, seed: 9)
        let names = Set(full.namedParameters().map(\.name))
        let schedule = try Schedule(.interleaved, stages: 2, microBatches: 2)
        let parts = try (0..<2).map { try PipelineStageModel(cutting: full, schedule: schedule, stage: $0).namedParameters().map(\.name) }
        XCTAssertTrue(parts[0].contains("blocks.2.mlp.fc.weight"), "\(parts[0])")  // stage 0 holds pieces 0 and 2
        XCTAssertEqual(Set(parts.flatMap { $0 }), names)
        XCTAssertEqual(parts.flatMap { $0 }.count, names.count + 1)  // wte on the first and the last piece
    }

    func testImageModelPiecesKeepTheWholeModelsNames() throws {
        for model in [CNN(residual: true, seed: 1) as any PipelineModel, MLP(sizes: [784, 64, 32, 10], seed: 1)] {
            let whole = model.namedTensors().map(\.name)
            let schedule = try Schedule(.oneFOneB, stages: 2, microBatches: 2)
            let parts = try (0..<2).map { try PipelineStageModel(cutting: model, schedule: schedule, stage: $0).namedTensors().map(\.name) }
            XCTAssertFalse(parts[0].isEmpty || parts[1].isEmpty, "\(parts)")
            XCTAssertEqual(parts[0] + parts[1], whole)  // every parameter and buffer once, in order, under its own name
        }
    }

    func testBalancedSplitWeighsTheHead() throws {
        XCTAssertEqual(try GPT.balancedSplit(.bench, pieces: 2), [2, 2])
        // GPT-2 small: the head (768 × 50257) costs about 4.5 blocks, so the last stage gets fewer.
        let small = GPTConfig(vocabSize: 50257, contextLength: 1024, layers: 12, dModel: 768, heads: 12)
        let split = try GPT.balancedSplit(small, pieces: 4)
        XCTAssertEqual(split.reduce(0, +), 12)
        XCTAssertLessThan(split[3], split[0], "\(split)")
    }
}
