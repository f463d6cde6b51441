// The transformer MLP as one op: y = act(x W1ᵀ + b1) W2ᵀ + b2 (x [rows, C], W1 [H, C],
// W2 [O, H]), for an activation whose gradient reads its input alone (GELU, ReLU):
//
//   forward:   h = x W1ᵀ + b1;  A = act(h);  y = A W2ᵀ + b2
//   backward:  dW2 = dYᵀ A;  db2 = Σ_rows dY;  dA = dY W2
//              dh = act'(h) ∘ dA;  db1 = Σ_rows dh;  dx = dh W1;  dW1 = dhᵀ x
//
// Under bf16 precision the products read bf16 and h, dA stay float32, and the op owns the
// two tensors that only products (and a bias gradient) read: A is written once, rounded
// (`Backend.unaryRoundingToBF16`), and dh is written once, rounded, with db1 summed in the
// same pass (`Backend.unaryBackward(_:x:gradOutput:roundingInto:summingColumns:rows:cols:)`).
// As two linear layers, dh would be written in float32 and read again to round and sum it.
// In float32 the op is the two layers (`linear(weight:bias:after:)` for the second).

extension Tensor {
    /// `linear(weight: w1, bias: b1)`, `activation`, then `linear(weight: w2, bias: b2)`, as
    /// one op: the same values, fewer passes under bf16.
    public func feedForward(_ w1: Tensor, _ b1: Tensor?, _ w2: Tensor, _ b2: Tensor?, activation: UnaryOp) throws -> Tensor {
        let precision = Autocast.precision
        guard precision == .bfloat16 else {
            return try linear(weight: w1, bias: b1).linear(weight: w2, bias: b2, after: activation)
        }
        let x = self
        let (inF, hidden) = try x.checkLinear(weight: w1, bias: b1, after: nil)
        let hiddenShape = Array(x.shape.dropLast()) + [hidden]
        let (_, outF) = try Tensor.checkLinear(input: hiddenShape, weight: w2, bias: b2, after: activation)
        try requireSameDevice("linear", x, w2)
        let rows = x.count / inF
        let be = backend
        let xl = try x.gemmInput(precision), w1l = try w1.gemmInput(precision), w2l = try w2.gemmInput(precision)

        func product(_ a: Tensor, _ w: Tensor, ld: Int, n: Int, k: Int, bias: Tensor?, into y: Tensor) throws {  // y = a wᵀ (+ bias)
            let (ao, wo, yo) = (GEMMOperand(a, ld: ld), GEMMOperand(w, ld: ld, transposed: true), GEMMOperand(y, ld: n))
            if let bias { try be.gemm(ao, wo, yo, m: rows, n: n, k: k, alpha: 1, addingToEachRow: bias) }
            else { be.gemm(ao, wo, yo, m: rows, n: n, k: k, batch: 1, alpha: 1, beta: 0) }
        }
        let h = try Tensor(uninitialized: hiddenShape, on: be)  // [rows, H] float32, kept for act'
        try product(xl, w1l, ld: inF, n: hidden, k: inF, bias: b1, into: h)
        let al = try h.empty(dtype: .bfloat16)  // A, kept for dW2
        be.unaryRoundingToBF16(activation, h, into: al)
        let y = try Tensor(uninitialized: Array(x.shape.dropLast()) + [outF], on: be)
        try product(al, w2l, ld: hidden, n: outF, k: hidden, bias: b2, into: y)

        let inputs = [x, w1] + (b1.map { [$0] } ?? []) + [w2] + (b2.map { [$0] } ?? [])
        return Tensor.differentiable("linear+\(activation.rawValue)+linear", output: y, inputs: inputs) { g in
            let (gl, gb2) = try g.productGradient(precision, bias: b2, rows: rows, cols: outF)
            var gw2: Tensor?, gx: Tensor?, gw1: Tensor?, gb1: Tensor?
            if w2.requiresGrad {  // dW2 [O, H] = dYᵀ A
                let t = try w2.empty()
                be.gemm(GEMMOperand(gl, ld: outF, transposed: true), GEMMOperand(al, ld: hidden), GEMMOperand(t, ld: hidden),
                        m: outF, n: hidden, k: rows, batch: 1, alpha: 1, beta: 0)
                gw2 = t
            }
            if x.requiresGrad || w1.requiresGrad || b1?.requiresGrad == true {
                let da = try h.empty()  // dA [rows, H] = dY W2
                be.gemm(GEMMOperand(gl, ld: outF), GEMMOperand(w2l, ld: hidden), GEMMOperand(da, ld: hidden),
                        m: rows, n: hidden, k: outF, batch: 1, alpha: 1, beta: 0)
                let dhl = try h.empty(dtype: .bfloat16)  // dh, rounded, and db1 in the same pass
                gb1 = try b1.flatMap { $0.requiresGrad ? try $0.empty() : nil }
                be.unaryBackward(activation, x: h, gradOutput: da, roundingInto: dhl, summingColumns: gb1, rows: rows, cols: hidden)
                if x.requiresGrad {  // dx [rows, C] = dh W1
                    let t = try x.empty()
                    be.gemm(GEMMOperand(dhl, ld: hidden), GEMMOperand(w1l, ld: inF), GEMMOperand(t, ld: inF),
                            m: rows, n: inF, k: hidden, batch: 1, alpha: 1, beta: 0)
                    gx = t
                }
                if w1.requiresGrad {  // dW1 [H, C] = dhᵀ x
                    let t = try w1.empty()
                    be.gemm(GEMMOperand(dhl, ld: hidden, transposed: true), GEMMOperand(xl, ld: inF), GEMMOperand(t, ld: inF),
                            m: hidden, n: inF, k: rows, batch: 1, alpha: 1, beta: 0)
                    gw1 = t
                }
            }
            return [gx, gw1] + (b1 == nil ? [] : [gb1]) + [gw2] + (b2 == nil ? [] : [gb2])
        }
    }
}
