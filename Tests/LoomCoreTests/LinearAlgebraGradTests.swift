import XCTest
import LoomCore

final class LinearAlgebraGradTests: XCTestCase {
    func testMatmulValues() throws {
        let a = Tensor([1, 2, 3, 4, 5, 6], shape: [2, 3])
        let b = Tensor([1, 0, 0, 1, 1, 1], shape: [3, 2])
        XCTAssertEqual(try a.matmul(b).floats, [4, 5, 10, 11])
        XCTAssertEqual(try a.matmul(a, transposeB: true).floats, [14, 32, 32, 77])
        XCTAssertEqual(try a.matmul(a, transposeA: true).shape, [3, 3])
    }

    func testMatmulGradientsAllTransposes() throws {
        for ta in [false, true] {
            for tb in [false, true] {
                let a = randn(ta ? [4, 3] : [3, 4], seed: 1), b = randn(tb ? [5, 4] : [4, 5], seed: 2)
                try checkGradients("matmul ta=\(ta) tb=\(tb)", inputs: [a, b]) { try $0[0].matmul($0[1], transposeA: ta, transposeB: tb) }
            }
        }
    }

    func testBatchedAndFoldedMatmul() throws {
        try checkGradients("batched", inputs: [randn([2, 3, 3, 4], seed: 1), randn([2, 3, 4, 2], seed: 2)]) { try $0[0].matmul($0[1]) }
        try checkGradients("batched tb", inputs: [randn([2, 3, 4], seed: 3), randn([2, 5, 4], seed: 4)]) { try $0[0].matmul($0[1], transposeB: true) }
        try checkGradients("folded", inputs: [randn([2, 3, 4], seed: 5), randn([4, 6], seed: 6)]) { try $0[0].matmul($0[1]) }
        try checkGradients("folded tb", inputs: [randn([2, 3, 4], seed: 7), randn([6, 4], seed: 8)]) { try $0[0].matmul($0[1], transposeB: true) }
    }

    func testLinear() throws {
        try checkGradients("linear+bias", inputs: [randn([2, 3, 5], seed: 1), randn([4, 5], seed: 2), randn([4], seed: 3)]) {
            try $0[0].linear(weight: $0[1], bias: $0[2])
        }
        try checkGradients("linear", inputs: [randn([6, 5], seed: 4), randn([4, 5], seed: 5)]) { try $0[0].linear(weight: $0[1], bias: nil) }
        let y = try Tensor([1, 2], shape: [1, 2]).linear(weight: Tensor([1, 1, 2, -1], shape: [2, 2]), bias: Tensor([10, 20], shape: [2]))
        XCTAssertEqual(y.floats, [13, 20])
    }

    func testAttentionMatchesComposedOpsForwardAndBackward() throws {
        // The attention kernel (on the CPU: causal blocks of 32 rows only) against the same
        // computation from matmul/mask/softmax/permute, values and input gradients; T = 70
        // spans two whole blocks and a partial one.
        for (b, t, h, d) in [(2, 5, 2, 3), (1, 70, 2, 4)] {
            let c = h * d
            let qkv = randn([b, t, 3 * c], seed: 11)
            let projection = randn([b, t, c], seed: 13)
            func gradient(_ f: (Tensor) throws -> Tensor) throws -> (value: [Float], grad: [Float]) {
                let x = try Tensor(qkv.floats, shape: qkv.shape)
                x.requiresGrad = true
                let y = try f(x)
                try y.mul(projection).sum().backward()
                return (y.floats, x.grad!.floats)
            }
            let fused = try gradient { try $0.causalSelfAttention(heads: h) }
            let composed = try gradient { x in
                let parts = try x.split([c, c, c], axis: 2).map { try $0.reshaped([b, t, h, d]).permuted([0, 2, 1, 3]) }
                let att = try parts[0].matmul(parts[1], transposeB: true).scaled(1 / Float(d).squareRoot()).maskedCausal().softmax()
                return try att.matmul(parts[2]).permuted([0, 2, 1, 3]).reshaped([b, t, c])
            }
            for (x, y) in zip(fused.value, composed.value) { XCTAssertEqual(x, y, accuracy: 1e-5, "T = \(t)") }
            for (x, y) in zip(fused.grad, composed.grad) { XCTAssertEqual(x, y, accuracy: 1e-5, "T = \(t) gradient") }
        }
        try checkGradients("attention", inputs: [randn([2, 4, 12], seed: 12)]) { try $0[0].causalSelfAttention(heads: 2) }
    }
}
