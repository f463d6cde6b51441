import LoomCore
import LoomDistributed

/// Causal multi-head self-attention: qkv projection, fused attention, output projection.
/// Under tensor parallelism (a `group` of more than one rank) the heads are split: qkv is
/// column-parallel (this rank's heads' queries, keys and values), proj row-parallel.
public final class CausalSelfAttention: Module {
    public let qkv: ColumnParallelLinear   // [3C/tp, C]
    public let proj: RowParallelLinear     // [C, C/tp]
    /// Heads this rank computes.
    public let heads: Int

    public init(dModel: Int, heads: Int, std: Float, projStd: Float, rng: inout Philox, on backend: any Backend,
                group: Communicator? = nil) throws {
        let n = group?.size ?? 1
        guard heads % n == 0 else { throw LoomError.config("tensor parallel \(n): \(heads) heads are not divisible by \(n)") }
        qkv = try ColumnParallelLinear(whole: Linear(dModel, 3 * dModel, std: std, rng: &rng, on: backend), pieces: 3, group: group)
        proj = try RowParallelLinear(whole: Linear(dModel, dModel, std: projStd, rng: &rng, on: backend), group: group)
        self.heads = heads / n
    }

    /// [B, T, C] -> [B, T, C]. With a cache: T new positions, attending to the cached ones
    /// too (inference), their keys and values added to it.
    func callAsFunction(_ x: Tensor, cache: KVCache.Layer?) throws -> Tensor {
        let qkv = try self.qkv(x)
        guard let cache else { return try proj(qkv.causalSelfAttention(heads: heads)) }
        return try proj(qkv.cachedCausalSelfAttention(heads: heads, keys: cache.keys, values: cache.values, start: cache.start,
                                                       keyBias: cache.keyBias))
    }

    public func callAsFunction(_ x: Tensor) throws -> Tensor { try self(x, cache: nil) }
}

/// The transformer MLP: C -> 4C, GELU (tanh), 4C -> C; split column -> row under tensor
/// parallelism (C -> 4C/tp on each rank, partial outputs summed).
public final class FeedForward: Module {
    public let fc: ColumnParallelLinear
    public let proj: RowParallelLinear

    public init(dModel: Int, hidden: Int, std: Float, projStd: Float, rng: inout Philox, on backend: any Backend,
                group: Communicator? = nil) throws {
        fc = try ColumnParallelLinear(whole: Linear(dModel, hidden, std: std, rng: &rng, on: backend), group: group)
        proj = try RowParallelLinear(whole: Linear(hidden, dModel, std: projStd, rng: &rng, on: backend), group: group)
    }

    /// fc, GELU and proj are one op (`Tensor.feedForward`): under bf16 the GELU's output and
    /// its gradient are written once each, in bf16, where the products read them.
    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        try proj.output(fc.input(x).feedForward(fc.weight, fc.bias, proj.weight, proj.localBias, activation: .gelu))
    }
}

/// Pre-LayerNorm transformer block: x + attn(ln1(x)), then + mlp(ln2(x)).
///
/// Layer norms and dropout act on the residual stream, which every tensor-parallel rank
/// holds whole: the same parameters and the same dropout generator on every rank draw the
/// single-process masks (Megatron's "default" generator for replicated regions).
public final class TransformerBlock: Module, UnaryLayer {
    public let ln1: LayerNorm
    public let attention: CausalSelfAttention
    public let ln2: LayerNorm
    public let mlp: FeedForward
    public let dropout: Dropout

    public init(dModel: Int, heads: Int, std: Float, projStd: Float, dropout p: Float, rng: inout Philox, on backend: any Backend,
                group: Communicator? = nil) throws {
        ln1 = LayerNorm(dModel, on: backend)
        attention = try CausalSelfAttention(dModel: dModel, heads: heads, std: std, projStd: projStd, rng: &rng, on: backend, group: group)
        ln2 = LayerNorm(dModel, on: backend)
        mlp = try FeedForward(dModel: dModel, hidden: 4 * dModel, std: std, projStd: projStd, rng: &rng, on: backend, group: group)
        dropout = Dropout(p, rng: rng.derived(0xD0))
    }

    /// [B, T, C] -> [B, T, C] (with a cache: T new positions, as `CausalSelfAttention`).
    func callAsFunction(_ x: Tensor, cache: KVCache.Layer?) throws -> Tensor {
        let h = try x.add(dropout(attention(ln1(x), cache: cache)))
        return try h.add(dropout(mlp(ln2(h))))
    }

    public func callAsFunction(_ x: Tensor) throws -> Tensor { try self(x, cache: nil) }
}
