import CLoomKernels

// Causal self-attention, one task per (sequence, head) across the threads, each a few
// single-threaded GEMMs on the causal blocks only.
//
// Rows of a head's T×T score matrix are cut into blocks of `block` rows. Row block i
// needs only key columns 0..<(i+1)·block: the products for S = Q Kᵀ, Y = P V and their
// backward skip the blocks above the diagonal, (n - 1) / 2n of the work for n blocks
// (3/8 at T = 128, block 32). The softmax sees each row's first r + 1 columns and writes
// zeros after them, so P (saved for backward) and dS are zero above the diagonal as the
// masked full-matrix version makes them.
//
//   forward, row block i (rows R = i·b..<(i+1)·b, keys K≤ = 0..<(i+1)·b):
//     S[R, K≤] = scale · Q[R] K[K≤]ᵀ;   P = softmax_causal(S);   Y[R] = P[R, K≤] V[K≤]
//   backward:
//     dP[R, K≤] = dY[R] V[K≤]ᵀ                      (row block i)
//     dV[C] = P[R≥, C]ᵀ dY[R≥]                      (column block j = C: rows R≥ = j·b..<T)
//     dS = P ∘ (dP − rowsum(dP ∘ P))                (causal rows; zero above the diagonal)
//     dQ[R] = scale · dS[R, K≤] K[K≤];  dK[C] = scale · dS[R≥, C]ᵀ Q[R≥]

extension CPUBackend: CausalAttentionKernels {
    /// Rows per block: smaller skips more of the upper triangle, larger makes better GEMMs.
    static let attentionBlock = 32

    public func causalAttention(qkv: Tensor, shape: AttentionShape, scale: Float, probs: Tensor, into y: Tensor) {
        let (t, h, d, c) = (shape.length, shape.heads, shape.headSize, shape.width)
        let bl = Self.attentionBlock
        let pqkv = qkv.ptr, pp = probs.ptr, py = y.ptr
        let ld = 3 * c  // qkv's row stride
        let start = monotonicSeconds()
        parallelFor(shape.batch * h, grain: 1, threads: threads) { tasks in
            for task in tasks {
                let (b, head) = task.quotientAndRemainder(dividingBy: h)
                let q = pqkv + b * t * ld + head * d, k = q + c, v = q + 2 * c
                let p = pp + task * t * t, out = py + b * t * c + head * d
                for r0 in stride(from: 0, to: t, by: bl) {
                    let rows = min(bl, t - r0), keys = r0 + rows
                    sgemm(transA: false, transB: true, m: rows, n: keys, k: d, alpha: scale,
                          q + r0 * ld, lda: ld, k, ldb: ld, beta: 0, p + r0 * t, ldc: t)
                }
                loom_softmax_rows(p, p, Int64(t), Int64(t), 0, Int64(t))
                for r0 in stride(from: 0, to: t, by: bl) {
                    let rows = min(bl, t - r0), keys = r0 + rows
                    sgemm(transA: false, transB: false, m: rows, n: d, k: keys, alpha: 1,
                          p + r0 * t, lda: t, v, ldb: ld, beta: 0, out + r0 * c, ldc: c)
                }
            }
        }
        count(.attention, flops: causalFlops(shape, products: 2), since: start)
    }

    public func causalAttentionBackward(qkv: Tensor, probs: Tensor, gradOutput: Tensor, shape: AttentionShape,
                                        scale: Float, scratch: Tensor, into gqkv: Tensor) {
        let (t, h, d, c) = (shape.length, shape.heads, shape.headSize, shape.width)
        let bl = Self.attentionBlock
        let pqkv = qkv.ptr, pp = probs.ptr, pgy = gradOutput.ptr, pds = scratch.ptr, pg = gqkv.ptr
        let ld = 3 * c  // qkv's row stride
        let start = monotonicSeconds()
        parallelFor(shape.batch * h, grain: 1, threads: threads) { tasks in
            for task in tasks {
                let (b, head) = task.quotientAndRemainder(dividingBy: h)
                let base = b * t * ld + head * d
                let q = pqkv + base, k = q + c, v = q + 2 * c
                let gq = pg + base, gk = gq + c, gv = gq + 2 * c
                let p = pp + task * t * t, ds = pds + task * t * t, gy = pgy + b * t * c + head * d
                for r0 in stride(from: 0, to: t, by: bl) {
                    let rows = min(bl, t - r0), keys = r0 + rows
                    // dP[R, K≤] = dY[R] V[K≤]ᵀ
                    sgemm(transA: false, transB: true, m: rows, n: keys, k: d, alpha: 1,
                          gy + r0 * c, lda: c, v, ldb: ld, beta: 0, ds + r0 * t, ldc: t)
                    // dV[C] = P[R≥, C]ᵀ dY[R≥], C = this block's columns
                    sgemm(transA: true, transB: false, m: rows, n: d, k: t - r0, alpha: 1,
                          p + r0 * t + r0, lda: t, gy + r0 * c, ldb: c, beta: 0, gv + r0 * ld, ldc: ld)
                }
                loom_softmax_backward_rows(p, ds, ds, Int64(t), Int64(t), 0, Int64(t))
                for r0 in stride(from: 0, to: t, by: bl) {
                    let rows = min(bl, t - r0), keys = r0 + rows
                    // dQ[R] = scale · dS[R, K≤] K[K≤]
                    sgemm(transA: false, transB: false, m: rows, n: d, k: keys, alpha: scale,
                          ds + r0 * t, lda: t, k, ldb: ld, beta: 0, gq + r0 * ld, ldc: ld)
                    // dK[C] = scale · dS[R≥, C]ᵀ Q[R≥]
                    sgemm(transA: true, transB: false, m: rows, n: d, k: t - r0, alpha: scale,
                          ds + r0 * t + r0, lda: t, q + r0 * ld, ldb: ld, beta: 0, gk + r0 * ld, ldc: ld)
                }
            }
        }
        count(.attention, flops: causalFlops(shape, products: 4), since: start)
    }

    /// FLOPs of `products` products over the causal blocks (what the kernel issues).
    private func causalFlops(_ s: AttentionShape, products: Int) -> Double {
        let bl = Self.attentionBlock
        var pairs = 0  // (query, key) pairs the blocks cover per head
        for r0 in stride(from: 0, to: s.length, by: bl) { pairs += min(bl, s.length - r0) * (r0 + min(bl, s.length - r0)) }
        return 2 * Double(pairs) * Double(s.headSize) * Double(products * s.batch * s.heads)
    }
}
