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

        let h = try Tensor(uninitialized: hiddenShape, on: be)  // [rows, H] float32, kept for act'
        try LinearProducts.forward(xl, w1l, bias: b1, rows: rows, into: h)
        let al = try h.empty(dtype: .bfloat16)  // A, kept for dW2
        be.unaryRoundingToBF16(activation, h, into: al)
        let y = try Tensor(uninitialized: Array(x.shape.dropLast()) + [outF], on: be)
        try LinearProducts.forward(al, w2l, bias: b2, rows: rows, into: y)

        let inputs = [x, w1] + (b1.map { [$0] } ?? []) + [w2] + (b2.map { [$0] } ?? [])
        return Tensor.differentiable("linear+\(activation.rawValue)+linear", output: y, inputs: inputs) { g in
            let (gl, gb2) = try g.productGradient(precision, bias: b2, rows: rows, cols: outF)
            var gw2: Tensor?, gx: Tensor?, gw1: Tensor?, gb1: Tensor?
            if w2.requiresGrad { gw2 = try LinearProducts.weightGradient(gl, al, rows: rows, like: w2) }  // dW2 = dYᵀ A
            if x.requiresGrad || w1.requiresGrad || b1?.requiresGrad == true {
                let da = try LinearProducts.inputGradient(gl, w2l, rows: rows, like: h)  // dA = dY W2
                let dhl = try h.empty(dtype: .bfloat16)  // dh, rounded, and db1 in the same pass
                gb1 = try b1.flatMap { $0.requiresGrad ? try $0.empty() : nil }
                be.unaryBackward(activation, x: h, gradOutput: da, roundingInto: dhl, summingColumns: gb1, rows: rows, cols: hidden)
                if x.requiresGrad { gx = try LinearProducts.inputGradient(dhl, w1l, rows: rows, like: x) }  // dx = dh W1
                if w1.requiresGrad { gw1 = try LinearProducts.weightGradient(dhl, xl, rows: rows, like: w1) }  // dW1 = dhᵀ x
            }
            return [gx, gw1] + (b1 == nil ? [] : [gb1]) + [gw2] + (b2 == nil ? [] : [gb2])
        }
    }
}
