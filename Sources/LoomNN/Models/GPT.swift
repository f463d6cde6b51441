import LoomCore

/// The shape of a GPT.
public struct GPTConfig: Equatable, Sendable, Codable {
    public var vocabSize: Int
    public var contextLength: Int
    public var layers: Int
    public var dModel: Int
    public var heads: Int
    public var dropout: Float
    /// Standard deviation of the N(0, std) initialisation of every weight matrix and embedding.
    public var initStd: Float

    public init(vocabSize: Int = 256, contextLength: Int = 128, layers: Int = 4, dModel: Int = 128, heads: Int = 4,
                dropout: Float = 0, initStd: Float = 0.02) {
        self.vocabSize = vocabSize; self.contextLength = contextLength; self.layers = layers
        self.dModel = dModel; self.heads = heads; self.dropout = dropout; self.initStd = initStd
    }

    /// The reference benchmark workload (../shared/bench): byte-level, context 128, 4 layers, d 128, 4 heads.
    public static let bench = GPTConfig()
}

/// A GPT-style decoder: token + learned position embeddings, pre-LN blocks, final LN,
/// and a head tied to the token embedding (logits = h · wteᵀ).
public final class GPT: Module {
    public let config: GPTConfig
    public let wte: Embedding  // [V, C], also the output head
    public let wpe: Embedding  // [T, C]
    public let blocks: [TransformerBlock]
    public let lnf: LayerNorm

    public init(_ config: GPTConfig, seed: UInt64, on backend: any Backend = DefaultBackend.current) throws {
        guard config.dModel % config.heads == 0 else {
            throw LoomError.config("gpt: d_model \(config.dModel) is not divisible by heads \(config.heads)")
        }
        self.config = config
        var rng = Philox(seed: seed)
        let std = config.initStd
        wte = Embedding(config.vocabSize, config.dModel, std: std, rng: &rng, on: backend)
        wpe = Embedding(config.contextLength, config.dModel, std: std, rng: &rng, on: backend)
        var blocks: [TransformerBlock] = []
        for i in 0..<config.layers {
            var r = rng.derived(UInt64(i + 1))
            blocks.append(TransformerBlock(dModel: config.dModel, heads: config.heads, std: std, projStd: std,
                                           dropout: config.dropout, rng: &r, on: backend))
        }
        self.blocks = blocks
        lnf = LayerNorm(config.dModel, on: backend)
    }

    /// int32 tokens [B, T] -> logits [B, T, V].
    public func callAsFunction(_ tokens: Tensor) throws -> Tensor {
        guard tokens.rank == 2, tokens.shape[1] <= config.contextLength else {
            throw LoomError.shapeMismatch("gpt: tokens \(describe(tokens.shape)) must be [B, T] with T <= context \(config.contextLength)")
        }
        let t = tokens.shape[1]
        let positions = Tensor(indices: (0..<Int32(t)).map { $0 }, shape: [t], on: tokens.backend)
        var x = try wte(tokens).add(wpe(positions))  // [B, T, C] + [T, C]
        for block in blocks { x = try block(x) }
        return try lnf(x).matmul(wte.weight, transposeB: true)  // [B, T, C] · [V, C]ᵀ
    }

    /// Mean next-token cross-entropy.
    public func loss(tokens: Tensor, targets: Tensor) throws -> Tensor {
        try self(tokens).crossEntropy(targets: targets)
    }
}
