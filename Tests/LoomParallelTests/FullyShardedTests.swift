import XCTest
import LoomCore
import LoomDistributed
import LoomNN
import LoomParallel

/// ZeRO-3: parameters, gradients and optimizer state sharded across the data group,
/// units gathered around their forward and backward.
final class FullyShardedTests: XCTestCase {
    static let config = GPTConfig(vocabSize: 64, contextLength: 32, layers: 3, dModel: 32, heads: 2, dropout: 0)

    /// Fixed global batches of 8 rows, a pure function of the step.
    func batch(step: Int, rows: Range<Int>) -> (Tensor, Tensor) {
        var rng = Philox(seed: 77).derived(UInt64(step))
        let t = (0..<(8 * 33)).map { _ in Int32(rng.nextInt(below: 64)) }
        var x: [Int32] = [], y: [Int32] = []
        for r in rows { x += t[(r * 33)..<(r * 33 + 32)]; y += t[(r * 33 + 1)..<(r * 33 + 33)] }
        return (Tensor(indices: x, shape: [rows.count, 32]), Tensor(indices: y, shape: [rows.count, 32]))
    }

    /// What rank 0 measured of one run: bytes live after the model was built, the peak
    /// while it was built, and bytes live once each step's update is done.
    final class Bytes: @unchecked Sendable {
        var built = 0, buildPeak = 0, betweenSteps = 0, stepPeak = 0
        var heldSplit = MemorySplit()
        /// The most a checkpoint's pieces, made one after another, added to what the rank held.
        var checkpointExtra = 0
        var hidden = 0, gathers = 0
        /// The collectives of the last step and the waits for them.
        var lastStepSpans: [TimedSpan] = []
    }

    /// Per-step global losses of a GPT under AdamW on `ranks` in-process ranks at ZeRO
    /// stage `zero` (1 rank: one process).
    func losses(ranks: Int, zero: Int, steps: Int = 8, bytes: Bytes? = nil) throws -> [Float] {
        let run = { (comm: Communicator?) throws -> [Float] in
            let meter = MemoryMeter()
            return try MemoryMeter.measuring(meter) {
                let backend = CPUBackend(threads: 1)
                let full = zero == 3 ? comm.map { FullyShardedParameters(communicator: $0, backend: backend) } : nil
                let gpt = try GPT(FullyShardedTests.config, seed: 5, on: backend, sharding: full)
                let built = meter.liveBytes, buildPeak = meter.peakBytes
                let named = gpt.namedParameters()
                let template = Adam.adamW(named, lr: 3e-3)
                let sharding = try dataParallelSharding(zero: zero, parameters: named, optimizer: template, group: comm,
                                                        bucketBytes: 16 << 10, fullySharded: full)
                let opt = sharding.optimizer
                let rank = comm?.rank ?? 0, local = 8 / ranks
                full?.timeline.isRecording = bytes != nil
                var out: [Float] = []
                for step in 0..<steps {
                    let (x, y) = self.batch(step: step, rows: (rank * local)..<((rank + 1) * local))
                    meter.resetPeak()
                    _ = full?.timeline.take()
                    opt.zeroGrad()
                    let loss = try gpt.loss(logits: (full as (any UnitSharding)?).forward(nil) { try gpt(x) }, targets: y)
                    try loss.backward()
                    try sharding.reduceGradients()
                    try opt.step()
                    out.append(try comm.map { Float(try $0.average(Double(loss.item))) } ?? loss.item)
                    if let bytes, rank == 0 { bytes.betweenSteps = meter.liveBytes; bytes.stepPeak = meter.peakBytes; bytes.heldSplit = meter.liveSplit
                        bytes.lastStepSpans = full?.timeline.take() ?? [] }
                }
                // A checkpoint's pieces, made as a writer takes them (no communication).
                let entries = sharding.checkpointEntries(gpt.namedTensors()) + (try sharding.optimizerStateEntries())
                let before = meter.liveBytes
                meter.resetPeak()
                for entry in entries { for piece in entry.pieces { _ = try piece.make() } }
                if let bytes, rank == 0 { bytes.checkpointExtra = meter.peakBytes - before }
                if let bytes, rank == 0 {
                    bytes.built = built; bytes.buildPeak = buildPeak
                    bytes.hidden = full?.gathersHidden ?? 0; bytes.gathers = full?.gathers ?? 0
                }
                return out
            }
        }
        if ranks == 1 { return try run(nil) }
        let all = try InProcessWorld.run(size: ranks) { try run($0) }
        XCTAssertEqual(Set(all).count, 1, "ranks disagree on the global loss")
        return all[0]
    }

    /// The same averaged gradients (reduce-scattered per unit instead of per bucket: the
    /// same rank-order sums) and the same elementwise updates: ZeRO-3's losses are
    /// bit-identical to plain data parallelism's, and within float32 rounding of one process.
    func testZeroStage3IsBitIdenticalToPlainDataParallelAndMatchesOneProcess() throws {
        let single = try losses(ranks: 1, zero: 0)
        XCTAssertLessThan(single.last!, single.first!, "training should make progress")
        for ranks in [2, 4] {
            let plain = try losses(ranks: ranks, zero: 0)
            XCTAssertEqual(try losses(ranks: ranks, zero: 3), plain, "dp\(ranks) zero 3")
            for (i, (a, b)) in zip(plain, single).enumerated() {
                XCTAssertLessThanOrEqual(abs(a - b) / abs(b), 1e-5, "dp\(ranks) step \(i): \(a) vs one process's \(b)")
            }
        }
    }

    /// What a rank holds between steps follows the ZeRO paper's accounting of model states
    /// (4Ψ parameters, 4Ψ gradients, 8Ψ Adam moments; N ranks): stage 0 16Ψ, stage 2
    /// 4Ψ + 12Ψ/N, stage 3 16Ψ/N, each within 10%; stage 1 8Ψ + 8Ψ/N plus the 4Ψ/N chunk of
    /// the reduced gradient it reads beside the whole one (12%). The meter's split names
    /// each part: parameters 4Ψ (stage 3: 4Ψ/N), Adam moments 8Ψ (stages 1-3: 8Ψ/N),
    /// gradients with the buckets that hold them 4Ψ (stage 1: plus the 4Ψ/N chunk; stages
    /// 2-3: 4Ψ/N), no activations.
    func testEachZeroStageHoldsWhatTheZeROPaperAccountsFor() throws {
        let ranks = 4.0
        let psi = Double(try GPT(FullyShardedTests.config, seed: 5).parameterCount)
        let formula: [Int: (bytes: Double, tolerance: Double)] = [
            0: (16 * psi, 0.1), 1: (8 * psi + 8 * psi / ranks, 0.12), 2: (4 * psi + 12 * psi / ranks, 0.1), 3: (16 * psi / ranks, 0.1),
        ]
        for stage in 0...3 {
            let b = Bytes()
            _ = try losses(ranks: Int(ranks), zero: stage, steps: 2, bytes: b)
            let (want, tolerance) = formula[stage]!
            XCTAssertLessThanOrEqual(abs(Double(b.betweenSteps) - want) / want, tolerance,
                                     "zero \(stage): \(b.betweenSteps) bytes between steps, formula \(Int(want)) (Ψ = \(Int(psi)))")
            let n = ranks, split = b.heldSplit
            let parts: [(MemoryCategory?, Int, Double)] = [
                (.parameters, split[.parameters], stage == 3 ? 4 * psi / n : 4 * psi),
                (.optimizerState, split[.optimizerState], stage == 0 ? 8 * psi : 8 * psi / n),
                (nil, split[.gradients] + split[.communication], [0: 4 * psi, 1: 4 * psi + 4 * psi / n][stage] ?? 4 * psi / n),
            ]
            for (category, bytes, want) in parts {
                XCTAssertLessThanOrEqual(abs(Double(bytes) - want) / want, 0.1,
                                         "zero \(stage) \(category?.name ?? "gradients and buckets"): \(bytes) bytes, formula \(Int(want)); split \(split.named)")
            }
            XCTAssertLessThan(Double(split[.activations]), 0.02 * psi, "zero \(stage): activations held between steps \(split.named)")
            XCTAssertEqual(split.total, b.betweenSteps)
        }
    }

    /// Between steps a ZeRO-3 rank holds its chunks of the parameters, gradients and both
    /// Adam moments: 16Ψ/N bytes (the ZeRO paper's accounting), within the padding. While
    /// the model is built it never holds more than that plus one unit whole (the largest:
    /// a block here); a checkpoint's pieces add nothing (views of its chunks).
    func testZeroStage3HoldsSixteenPsiOverNBuildsWithOneUnitWholeAndSavesWithNothingMore() throws {
        let ranks = 4
        let psi = try GPT(FullyShardedTests.config, seed: 5).parameterCount
        var rng = Philox(seed: 1)
        let block = try TransformerBlock(dModel: 32, heads: 2, std: 0.02, projStd: 0.02, dropout: 0, rng: &rng, on: CPUBackend.shared)
        let unitBytes = 4 * block.parameterCount
        let b = Bytes()
        _ = try losses(ranks: ranks, zero: 3, steps: 3, bytes: b)
        let states = 16 * psi / ranks
        // Between steps: the batch's few int32 tensors aside, only the model states.
        XCTAssertLessThanOrEqual(abs(Double(b.betweenSteps - states)) / Double(states), 0.1,
                                 "between steps \(b.betweenSteps) bytes, 16Ψ/N = \(states)")
        // Built: the parameter chunks and the gradient chunks (Adam's moments come at its first step).
        XCTAssertLessThanOrEqual(abs(Double(b.built - 8 * psi / ranks)) / Double(8 * psi / ranks), 0.05, "after building: \(b.built)")
        XCTAssertLessThanOrEqual(b.buildPeak, b.built + unitBytes, "peak while building \(b.buildPeak), built \(b.built), one block \(unitBytes)")
        XCTAssertEqual(b.checkpointExtra, 0, "a checkpoint's pieces added \(b.checkpointExtra) bytes")
        XCTAssertGreaterThan(b.gathers, 0)
    }

    /// A step's trace: each block gathered before its forward and again before its
    /// backward but the last, which stays whole from its forward to its backward; the root
    /// (two segments: embeddings, final norm) once; each segment reduce-scattered once,
    /// after its gathers; the collectives one after another on the communication lane; a
    /// wait only for a collective that ran.
    func testTheTimelineShowsEachUnitsGathersAndReductionsInOrder() throws {
        let b = Bytes()
        _ = try losses(ranks: 2, zero: 3, steps: 2, bytes: b)
        let comm = b.lastStepSpans.filter { $0.lane == .communication }, waits = b.lastStepSpans.filter { $0.lane == .compute }
        let gathers = comm.filter { $0.name.hasPrefix("all-gather") }, reductions = comm.filter { $0.name.hasPrefix("reduce-scatter") }
        let names = comm.map(\.name)
        XCTAssertEqual(gathers.map(\.name).filter { $0.hasSuffix("root") }.count, 2, "\(names)")
        for (unit, times) in [("unit 1", 2), ("unit 2", 2), ("unit 3", 1)] {
            XCTAssertEqual(gathers.filter { $0.name.hasSuffix(unit) }.count, times, "\(unit): \(names)")
            let reduced = names.firstIndex(of: "reduce-scatter of \(unit)'s gradients")
            XCTAssertNotNil(reduced, "\(unit) not reduced: \(names)")
            XCTAssertLessThan(names.lastIndex(of: "all-gather of \(unit)") ?? .max, reduced ?? 0, "\(names)")
        }
        XCTAssertEqual(reductions.count, 5, "\(names)")
        XCTAssertEqual(gathers.count + reductions.count, comm.count)
        for (a, next) in zip(comm, comm.dropFirst()) {
            XCTAssertLessThanOrEqual(a.start, a.end)
            XCTAssertLessThanOrEqual(a.end, next.start + 1e-9, "\(a.name) overlaps \(next.name)")
        }
        for w in waits {
            XCTAssertTrue(w.name.hasPrefix("wait: "), w.name)
            XCTAssertTrue(comm.contains { "wait: " + $0.name == w.name }, "\(w.name) without its collective")
        }
    }
}

/// A ResNet under ZeRO-3: each basic block a unit, gathered around its forward and
/// backward; the stem and head the root.
final class FullyShardedResNetTests: XCTestCase {
    /// Per-step losses of a narrow ResNet-20 on 8 fixed 8x8 images split over `ranks`, at
    /// ZeRO stage `zero`, and how many units rank 0's sharding reduce-scattered in the last step.
    func losses(ranks: Int, zero: Int) throws -> (losses: [Float], reduced: Int) {
        let all = try InProcessWorld.run(size: ranks) { comm -> ([Float], Int) in
            let backend = CPUBackend(threads: 1)
            let full = zero == 3 ? FullyShardedParameters(communicator: comm, backend: backend) : nil
            let model = try ResNet(depth: 20, width: 4, channels: 3, classes: 10, seed: 5, sharding: full, on: backend)
            try full?.shard([model], as: nil)
            full?.timeline.isRecording = true
            let sharding = try dataParallelSharding(zero: zero, parameters: model.namedParameters(),
                                                    optimizer: SGD(model.namedParameters(), lr: 0.05, momentum: 0.9), group: comm,
                                                    bucketBytes: 4 << 10, fullySharded: full)
            var rng = Philox(seed: 3)
            let x = Tensor.uniform([8, 3, 8, 8], low: 0, high: 1, rng: &rng, on: backend)
            let y = Tensor(indices: (0..<8).map { Int32($0 % 10) }, shape: [8], on: backend)
            let rows = (comm.rank * 8 / ranks)..<((comm.rank + 1) * 8 / ranks)
            let (xs, ys) = (try x.slice(axis: 0, rows), try y.slice(axis: 0, rows))
            var out: [Float] = [], reduced = 0
            for _ in 0..<4 {
                _ = full?.timeline.take()
                sharding.optimizer.zeroGrad()
                let loss = try (full as (any UnitSharding)?).forward(nil) { try model(xs) }.crossEntropy(targets: ys)
                try loss.backward()
                try sharding.reduceGradients()
                try sharding.optimizer.step()
                out.append(Float(try comm.average(Double(loss.item))))
                reduced = full?.timeline.take().filter { $0.name.hasPrefix("reduce-scatter") }.count ?? 0
            }
            return (out, reduced)
        }
        XCTAssertEqual(Set(all.map(\.0)).count, 1, "ranks disagree on the global loss")
        return all[0]
    }

    func testZeroStage3ResNetShardsEachBlockAndIsBitIdenticalToPlainDataParallel() throws {
        let plain = try losses(ranks: 2, zero: 0)
        let sharded = try losses(ranks: 2, zero: 3)
        XCTAssertLessThan(plain.losses.last!, plain.losses.first!, "training should make progress")
        XCTAssertEqual(sharded.losses, plain.losses)
        // Nine blocks, and the root (stem and head, sharded together once the model is built).
        XCTAssertEqual(sharded.reduced, 9 + 1)
    }
}
