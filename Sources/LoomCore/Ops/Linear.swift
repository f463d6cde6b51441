// y = x · Wᵀ + b, fused: one GEMM forward, two GEMMs and a column sum backward.
// Under bf16 precision (`withPrecision`) the GEMMs read bf16 copies of x, W and dY and
// write float32; the bias and its gradient stay float32.

extension Tensor {
    /// Affine map of the last axis. `weight` is [out, in] (PyTorch's layout); `bias` [out].
    /// x: [..., in] -> [..., out].
    public func linear(weight: Tensor, bias: Tensor?) throws -> Tensor {
        try requireFloat("linear", self); try requireFloat("linear", weight)
        let x = self
        try requireSameDevice("linear", x, weight)
        guard weight.rank == 2, let inF = x.shape.last, inF == weight.shape[1] else {
            throw LoomError.shapeMismatch("linear: input \(describe(x.shape)) x weight \(describe(weight.shape))ᵀ: input features must equal weight.shape[1]")
        }
        let outF = weight.shape[0]
        if let bias, bias.shape != [outF] {
            throw LoomError.shapeMismatch("linear: bias \(describe(bias.shape)) for weight \(describe(weight.shape)) (expected [\(outF)])")
        }
        let rows = x.count / inF
        let precision = Autocast.precision
        let xl = try x.gemmInput(precision), wl = try weight.gemmInput(precision)  // saved for backward
        let y = try empty(Array(x.shape.dropLast()) + [outF])
        let (xo, wo, yo) = (GEMMOperand(xl, ld: inF), GEMMOperand(wl, ld: inF, transposed: true), GEMMOperand(y, ld: outF))
        if let bias {  // every row of y gains the bias
            try backend.gemm(xo, wo, yo, m: rows, n: outF, k: inF, alpha: 1, addingToEachRow: bias)
        } else {
            backend.gemm(xo, wo, yo, m: rows, n: outF, k: inF, batch: 1, alpha: 1, beta: 0)
        }

        let inputs = bias.map { [x, weight, $0] } ?? [x, weight]
        return Tensor.differentiable("linear", output: y, inputs: inputs) { g in
            let b = x.backend
            var gx: Tensor?, gw: Tensor?, gb: Tensor?
            let gl = try g.gemmInput(precision)
            if x.requiresGrad {  // dX [rows, in] = dY [rows, out] · W [out, in]
                let t = try x.empty()
                b.gemm(GEMMOperand(gl, ld: outF), GEMMOperand(wl, ld: inF), GEMMOperand(t, ld: inF),
                       m: rows, n: inF, k: outF, batch: 1, alpha: 1, beta: 0)
                gx = t
            }
            if weight.requiresGrad {  // dW [out, in] = dYᵀ · X
                let t = try weight.empty()
                b.gemm(GEMMOperand(gl, ld: outF, transposed: true), GEMMOperand(xl, ld: inF), GEMMOperand(t, ld: inF),
                       m: outF, n: inF, k: rows, batch: 1, alpha: 1, beta: 0)
                gw = t
            }
            if let bias, bias.requiresGrad {  // db = column sums of dY
                let t = try bias.empty()
                b.reduce(.sum, g, outer: 1, n: rows, inner: outF, into: t)
                gb = t
            }
            return bias == nil ? [gx, gw] : [gx, gw, gb]
        }
    }
}
