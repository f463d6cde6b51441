import LoomCore

/// Causal multi-head self-attention: qkv projection, fused attention, output projection.
public final class CausalSelfAttention: Module {
    public let qkv: Linear   // [3C, C]
    public let proj: Linear  // [C, C]
    public let heads: Int

    public init(dModel: Int, heads: Int, std: Float, projStd: Float, rng: inout Philox, on backend: any Backend) {
        qkv = Linear(dModel, 3 * dModel, std: std, rng: &rng, on: backend)
        proj = Linear(dModel, dModel, std: projStd, rng: &rng, on: backend)
        self.heads = heads
    }

    /// [B, T, C] -> [B, T, C]
    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        try proj(qkv(x).causalSelfAttention(heads: heads))
    }
}

/// The transformer MLP: C -> 4C, GELU (tanh), 4C -> C.
public final class FeedForward: Module {
    public let fc: Linear
    public let proj: Linear

    public init(dModel: Int, hidden: Int, std: Float, projStd: Float, rng: inout Philox, on backend: any Backend) {
        fc = Linear(dModel, hidden, std: std, rng: &rng, on: backend)
        proj = Linear(hidden, dModel, std: projStd, rng: &rng, on: backend)
    }

    public func callAsFunction(_ x: Tensor) throws -> Tensor { try proj(fc(x).gelu()) }
}

/// Pre-LayerNorm transformer block: x + attn(ln1(x)), then + mlp(ln2(x)).
public final class TransformerBlock: Module {
    public let ln1: LayerNorm
    public let attention: CausalSelfAttention
    public let ln2: LayerNorm
    public let mlp: FeedForward
    public let dropout: Dropout

    public init(dModel: Int, heads: Int, std: Float, projStd: Float, dropout p: Float, rng: inout Philox, on backend: any Backend) {
        ln1 = LayerNorm(dModel, on: backend)
        attention = CausalSelfAttention(dModel: dModel, heads: heads, std: std, projStd: projStd, rng: &rng, on: backend)
        ln2 = LayerNorm(dModel, on: backend)
        mlp = FeedForward(dModel: dModel, hidden: 4 * dModel, std: std, projStd: projStd, rng: &rng, on: backend)
        dropout = Dropout(p, rng: rng.derived(0xD0))
    }

    /// [B, T, C] -> [B, T, C]
    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        let h = try x.add(dropout(attention(ln1(x))))
        return try h.add(dropout(mlp(ln2(h))))
    }
}
