import Foundation
import XCTest
import LoomCore

final class NNGradTests: XCTestCase {
    func testSoftmaxFamily() throws {
        try checkGradients("softmax", inputs: [randn([3, 7], seed: 1)]) { try $0[0].softmax() }
        try checkGradients("logSoftmax", inputs: [randn([3, 7], seed: 2)]) { try $0[0].logSoftmax() }
        try checkGradients("masked softmax", inputs: [randn([2, 4, 4], seed: 3)]) { try $0[0].maskedCausal().softmax() }
        let p = try randn([5, 9], seed: 4).softmax().floats
        for r in 0..<5 { XCTAssertEqual(p[(r * 9)..<(r * 9 + 9)].reduce(0, +), 1, accuracy: 1e-6) }
    }

    func testLayerNorm() throws {
        try checkGradients("layerNorm", inputs: [randn([4, 10], seed: 1), randn([10], seed: 2), randn([10], seed: 3)]) {
            try $0[0].layerNorm(gamma: $0[1], beta: $0[2])
        }
        let y = try randn([3, 16], seed: 4, std: 5).shifted(3).layerNorm(gamma: .ones([16]), beta: .zeros([16])).floats
        XCTAssertEqual(y[0..<16].reduce(0, +) / 16, 0, accuracy: 1e-5)
    }

    func testBatchNormTraining() throws {
        let rm = try Tensor.zeros([3]), rv = try Tensor.ones([3])
        try checkGradients("batchNorm", inputs: [randn([4, 3, 2, 2], seed: 1), randn([3], seed: 2), randn([3], seed: 3)]) {
            try $0[0].batchNorm(gamma: $0[1], beta: $0[2], runningMean: rm, runningVar: rv, training: true)
        }
        // Running statistics moved towards the batch's.
        XCTAssertNotEqual(rm.floats, [0, 0, 0])
    }

    func testConvAndPool() throws {
        try checkGradients("conv2d pad 1", inputs: [randn([2, 2, 5, 5], seed: 1), randn([3, 2, 3, 3], seed: 2), randn([3], seed: 3)]) {
            try $0[0].conv2d(weight: $0[1], bias: $0[2], stride: 1, padding: 1)
        }
        try checkGradients("conv2d stride 2", inputs: [randn([1, 2, 6, 6], seed: 4), randn([2, 2, 3, 3], seed: 5)]) {
            try $0[0].conv2d(weight: $0[1], bias: nil, stride: 2, padding: 0)
        }
        try checkGradients("maxPool2d", inputs: [randn([2, 2, 4, 6], seed: 6)]) { try $0[0].maxPool2d(kernel: 2) }
        // A 1x1 identity kernel reproduces the input.
        let x = randn([1, 1, 3, 3], seed: 7)
        XCTAssertEqual(try x.conv2d(weight: .ones([1, 1, 1, 1]), bias: nil).floats, x.floats)
        let pooled = try Tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], shape: [1, 1, 4, 4]).maxPool2d(kernel: 2)
        XCTAssertEqual(pooled.floats, [6, 8, 14, 16])
    }

    func testEmbeddingAndDropout() throws {
        let idx = Tensor(indices: [2, 0, 2, 1], shape: [2, 2])
        try checkGradients("embedding", inputs: [randn([3, 4], seed: 1)]) { try Tensor.embedding($0[0], indices: idx) }
        try checkGradients("dropout", inputs: [randn([8, 8], seed: 2)]) { x in
            var rng = Philox(seed: 5)  // the same mask at every evaluation
            return try x[0].dropout(p: 0.3, rng: &rng)
        }
        var rng = Philox(seed: 1)
        let kept = try Tensor.ones([10_000]).dropout(p: 0.25, rng: &rng).floats
        let fraction = Float(kept.filter { $0 > 0 }.count) / 10_000
        XCTAssertEqual(fraction, 0.75, accuracy: 0.02)
        XCTAssertEqual(kept.first { $0 > 0 }!, 1 / 0.75, accuracy: 1e-6)
    }

    func testLosses() throws {
        let targets = Tensor(indices: [1, 0, -100, 4], shape: [4])
        try checkGradients("crossEntropy", inputs: [randn([4, 5], seed: 1)]) { try $0[0].crossEntropy(targets: targets) }
        try checkGradients("mse", inputs: [randn([3, 4], seed: 2), randn([3, 4], seed: 3)]) { try $0[0].mseLoss($0[1]) }
        // Uniform logits: loss = log(classes), whatever the target; ignored rows do not count.
        let l = try Tensor.zeros([4, 5]).crossEntropy(targets: targets).item
        XCTAssertEqual(l, Foundation.log(5), accuracy: 1e-6)
    }
}
