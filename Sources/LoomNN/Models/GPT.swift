import LoomCore
import LoomDistributed

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

    /// GPT-2 small's shape: 12 layers, d_model 768, 12 heads, context 1024, and GPT-2's
    /// vocabulary of 50257 padded to 50304 (a multiple of 64, as nanoGPT pads it).
    public static let gpt2Small = GPTConfig(vocabSize: 50304, contextLength: 1024, layers: 12, dModel: 768, heads: 12)
}

/// A GPT-style decoder: token + learned position embeddings, pre-LN blocks, final LN,
/// and a head tied to the token embedding (logits = h · wteᵀ).
///
/// The one definition of the model for every layout. With a tensor-parallel `group`, its
/// layers are Megatron's parallel ones (heads and MLP columns split, the token table
/// split by vocabulary rows, a vocabulary-parallel loss); with none they are the plain
/// layers. A pipeline piece (`pieces`) is the same model holding a range of its blocks,
/// with the embeddings on the first piece and the final norm, head and loss on the last.
/// Names are always the whole model's (`blocks.5.mlp.fc.weight`).
public final class GPT: Module {
    public let config: GPTConfig
    /// The token table [V/tp, C], also the output head: on the first and the last piece.
    public let wte: VocabParallelEmbedding?
    public let wpe: Embedding?         // [T, C], first piece
    public let blocks: [TransformerBlock]
    public let lnf: LayerNorm?         // last piece
    /// Index in the whole model of this piece's first block (0 for the whole model).
    public let firstBlock: Int
    public let isFirst: Bool
    public let isLast: Bool

    /// Runs each block's forward with its parameters whole when they are kept sharded (ZeRO-3).
    let sharding: (any UnitSharding)?

    /// The parts of the model whose values a rank keeps: a pipeline stage's blocks, and the
    /// embeddings (first piece) and head (last piece) when it holds them. The other parts
    /// are built with their shapes and names and their values dropped at once, so
    /// building holds the stage's part and one block beyond it at most, and every kept
    /// value is the one the whole model has (each block draws from its own stream).
    public struct Part: Equatable, Sendable {
        public var blocks: Set<Int>
        public var embeddings: Bool
        public var head: Bool

        public init(blocks: Set<Int>, embeddings: Bool, head: Bool) { self.blocks = blocks; self.embeddings = embeddings; self.head = head }

        /// The part of pieces `held` of the model cut into `count` pieces (`split[i]`
        /// blocks in piece i; nil: `balancedSplit`).
        public init(_ config: GPTConfig, pieces count: Int, holding held: [Int], split: [Int]? = nil) throws {
            let counts = try split ?? GPT.balancedSplit(config, pieces: count)
            let starts = counts.indices.map { counts[..<$0].reduce(0, +) }
            self.init(blocks: Set(held.flatMap { starts[$0]..<(starts[$0] + counts[$0]) }), embeddings: held.contains(0),
                      head: held.contains(count - 1))
        }
    }

    /// The whole model, initialised from `seed` (the same values on every backend and in
    /// every layout). `tensorGroup`: split across it (this rank's part). `sharding`: each
    /// block is a unit of it, the embeddings and final norm its root, each sharded as soon
    /// as it is made (ZeRO-3: the whole of one block at most is held while building).
    /// `keeping`: the values of only that part are kept (a pipeline stage's).
    public init(_ config: GPTConfig, seed: UInt64, on backend: any Backend = DefaultBackend.current,
                tensorGroup: Communicator? = nil, sharding: (any UnitSharding)? = nil, keeping part: Part? = nil) throws {
        guard config.dModel % config.heads == 0 else {
            throw LoomError.config("gpt: d_model \(config.dModel) is not divisible by heads \(config.heads)")
        }
        self.config = config
        var rng = Philox(seed: seed)
        let std = config.initStd
        let wte = try VocabParallelEmbedding(whole: Embedding(config.vocabSize, config.dModel, std: std, rng: &rng, on: backend),
                                             group: tensorGroup)
        let wpe = Embedding(config.contextLength, config.dModel, std: std, rng: &rng, on: backend)
        try sharding?.shard([wte, wpe], as: nil)
        if let part, !part.embeddings { wpe.releaseValues(); if !part.head { wte.releaseValues() } }
        self.wte = wte
        self.wpe = wpe
        var blocks: [TransformerBlock] = []
        for i in 0..<config.layers {
            var r = rng.derived(UInt64(i + 1))
            let block = try TransformerBlock(dModel: config.dModel, heads: config.heads, std: std, projStd: std,
                                             dropout: config.dropout, rng: &r, on: backend, group: tensorGroup)
            try sharding?.shard([block], as: block)
            if let part, !part.blocks.contains(i) { block.releaseValues() }
            blocks.append(block)
        }
        self.blocks = blocks
        let lnf = LayerNorm(config.dModel, on: backend)
        try sharding?.shard([lnf], as: nil)
        if let part, !part.head { lnf.releaseValues() }
        self.lnf = lnf
        self.sharding = sharding
        firstBlock = 0
        isFirst = true
        isLast = true
    }

    /// A piece of `whole`: blocks `range`, sharing its layers.
    private init(pieceOf whole: GPT, blocks range: Range<Int>, first: Bool, last: Bool) {
        config = whole.config
        wte = first || last ? whole.wte : nil
        wpe = first ? whole.wpe : nil
        blocks = Array(whole.blocks[range])
        lnf = last ? whole.lnf : nil
        sharding = whole.sharding
        firstBlock = range.lowerBound
        isFirst = first
        isLast = last
    }

    /// The model cut into pieces of consecutive blocks, `split[i]` blocks in piece i
    /// (default: `balancedSplit`).
    public func pieces(_ count: Int, split: [Int]? = nil) throws -> [GPT] {
        let counts = try split ?? GPT.balancedSplit(config, pieces: count)
        guard counts.count == count, counts.reduce(0, +) == blocks.count, counts.allSatisfy({ $0 >= 0 }) else {
            throw LoomError.config("pipeline split \(counts) does not cut \(blocks.count) blocks into \(count) pieces")
        }
        var start = 0
        return counts.enumerated().map { i, n in
            defer { start += n }
            return GPT(pieceOf: self, blocks: start..<(start + n), first: i == 0, last: i == count - 1)
        }
    }

    public override func childName(_ label: String, _ index: Int) -> String {
        label == "blocks" ? "blocks.\(firstBlock + index)" : super.childName(label, index)
    }

    /// The whole model: int32 tokens [B, T] -> logits [B, T, V] ([B, T, V/tp] when split).
    /// A piece: first takes tokens, others [B, T, C]; last returns logits, others [B, T, C].
    public func callAsFunction(_ input: Tensor) throws -> Tensor { try self(input, cache: nil) }

    /// The whole model on T new positions after those in `cache` (inference: generation),
    /// tokens [B, T] -> logits [B, T, V]; their keys and values are added to the cache.
    /// Without a cache, as `callAsFunction(_:)`.
    public func callAsFunction(_ input: Tensor, cache: KVCache?) throws -> Tensor {
        if cache != nil, !(isFirst && isLast) { throw LoomError.invalidArgument("gpt: a kv cache runs on the whole model, not a pipeline piece") }
        var x = input
        if isFirst, let wte, let wpe {
            let start = cache?.length ?? 0
            guard input.rank == 2, start + input.shape[1] <= config.contextLength, cache.map({ $0.batch == input.shape[0] }) ?? true else {
                throw LoomError.shapeMismatch("gpt: tokens \(describe(input.shape)) must be [B, T] with T <= context \(config.contextLength)"
                    + (cache.map { " - \($0.length) cached positions, B = \($0.batch)" } ?? ""))
            }
            let t = input.shape[1]
            if let cache {
                x = try wte(input).add(wpe(cache.positions(count: t, on: input.backend)))  // [B, T, C] + [B, T, C]
            } else {
                let positions = Tensor(indices: (0..<Int32(t)).map { $0 }, shape: [t], on: input.backend)
                x = try wte(input).add(wpe(positions))  // [B, T, C] + [T, C]
            }
        }
        for (i, block) in blocks.enumerated() {
            let input = x
            x = try sharding.forward(block) { try block(input, cache: cache?.layer(i)) }
        }
        if isLast, let lnf, let wte { x = try wte.logits(lnf(x)) }  // [B, T, C] · [V, C]ᵀ
        cache?.length += input.shape[1]
        return x
    }

    /// Mean next-token cross-entropy of the last piece's logits against targets [B, T].
    public func loss(logits: Tensor, targets: Tensor) throws -> Tensor {
        guard isLast, let wte else { throw LoomError.invalidArgument("gpt: only the last piece computes the loss") }
        return try wte.loss(logits: logits, targets: targets)
    }

    /// Mean next-token cross-entropy (the whole model).
    public func loss(tokens: Tensor, targets: Tensor) throws -> Tensor {
        try loss(logits: self(tokens), targets: targets)
    }

    /// Where the model's tokens and caches live: its embeddings' backend.
    public var backend: any Backend { wte?.weight.backend ?? DefaultBackend.current }

    /// Parameters this piece shares with another piece: the token table, held by the first
    /// piece (embedding) and the last (head), whose gradients the two sum.
    public var tiedParameters: [Tensor] { isFirst != isLast ? wte.map { [$0.weight] } ?? [] : [] }
}

// MARK: - Cost model for cutting a GPT into pipeline pieces

extension GPT {
    /// Forward multiply-adds per token of a piece holding `blocks` blocks (and the head
    /// and loss when it is the last): a block 12C² + 2TC, the head CV + 4V.
    public static func pieceCost(_ c: GPTConfig, blocks: Int, last: Bool) -> Double {
        let block = Double(12 * c.dModel * c.dModel + 2 * c.contextLength * c.dModel)
        let head = Double(c.dModel * c.vocabSize + 4 * c.vocabSize)
        return Double(blocks) * block + (last ? head : 0)
    }

    /// The cost model's forward cost of each piece of a split.
    public static func pieceCosts(_ c: GPTConfig, split: [Int]) -> [Double] {
        split.enumerated().map { pieceCost(c, blocks: $1, last: $0 == split.count - 1) }
    }

    /// Blocks per piece that minimise the most expensive piece, by the forward cost model
    /// (the embedding is free). Middle pieces get at least one block. Ties go to the most
    /// even split.
    public static func balancedSplit(_ c: GPTConfig, pieces: Int) throws -> [Int] {
        try minimaxSplit(items: c.layers, pieces: pieces) { piece, n in pieceCost(c, blocks: n, last: piece == pieces - 1) }
    }
}

/// Cuts `items` consecutive items into `pieces` runs minimising the largest `cost(piece,
/// count)` by dynamic programming; among equal maxima, the smallest sum of squared costs
/// (the most even split). Middle pieces get at least one item.
public func minimaxSplit(items: Int, pieces: Int, cost: (Int, Int) -> Double) throws -> [Int] {
    guard pieces >= 1 else { throw LoomError.config("pipeline: \(pieces) pieces") }
    typealias Score = (max: Double, squares: Double)
    let worst: Score = (.infinity, .infinity)
    var best = [[Score]](repeating: [Score](repeating: worst, count: items + 1), count: pieces + 1)
    var choice = [[Int]](repeating: [Int](repeating: 0, count: items + 1), count: pieces + 1)
    best[0][0] = (0, 0)
    for j in 1...pieces {
        let minimum = j == 1 || j == pieces ? 0 : 1
        for l in 0...items {
            for n in stride(from: minimum, through: l, by: 1) where best[j - 1][l - n].max.isFinite {
                let c = cost(j - 1, n), prev = best[j - 1][l - n]
                let s: Score = (max(prev.max, c), prev.squares + c * c)
                if s.max < best[j][l].max || (s.max == best[j][l].max && s.squares < best[j][l].squares) {
                    best[j][l] = s; choice[j][l] = n
                }
            }
        }
    }
    guard best[pieces][items].max.isFinite else {
        throw LoomError.config("pipeline: \(items) layers cannot be cut into \(pieces) pieces")
    }
    var counts: [Int] = [], l = items
    for j in stride(from: pieces, to: 0, by: -1) { counts.append(choice[j][l]); l -= choice[j][l] }
    return counts.reversed()
}
