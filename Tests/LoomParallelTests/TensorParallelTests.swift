import XCTest
import LoomCore
import LoomDistributed
import LoomNN
import LoomParallel

final class TopologyTests: XCTestCase {
    /// The worked example of Topology's documentation, 8 ranks as dp 2 × pp 2 × tp 2.
    func testEightRankLayout() {
        let t = Topology(dp: 2, pp: 2, tp: 2)
        XCTAssertEqual((0..<8).map { t.coordinates(of: $0).tp }, [0, 1, 0, 1, 0, 1, 0, 1])
        XCTAssertEqual((0..<8).map { t.coordinates(of: $0).pp }, [0, 0, 1, 1, 0, 0, 1, 1])
        XCTAssertEqual((0..<8).map { t.coordinates(of: $0).dp }, [0, 0, 0, 0, 1, 1, 1, 1])
        XCTAssertEqual(t.tensorGroup(of: 5), [4, 5])
        XCTAssertEqual(t.pipelineGroup(of: 5), [5, 7])
        XCTAssertEqual(t.dataGroup(of: 5), [1, 5])
        for r in 0..<8 { let c = t.coordinates(of: r); XCTAssertEqual(t.rank(dp: c.dp, pp: c.pp, tp: c.tp), r) }
    }

    func testProcessGroupsMatchTheLayout() throws {
        let t = Topology(dp: 2, pp: 2, tp: 2)
        let sums = try InProcessWorld.run(size: 8) { world -> [Float] in
            let g = try ProcessGroups(topology: t, world: world)
            // Summing the world rank over each group tells which ranks are in it.
            return try [g.tensor, g.pipeline, g.data].map { c in
                let x = Tensor([Float(world.rank)], shape: [1]); try c.allReduce(x); return x.item
            }
        }
        XCTAssertEqual(sums[5], [4 + 5, 5 + 7, 1 + 5])
        XCTAssertEqual(sums[0], [0 + 1, 0 + 2, 0 + 4])
    }

    /// A layout is not fixed to dp, pp and tp: a fourth axis (experts, say) is a name and
    /// a size, and its groups come from the same rule (the ranks that differ only there).
    func testANewAxisIsANameAndASizeWithItsOwnGroups() throws {
        let experts = Topology.Axis("ep")
        let t = Topology(axes: [(.data, 2), (experts, 3), (.pipeline, 1), (.tensor, 2)])
        XCTAssertEqual(t.size, 12)
        XCTAssertEqual(t.description, "dp 2 × ep 3 × pp 1 × tp 2")
        XCTAssertEqual(t.group(of: 9, along: experts), [7, 9, 11])
        XCTAssertEqual(t.group(of: 9, along: .tensor), [8, 9])
        XCTAssertEqual(t.group(of: 9, along: .data), [3, 9])
        XCTAssertEqual(t.group(of: 9, along: .pipeline), [9])
        XCTAssertEqual(t.label(9), "rank 9: dp 1, ep 1, pp 0, tp 1")
        let sums = try InProcessWorld.run(size: 12) { world -> Float in
            let x = Tensor([Float(world.rank)], shape: [1])
            try XCTUnwrap(try ProcessGroups(topology: t, world: world)[experts]).allReduce(x)
            return x.item
        }
        XCTAssertEqual(sums[9], 7 + 9 + 11)
        XCTAssertEqual(sums[0], 0 + 2 + 4)
    }

    /// A run's context: dp is what the world leaves after tp × pp; one process has no groups.
    func testAParallelContextLaysTheWorldOutAsDpPpTp() throws {
        XCTAssertNil(ParallelContext.single.data)
        XCTAssertThrowsError(try ParallelContext(world: nil, tensor: 2))
        let sizes = try InProcessWorld.run(size: 8) { world -> [Int] in
            let c = try ParallelContext(world: world, tensor: 2, pipeline: 2)
            return [c.topology.dp, c.data!.size, c.tensor!.size, c.pipeline!.size]
        }
        XCTAssertEqual(sizes[3], [2, 2, 2, 2])
        let dataOnly = try InProcessWorld.run(size: 2) { world in try ParallelContext(world: world).tensor == nil }
        XCTAssertEqual(dataOnly, [true, true])
        XCTAssertThrowsError(try InProcessWorld.run(size: 3) { world in try ParallelContext(world: world, tensor: 2) })
    }
}

/// Tensor parallelism reproduces the single-process GPT: the same losses (to float32
/// rounding) over 20 AdamW steps, and after them the shards are slices of the
/// single-process parameters.
final class TensorParallelTests: XCTestCase {
    let config = GPTConfig(vocabSize: 64, contextLength: 16, layers: 2, dModel: 32, heads: 4, dropout: 0)

    func batch(_ step: Int) -> (Tensor, Tensor) {
        var rng = Philox(seed: 11).derived(UInt64(step))
        let t = (0..<(4 * 17)).map { _ in Int32(rng.nextInt(below: 64)) }
        var x: [Int32] = [], y: [Int32] = []
        for r in 0..<4 { x += t[(r * 17)..<(r * 17 + 16)]; y += t[(r * 17 + 1)..<(r * 17 + 17)] }
        return (Tensor(indices: x, shape: [4, 16]), Tensor(indices: y, shape: [4, 16]))
    }

    func testTensorParallelGPTMatchesSingleProcess() throws {
        try checkMatchesSingleProcess(config)
    }

    /// Dropout acts on the residual stream, which every TP rank holds whole: the ranks
    /// draw the single-process masks, so the run still matches.
    func testTensorParallelGPTWithDropoutMatchesSingleProcess() throws {
        var dropping = config
        dropping.dropout = 0.2
        try checkMatchesSingleProcess(dropping)
    }

    func checkMatchesSingleProcess(_ config: GPTConfig) throws {
        let steps = 20
        let reference = try GPT(config, seed: 3)
        let opt = Adam.adamW(reference.namedParameters(), lr: 3e-4)
        var single: [Float] = []
        for s in 0..<steps {
            let (x, y) = batch(s)
            opt.zeroGrad()
            let l = try reference.loss(tokens: x, targets: y)
            try l.backward(); try opt.step()
            single.append(l.item)
        }
        for tp in [2, 4] {
            let runs = try InProcessWorld.run(size: tp) { comm -> ([Float], [Float]) in
                let model = try GPT(config, seed: 3, on: CPUBackend(threads: 1), tensorGroup: comm)
                let opt = Adam.adamW(model.namedParameters(), lr: 3e-4)
                var losses: [Float] = []
                for s in 0..<steps {
                    let (x, y) = self.batch(s)
                    opt.zeroGrad()
                    let l = try model.loss(tokens: x, targets: y)
                    try l.backward(); try opt.step()
                    losses.append(l.item)
                }
                return (losses, model.blocks[1].mlp.fc.weight.floats)
            }
            for (rank, run) in runs.enumerated() {
                for (s, (a, b)) in zip(run.0, single).enumerated() {
                    XCTAssertLessThanOrEqual(abs(a - b) / b, 1e-5, "tp \(tp) rank \(rank) step \(s): \(a) vs \(b)")
                }
                // This rank's fc rows are its slice of the single-process fc weight.
                let h = 4 * config.dModel / tp
                let expected = try reference.blocks[1].mlp.fc.weight.slice(axis: 0, (rank * h)..<((rank + 1) * h)).floats
                let worst = zip(run.1, expected).map { abs($0 - $1) }.max()!
                XCTAssertLessThan(worst, 1e-5, "tp \(tp) rank \(rank) fc weights drifted by \(worst)")
            }
        }
    }
}
