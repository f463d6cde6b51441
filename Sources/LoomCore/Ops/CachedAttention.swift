// Causal self-attention of new positions over a key/value cache, for generation: each
// new token costs one query against the cached keys, not a pass over the whole window.
//
// keys and values are [B, capacity, C] (heads side by side, as in qkv). The new positions
// start..<start+T of qkv [B, T, 3C] write their keys and values at those rows of the
// cache, then query i (position start+i) attends to cache rows 0...start+i:
//
//   S = Q Kᵀ / sqrt(D)      [B, H, T, L]   L = start + T
//   S += causal bias        0, or -inf where key j > start + i (only when T > 1)
//   S += key bias[b]        0, or a large negative value on a row's left padding
//   Y = softmax(S) V        [B, T, C]
//
// Inference only: no graph is recorded.

extension Tensor {
    /// Attention of qkv [B, T, 3C] (positions start..<start+T) over the cache, writing the
    /// new keys and values into it. `keyBias` [B, capacity] is added to every query's
    /// scores for its batch row (left padding: a large negative value on padded slots).
    public func cachedCausalSelfAttention(heads: Int, keys: Tensor, values: Tensor, start: Int, keyBias: Tensor? = nil) throws -> Tensor {
        try requireFloat("cachedCausalSelfAttention", self)
        let qkv = self
        guard rank == 3, shape[2] % (3 * Swift.max(heads, 1)) == 0 else {
            throw LoomError.shapeMismatch("cachedCausalSelfAttention: qkv \(describe(shape)) must be [B, T, 3C] with C divisible by \(heads) heads")
        }
        let (bsz, t, c3) = (shape[0], shape[1], shape[2])
        let c = c3 / 3, d = c / heads, end = start + t
        guard keys.rank == 3, keys.shape == values.shape, keys.shape[0] == bsz, keys.shape[2] == c, start >= 0, end <= keys.shape[1] else {
            throw LoomError.shapeMismatch("cachedCausalSelfAttention: positions \(start)..<\(end) of qkv \(describe(shape)) do not fit caches "
                + "\(describe(keys.shape)) and \(describe(values.shape)) (want [\(bsz), capacity >= \(end), \(c)])")
        }
        let capacity = keys.shape[1]
        if let keyBias, keyBias.shape != [bsz, capacity] {
            throw LoomError.shapeMismatch("cachedCausalSelfAttention: key bias \(describe(keyBias.shape)), want [\(bsz), \(capacity)]")
        }
        try requireSameDevice("cachedCausalSelfAttention", qkv, keys)
        let be = backend
        if let kernels = be as? any CachedAttentionKernels {
            let y = try empty([bsz, t, c])
            kernels.cachedAttention(qkv: qkv, keys: keys, values: values, start: start, heads: heads, keyBias: keyBias, into: y)
            return y
        }
        for b in 0..<bsz {  // the new keys and values into rows start..<end of the cache
            be.copyBlocks(qkv, srcOffset: b * t * c3 + c, srcStride: c3, into: keys, dstOffset: (b * capacity + start) * c, dstStride: c,
                          rows: t, width: c, accumulate: false)
            be.copyBlocks(qkv, srcOffset: b * t * c3 + 2 * c, srcStride: c3, into: values, dstOffset: (b * capacity + start) * c,
                          dstStride: c, rows: t, width: c, accumulate: false)
        }
        let scores = try empty([bsz, heads, t, end])
        let y = try empty([bsz, t, c])
        for b in 0..<bsz {
            // S[b] = Q Kᵀ / sqrt(D), batched over heads: Q [T, D] in qkv, K [L, D] in the cache.
            be.gemm(GEMMOperand(qkv, offset: b * t * c3, ld: c3, batchStride: d),
                    GEMMOperand(keys, offset: b * capacity * c, ld: c, batchStride: d, transposed: true),
                    GEMMOperand(scores, offset: b * heads * t * end, ld: end, batchStride: t * end),
                    m: t, n: end, k: d, batch: heads, alpha: 1 / Float(d).squareRoot(), beta: 0)
        }
        if t > 1 {  // query i sees keys 0...start+i
            var bias = [Float](repeating: 0, count: t * end)
            for i in 0..<t { for j in (start + i + 1)..<Swift.max(end, start + i + 1) { bias[i * end + j] = -.infinity } }
            be.binary(.add, scores, Tensor(bias, shape: [t, end], on: be), into: scores)
        }
        if let keyBias {
            for b in 0..<bsz {
                let rows = scores.view([heads, t, end], offset: b * heads * t * end)
                be.binary(.add, rows, keyBias.view([end], offset: b * capacity), into: rows)
            }
        }
        be.softmax(scores, rows: bsz * heads * t, cols: end, log: false, into: scores)
        for b in 0..<bsz {  // Y[b] = P V
            be.gemm(GEMMOperand(scores, offset: b * heads * t * end, ld: end, batchStride: t * end),
                    GEMMOperand(values, offset: b * capacity * c, ld: c, batchStride: d),
                    GEMMOperand(y, offset: b * t * c, ld: c, batchStride: d),
                    m: t, n: d, k: end, batch: heads, alpha: 1, beta: 0)
        }
        return y
    }
}
