import LoomCore

// Causal self-attention as whole batched products (`CausalAttentionKernels`): the four
// products over [B, H] at once, where the generic path issues one batched GEMM per
// sequence, each a strided window of the fused qkv buffer. One dot_general per product
// is what XLA fuses and tiles best, and a program a fraction of the size compiles in a
// fraction of the time. The formulas are Ops/Attention.swift's.
//
// qkv [B, T, 3C] is read as [B, T, 3, H, D]; Q, K, V are its [B, H, T, D] slices.

extension XLABackend: CausalAttentionKernels {
    private func heads(_ qkv: Tensor, _ s: AttentionShape) -> [HLOValue] {
        let x = hlo.reshape(read(qkv), [s.batch, s.length, 3, s.heads, s.headSize])
        return (0..<3).map { i in
            let part = hlo.slice(x, start: [0, 0, i, 0, 0], limit: [s.batch, s.length, i + 1, s.heads, s.headSize])
            return hlo.transpose(hlo.reshape(part, [s.batch, s.length, s.heads, s.headSize]), [0, 2, 1, 3])
        }
    }

    /// [B, H, T, D] back to the token-major [B, T, H·D].
    private func tokenMajor(_ x: HLOValue, _ s: AttentionShape) -> HLOValue {
        hlo.reshape(hlo.transpose(x, [0, 2, 1, 3]), [s.batch, s.length, s.width])
    }

    public func causalAttention(qkv: Tensor, shape s: AttentionShape, scale: Float, probs: Tensor, into y: Tensor) {
        lock.withLock {
            flops += 4 * Double(s.batch * s.heads) * Double(s.length * s.length) * Double(s.headSize)  // two products
            let qkvHeads = heads(qkv, s)
            let (q, k, v) = (qkvHeads[0], qkvHeads[1], qkvHeads[2])
            let scores = hlo.withScalar("multiply", hlo.dot(q, k, batch: [0, 1], contractA: 3, contractB: 3), scalar(scale))  // [B, H, T, T]
            let above = hlo.compare(hlo.iota(scores.shape, dimension: 3), hlo.iota(scores.shape, dimension: 2), "GT")
            let masked = hlo.select(above, hlo.constant(-Double.infinity, scores.shape), scores)
            let m = hlo.broadcast(hlo.reduce(masked, .max, dimensions: [3]), scores.shape, dims: [0, 1, 2])
            let e = hlo.unary("exponential", hlo.sub(masked, m))
            let sums = hlo.reduce(e, .sum, dimensions: [3])
            let p = hlo.mul(e, hlo.broadcast(hlo.div(hlo.constant(1, sums.shape), sums), scores.shape, dims: [0, 1, 2]))
            write(probs, p)
            write(y, tokenMajor(hlo.dot(p, v, batch: [0, 1], contractA: 3, contractB: 2), s))
        }
    }

    public func causalAttentionBackward(qkv: Tensor, probs: Tensor, gradOutput: Tensor, shape s: AttentionShape, scale: Float,
                                        into gqkv: Tensor) {
        lock.withLock {
            flops += 8 * Double(s.batch * s.heads) * Double(s.length * s.length) * Double(s.headSize)  // four products
            let qkvHeads = heads(qkv, s)
            let (q, k, v) = (qkvHeads[0], qkvHeads[1], qkvHeads[2])
            let p = hlo.reshape(read(probs), [s.batch, s.heads, s.length, s.length])
            let go = hlo.transpose(hlo.reshape(read(gradOutput), [s.batch, s.length, s.heads, s.headSize]), [0, 2, 1, 3])
            let dp = hlo.dot(go, v, batch: [0, 1], contractA: 3, contractB: 3)        // dP = dO Vᵀ
            let dv = hlo.dot(p, go, batch: [0, 1], contractA: 2, contractB: 2)        // dV = Pᵀ dO
            let rowSums = hlo.broadcast(hlo.reduce(hlo.mul(dp, p), .sum, dimensions: [3]), p.shape, dims: [0, 1, 2])
            let ds = hlo.withScalar("multiply", hlo.mul(p, hlo.sub(dp, rowSums)), scalar(scale))  // dS = P ∘ (dP - Σ dP∘P) · scale
            let dq = hlo.dot(ds, k, batch: [0, 1], contractA: 3, contractB: 2)        // dQ = dS K
            let dk = hlo.dot(ds, q, batch: [0, 1], contractA: 2, contractB: 2)        // dK = dSᵀ Q
            let parts = [dq, dk, dv].map { hlo.reshape(tokenMajor($0, s), [s.batch, s.length, 1, s.width]) }
            write(gqkv, hlo.concatenate(parts, dimension: 2))
        }
    }
}

// Generation over a key/value cache with the position as a run-time scalar: the cache is
// written with dynamic_update_slice at it, and every query attends over the whole capacity
// with keys past its position masked, so every token after the prompt runs the same
// program. (The CPU attends over rows 0..<start+T only; the masked rows add exp(-∞) = 0.)
extension XLABackend: CachedAttentionKernels {
    public func cachedAttention(qkv: Tensor, keys: Tensor, values: Tensor, start: Int, heads h: Int, keyBias: Tensor?, into y: Tensor) {
        lock.withLock {
            let (b, t, c3) = (qkv.shape[0], qkv.shape[1], qkv.shape[2])
            let c = c3 / 3, d = c / h, capacity = keys.shape[1]
            let x = hlo.reshape(read(qkv), [b, t, 3, c])
            func part(_ i: Int) -> HLOValue { hlo.reshape(hlo.slice(x, start: [0, 0, i, 0], limit: [b, t, i + 1, c]), [b, t, c]) }
            let position = hlo.convert(scalar(Float(start)), .i32)
            let zero = hlo.constant(0, [], .i32)
            let k = hlo.updateSlice(hlo.reshape(read(keys), [b, capacity, c]), part(1), atValues: [zero, position, zero])
            let v = hlo.updateSlice(hlo.reshape(read(values), [b, capacity, c]), part(2), atValues: [zero, position, zero])
            write(keys, k)
            write(values, v)
            func byHead(_ z: HLOValue, _ rows: Int) -> HLOValue { hlo.transpose(hlo.reshape(z, [b, rows, h, d]), [0, 2, 1, 3]) }
            let scores = hlo.withScalar("multiply", hlo.dot(byHead(part(0), t), byHead(k, capacity), batch: [0, 1], contractA: 3, contractB: 3),
                                        scalar(1 / Float(d).squareRoot()))  // [B, H, T, capacity]
            let shape = scores.shape
            // key j is visible to query i when j <= start + i
            let limit = hlo.add(hlo.iota(shape, dimension: 2), hlo.splat(position, shape))
            var s = hlo.select(hlo.compare(hlo.iota(shape, dimension: 3), limit, "GT"), hlo.constant(-Double.infinity, shape), scores)
            if let keyBias { s = hlo.add(s, hlo.broadcast(hlo.reshape(read(keyBias), [b, capacity]), shape, dims: [0, 3])) }
            let m = hlo.broadcast(hlo.reduce(s, .max, dimensions: [3]), shape, dims: [0, 1, 2])
            let e = hlo.unary("exponential", hlo.sub(s, m))
            let sums = hlo.reduce(e, .sum, dimensions: [3])
            let p = hlo.mul(e, hlo.broadcast(hlo.div(hlo.constant(1, sums.shape), sums), shape, dims: [0, 1, 2]))
            let out = hlo.dot(p, byHead(v, capacity), batch: [0, 1], contractA: 3, contractB: 2)  // [B, H, T, D]
            write(y, hlo.reshape(hlo.transpose(out, [0, 2, 1, 3]), [b, t, c]))
        }
    }
}
