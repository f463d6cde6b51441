// Matrix products. Transposes are flags passed to the GEMM, never materialised.

extension Tensor {
    /// op(self) · op(other), where op transposes the last two axes when asked.
    ///
    /// Supported layouts: [m, k]·[k, n]; [..., m, k]·[k, n] (leading axes fold into m);
    /// and batched [..., m, k]·[..., k, n] with equal leading axes.
    public func matmul(_ other: Tensor, transposeA: Bool = false, transposeB: Bool = false) throws -> Tensor {
        let a = self, b = other
        try requireSameDevice("matmul", a, b)
        try requireFloat("matmul", a); try requireFloat("matmul", b)
        func fail(_ why: String) -> LoomError {
            var desc = "matmul: \(describe(a.shape))\(transposeA ? "ᵀ" : "") x \(describe(b.shape))\(transposeB ? "ᵀ" : "")"
            desc += ": " + why
            return LoomError.shapeMismatch(desc)
        }
        guard a.rank >= 2, b.rank >= 2 else { throw fail("both operands need at least 2 axes") }
        let (ar, ac) = (a.shape[a.rank - 2], a.shape[a.rank - 1])
        let (br, bc) = (b.shape[b.rank - 2], b.shape[b.rank - 1])
        let (m, k) = transposeA ? (ac, ar) : (ar, ac)
        let (k2, n) = transposeB ? (bc, br) : (br, bc)
        guard k == k2 else { throw fail("inner dimensions differ (\(k) vs \(k2))") }
        let aBatch = Array(a.shape.dropLast(2)), bBatch = Array(b.shape.dropLast(2))

        let batch: Int, foldedM: Int
        if b.rank == 2 && !transposeA {
            batch = 1; foldedM = a.count / k       // [..., m, k] · [k, n]: one GEMM
        } else if aBatch == bBatch {
            batch = aBatch.reduce(1, *); foldedM = m
        } else {
            throw fail("batch axes differ (\(describe(aBatch)) vs \(describe(bBatch)))")
        }
        let out = try empty(aBatch + [m, n])
        backend.gemm(GEMMOperand(a, ld: ac, batchStride: ar * ac, transposed: transposeA),
                     GEMMOperand(b, ld: bc, batchStride: b.rank == 2 ? 0 : br * bc, transposed: transposeB),
                     GEMMOperand(out, ld: n, batchStride: m * n),
                     m: foldedM, n: n, k: k, batch: batch, alpha: 1, beta: 0)

        return Tensor.differentiable("matmul", output: out, inputs: [a, b]) { g in
            // C = op(A)·op(B):  dop(A) = dC·op(B)ᵀ,  dop(B) = op(A)ᵀ·dC.
            var ga: Tensor?, gb: Tensor?
            if a.requiresGrad {
                ga = transposeA ? try b.matmul(g, transposeA: transposeB, transposeB: true)
                                : try g.matmul(b, transposeB: !transposeB)
            }
            if b.requiresGrad {
                if b.rank == 2 && !transposeA && a.rank > 2 {
                    // Folded leading axes: dB sums over them, which one GEMM over the
                    // flattened rows does.
                    let a2 = a.view([a.count / k, k]), g2 = g.view([g.count / n, n])
                    gb = transposeB ? try g2.matmul(a2, transposeA: true) : try a2.matmul(g2, transposeA: true)
                } else {
                    gb = transposeB ? try g.matmul(a, transposeA: true, transposeB: transposeA)
                                    : try a.matmul(g, transposeA: !transposeA)
                }
            }
            return [ga, gb]
        }
    }
}
