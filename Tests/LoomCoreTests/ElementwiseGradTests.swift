import Foundation
import XCTest
import LoomCore

final class ElementwiseGradTests: XCTestCase {
    func testBinaryOpsWithBroadcasting() throws {
        let shapes: [([Int], [Int])] = [([3, 4], [3, 4]), ([2, 3, 4], [4]), ([2, 3, 4], [3, 1]), ([2, 1, 4], [1, 3, 1]), ([5], [])]
        for (i, (sa, sb)) in shapes.enumerated() {
            try checkGradients("add \(sa) \(sb)", inputs: [randn(sa, seed: 1), randn(sb, seed: 2)]) { try $0[0] + $0[1] }
            try checkGradients("sub \(sa) \(sb)", inputs: [randn(sa, seed: 3), randn(sb, seed: 4)]) { try $0[0] - $0[1] }
            try checkGradients("mul \(sa) \(sb)", inputs: [randn(sa, seed: 5), randn(sb, seed: 6)]) { try $0[0] * $0[1] }
            let denominator = randn(sb, seed: UInt64(7 + i)).floats.map { 1.5 + abs($0) }
            try checkGradients("div \(sa) \(sb)", inputs: [randn(sa, seed: 8), Tensor(denominator, shape: sb)]) { try $0[0] / $0[1] }
        }
    }

    func testBroadcastForwardValues() throws {
        let a = Tensor([1, 2, 3, 4, 5, 6], shape: [2, 3])
        let col = Tensor([10, 20], shape: [2, 1])
        XCTAssertEqual(try (a + col).floats, [11, 12, 13, 24, 25, 26])
        let row = Tensor([1, 0, -1], shape: [3])
        XCTAssertEqual(try (a * row).floats, [1, 0, -3, 4, 0, -6])
    }

    func testUnaryOps() throws {
        try checkGradients("relu", inputs: [awayFromZero([4, 5], seed: 1)]) { try $0[0].relu() }
        try checkGradients("gelu", inputs: [randn([4, 5], seed: 2, std: 2)]) { try $0[0].gelu() }
        try checkGradients("tanh", inputs: [randn([4, 5], seed: 3)]) { try $0[0].tanh() }
        try checkGradients("sigmoid", inputs: [randn([4, 5], seed: 4)]) { try $0[0].sigmoid() }
        try checkGradients("exp", inputs: [randn([4, 5], seed: 5)]) { try $0[0].exp() }
        let positive = Tensor(randn([4, 5], seed: 6).floats.map { 0.5 + abs($0) }, shape: [4, 5])
        try checkGradients("log", inputs: [positive]) { try $0[0].log() }
        try checkGradients("sqrt", inputs: [positive]) { try $0[0].sqrt() }
        try checkGradients("pow", inputs: [positive]) { try $0[0].pow(1.7) }
        try checkGradients("square", inputs: [randn([4, 5], seed: 7)]) { try $0[0].square() }
        try checkGradients("neg scale shift", inputs: [randn([4, 5], seed: 8)]) { try (try -$0[0]).scaled(3).shifted(2) }
    }

    func testFastTranscendentalsMatchLibm() {
        // exp8/tanh8/gelu8 are polynomial approximations: check them against libm over a wide range.
        var worstExp: Float = 0, worstTanh: Float = 0
        for i in 0..<2000 {
            let x = -20 + Float(i) * 0.02
            let e = exp8(F8(repeating: x))[0], ref = Foundation.exp(x)
            worstExp = max(worstExp, abs(e - ref) / ref)
            worstTanh = max(worstTanh, abs(tanh8(F8(repeating: x))[0] - Foundation.tanh(x)))
        }
        XCTAssertLessThan(worstExp, 3e-7)
        XCTAssertLessThan(worstTanh, 3e-7)
    }

    func testReductions() throws {
        try checkGradients("sum all", inputs: [randn([3, 4, 5], seed: 1)]) { try $0[0].sum() }
        try checkGradients("sum axis 1", inputs: [randn([3, 4, 5], seed: 2)]) { try $0[0].sum(axes: [1]) }
        try checkGradients("sum axes 0,2 keep", inputs: [randn([3, 4, 5], seed: 3)]) { try $0[0].sum(axes: [0, 2], keepDims: true) }
        try checkGradients("mean", inputs: [randn([3, 4, 5], seed: 4)]) { try $0[0].mean(axes: [-1]) }
        try checkGradients("max axis", inputs: [randn([3, 4, 5], seed: 5)]) { try $0[0].max(axis: 1) }
        let x = Tensor([1, 5, 2, 7, 0, 3], shape: [2, 3])
        XCTAssertEqual(try x.sum(axes: [1]).floats, [8, 10])
        XCTAssertEqual(try x.sum(axes: [0]).floats, [8, 5, 5])
        XCTAssertEqual(try x.max(axis: 1).floats, [5, 7])
        XCTAssertEqual(try x.argmax(axis: 1).ints, [1, 0])
        XCTAssertEqual(try x.mean().item, 3)
    }
}
