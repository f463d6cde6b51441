// y = x · Wᵀ + b, fused: one GEMM forward, two GEMMs and a column sum backward.
// Under bf16 precision (`withPrecision`) the GEMMs read bf16 copies of x, W and dY and
// write float32; the bias and its gradient stay float32, the bias gradient summed in the pass
// that rounds dY (`Backend.cast(_:into:summingColumns:)`).
//
// y = act(x) · Wᵀ + b (`linear(weight:bias:after:)`: an activation then a layer, as in the
// second half of a transformer MLP, `feedForward`) is the same op reading A = act(x):
//   forward:   A = act(x);  y = A Wᵀ + b
//   backward:  dA = dY W;  dx = act'(x) ∘ dA;  dW = dYᵀ A;  db = Σ_rows dY
// act' reads x only (GELU, ReLU), so A is needed only as the products' operand: under bf16
// the activation is written once, rounded (`Backend.unaryRoundingToBF16`), and that bf16 A is
// all the op keeps. Written apart, act(x) would be written in float32, kept by the graph, and
// read again to round it.

/// A linear layer's three products, for A [rows, in], W [out, in] and dY [rows, out] in the
/// dtype the products read (`gemmInput`); outputs float32.
enum LinearProducts {
    /// y [rows, out] = A Wᵀ, every row gaining `bias` [out] where there is one.
    static func forward(_ a: Tensor, _ w: Tensor, bias: Tensor?, rows: Int, into y: Tensor) throws {
        let (outF, inF) = (w.shape[0], w.shape[1])
        let (ao, wo, yo) = (GEMMOperand(a, ld: inF), GEMMOperand(w, ld: inF, transposed: true), GEMMOperand(y, ld: outF))
        if let bias {
            try a.backend.gemm(ao, wo, yo, m: rows, n: outF, k: inF, alpha: 1, addingToEachRow: bias)
        } else {
            a.backend.gemm(ao, wo, yo, m: rows, n: outF, k: inF, batch: 1, alpha: 1, beta: 0)
        }
    }

    /// dA [rows, in] = dY W, as a new tensor like `like` (the input).
    static func inputGradient(_ g: Tensor, _ w: Tensor, rows: Int, like: Tensor) throws -> Tensor {
        let (outF, inF) = (w.shape[0], w.shape[1])
        let t = try like.empty()
        g.backend.gemm(GEMMOperand(g, ld: outF), GEMMOperand(w, ld: inF), GEMMOperand(t, ld: inF),
                       m: rows, n: inF, k: outF, batch: 1, alpha: 1, beta: 0)
        return t
    }

    /// dW [out, in] = dYᵀ A, as a new tensor like `weight`.
    static func weightGradient(_ g: Tensor, _ a: Tensor, rows: Int, like weight: Tensor) throws -> Tensor {
        let (outF, inF) = (weight.shape[0], weight.shape[1])
        let t = try weight.empty()
        g.backend.gemm(GEMMOperand(g, ld: outF, transposed: true), GEMMOperand(a, ld: inF), GEMMOperand(t, ld: inF),
                       m: outF, n: inF, k: rows, batch: 1, alpha: 1, beta: 0)
        return t
    }
}

extension Tensor {
    /// Affine map of the last axis. `weight` is [out, in] (PyTorch's layout); `bias` [out].
    /// x: [..., in] -> [..., out].
    public func linear(weight: Tensor, bias: Tensor?) throws -> Tensor {
        try linear(weight: weight, bias: bias, after: nil)
    }

    /// `activation` of x, then the affine map: `x.gelu().linear(weight:bias:)` as one op, for
    /// an activation whose gradient reads only its input (`.gelu`, `.relu`).
    public func linear(weight: Tensor, bias: Tensor?, after activation: UnaryOp?) throws -> Tensor {
        let x = self
        let (inF, outF) = try x.checkLinear(weight: weight, bias: bias, after: activation)
        let rows = x.count / inF
        let precision = Autocast.precision
        let xl = try x.productInput(after: activation, precision), wl = try weight.gemmInput(precision)  // saved for backward
        let y = try empty(Array(x.shape.dropLast()) + [outF])
        try LinearProducts.forward(xl, wl, bias: bias, rows: rows, into: y)

        let inputs = bias.map { [x, weight, $0] } ?? [x, weight]
        return Tensor.differentiable(activation.map { "\($0.rawValue)+linear" } ?? "linear", output: y, inputs: inputs) { g in
            let b = x.backend
            var gx: Tensor?, gw: Tensor?
            let (gl, gb) = try g.productGradient(precision, bias: bias, rows: rows, cols: outF)
            if x.requiresGrad {  // dA = dY W; dx = act'(x) ∘ dA
                let t = try LinearProducts.inputGradient(gl, wl, rows: rows, like: x)
                if let activation {  // (its y is not read: act' reads x)
                    let dx = try x.empty()
                    b.unaryBackward(activation, x: x, y: x, gradOutput: t, into: dx)
                    gx = dx
                } else {
                    gx = t
                }
            }
            if weight.requiresGrad { gw = try LinearProducts.weightGradient(gl, xl, rows: rows, like: weight) }  // dW = dYᵀ A
            return bias == nil ? [gx, gw] : [gx, gw, gb]
        }
    }

    /// dY [rows, cols] as the products' operand in `precision`, and the bias gradient (dY's
    /// column sums) where the bias needs one: under bf16, both from one pass over dY.
    func productGradient(_ precision: Precision, bias: Tensor?, rows: Int, cols: Int) throws -> (operand: Tensor, bias: Tensor?) {
        let g = self, b = backend
        let gb = try bias.flatMap { $0.requiresGrad ? try $0.empty() : nil }
        guard let gb else { return (try g.gemmInput(precision), nil) }
        if precision == .bfloat16 && g.dtype == .float32 {
            let gl = try g.empty(dtype: .bfloat16)
            b.cast(g, into: gl, summingColumns: gb, rows: rows, cols: cols)
            return (gl, gb)
        }
        b.reduce(.sum, g, outer: 1, n: rows, inner: cols, into: gb)
        return (try g.gemmInput(precision), gb)
    }

    /// (in, out) features of a linear layer with `weight` (and `bias`) on this input, or the
    /// error naming the shapes.
    func checkLinear(weight: Tensor, bias: Tensor?, after activation: UnaryOp?) throws -> (in: Int, out: Int) {
        try requireFloat("linear", self)
        try requireSameDevice("linear", self, weight)
        return try Tensor.checkLinear(input: shape, weight: weight, bias: bias, after: activation)
    }

    /// The same for an input of `shape`.
    static func checkLinear(input shape: [Int], weight: Tensor, bias: Tensor?, after activation: UnaryOp?) throws -> (in: Int, out: Int) {
        try requireFloat("linear", weight)
        guard weight.rank == 2, let inF = shape.last, inF == weight.shape[1] else {
            throw LoomError.shapeMismatch("linear: input \(describe(shape)) x weight \(describe(weight.shape))ᵀ: input features must equal weight.shape[1]")
        }
        let outF = weight.shape[0]
        if let bias, bias.shape != [outF] {
            throw LoomError.shapeMismatch("linear: bias \(describe(bias.shape)) for weight \(describe(weight.shape)) (expected [\(outF)])")
        }
        if let activation, activation != .gelu, activation != .relu {
            throw LoomError.invalidArgument("linear after \(activation.rawValue): only an activation whose gradient reads its input alone (gelu, relu)")
        }
        return (inF, outF)
    }

    /// The product's A: x, or activation(x), in `precision`'s operand type. Under bf16 the
    /// activation is rounded as it is written; in float32 it is `unaryOp`'s values.
    func productInput(after activation: UnaryOp?, _ precision: Precision) throws -> Tensor {
        guard let activation else { return try gemmInput(precision) }
        let a = try empty(dtype: precision.operandDType)
        if precision == .bfloat16 {
            backend.unaryRoundingToBF16(activation, self, into: a)
        } else {
            backend.unary(activation, self, into: a)
        }
        return a
    }
}
