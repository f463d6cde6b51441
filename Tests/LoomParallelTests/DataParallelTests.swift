import XCTest
import LoomCore
import LoomDistributed
import LoomNN
import LoomParallel

/// Exactness proves parallelism: data parallel training with global batch B over N ranks
/// reproduces the single-process losses with batch B.
final class DataParallelTests: XCTestCase {
    enum Kind { case mlp, gpt }

    /// Fixed global batches, a pure function of the step.
    func batch(_ kind: Kind, step: Int, rows: Range<Int>) -> (Tensor, Tensor) {
        var rng = Philox(seed: 77).derived(UInt64(step))
        switch kind {
        case .mlp:
            let x = (0..<(16 * 784)).map { _ in rng.nextFloat() }, y = (0..<16).map { _ in Int32(rng.nextInt(below: 10)) }
            return (Tensor(Array(x[(rows.lowerBound * 784)..<(rows.upperBound * 784)]), shape: [rows.count, 784]),
                    Tensor(indices: Array(y[rows]), shape: [rows.count]))
        case .gpt:
            let t = (0..<(8 * 33)).map { _ in Int32(rng.nextInt(below: 64)) }
            var x: [Int32] = [], y: [Int32] = []
            for r in rows { x += t[(r * 33)..<(r * 33 + 32)]; y += t[(r * 33 + 1)..<(r * 33 + 33)] }
            return (Tensor(indices: x, shape: [rows.count, 32]), Tensor(indices: y, shape: [rows.count, 32]))
        }
    }

    /// Per-step global losses of 20 steps on `ranks` ranks (1: plain single process).
    /// Rank 0's bytes, counted from the model on: live once the last step's gradients are
    /// reduced (`synchronize` returned).
    final class Held: @unchecked Sendable {  // written by rank 0's thread, read after the world ends
        let meter = MemoryMeter()
        var afterReduce = 0
    }

    func losses(_ kind: Kind, ranks: Int, zero: Int = 0, steps: Int = 20, held: Held? = nil) throws -> [Float] {
        let global = kind == .mlp ? 16 : 8
        let run = { (comm: Communicator?) throws -> [Float] in
            let backend = CPUBackend(threads: 1)
            let model: Module
            let loss: (Tensor, Tensor) throws -> Tensor
            switch kind {
            case .mlp:
                let m = MLP(sizes: [784, 64, 10], seed: 5, on: backend); model = m
                loss = { try m($0).crossEntropy(targets: $1) }
            case .gpt:
                let m = try GPT(GPTConfig(vocabSize: 64, contextLength: 32, layers: 2, dModel: 32, heads: 2, dropout: 0), seed: 5, on: backend)
                model = m
                loss = { try m.loss(tokens: $0, targets: $1) }
            }
            var opt: Optimizer = kind == .mlp ? SGD(model.namedParameters(), lr: 0.05, momentum: 0.9) : Adam.adamW(model.namedParameters(), lr: 3e-3)
            let dp = try comm.map { try DataParallel(parameters: model.namedParameters(), communicator: $0, bucketBytes: 16 << 10, zero: zero) }
            if zero > 0, let dp { opt = try ZeroOptimizer(dataParallel: dp, template: opt) }
            let rank = comm?.rank ?? 0, size = comm?.size ?? 1
            let local = global / size
            var out: [Float] = []
            for step in 0..<steps {
                let (x, y) = self.batch(kind, step: step, rows: (rank * local)..<((rank + 1) * local))
                let xb = try Tensor(uninitialized: x.shape, dtype: x.dtype, on: backend); xb.backend.copy(x, into: xb)
                let yb = try Tensor(uninitialized: y.shape, dtype: y.dtype, on: backend); yb.backend.copy(y, into: yb)
                opt.zeroGrad()
                let l = try loss(xb, yb)
                try l.backward()
                try dp?.synchronize()
                if let held, rank == 0 { held.afterReduce = held.meter.liveBytes }
                try opt.step()
                out.append(try comm.map { Float(try $0.average(Double(l.item))) } ?? l.item)
            }
            return out
        }
        if ranks == 1 { return try run(nil) }
        let all = try InProcessWorld.run(size: ranks) { comm in
            guard let held, comm.rank == 0 else { return try run(comm) }
            return try MemoryMeter.measuring(held.meter) { try run(comm) }
        }
        XCTAssertEqual(Set(all.map { $0 }).count, 1, "ranks disagree on the global loss")
        return all[0]
    }

    func assertClose(_ a: [Float], _ b: [Float], _ what: String) {
        XCTAssertEqual(a.count, b.count)
        for (i, (x, y)) in zip(a, b).enumerated() {
            XCTAssertLessThanOrEqual(abs(x - y) / max(abs(x), 1e-6), 1e-5, "\(what) step \(i): \(x) vs \(y)")
        }
    }

    func testMLPDataParallelMatchesSingleProcess() throws {
        let single = try losses(.mlp, ranks: 1)
        XCTAssertLessThan(single.last!, single.first!, "training should make progress")
        assertClose(try losses(.mlp, ranks: 2), single, "mlp dp2")
        assertClose(try losses(.mlp, ranks: 4), single, "mlp dp4")
    }

    /// ZeRO-1 and ZeRO-2 apply the same elementwise updates to the same averaged
    /// gradients: their losses are bit-identical to plain data parallelism's.
    func testZeroStages1And2AreBitIdenticalToPlainDataParallel() throws {
        for kind in [Kind.mlp, .gpt] {
            for ranks in [2, 4] {
                let plain = try losses(kind, ranks: ranks)
                for stage in [1, 2] {
                    XCTAssertEqual(try losses(kind, ranks: ranks, zero: stage), plain, "\(kind) dp\(ranks) zero \(stage)")
                }
            }
        }
    }

    /// ZeRO-2 keeps a rank's shard of the gradients, not the whole: once the gradients are
    /// reduced, a ZeRO-1 rank holds every parameter's gradient (4Ψ bytes) and every
    /// bucket's buffer (4Ψ), a ZeRO-2 rank only the shards (4Ψ/N), so it holds at least the
    /// whole gradient's bytes fewer. (Measured then, not at the peak: which moment of a
    /// step is the peak depends on when the in-flight reductions finish.)
    func testZeroStage2HoldsLessThanStage1ByTheWholeGradient() throws {
        // The GPT: many tensors in many buckets (one huge tensor would be a bucket alone,
        // and its gradient and its bucket are both alive while one is copied to the other).
        let gpt = try GPT(GPTConfig(vocabSize: 64, contextLength: 32, layers: 2, dModel: 32, heads: 2, dropout: 0), seed: 5)
        let gradientBytes = 4 * gpt.parameterCount
        var held: [Int: Int] = [:]
        for stage in [1, 2] {
            let h = Held()
            _ = try losses(.gpt, ranks: 4, zero: stage, steps: 3, held: h)
            held[stage] = h.afterReduce
        }
        XCTAssertGreaterThanOrEqual(held[1]! - held[2]!, gradientBytes,
                                    "bytes held after the reduction: zero 1 \(held[1]!), zero 2 \(held[2]!), whole gradient \(gradientBytes)")
    }

    func testGPTDataParallelMatchesSingleProcess() throws {
        let single = try losses(.gpt, ranks: 1)
        assertClose(try losses(.gpt, ranks: 2), single, "gpt dp2")
        assertClose(try losses(.gpt, ranks: 4), single, "gpt dp4")
    }
}

/// Forwards to another communicator, counting the gradient collectives started.
final class CountingCommunicator: Communicator, @unchecked Sendable {
    let base: Communicator
    var started = 0
    init(_ base: Communicator) { self.base = base }
    var rank: Int { base.rank }
    var size: Int { base.size }
    var timeout: Double { base.timeout }
    func allReduceAsync(_ t: Tensor, _ op: ReduceKind, label: String) -> CommRequest {
        if label.contains("gradient bucket") { started += 1 }
        return base.allReduceAsync(t, op, label: label)
    }
    func broadcast(_ t: Tensor, root: Int) throws { try base.broadcast(t, root: root) }
    func allGatherAsync(_ i: Tensor, into o: Tensor, label: String) -> CommRequest { base.allGatherAsync(i, into: o, label: label) }
    func reduceScatter(_ i: Tensor, into o: Tensor, _ op: ReduceKind) throws { try base.reduceScatter(i, into: o, op) }
    func reduceScatterAsync(_ i: Tensor, into o: Tensor, _ op: ReduceKind, label: String) -> CommRequest {
        base.reduceScatterAsync(i, into: o, op, label: label)
    }
    func send(_ t: Tensor, to peer: Int, tag: Int) throws { try base.send(t, to: peer, tag: tag) }
    func receive(into t: Tensor, from peer: Int, tag: Int) throws { try base.receive(into: t, from: peer, tag: tag) }
    func barrier(timeout: Double?) throws { try base.barrier(timeout: timeout) }
    func split(color: Int, key: Int) throws -> Communicator { try base.split(color: color, key: key) }
}

final class GradientAccumulationTests: XCTestCase {
    /// Micro-steps with syncGradients off communicate nothing; the last one all-reduces
    /// each bucket once, while its backward runs (before synchronize is called).
    func testOnlyTheLastMicroStepCommunicates() throws {
        let counts = try InProcessWorld.run(size: 2) { comm -> [Int] in
            let counting = CountingCommunicator(comm)
            let model = MLP(sizes: [8, 16, 4], seed: 1)
            let dp = try DataParallel(parameters: model.namedParameters(), communicator: counting, bucketBytes: 256)
            let x = try Tensor.ones([2, 8]), y = Tensor(indices: [1, 2], shape: [2])
            var seen: [Int] = []
            for micro in 0..<3 {
                dp.syncGradients = micro == 2
                try model(x).crossEntropy(targets: y).scaled(1 / 3).backward()
                seen.append(counting.started)
            }
            try dp.synchronize()
            seen.append(counting.started)
            return seen + [dp.bucketCount]
        }
        let buckets = counts[0].last!
        XCTAssertGreaterThan(buckets, 1)
        XCTAssertEqual(Array(counts[0].dropLast()), [0, 0, buckets, buckets])
    }
}
