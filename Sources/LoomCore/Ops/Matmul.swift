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
        // Under bf16 precision the products read bf16 copies (of dC too, in backward).
        let precision = Autocast.precision
        let al = try a.gemmInput(precision), bl = try b.gemmInput(precision)
        let out = try Tensor.product(al, bl, transposeA: transposeA, transposeB: transposeB)

        return Tensor.differentiable("matmul", output: out, inputs: [a, b]) { g in
            // C = op(A)·op(B):  dop(A) = dC·op(B)ᵀ,  dop(B) = op(A)ᵀ·dC.
            let gl = try g.gemmInput(precision)
            var ga: Tensor?, gb: Tensor?
            if a.requiresGrad {
                ga = transposeA ? try Tensor.product(bl, gl, transposeA: transposeB, transposeB: true)
                                : try Tensor.product(gl, bl, transposeB: !transposeB)
            }
            if b.requiresGrad {
                let k = transposeA ? a.shape[a.rank - 2] : a.shape[a.rank - 1], n = out.shape[out.rank - 1]
                if b.rank == 2 && !transposeA && a.rank > 2 {
                    // Folded leading axes: dB sums over them, which one GEMM over the
                    // flattened rows does.
                    let a2 = al.view([a.count / k, k]), g2 = gl.view([g.count / n, n])
                    gb = transposeB ? try Tensor.product(g2, a2, transposeA: true) : try Tensor.product(a2, g2, transposeA: true)
                } else {
                    gb = transposeB ? try Tensor.product(gl, al, transposeA: true, transposeB: transposeA)
                                    : try Tensor.product(al, gl, transposeA: !transposeA)
                }
            }
            return [ga, gb]
        }
    }

    /// op(a) · op(b) into a new float32 tensor, not recorded. Operands are both float32 or
    /// both bf16 (then products accumulate in float32).
    static func product(_ a: Tensor, _ b: Tensor, transposeA: Bool = false, transposeB: Bool = false) throws -> Tensor {
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
        let out = try a.empty(aBatch + [m, n], dtype: .float32)
        a.backend.gemm(GEMMOperand(a, ld: ac, batchStride: ar * ac, transposed: transposeA),
                       GEMMOperand(b, ld: bc, batchStride: b.rank == 2 ? 0 : br * bc, transposed: transposeB),
                       GEMMOperand(out, ld: n, batchStride: m * n),
                       m: foldedM, n: n, k: k, batch: batch, alpha: 1, beta: 0)
        return out
    }
}
