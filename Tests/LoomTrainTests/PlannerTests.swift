import Foundation
import XCTest
import LoomCore
import LoomTrain

/// `loom plan`'s models against what they model: Megatron's published activation formula,
/// memory measured by training the layouts in this process, the allocator's budget, and
/// GPT-3 175B on the shipped A100 cluster against Megatron-LM's published throughput.
/// Step times are compared in docs/planning.md, not here: speed belongs to benchmarks.
final class PlannerTests: XCTestCase {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// A small GPT on the bundled Shakespeare: 2 blocks, d 64, 4 heads, context 64, batch 8.
    func smallGPT() throws -> TrainConfig {
        try ConfigFile.parse("""
            [model]
            kind = "gpt"
            layers = 2
            d_model = 64
            heads = 4
            context = 64
            [data]
            path = "\(Self.repo.path)/data/shakespeare.txt"
            validation_fraction = 0.1
            [train]
            steps = 1
            batch_size = 8
            optimizer = "adamw"
            eval_batches = 1
            """, path: "small-gpt.toml")
    }

    /// This machine's memory, no products timed: the memory model does not read the rest.
    func anyCluster(memory: Double = 17179869184) -> Cluster {
        var c = Cluster()
        c.device.memoryBytes = memory
        c.device.cores = 2
        c.devicesPerNode = 8
        return c
    }

    func planner(_ c: TrainConfig, memory: Double = 17179869184) throws -> Planner {
        Planner(config: c, model: ModelCosts(spec: c.modelSpec, input: try PlanInput.of(c), precision: c.precision), cluster: anyCluster(memory: memory))
    }

    func testMegatronsStoredActivationsSumToKorthikantisFormula() {
        for (s, b, h, a) in [(2048, 1, 12288, 96), (1024, 4, 768, 12), (128, 16, 128, 4)] {
            let total = ModelCosts.megatronLayerActivations(s: s, b: b, h: h, a: a).reduce(0) { $0 + $1.1 }
            let formula = Double(s * b * h) * (34 + 5 * Double(a * s) / Double(h))
            XCTAssertEqual(total, formula, accuracy: formula * 1e-12, "s \(s) b \(b) h \(h) a \(a)")
        }
    }

    /// Tolerance: predicted peak within 10% of the measured high-water mark of every rank,
    /// over dp, tp, pp (1F1B, GPipe, recomputation), ZeRO-2 and accumulation.
    func testPredictedPeakMemoryPerRankIsWithinTenPercentOfMeasured() throws {
        let c = try smallGPT()
        let p = try planner(c)
        let layouts = [Layout(dp: 2), Layout(tp: 2), Layout(pp: 2, microBatches: 4), Layout(pp: 2, microBatches: 4, schedule: .gpipe),
                       Layout(pp: 2, microBatches: 4, recompute: true), Layout(dp: 2, zero: 2), Layout(microBatches: 2)]
        for l in layouts {
            XCTAssertNil(p.impossibility(l), "\(l)")
            let predicted = try p.costs.predict(l).memory.total
            let measured = try LayoutMeasurement.measure(c, l, steps: 2, warmup: 1, threads: 2)
            let error = predicted / Double(measured.peakBytes) - 1
            XCTAssertLessThan(abs(error), 0.10, "\(l): predicted \(Int(predicted)) bytes, measured \(measured.peakBytes) (\(measured.peakSplit.named))")
            XCTAssertGreaterThan(measured.stepSeconds, 0)
        }
    }

    func testALayoutPredictedNotToFitRunsOutOfMemoryUnderTheSameCapAndOneThatFitsRuns() throws {
        let c = try smallGPT()
        let big = Layout(pp: 2, microBatches: 4, schedule: .gpipe), small = Layout(pp: 2, microBatches: 4, schedule: .oneFOneB)
        let sizes = try [big, small].map { try planner(c).costs.predict($0).memory.total }
        XCTAssertGreaterThan(sizes[0], sizes[1] * 1.3, "GPipe keeps every micro-batch; 1F1B at most the stages'")
        let cap = (sizes[0] + sizes[1]) / 2
        let p = try planner(c, memory: cap)
        XCTAssertFalse(try p.costs.predict(big).fits)
        XCTAssertTrue(try p.costs.predict(small).fits)
        XCTAssertThrowsError(try LayoutMeasurement.measure(c, big, steps: 1, warmup: 0, threads: 2, limit: Int(cap))) { error in
            XCTAssertTrue("\(error)".contains("LOOM_MEMORY_LIMIT"), "\(error)")
        }
        XCTAssertNoThrow(try LayoutMeasurement.measure(c, small, steps: 1, warmup: 0, threads: 2, limit: Int(cap)))
    }

    func testLayoutsLoomCannotRunAreListedWithTheReason() throws {
        let p = try planner(try smallGPT())
        let result = try p.plan(ranks: 8)
        let reasons = result.impossible.map(\.reason)
        XCTAssertTrue(reasons.contains { $0.contains("4 heads are not divisible by tp 8") }, "\(Set(reasons))")
        XCTAssertTrue(reasons.contains { $0.contains("layers cannot be cut") }, "\(Set(reasons))")
        XCTAssertFalse(result.fitting.isEmpty)
        XCTAssertEqual(result.fitting.map(\.time.total), result.fitting.map(\.time.total).sorted(), "ranked by predicted step time")
        for pr in result.fitting { XCTAssertEqual(pr.layout.ranks, 8) }
    }

    func testAClusterDescriptionReadsWhatItWritesAndNamesAnUnknownKey() throws {
        var c = anyCluster()
        c.name = "two cores"
        c.device.threads = [1, 2]
        c.device.matmulFloat32 = [1e11, 1.8e11]; c.device.matmulBF16 = [2e11, 3e11]; c.device.memoryBandwidth = [2e10, 3e10]
        c.intraNode = Cluster.Link(bandwidth: 3e9, latency: 5e-5)
        c.gemms = [Cluster.GEMMSample(shape: GEMMShape(m: 64, n: 32, k: 16), threads: 2, seconds: 1.5e-6)]
        let back = try Cluster.parse(c.render(comment: "test"), path: "c.toml")
        XCTAssertEqual(back.device.threads, [1, 2])
        XCTAssertEqual(back.device.matmulFloat32[1], 1.8e11, accuracy: 1e6)
        XCTAssertEqual(back.intraNode.latency, 5e-5, accuracy: 1e-12)
        XCTAssertEqual(back.gemms.first?.shape, GEMMShape(m: 64, n: 32, k: 16))
        XCTAssertThrowsError(try Cluster.parse("[device]\nmemory_gib = 8\nflops = 3\n", path: "bad.toml")) { error in
            XCTAssertTrue("\(error)".contains("unknown key 'device.flops'") && "\(error)".contains("matmul_tflops_bf16"), "\(error)")
        }
    }

    /// Narayanan et al. 2021 ("Efficient Large-Scale Language Model Training on GPU
    /// Clusters Using Megatron-LM", SC'21), Table 2: GPT-3 175B (174.6B) with PTD-P at
    /// model-parallel size 96 (tensor 8 x pipeline 12), batch 1536, micro-batch 1, ran at
    /// 141 TFLOP/s per GPU on 1536 A100s, counted by their formula
    /// 96·B·s·l·h²·(1 + s/6h + V/16lh) per step (activation recomputation included).
    /// Checked for that layout and for tensor 8 x pipeline 16, interleaved (the issue's).
    func testGPT3On1536A100sFitsWithRecomputationAndPredictsMegatronsThroughputWithin25Percent() throws {
        let c = try ConfigFile.load(Self.repo.path + "/examples/gpt3-175b.toml")
        let cluster = try Cluster.load(Self.repo.path + "/examples/clusters/a100-80gb-selene.toml")
        let p = Planner(config: c, model: ModelCosts(spec: c.modelSpec, input: try PlanInput.of(c), precision: c.precision), cluster: cluster)
        let (B, s, l, h, V) = (1536.0, 2048.0, 96.0, 12288.0, 51200.0)
        let flops = 96 * B * s * l * h * h * (1 + s / (6 * h) + V / (16 * l * h))
        for layout in [Layout(dp: 16, tp: 8, pp: 12, microBatches: 96, schedule: .interleaved, chunks: 2, recompute: true),
                       Layout(dp: 12, tp: 8, pp: 16, microBatches: 128, schedule: .interleaved, chunks: 2, recompute: true)] {
            XCTAssertNil(p.impossibility(layout))
            let predicted = try p.costs.predict(layout)
            XCTAssertTrue(predicted.fits, "\(layout): \(predicted.memory.named)")
            var kept = layout; kept.recompute = false
            XCTAssertFalse(try p.costs.predict(kept).fits, "\(layout): without recomputation Loom's float32 activations do not fit in 80 GB")
            let perGPU = flops / predicted.time.total / 1536 / 1e12
            XCTAssertEqual(perGPU, 141, accuracy: 141 * 0.25, "\(layout): predicted \(perGPU) TFLOP/s per GPU")
        }
    }
}
