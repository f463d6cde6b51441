import LoomCore
import LoomDistributed
import LoomNN

extension TransformerBlock: UnaryLayer {}
extension TensorParallelBlock: UnaryLayer {}

/// One piece of a GPT cut into `stages` pieces of consecutive blocks, whole or split
/// across a tensor-parallel group: the first piece also embeds tokens, the last also
/// applies the final layer norm, the head and the loss. The head is tied to the token
/// embedding, so first and last piece each hold a copy of `wte`, kept equal by summing
/// their gradients (`PipelineEngine`'s reduceGradients).
///
/// Names are the whole model's (`blocks.5.mlp.fc.weight` on the stage holding block 5),
/// so optimizer state and checkpoints key on the same names whatever the layout.
public final class PipelineGPTStage: Module {
    /// This piece's index along the model, and the number of pieces.
    public let stage: Int
    public let stages: Int
    public let config: GPTConfig
    public let wte: VocabularyShard?  // first and last piece: [V/tp, C], rows `vocabulary`
    public let wpe: Embedding?        // first piece
    public let blocks: [any UnaryLayer]
    public let lnf: LayerNorm?        // last piece
    /// Index in the whole model of this piece's first block.
    public let firstBlock: Int
    public let vocabulary: Range<Int>
    /// The tensor-parallel group the blocks and vocabulary are split across (nil: none).
    let tensorGroup: Communicator?

    /// A piece of a whole (single-rank) GPT. `split`: blocks per piece (default:
    /// `PipelineGPTStage.balancedSplit`).
    public convenience init(sharding full: GPT, stage: Int, stages: Int, split: [Int]? = nil) throws {
        try self.init(config: full.config, wte: VocabularyShard(weight: full.wte.weight), wpe: full.wpe, blocks: full.blocks,
                      lnf: full.lnf, vocabulary: 0..<full.config.vocabSize, tensorGroup: nil, stage: stage, stages: stages, split: split)
    }

    /// A piece of a tensor-parallel GPT: this TP rank's shards of the piece's layers.
    public convenience init(sharding tp: TensorParallelGPT, stage: Int, stages: Int, split: [Int]? = nil) throws {
        try self.init(config: tp.config, wte: tp.wte, wpe: tp.wpe, blocks: tp.blocks, lnf: tp.lnf, vocabulary: tp.vocabulary,
                      tensorGroup: tp.comm, stage: stage, stages: stages, split: split)
    }

    private init(config: GPTConfig, wte: VocabularyShard, wpe: Embedding, blocks all: [any UnaryLayer], lnf: LayerNorm,
                 vocabulary: Range<Int>, tensorGroup: Communicator?, stage: Int, stages: Int, split: [Int]?) throws {
        let counts = try split ?? PipelineGPTStage.balancedSplit(config, pieces: stages)
        guard counts.count == stages, counts.reduce(0, +) == all.count, counts.allSatisfy({ $0 >= 0 }) else {
            throw LoomError.config("pipeline split \(counts) does not cut \(all.count) blocks into \(stages) pieces")
        }
        self.stage = stage
        self.stages = stages
        self.config = config
        firstBlock = counts[..<stage].reduce(0, +)
        blocks = Array(all[firstBlock..<(firstBlock + counts[stage])])
        self.wte = stage == 0 || stage == stages - 1 ? wte : nil
        self.wpe = stage == 0 ? wpe : nil
        self.lnf = stage == stages - 1 ? lnf : nil
        self.vocabulary = vocabulary
        self.tensorGroup = tensorGroup
    }

    public override func childName(_ label: String, _ index: Int) -> String {
        label == "blocks" ? "blocks.\(firstBlock + index)" : super.childName(label, index)
    }

    public var isFirst: Bool { stage == 0 }
    public var isLast: Bool { stage == stages - 1 }

    /// First piece: int32 tokens [B, T] -> [B, T, C]; middle: [B, T, C] -> [B, T, C];
    /// last: [B, T, C] -> logits [B, T, V] ([B, T, V/tp] under tensor parallelism).
    public func callAsFunction(_ input: Tensor) throws -> Tensor {
        var x = input
        if let wte, let wpe, isFirst {
            let t = input.shape[1]
            let positions = Tensor(indices: (0..<Int32(t)).map { $0 }, shape: [t], on: wte.weight.backend)
            let tokens = try tensorGroup.map { try Tensor.embeddingShard(wte.weight, rows: vocabulary, indices: input).reduceFromTensorParallel($0) }
                ?? Tensor.embedding(wte.weight, indices: input)
            x = try tokens.add(wpe(positions))
        }
        for b in blocks { x = try b(x) }
        if let lnf, let wte, isLast {
            let h = try tensorGroup.map { try lnf(x).copyToTensorParallel($0) } ?? lnf(x)
            x = try h.matmul(wte.weight, transposeB: true)
        }
        return x
    }

    /// Last piece: mean next-token cross-entropy of its logits against targets [B, T].
    public func loss(logits: Tensor, targets: Tensor) throws -> Tensor {
        guard let comm = tensorGroup else { return try logits.crossEntropy(targets: targets) }
        return try logits.vocabParallelCrossEntropy(targets: targets, classes: vocabulary, comm: comm)
    }

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

    /// Blocks per piece that minimise the most expensive piece, by a forward cost model
    /// in multiply-adds per token: a block 12C² + 2TC, the last piece's head CV and its
    /// loss 4V; the embedding is free. Middle pieces get at least one block. Ties go to the
    /// most even split.
    public static func balancedSplit(_ c: GPTConfig, pieces: Int) throws -> [Int] {
        let layers = c.layers
        guard pieces >= 1 else { throw LoomError.config("pipeline: \(pieces) pieces") }
        func cost(_ piece: Int, _ n: Int) -> Double { pieceCost(c, blocks: n, last: piece == pieces - 1) }
        // best[j][l]: (max cost, sum of squared costs) of the first j pieces holding l blocks.
        typealias Score = (max: Double, squares: Double)
        let worst: Score = (.infinity, .infinity)
        var best = [[Score]](repeating: [Score](repeating: worst, count: layers + 1), count: pieces + 1)
        var choice = [[Int]](repeating: [Int](repeating: 0, count: layers + 1), count: pieces + 1)
        best[0][0] = (0, 0)
        for j in 1...pieces {
            let minimum = j == 1 || j == pieces ? 0 : 1
            for l in 0...layers {
                for n in stride(from: minimum, through: l, by: 1) where best[j - 1][l - n].max.isFinite {
                    let c = cost(j - 1, n), prev = best[j - 1][l - n]
                    let s: Score = (max(prev.max, c), prev.squares + c * c)
                    if s.max < best[j][l].max || (s.max == best[j][l].max && s.squares < best[j][l].squares) {
                        best[j][l] = s; choice[j][l] = n
                    }
                }
            }
        }
        guard best[pieces][layers].max.isFinite else {
            throw LoomError.config("pipeline: \(layers) blocks cannot be cut into \(pieces) pieces")
        }
        var counts: [Int] = [], l = layers
        for j in stride(from: pieces, to: 0, by: -1) { counts.append(choice[j][l]); l -= choice[j][l] }
        return counts.reversed()
    }
}

/// The pieces one pipeline stage holds (one, or several with an interleaved schedule),
/// as one module whose names are the whole model's.
public final class PipelineStageModel: Module {
    public let chunks: [PipelineGPTStage]

    public init(chunks: [PipelineGPTStage]) { self.chunks = chunks }

    /// Stage `stage`'s pieces of a whole GPT under `schedule` (its chunks: pieces
    /// stage, stage + K, ...). `split`: blocks per piece, for all pieces.
    public convenience init(sharding full: GPT, schedule: Schedule, stage: Int, split: [Int]? = nil) throws {
        self.init(chunks: try (0..<schedule.chunks).map {
            try PipelineGPTStage(sharding: full, stage: schedule.piece(stage: stage, chunk: $0), stages: schedule.pieces, split: split)
        })
    }

    /// The same for a tensor-parallel GPT (this TP rank's shards).
    public convenience init(sharding tp: TensorParallelGPT, schedule: Schedule, stage: Int, split: [Int]? = nil) throws {
        self.init(chunks: try (0..<schedule.chunks).map {
            try PipelineGPTStage(sharding: tp, stage: schedule.piece(stage: stage, chunk: $0), stages: schedule.pieces, split: split)
        })
    }

    public override func childName(_ label: String, _ index: Int) -> String { label == "chunks" ? "" : super.childName(label, index) }
}
