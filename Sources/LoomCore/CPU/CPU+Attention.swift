import CLoomKernels

// Causal self-attention, one task per (sequence, head) across the threads (in proportion to
// their recent speeds: `ThreadSpeeds`; a head's results do not depend on the thread), each a
// few single-threaded GEMMs on the causal blocks only.
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
//
// Under bf16 precision qkv and dY arrive as bf16 copies (the products' operands); P and dS
// are rounded to bf16 a head at a time for the products that read them, as the unfused
// path rounds its whole tensors, and each head's K, V, Q and dY are packed once for all its
// row blocks (each reads a prefix of the columns or a suffix of the rows). Scores, softmax,
// P (saved) and every output stay float32. Backward's dP and dS live one head at a time in
// a buffer of the thread's own, never in memory of the op's.

extension CPUBackend: CausalAttentionKernels {
    /// Rows per block: smaller skips more of the upper triangle, larger makes better GEMMs.
    static let attentionBlock = 32

    /// float32 always; bf16 on Loom's bf16 kernel, or widened to float32 where the processor
    /// has no bf16 instructions (with AMX the op's unfused path takes oneDNN's products).
    public func runsCausalAttention(operands dtype: DType) -> Bool {
        dtype == .float32 || (dtype == .bfloat16 && BF16GEMMPath.selected != .onednn)
    }

    /// An attention pass as `speeds` knows it (its heads are dealt in proportion to the threads' speeds).
    public static func attentionShape(_ s: AttentionShape, backward: Bool) -> ThreadSpeeds.Shape {
        [1, s.batch, s.length, s.heads, s.headSize, backward ? 1 : 0]
    }

    public func causalAttention(qkv: Tensor, shape: AttentionShape, scale: Float, probs: Tensor, into y: Tensor) {
        let start = monotonicSeconds()
        if qkv.dtype == .bfloat16 {
            attentionForward(qkv.halfPtr, shape: shape, scale: scale, probs: probs.ptr, y: y.ptr)
        } else {
            attentionForward(qkv.ptr, shape: shape, scale: scale, probs: probs.ptr, y: y.ptr)
        }
        count(.attention, flops: causalFlops(shape, products: 2), since: start)
    }

    public func causalAttentionBackward(qkv: Tensor, probs: Tensor, gradOutput: Tensor, shape: AttentionShape,
                                        scale: Float, into gqkv: Tensor) {
        precondition(gradOutput.dtype == qkv.dtype, "causalAttentionBackward: dY \(gradOutput.dtype) for qkv \(qkv.dtype)")
        let start = monotonicSeconds()
        if qkv.dtype == .bfloat16 {
            attentionBackward(qkv.halfPtr, probs: probs.ptr, gy: gradOutput.halfPtr, shape: shape, scale: scale,
                              gqkv: gqkv.ptr)
        } else {
            attentionBackward(qkv.ptr, probs: probs.ptr, gy: gradOutput.ptr, shape: shape, scale: scale,
                              gqkv: gqkv.ptr)
        }
        count(.attention, flops: causalFlops(shape, products: 4), since: start)
    }

    fileprivate func attentionForward<E: AttentionOperand>(_ pqkv: UnsafeMutablePointer<E>, shape: AttentionShape, scale: Float,
                                                       probs pp: UnsafeMutablePointer<Float>, y py: UnsafeMutablePointer<Float>) {
        let (t, h, d, c) = (shape.length, shape.heads, shape.headSize, shape.width)
        let bl = Self.attentionBlock
        let ld = 3 * c  // qkv's row stride
        balancedFor(shape.batch * h, shape: Self.attentionShape(shape, backward: false)) { tasks in
            let scratch = AttentionScratch<E>(length: t, headSize: d, shared: 2)
            defer { scratch.deallocate() }
            for task in tasks {
                let (b, head) = task.quotientAndRemainder(dividingBy: h)
                let q = pqkv + b * t * ld + head * d, k = q + c, v = q + 2 * c
                let p = pp + task * t * t, out = py + b * t * c + head * d
                let kt = E.share(transposed: true, k: d, n: t, k, ld: ld, scratch.shared[0])  // Kᵀ: [D, T]
                let vs = E.share(transposed: false, k: t, n: d, v, ld: ld, scratch.shared[1])  // V: [T, D]
                for r0 in stride(from: 0, to: t, by: bl) {
                    let rows = min(bl, t - r0), keys = r0 + rows
                    E.gemm(transA: false, m: rows, n: keys, k: d, alpha: scale, q + r0 * ld, lda: ld, kt, fromRow: 0,
                           widening: scratch.wide, beta: 0, p + r0 * t, ldc: t)
                }
                loom_softmax_rows(p, p, Int64(t), Int64(t), 0, Int64(t))
                let pl = E.operand(p, count: t * t, scratch: scratch.rounded)
                for r0 in stride(from: 0, to: t, by: bl) {
                    let rows = min(bl, t - r0), keys = r0 + rows
                    E.gemm(transA: false, m: rows, n: d, k: keys, alpha: 1, pl + r0 * t, lda: t, vs, fromRow: 0,
                           widening: scratch.wide, beta: 0, out + r0 * c, ldc: c)
                }
            }
        }
    }

    fileprivate func attentionBackward<E: AttentionOperand>(_ pqkv: UnsafeMutablePointer<E>, probs pp: UnsafeMutablePointer<Float>,
                                                        gy pgy: UnsafeMutablePointer<E>, shape: AttentionShape, scale: Float,
                                                        gqkv pg: UnsafeMutablePointer<Float>) {
        let (t, h, d, c) = (shape.length, shape.heads, shape.headSize, shape.width)
        let bl = Self.attentionBlock
        let ld = 3 * c  // qkv's row stride
        balancedFor(shape.batch * h, shape: Self.attentionShape(shape, backward: true)) { tasks in
            let scratch = AttentionScratch<E>(length: t, headSize: d, shared: 4, scores: true)
            defer { scratch.deallocate() }
            for task in tasks {
                let (b, head) = task.quotientAndRemainder(dividingBy: h)
                let base = b * t * ld + head * d
                let q = pqkv + base, k = q + c, v = q + 2 * c
                let gq = pg + base, gk = gq + c, gv = gq + 2 * c
                let p = pp + task * t * t, ds = scratch.scores!, gy = pgy + b * t * c + head * d
                let vt = E.share(transposed: true, k: d, n: t, v, ld: ld, scratch.shared[0])  // Vᵀ: [D, T]
                let gys = E.share(transposed: false, k: t, n: d, gy, ld: c, scratch.shared[1])  // dY: [T, D]
                let pl = E.operand(p, count: t * t, scratch: scratch.rounded)
                for r0 in stride(from: 0, to: t, by: bl) {
                    let rows = min(bl, t - r0), keys = r0 + rows
                    // dP[R, K≤] = dY[R] V[K≤]ᵀ
                    E.gemm(transA: false, m: rows, n: keys, k: d, alpha: 1, gy + r0 * c, lda: c, vt, fromRow: 0,
                           widening: scratch.wide, beta: 0, ds + r0 * t, ldc: t)
                    // dV[C] = P[R≥, C]ᵀ dY[R≥], C = this block's columns
                    E.gemm(transA: true, m: rows, n: d, k: t - r0, alpha: 1, pl + r0 * t + r0, lda: t, gys, fromRow: r0,
                           widening: scratch.wide, beta: 0, gv + r0 * ld, ldc: ld)
                }
                loom_softmax_backward_rows(p, ds, ds, Int64(t), Int64(t), 0, Int64(t))
                let dsl = E.operand(ds, count: t * t, scratch: scratch.rounded)
                let ks = E.share(transposed: false, k: t, n: d, k, ld: ld, scratch.shared[2])  // K: [T, D]
                let qs = E.share(transposed: false, k: t, n: d, q, ld: ld, scratch.shared[3])  // Q: [T, D]
                for r0 in stride(from: 0, to: t, by: bl) {
                    let rows = min(bl, t - r0), keys = r0 + rows
                    // dQ[R] = scale · dS[R, K≤] K[K≤]
                    E.gemm(transA: false, m: rows, n: d, k: keys, alpha: scale, dsl + r0 * t, lda: t, ks, fromRow: 0,
                           widening: scratch.wide, beta: 0, gq + r0 * ld, ldc: ld)
                    // dK[C] = scale · dS[R≥, C]ᵀ Q[R≥]
                    E.gemm(transA: true, m: rows, n: d, k: t - r0, alpha: scale, dsl + r0 * t + r0, lda: t, qs, fromRow: r0,
                           widening: scratch.wide, beta: 0, gk + r0 * ld, ldc: ld)
                }
            }
        }
    }

    /// FLOPs of `products` products over the causal blocks (what the kernel issues).
    private func causalFlops(_ s: AttentionShape, products: Int) -> Double {
        let bl = Self.attentionBlock
        var pairs = 0  // (query, key) pairs the blocks cover per head
        for r0 in stride(from: 0, to: s.length, by: bl) { pairs += min(bl, s.length - r0) * (r0 + min(bl, s.length - r0)) }
        return 2 * Double(pairs) * Double(s.headSize) * Double(products * s.batch * s.heads)
    }
}

/// One head's op(B) as several products read it (a prefix of its columns, or its rows from
/// an even r0 on): bf16 packs it once into pairs (`loom_bf16_pack_b`), or widens it once to
/// float32 where the processor has no bf16 instructions; float32 reads it where it lies.
fileprivate struct SharedOperand<E> {
    var b: UnsafePointer<E>, ld: Int, transposed: Bool
    var packed: UnsafeMutablePointer<UInt32>? = nil, panelWords = 0
    /// The widened copy (stored as b is, rows `ld` apart).
    var wide: UnsafePointer<Float>? = nil
}

/// A thread's buffers for its heads: backward's dP (then dS) of one head, P or dS rounded to
/// the operand type (bf16 only), the packed shared operands, and room for a product's op(A)
/// widened to float32 (bf16 without bf16 instructions only). Each is written and read again
/// while it is in this core's cache: a [B, H, T, T] dS written out to memory, one head after
/// another, cost the GPT workload's backward 1.4 ms a step on one core (of 10 in attention).
fileprivate struct AttentionScratch<E: AttentionOperand> {
    let scores: UnsafeMutablePointer<Float>?
    let rounded: UnsafeMutablePointer<E>?
    let shared: [UnsafeMutablePointer<UInt32>?]
    let wide: UnsafeMutablePointer<Float>?

    init(length t: Int, headSize d: Int, shared count: Int, scores: Bool = false) {
        self.scores = scores ? .allocate(capacity: t * t) : nil
        rounded = E.scratch(t * t)
        wide = E.widens ? .allocate(capacity: max(t, d) * max(t, d)) : nil
        let words = E.packedWords(k: max(t, d), n: max(t, d))
        shared = (0..<count).map { _ in
            words == 0 ? nil : UnsafeMutableRawPointer.allocate(byteCount: 4 * words, alignment: 64).assumingMemoryBound(to: UInt32.self)
        }
    }

    func deallocate() {
        scores?.deallocate()
        rounded?.deallocate()
        wide?.deallocate()
        for p in shared { p?.deallocate() }
    }
}

/// The element of attention's product operands: float32, or bf16 (its bits as UInt16).
fileprivate protocol AttentionOperand {
    /// Words a packed op(B) of k x n takes (0: not packed).
    static func packedWords(k: Int, n: Int) -> Int
    /// Whether `gemm` widens op(A) to float32 (into its `widening` buffer, max(T, D)² floats).
    static var widens: Bool { get }
    /// op(B), k x n (b stored transposed or not, rows `ld` apart), made ready for `gemm`.
    static func share(transposed: Bool, k: Int, n: Int, _ b: UnsafePointer<Self>, ld: Int,
                      _ buffer: UnsafeMutablePointer<UInt32>?) -> SharedOperand<Self>
    /// C = alpha · op(A) · B[r0..<r0 + k, 0..<n] + beta · C on the calling thread, C float32.
    static func gemm(transA: Bool, m: Int, n: Int, k: Int, alpha: Float, _ a: UnsafePointer<Self>, lda: Int,
                     _ b: SharedOperand<Self>, fromRow r0: Int, widening: UnsafeMutablePointer<Float>?, beta: Float,
                     _ c: UnsafeMutablePointer<Float>, ldc: Int)
    /// A buffer of `count` elements for float32 values rounded to this type; nil for float32 itself.
    static func scratch(_ count: Int) -> UnsafeMutablePointer<Self>?
    /// x as product operands: x itself for float32, else rounded into `scratch`.
    static func operand(_ x: UnsafeMutablePointer<Float>, count: Int, scratch: UnsafeMutablePointer<Self>?) -> UnsafeMutablePointer<Self>
}

extension Float: AttentionOperand {
    fileprivate static func packedWords(k: Int, n: Int) -> Int { 0 }
    fileprivate static var widens: Bool { false }
    fileprivate static func share(transposed: Bool, k: Int, n: Int, _ b: UnsafePointer<Float>, ld: Int,
                      _ buffer: UnsafeMutablePointer<UInt32>?) -> SharedOperand<Float> {
        SharedOperand(b: b, ld: ld, transposed: transposed)
    }
    fileprivate static func gemm(transA: Bool, m: Int, n: Int, k: Int, alpha: Float, _ a: UnsafePointer<Float>, lda: Int,
                     _ b: SharedOperand<Float>, fromRow r0: Int, widening: UnsafeMutablePointer<Float>?, beta: Float,
                     _ c: UnsafeMutablePointer<Float>, ldc: Int) {
        sgemm(transA: transA, transB: b.transposed, m: m, n: n, k: k, alpha: alpha, a, lda: lda,
              b.transposed ? b.b + r0 : b.b + r0 * b.ld, ldb: b.ld, beta: beta, c, ldc: ldc)
    }
    fileprivate static func scratch(_ count: Int) -> UnsafeMutablePointer<Float>? { nil }
    fileprivate static func operand(_ x: UnsafeMutablePointer<Float>, count: Int, scratch: UnsafeMutablePointer<Float>?) -> UnsafeMutablePointer<Float> { x }
}

/// bf16 operands on Loom's kernel, or (`BF16GEMMPath.widen`: no bf16 instructions) widened to
/// float32, exactly, for sgemm: the same products.
extension UInt16: AttentionOperand {
    private static var packs: Bool { BF16GEMMPath.selected == .kernel }

    fileprivate static func packedWords(k: Int, n: Int) -> Int { packs ? Int(loom_bf16_packed_b_words(Int64(k), Int64(n))) : k * n }
    fileprivate static var widens: Bool { !packs }
    fileprivate static func share(transposed: Bool, k: Int, n: Int, _ b: UnsafePointer<UInt16>, ld: Int,
                      _ buffer: UnsafeMutablePointer<UInt32>?) -> SharedOperand<UInt16> {
        if !packs {
            let (rows, width) = transposed ? (n, k) : (k, n)  // as stored
            let wide = UnsafeMutableRawPointer(buffer!).assumingMemoryBound(to: Float.self)
            for r in 0..<rows { loom_bf16_to_f32(b + r * ld, wide + r * width, Int64(width)) }
            return SharedOperand(b: b, ld: width, transposed: transposed, wide: wide)
        }
        loom_bf16_pack_b(transposed ? 1 : 0, Int64(k), 0, Int64(n), 0, Int64((k + 1) / 2), b, Int64(ld), buffer!)
        return SharedOperand(b: b, ld: ld, transposed: transposed, packed: buffer, panelWords: (k + 1) / 2 * 32)
    }
    fileprivate static func gemm(transA: Bool, m: Int, n: Int, k: Int, alpha: Float, _ a: UnsafePointer<UInt16>, lda: Int,
                     _ b: SharedOperand<UInt16>, fromRow r0: Int, widening: UnsafeMutablePointer<Float>?, beta: Float,
                     _ c: UnsafeMutablePointer<Float>, ldc: Int) {
        if let bw = b.wide, let aw = widening {
            let (rows, width) = transA ? (k, m) : (m, k)  // op(A) as stored
            for r in 0..<rows { loom_bf16_to_f32(a + r * lda, aw + r * width, Int64(width)) }
            sgemm(transA: transA, transB: b.transposed, m: m, n: n, k: k, alpha: alpha, aw, lda: width,
                  b.transposed ? bw + r0 : bw + r0 * b.ld, ldb: b.ld, beta: beta, c, ldc: ldc)
            return
        }
        precondition(r0 % 2 == 0, "attention: a packed operand's rows are read from an even row, not \(r0)")
        let done = loom_bf16_gemm_packed_b(transA ? 1 : 0, Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda),
                                           b.packed! + r0 / 2 * 32, Int64(b.panelWords), beta, c, Int64(ldc), nil)
        precondition(done != 0, "bf16 gemm \(m)x\(n)x\(k): no AVX512-BF16 or no memory for the packing buffers")
    }
    fileprivate static func scratch(_ count: Int) -> UnsafeMutablePointer<UInt16>? { .allocate(capacity: count) }
    fileprivate static func operand(_ x: UnsafeMutablePointer<Float>, count: Int, scratch: UnsafeMutablePointer<UInt16>?) -> UnsafeMutablePointer<UInt16> {
        loom_f32_to_bf16(x, scratch!, Int64(count))
        return scratch!
    }
}
