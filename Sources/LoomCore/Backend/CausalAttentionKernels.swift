/// A backend that runs causal self-attention as kernels of its own instead of the four
/// batched GEMMs and masked softmax of `Tensor.causalSelfAttention` (Ops/Attention.swift).
/// The CPU's computes each head's lower-triangular blocks only. Layouts are the op's:
/// qkv [B, T, 3C] (per token: H heads of D query values, then keys, then values), y and
/// dY [B, T, C], P [B, H, T, T] with zeros above the diagonal.
/// qkv and dY are the products' operands: float32, or bf16 copies under bf16 precision
/// where `runsCausalAttention(operands:)` says so (P and dS are then rounded to bf16 for the
/// products that read them, as the op's unfused path does); P, y and d qkv are float32.
public protocol CausalAttentionKernels: Backend {
    /// Whether the kernels take operands of `dtype` (the op's unfused path runs the others).
    func runsCausalAttention(operands dtype: DType) -> Bool
    /// y = P V with P = softmax(scale · Q Kᵀ + causal mask), P kept in `probs` for backward.
    func causalAttention(qkv: Tensor, shape: AttentionShape, scale: Float, probs: Tensor, into y: Tensor)
    /// d qkv from dY and the saved P.
    func causalAttentionBackward(qkv: Tensor, probs: Tensor, gradOutput: Tensor, shape: AttentionShape, scale: Float,
                                 into gqkv: Tensor)
}

extension CausalAttentionKernels {
    public func runsCausalAttention(operands dtype: DType) -> Bool { dtype == .float32 }
}

/// Batch, sequence length, heads and head size of a packed attention.
public struct AttentionShape: Sendable, Equatable {
    public var batch: Int, length: Int, heads: Int, headSize: Int
    public init(batch: Int, length: Int, heads: Int, headSize: Int) {
        self.batch = batch; self.length = length; self.heads = heads; self.headSize = headSize
    }
    /// Model width C = H · D.
    public var width: Int { heads * headSize }
}

/// A backend that runs generation's attention over a key/value cache as one kernel of its
/// own (`Tensor.cachedCausalSelfAttention`, Ops/CachedAttention.swift, says what it
/// computes). The XLA backend does, so that the position is a value the program reads at
/// run time rather than a shape: one compiled program serves every new token.
public protocol CachedAttentionKernels: Backend {
    /// Writes positions start..<start+T of qkv [B, T, 3C]'s keys and values into the caches
    /// [B, capacity, C]; y [B, T, C] = softmax(Q Kᵀ / √D + causal mask + keyBias) V over the
    /// cache rows 0...start+i of query i. `keyBias`: [B, capacity] or nil.
    func cachedAttention(qkv: Tensor, keys: Tensor, values: Tensor, start: Int, heads: Int, keyBias: Tensor?, into y: Tensor)
}
