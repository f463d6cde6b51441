import XCTest
import LoomCore

/// bf16 precision (`withPrecision(.bfloat16)`): each matrix product reads its operands
/// rounded to bf16 and accumulates in float32, forward and backward; nothing else changes.
final class MixedPrecisionTests: XCTestCase {
    func randomTensor(_ shape: [Int], seed: UInt64) -> Tensor {
        var rng = Philox(seed: seed)
        let t = Tensor((0..<shape.reduce(1, *)).map { _ in 2 * rng.nextFloat() - 1 }, shape: shape)
        t.requiresGrad = true
        return t
    }

    /// The values rounded to bf16 and widened again, as a float32 tensor with no graph.
    func rounded(_ t: Tensor) throws -> Tensor { try t.detach().cast(to: .bfloat16).cast(to: .float32) }

    func maxDifference(_ a: Tensor, _ b: Tensor) -> Float { zip(a.floats, b.floats).map { abs($0 - $1) }.max() ?? 0 }

    func testLinearInBF16EqualsFloat32LinearOnRoundedOperandsForwardAndBackward() throws {
        let x = randomTensor([37, 64], seed: 1), w = randomTensor([48, 64], seed: 2), b = randomTensor([48], seed: 3)
        let g = randomTensor([37, 48], seed: 4).detach()
        let y = try withPrecision(.bfloat16) { try x.linear(weight: w, bias: b) }
        XCTAssertEqual(y.dtype, .float32)
        try y.backward(seed: g)  // backward outside the scope: the product keeps its precision

        // The same products on operands rounded by hand, in float32.
        let xr = try rounded(x), wr = try rounded(w), gr = try rounded(g)
        let want = try xr.linear(weight: wr, bias: b.detach())
        let wantGX = try gr.matmul(wr), wantGW = try gr.matmul(xr, transposeA: true)
        XCTAssertLessThanOrEqual(maxDifference(y, want), 1e-5)
        XCTAssertLessThanOrEqual(maxDifference(try XCTUnwrap(x.grad), wantGX), 1e-5)
        XCTAssertLessThanOrEqual(maxDifference(try XCTUnwrap(w.grad), wantGW), 1e-5)
        XCTAssertEqual(try XCTUnwrap(b.grad).floats, try g.sum(axes: [0]).floats, "the bias gradient stays float32")
        XCTAssertEqual(x.grad?.dtype, .float32)

        // And bf16 is not float32: the unrounded product differs by far more.
        let exact = try x.detach().linear(weight: w.detach(), bias: b.detach())
        XCTAssertGreaterThan(maxDifference(y, exact), 1e-3)
    }

    /// On the CPU with oneDNN's bf16 kernels (AVX512-BF16 or AMX), a convolution under bf16
    /// reads x, the weights and dY rounded to bf16, forward and both gradients; the bias and
    /// every output stay float32. A stride and padding, and a geometry with 3 input channels
    /// (ResNet's first layer).
    func testConvolutionInBF16EqualsFloat32ConvolutionOnRoundedOperands() throws {
        try XCTSkipUnless(CPUBackend.shared.runsConvolution(operands: .bfloat16),
                          "oneDNN multiplies no bf16 here: convolutions stay float32 under bf16")
        for (c, stride, padding) in [(3, 1, 1), (8, 2, 0)] {
            let x = randomTensor([4, c, 12, 12], seed: 31), w = randomTensor([16, c, 3, 3], seed: 32), b = randomTensor([16], seed: 33)
            let y = try withPrecision(.bfloat16) { try x.conv2d(weight: w, bias: b, stride: stride, padding: padding) }
            XCTAssertEqual(y.dtype, .float32)
            let g = randomTensor(y.shape, seed: 34).detach()
            try y.backward(seed: g)

            let xr = try rounded(x), wr = try rounded(w)
            xr.requiresGrad = true; wr.requiresGrad = true
            let want = try xr.conv2d(weight: wr, bias: b.detach(), stride: stride, padding: padding)
            try want.backward(seed: try rounded(g))
            XCTAssertLessThanOrEqual(maxDifference(y, want), 1e-5, "C = \(c)")
            XCTAssertLessThanOrEqual(maxDifference(try XCTUnwrap(x.grad), try XCTUnwrap(xr.grad)), 1e-5, "C = \(c) dX")
            XCTAssertLessThanOrEqual(maxDifference(try XCTUnwrap(w.grad), try XCTUnwrap(wr.grad)), 1e-4, "C = \(c) dW")
            // dY summed unrounded: off by float32 sums (~1e-6 of ~20), not bf16's 2^-9.
            XCTAssertLessThanOrEqual(maxDifference(try XCTUnwrap(b.grad), try g.sum(axes: [0, 2, 3])), 1e-4,
                                     "C = \(c): the bias gradient stays float32")
            let exact = try x.detach().conv2d(weight: w.detach(), bias: b.detach(), stride: stride, padding: padding)
            XCTAssertGreaterThan(maxDifference(y, exact), 1e-3, "C = \(c): bf16 was not applied")
        }
    }

    func testMatmulInBF16EqualsFloat32MatmulOnRoundedOperands() throws {
        let a = randomTensor([3, 20, 24], seed: 5), b = randomTensor([3, 28, 24], seed: 6)
        let g = randomTensor([3, 20, 28], seed: 7).detach()
        let y = try withPrecision(.bfloat16) { try a.matmul(b, transposeB: true) }
        try y.backward(seed: g)
        let ar = try rounded(a), br = try rounded(b), gr = try rounded(g)
        XCTAssertLessThanOrEqual(maxDifference(y, try ar.matmul(br, transposeB: true)), 1e-5)
        XCTAssertLessThanOrEqual(maxDifference(try XCTUnwrap(a.grad), try gr.matmul(br)), 1e-5)
        XCTAssertLessThanOrEqual(maxDifference(try XCTUnwrap(b.grad), try gr.matmul(ar, transposeA: true)), 1e-5)
    }

    /// The backend's bf16 GEMM (Loom's kernel where the processor has AVX512-BF16, oneDNN's
    /// with AMX, else widened operands) on products large enough to be split across threads,
    /// by rows (op(B) packed once for both), by batch entry and along k, with transposes, a
    /// shared operand, alpha and beta: the exact product of the rounded operands, to float32
    /// rounding.
    func testBF16GEMMSplitAcrossThreadsEqualsFloat32OnRoundedOperands() throws {
        let backend = CPUBackend(threads: 2)
        for (m, n, k, batch, transA, transB, sharedB, alpha, beta) in [
            (300, 260, 200, 1, false, false, false, Float(1), Float(0)), (64, 300, 96, 1, true, true, false, 0.5, 1),
            (40, 36, 52, 4, false, true, true, 1, 1), (129, 17, 70, 3, true, false, false, 0.25, 0),
            // deep products (weight gradients), split along k across the threads: odd k, beta 1
            (40, 60, 1001, 1, true, false, false, 0.5, 1), (50, 33, 900, 1, false, true, false, 1, 0),
            // an input gradient (dY W: short, wide, neither transposed), split along k too
            (48, 300, 530, 1, false, false, false, 0.5, 1),
        ] {
            let a = randomTensor([batch, transA ? k : m, transA ? m : k], seed: 11).detach()
            let b = randomTensor([sharedB ? 1 : batch, transB ? n : k, transB ? k : n], seed: 12).detach()
            let c0 = randomTensor([batch, m, n], seed: 13).detach()
            func product(_ x: Tensor, _ y: Tensor) throws -> [Float] {
                let c = try c0.copied()
                backend.gemm(GEMMOperand(x, ld: transA ? m : k, batchStride: x.count / batch, transposed: transA),
                             GEMMOperand(y, ld: transB ? k : n, batchStride: sharedB ? 0 : y.count / batch, transposed: transB),
                             GEMMOperand(c, ld: n, batchStride: m * n), m: m, n: n, k: k, batch: batch, alpha: alpha, beta: beta)
                return c.floats
            }
            let got = try product(try a.cast(to: .bfloat16), try b.cast(to: .bfloat16))
            // The reference: a plain loop in double precision over the rounded operands.
            let ar = try rounded(a).floats, br = try rounded(b).floats, c = c0.floats
            var want = [Float](repeating: 0, count: batch * m * n)
            for e in 0..<batch {
                let ao = e * m * k, bo = sharedB ? 0 : e * k * n
                for i in 0..<m {
                    for j in 0..<n {
                        var sum = 0.0
                        for l in 0..<k {
                            sum += Double(ar[ao + (transA ? l * m + i : i * k + l)]) * Double(br[bo + (transB ? j * k + l : l * n + j)])
                        }
                        want[(e * m + i) * n + j] = Float(Double(alpha) * sum + Double(beta) * Double(c[(e * m + i) * n + j]))
                    }
                }
            }
            let worst = zip(got, want).map { abs($0 - $1) }.max() ?? .infinity
            XCTAssertLessThanOrEqual(worst, 1e-4, "m \(m) n \(n) k \(k) batch \(batch) (bf16 path: \(BF16GEMMPath.description))")
        }
    }

    /// A linear layer's dY under bf16 is read once for its bf16 copy and the bias gradient
    /// (`cast(_:into:summingColumns:)`): the copy is `cast`'s bit for bit, the sums are the
    /// column sums to float32 rounding, and they are the same floats at 1 and 2 threads (rows
    /// past one block of the CPU's, and columns not a whole vector).
    func testTheCastThatSumsColumnsGivesTheCastAndTheColumnSumsAtAnyThreadCount() throws {
        let (rows, cols) = (300, 70)
        let x = randomTensor([rows, cols], seed: 21).detach()
        var sums: [[Float]] = []
        for threads in [1, 2] {
            let backend = CPUBackend(threads: threads)
            let y = try Tensor(uninitialized: [rows, cols], dtype: .bfloat16, on: backend)
            let s = try Tensor(uninitialized: [cols], on: backend)
            backend.cast(x, into: y, summingColumns: s, rows: rows, cols: cols)
            XCTAssertEqual(y.floats, try x.cast(to: .bfloat16).floats, "\(threads) thread(s): the bf16 copy")
            let want = try x.sum(axes: [0]).floats
            XCTAssertLessThanOrEqual(zip(s.floats, want).map { abs($0 - $1) }.max() ?? .infinity, 1e-5, "\(threads) thread(s): the sums")
            sums.append(s.floats)
        }
        XCTAssertEqual(sums[0], sums[1], "the sums do not depend on the threads")

        // Through a linear layer: its bias gradient is those sums.
        let w = randomTensor([cols, 16], seed: 22), b = randomTensor([cols], seed: 23), h = randomTensor([rows, 16], seed: 24)
        let out = try withPrecision(.bfloat16) { try h.linear(weight: w, bias: b) }
        try out.backward(seed: x)
        XCTAssertEqual(try XCTUnwrap(b.grad).floats, sums[0])
    }

    /// `linear(weight:bias:after:)` is the activation then the layer, as one op: the same
    /// floats forward and backward as the two ops, in float32 and under bf16, for GELU and
    /// ReLU; under bf16 what it keeps for backward is the activation in bf16 only (the two
    /// ops keep its float32 values as well). An activation whose gradient needs its output
    /// is refused.
    func testAnActivationThenALinearLayerIsTheTwoOpsAndKeepsOnlyTheBF16Activation() throws {
        let backend = CPUBackend(threads: 2)
        func run(_ fused: Bool, _ activation: UnaryOp, _ precision: Precision) throws -> (values: [[Float]], kept: Int) {
            var rng = Philox(seed: 41)
            func make(_ shape: [Int]) -> Tensor {
                let t = Tensor((0..<shape.reduce(1, *)).map { _ in 2 * rng.nextFloat() - 1 }, shape: shape, on: backend)
                t.requiresGrad = true
                return t
            }
            let x = make([6, 50, 96]), w = make([40, 96]), b = make([40])
            let meter = MemoryMeter()
            let y = try MemoryMeter.measuring(meter) {
                try withPrecision(precision) {
                    fused ? try x.linear(weight: w, bias: b, after: activation)
                          : try (activation == .gelu ? x.gelu() : x.relu()).linear(weight: w, bias: b)
                }
            }
            let kept = meter.liveBytes - y.byteCount  // what the graph holds for backward
            try y.backward(seed: try y.detach().scaled(0.5))
            return ([y.floats, try XCTUnwrap(x.grad).floats, try XCTUnwrap(w.grad).floats, try XCTUnwrap(b.grad).floats], kept)
        }
        for activation in [UnaryOp.gelu, .relu] {
            for precision in [Precision.float32, .bfloat16] {
                let fused = try run(true, activation, precision), apart = try run(false, activation, precision)
                XCTAssertEqual(fused.values, apart.values, "\(activation) \(precision): y, dx, dW, db")
                let activationBytes = 6 * 50 * 96 * 4
                if precision == .bfloat16 {
                    XCTAssertEqual(apart.kept - fused.kept, activationBytes, "\(activation): the float32 activation is not kept")
                } else {
                    XCTAssertEqual(apart.kept, fused.kept, "\(activation) in float32 keeps what the two ops keep")
                }
            }
        }
        let x = randomTensor([2, 8], seed: 42), w = randomTensor([4, 8], seed: 43)
        XCTAssertThrowsError(try x.linear(weight: w, bias: nil, after: .exp)) { error in
            XCTAssertTrue("\(error)".contains("gelu, relu"), "\(error)")
        }
    }

    /// `feedForward` (a transformer MLP as one op) gives the floats of its two linear layers,
    /// forward and every gradient, in float32 and under bf16, for GELU and ReLU, with and
    /// without biases, past one block of rows of the CPU's fused rounding and sums.
    func testTheFeedForwardOpIsItsTwoLinearLayers() throws {
        let backend = CPUBackend(threads: 2)
        func run(_ fused: Bool, _ activation: UnaryOp, _ precision: Precision, biases: Bool) throws -> [[Float]] {
            var rng = Philox(seed: 51)
            func make(_ shape: [Int]) -> Tensor {
                let t = Tensor((0..<shape.reduce(1, *)).map { _ in 2 * rng.nextFloat() - 1 }, shape: shape, on: backend)
                t.requiresGrad = true
                return t
            }
            let x = make([3, 100, 48]), w1 = make([80, 48]), b1 = make([80]), w2 = make([40, 80]), b2 = make([40])
            let (c1, c2) = biases ? (b1, b2) : (nil, nil)
            let y = try withPrecision(precision) {
                fused ? try x.feedForward(w1, c1, w2, c2, activation: activation)
                      : try x.linear(weight: w1, bias: c1).linear(weight: w2, bias: c2, after: activation)
            }
            try y.backward(seed: try y.detach().scaled(0.5))
            let grads = [x, w1, w2] + (biases ? [b1, b2] : [])
            return [y.floats] + (try grads.map { try XCTUnwrap($0.grad).floats })
        }
        for activation in [UnaryOp.gelu, .relu] {
            for precision in [Precision.float32, .bfloat16] {
                for biases in [true, false] {
                    XCTAssertEqual(try run(true, activation, precision, biases: biases), try run(false, activation, precision, biases: biases),
                                   "\(activation) \(precision) biases \(biases): y, dx, dW1, dW2 (db1, db2)")
                }
            }
        }
    }

    func testAttentionInBF16StaysCloseToFloat32AndDiffersFromIt() throws {
        let qkv = randomTensor([2, 16, 3 * 32], seed: 8)
        let fp32 = try qkv.causalSelfAttention(heads: 4)
        let bf16 = try withPrecision(.bfloat16) { try qkv.causalSelfAttention(heads: 4) }
        let d = maxDifference(fp32, bf16)
        XCTAssertGreaterThan(d, 0, "bf16 changed nothing: not applied")
        XCTAssertLessThan(d, 2e-2, "bf16 attention strayed from float32 by \(d)")
    }

    /// The CPU's attention kernel under bf16 (causal blocks, P and dS rounded a head at a
    /// time, shared operands packed once) against the same computation composed of bf16
    /// matmuls and float32 softmax, values and input gradients. A flip in one of P's bf16
    /// roundings would show as ~1e-4 (the causal softmax sums as the masked one does). The
    /// gradients are compared where the scale is a power of two (D = 4, 16): the composed ops
    /// round dS after scaling it, the kernel before.
    func testFusedAttentionInBF16EqualsComposedBF16Ops() throws {
        XCTAssertTrue(CPUBackend.shared.runsCausalAttention(operands: .float32))
        try XCTSkipUnless(CPUBackend.shared.runsCausalAttention(operands: .bfloat16),
                          "bf16 attention runs unfused here (bf16 path: \(BF16GEMMPath.description))")
        for (b, t, h, d) in [(2, 5, 2, 4), (1, 70, 2, 16), (4, 64, 4, 8)] {
            let c = h * d
            let qkv = randomTensor([b, t, 3 * c], seed: 21).detach()
            let projection = randomTensor([b, t, c], seed: 22).detach()
            func gradient(_ f: (Tensor) throws -> Tensor) throws -> (value: Tensor, grad: Tensor) {
                let x = try qkv.copied()
                x.requiresGrad = true
                let y = try withPrecision(.bfloat16) { try f(x) }
                try y.mul(projection).sum().backward()
                return (y, try XCTUnwrap(x.grad))
            }
            let fused = try gradient { try $0.causalSelfAttention(heads: h) }
            let composed = try gradient { x in
                let parts = try x.split([c, c, c], axis: 2).map { try $0.reshaped([b, t, h, d]).permuted([0, 2, 1, 3]) }
                let att = try parts[0].matmul(parts[1], transposeB: true).scaled(1 / Float(d).squareRoot()).maskedCausal().softmax()
                return try att.matmul(parts[2]).permuted([0, 2, 1, 3]).reshaped([b, t, c])
            }
            XCTAssertLessThanOrEqual(maxDifference(fused.value, composed.value), 1e-5, "T = \(t)")
            if d != 8 { XCTAssertLessThanOrEqual(maxDifference(fused.grad, composed.grad), 1e-5, "T = \(t) gradient") }
            let float32 = try qkv.causalSelfAttention(heads: h)
            XCTAssertGreaterThan(maxDifference(fused.value, float32), 1e-4, "T = \(t): bf16 was not applied")
        }
    }

    func testPrecisionIsScopedPerThreadAndRestored() throws {
        XCTAssertEqual(Autocast.precision, .float32)
        withPrecision(.bfloat16) {
            XCTAssertEqual(Autocast.precision, .bfloat16)
            let other = Thread { XCTAssertEqual(Autocast.precision, .float32, "another thread inherited the scope") }
            other.start()
            while !other.isFinished { usleep(1000) }
            withPrecision(.float32) { XCTAssertEqual(Autocast.precision, .float32) }
            XCTAssertEqual(Autocast.precision, .bfloat16)
        }
        XCTAssertEqual(Autocast.precision, .float32)
    }

    /// A parameter's bf16 rounding is kept while nothing reaches its memory (OperandCopy), and
    /// every way of writing or reading the memory drops it: the next product rounds afresh,
    /// so products always read the values the parameter holds.
    func testAKeptBF16CopyIsDroppedByEveryAccessToItsParametersMemory() throws {
        let x = randomTensor([5, 16], seed: 30).detach(), w = randomTensor([8, 16], seed: 31)
        let be = w.backend
        func product(_ weight: Tensor) throws -> [Float] { try withPrecision(.bfloat16) { try x.linear(weight: weight, bias: nil) }.floats }
        let first = try product(w)
        XCTAssertTrue(w.hasKeptBF16Operand, "a parameter's rounding is kept")
        XCTAssertEqual(try product(w), first)
        XCTAssertTrue(w.hasKeptBF16Operand)

        var seed: UInt64 = 40
        func newValues() -> Tensor { seed += 1; return randomTensor(w.shape, seed: seed).detach() }
        let writes: [(String, (Tensor) throws -> Void)] = [
            ("upload", { v in v.floats.withUnsafeBytes { be.upload($0, to: w) } }),
            ("copy", { v in be.copy(v, into: w) }),
            ("transfer", { v in try Tensor.transfer(v, into: w) }),
            ("host memory", { v in let f = v.floats; try w.withHostMemory { $0.withMemoryRebound(to: Float.self) { _ = $0.update(fromContentsOf: f) } } }),
            ("fill", { v in be.fill(w, value: v.floats[0]) }),
        ]
        for (name, write) in writes {
            let v = newValues()
            try write(v)
            XCTAssertFalse(w.hasKeptBF16Operand, "\(name): the kept copy survived a write")
            let want = try product(try w.detach().copied())
            XCTAssertEqual(try product(w), want, "\(name): the product read stale values")
            XCTAssertTrue(w.hasKeptBF16Operand, "\(name): the new rounding is kept")
        }
        _ = w.floats
        XCTAssertFalse(w.hasKeptBF16Operand, "a read drops it too (it cannot tell reads from writes)")
        XCTAssertFalse(x.hasKeptBF16Operand, "an input that is not a parameter is not kept")
    }
}
