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
}
