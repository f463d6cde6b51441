// Causal multi-head self-attention, fused over a packed qkv activation.
//
// qkv is [B, T, 3C]: per token, C query values, then C key, then C value values, each
// the concatenation of H heads of D = C/H. Every head's Q, K, V is a strided [T, D]
// matrix inside qkv (leading dimension 3C), so the GEMMs read them in place: no split,
// no permute, no copies. The [B, H, T, T] probabilities are saved for backward.
// Under bf16 precision the four products of each pass read bf16 copies of qkv, P and the
// incoming gradients; scores, softmax and every output stay float32.
// A backend with `CausalAttentionKernels` (the CPU) runs attention its own way, computing
// only the causal blocks (float32, and bf16 where it says so); the same formulas, checked
// against this path.

extension Tensor {
    /// softmax(Q Kᵀ / sqrt(D) + causal mask) V, heads side by side: [B, T, 3C] -> [B, T, C].
    public func causalSelfAttention(heads: Int) throws -> Tensor {
        try requireFloat("causalSelfAttention", self)
        let qkv = self
        guard rank == 3, shape[2] % (3 * Swift.max(heads, 1)) == 0 else {
            throw LoomError.shapeMismatch("causalSelfAttention: qkv \(describe(shape)) must be [B, T, 3C] with C divisible by \(heads) heads")
        }
        let (bsz, t, c3) = (shape[0], shape[1], shape[2])
        let c = c3 / 3, d = c / heads
        let scale = 1 / Float(d).squareRoot()
        let be = backend
        let precision = Autocast.precision
        if let fused = be as? any CausalAttentionKernels, fused.runsCausalAttention(operands: precision.operandDType) {
            return try fusedCausalSelfAttention(fused, shape: AttentionShape(batch: bsz, length: t, heads: heads, headSize: d),
                                                scale: scale, precision: precision)
        }
        let qkvl = try qkv.gemmInput(precision)  // saved for backward
        let probs = try empty([bsz, heads, t, t])
        let y = try empty([bsz, t, c])
        // Operands for batch element b, batched over heads.
        func q(_ x: Tensor, _ b: Int, transposed: Bool = false) -> GEMMOperand {
            GEMMOperand(x, offset: b * t * c3, ld: c3, batchStride: d, transposed: transposed)
        }
        func k(_ x: Tensor, _ b: Int, transposed: Bool = false) -> GEMMOperand {
            GEMMOperand(x, offset: b * t * c3 + c, ld: c3, batchStride: d, transposed: transposed)
        }
        func v(_ x: Tensor, _ b: Int, transposed: Bool = false) -> GEMMOperand {
            GEMMOperand(x, offset: b * t * c3 + 2 * c, ld: c3, batchStride: d, transposed: transposed)
        }
        func att(_ x: Tensor, _ b: Int, transposed: Bool = false) -> GEMMOperand {
            GEMMOperand(x, offset: b * heads * t * t, ld: t, batchStride: t * t, transposed: transposed)
        }
        func out(_ x: Tensor, _ b: Int, transposed: Bool = false) -> GEMMOperand {
            GEMMOperand(x, offset: b * t * c, ld: c, batchStride: d, transposed: transposed)
        }
        for b in 0..<bsz {  // S = Q Kᵀ / sqrt(D)
            be.gemm(q(qkvl, b), k(qkvl, b, transposed: true), att(probs, b), m: t, n: t, k: d, batch: heads, alpha: scale, beta: 0)
        }
        be.maskUpperTriangle(probs, rows: t, cols: t, value: -.infinity)
        be.softmax(probs, rows: bsz * heads * t, cols: t, log: false, into: probs)
        let probsl = try probs.gemmInput(precision)
        for b in 0..<bsz {  // Y = P V
            be.gemm(att(probsl, b), v(qkvl, b), out(y, b), m: t, n: d, k: t, batch: heads, alpha: 1, beta: 0)
        }
        return Tensor.differentiable("causalSelfAttention", output: y, inputs: [qkv]) { gy in
            let gqkv = try qkv.empty()
            let gp = try probs.empty()
            let gyl = try gy.gemmInput(precision), probsl = try probs.gemmInput(precision)
            for b in 0..<bsz {
                // dP = dY Vᵀ;  dV = Pᵀ dY
                be.gemm(out(gyl, b), v(qkvl, b, transposed: true), att(gp, b), m: t, n: t, k: d, batch: heads, alpha: 1, beta: 0)
                be.gemm(att(probsl, b, transposed: true), out(gyl, b), v(gqkv, b), m: t, n: d, k: t, batch: heads, alpha: 1, beta: 0)
            }
            // dS = softmax'(dP) (zero where masked, since P is zero there); scale folds into the GEMMs.
            be.softmaxBackward(y: probs, gradOutput: gp, rows: bsz * heads * t, cols: t, log: false, into: gp)
            let gsl = try gp.gemmInput(precision)
            for b in 0..<bsz {
                // dQ = dS K / sqrt(D);  dK = dSᵀ Q / sqrt(D)
                be.gemm(att(gsl, b), k(qkvl, b), q(gqkv, b), m: t, n: d, k: t, batch: heads, alpha: scale, beta: 0)
                be.gemm(att(gsl, b, transposed: true), q(qkvl, b), k(gqkv, b), m: t, n: d, k: t, batch: heads, alpha: scale, beta: 0)
            }
            return [gqkv]
        }
    }
}

extension Tensor {
    /// The same attention on a backend's own kernels (`CausalAttentionKernels`).
    func fusedCausalSelfAttention(_ be: any CausalAttentionKernels, shape: AttentionShape, scale: Float,
                                  precision: Precision) throws -> Tensor {
        let qkv = self
        let qkvl = try qkv.gemmInput(precision)  // saved for backward
        let probs = try empty([shape.batch, shape.heads, shape.length, shape.length])
        let y = try empty([shape.batch, shape.length, shape.width])
        be.causalAttention(qkv: qkvl, shape: shape, scale: scale, probs: probs, into: y)
        return Tensor.differentiable("causalSelfAttention", output: y, inputs: [qkv]) { gy in
            let gqkv = try qkv.empty()
            be.causalAttentionBackward(qkv: qkvl, probs: probs, gradOutput: try gy.gemmInput(precision), shape: shape,
                                       scale: scale, into: gqkv)
            return [gqkv]
        }
    }
}
