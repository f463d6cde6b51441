import XCTest
import LoomCore
import LoomNN

final class OptimizerTests: XCTestCase {
    /// f(w) = sum(w^2)/2 has gradient w; hand-computed trajectories of PyTorch's update rules.
    func run(_ make: ([(name: String, tensor: Tensor)]) -> Optimizer, steps: Int) throws -> [Float] {
        let w = parameter(Tensor([1, -2], shape: [2]))
        let opt = make([("w", w)])
        for _ in 0..<steps {
            opt.zeroGrad()
            try (w * w).sum().scaled(0.5).backward()
            try opt.step()
        }
        return w.floats
    }

    func testSGDMomentumAndNesterov() throws {
        // momentum 0.9, lr 0.1: v1 = g0 = w0; w1 = 0.9 w0; g1 = 0.9 w0; v2 = 0.9 w0 + 0.9 w0 = 1.8 w0; w2 = 0.72 w0
        let m = try run({ SGD($0, lr: 0.1, momentum: 0.9) }, steps: 2)
        XCTAssertEqual(m[0], 0.72, accuracy: 1e-6)
        XCTAssertEqual(m[1], -1.44, accuracy: 1e-6)
        // nesterov: step uses g + mu v: w1 = w0 - 0.1 (1 + 0.9) w0 = 0.81 w0
        let n = try run({ SGD($0, lr: 0.1, momentum: 0.9, nesterov: true) }, steps: 1)
        XCTAssertEqual(n[0], 0.81, accuracy: 1e-6)
        // weight decay 0.5 adds 0.5 w to the gradient: w1 = w0 - 0.1 * 1.5 w0
        XCTAssertEqual(try run({ SGD($0, lr: 0.1, weightDecay: 0.5) }, steps: 1)[0], 0.85, accuracy: 1e-6)
    }

    func testAdamFirstStepIsLrTimesSign() throws {
        // Bias correction makes Adam's first step lr * g / (|g| + eps).
        let w = try run({ Adam($0, lr: 0.01) }, steps: 1)
        XCTAssertEqual(w[0], 0.99, accuracy: 1e-6)
        XCTAssertEqual(w[1], -1.99, accuracy: 1e-6)
        // AdamW decays the weight first: w (1 - lr wd) - lr sign(g)
        let d = try run({ Adam.adamW($0, lr: 0.01, weightDecay: 0.1) }, steps: 1)
        XCTAssertEqual(d[0], 1 * (1 - 0.001) - 0.01, accuracy: 1e-6)
    }

    func testScheduleAndClipping() throws {
        let s = LRSchedule.warmupCosine(peak: 1, warmup: 10, total: 110, minimum: 0.1)
        XCTAssertEqual(s.learningRate(at: 0), 0.1, accuracy: 1e-6)
        XCTAssertEqual(s.learningRate(at: 9), 1, accuracy: 1e-6)
        XCTAssertEqual(s.learningRate(at: 60), 0.55, accuracy: 1e-5)
        XCTAssertEqual(s.learningRate(at: 500), 0.1, accuracy: 1e-6)
        let p = parameter(Tensor([3, 4], shape: [2]))
        p.grad = Tensor([3, 4], shape: [2])
        XCTAssertEqual(clipGradNorm([p], maxNorm: 1), 5, accuracy: 1e-5)
        XCTAssertEqual(p.grad!.floats[0], 0.6, accuracy: 1e-5)
    }

    func testTrainingIsBitIdenticalForTheSameSeed() throws {
        func train() throws -> [Float] {
            let model = try GPT(GPTConfig(vocabSize: 16, contextLength: 8, layers: 1, dModel: 16, heads: 2, dropout: 0.1), seed: 3)
            let opt = Adam.adamW(model.namedParameters(), lr: 1e-3)
            var rng = Philox(seed: 9)
            var losses: [Float] = []
            for _ in 0..<3 {
                let toks = (0..<16).map { _ in Int32(rng.nextInt(below: 16)) }
                opt.zeroGrad()
                let loss = try model.loss(tokens: Tensor(indices: toks, shape: [2, 8]), targets: Tensor(indices: toks.reversed(), shape: [2, 8]))
                try loss.backward(); try opt.step()
                losses.append(loss.item)
            }
            return losses
        }
        XCTAssertEqual(try train(), try train())
    }

    /// Under bf16 the optimizers write each weight's next rounding in their update pass
    /// (OperandCopy): the losses are bit for bit those of rounding the weights afresh in every
    /// step (here forced by reading every parameter after its update), with SGD and AdamW, and
    /// with the last step's graph still alive (then the update writes a new copy, not the one
    /// the graph saved).
    func testBF16TrainingOnTheOptimizersRoundingEqualsRoundingEveryStep() throws {
        var rng = Philox(seed: 5)
        let x = Tensor.uniform([24, 20], low: -1, high: 1, rng: &rng)
        let y = Tensor(indices: (0..<24).map { _ in Int32(rng.nextInt(below: 6)) }, shape: [24])
        func train(_ make: ([(name: String, tensor: Tensor)]) -> Optimizer, roundingAfresh: Bool) throws -> [Float] {
            let model = MLP(sizes: [20, 48, 32, 6], seed: 2)
            let opt = make(model.namedParameters())
            let weights = model.namedParameters().map(\.tensor).filter { $0.rank == 2 }
            var losses: [Float] = [], previous: Tensor?
            for step in 0..<6 {
                let loss = try withPrecision(.bfloat16) { try model(x).crossEntropy(targets: y) }
                opt.zeroGrad()
                try loss.backward(retainGraph: step % 2 == 1)
                if step % 2 == 1 {
                    previous = loss  // this graph (and the copies it saved) stays alive across the update
                    XCTAssertNotNil(previous)
                }
                try opt.step()
                if roundingAfresh {
                    for p in model.namedParameters() { _ = p.tensor.floats }
                } else {
                    XCTAssertTrue(weights.allSatisfy(\.hasKeptBF16Operand), "step \(step): the update wrote the next rounding")
                }
                losses.append(loss.item)
            }
            return losses
        }
        for (name, make) in [("sgd", { SGD($0, lr: 0.1, momentum: 0.9) as Optimizer }),
                             ("adamw", { Adam.adamW($0, lr: 0.01, weightDecay: 0.1) as Optimizer })] {
            let kept = try train(make, roundingAfresh: false), afresh = try train(make, roundingAfresh: true)
            XCTAssertEqual(kept.map(\.bitPattern), afresh.map(\.bitPattern), name)
            XCTAssertLessThan(kept.last!, kept.first!, "\(name) trains")
        }
    }
}
