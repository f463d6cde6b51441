import LoomCore
import LoomDistributed
import LoomNN

/// A piece of a model cut for pipeline parallelism: consecutive layers, the first piece
/// taking the batch's inputs and the last producing the output the loss is taken of.
/// Names are the whole model's, so optimizer state and checkpoints key on the same names
/// whatever the layout. GPTs and layer chains (the image models) are cut into these.
public protocol PipelinePiece: Module {
    var isFirst: Bool { get }
    var isLast: Bool { get }
    /// First piece: the batch's inputs; others: the previous piece's output.
    func callAsFunction(_ input: Tensor) throws -> Tensor
    /// Last piece: the mean loss of its output against the batch's targets.
    func loss(logits: Tensor, targets: Tensor) throws -> Tensor
    /// Parameters another piece of the same model also holds (a tied embedding), whose
    /// gradients the pieces holding them sum before the optimizer step.
    var tiedParameters: [Tensor] { get }
}

extension GPT: PipelinePiece {}

extension ChainPiece: PipelinePiece {
    public var tiedParameters: [Tensor] { [] }
}

/// A model that can be cut into pipeline pieces.
public protocol PipelineModel: Module {
    /// `count` pieces; `split[i]` layers (GPT: blocks) in piece i, or the model's own
    /// balanced split.
    func pipelinePieces(_ count: Int, split: [Int]?) throws -> [any PipelinePiece]
}

extension GPT: PipelineModel {
    public func pipelinePieces(_ count: Int, split: [Int]?) throws -> [any PipelinePiece] { try pieces(count, split: split) }
}

extension MLP: PipelineModel {
    public func pipelinePieces(_ count: Int, split: [Int]?) throws -> [any PipelinePiece] { try pieces(count, split: split) }
}

extension CNN: PipelineModel {
    public func pipelinePieces(_ count: Int, split: [Int]?) throws -> [any PipelinePiece] { try pieces(count, split: split) }
}

extension ResNet: PipelineModel {
    public func pipelinePieces(_ count: Int, split: [Int]?) throws -> [any PipelinePiece] { try pieces(count, split: split) }
}

/// The pieces one pipeline stage holds (one, or several with an interleaved schedule),
/// as one module whose names are the whole model's.
public final class PipelineStageModel: Module {
    public let chunks: [any PipelinePiece]

    public init(chunks: [any PipelinePiece]) { self.chunks = chunks }

    /// Stage `stage`'s pieces of `model` under `schedule` (its chunks: pieces stage,
    /// stage + K, ...). `split`: layers per piece, for all pieces.
    public convenience init(cutting model: any PipelineModel, schedule: Schedule, stage: Int, split: [Int]? = nil) throws {
        let pieces = try model.pipelinePieces(schedule.pieces, split: split)
        self.init(chunks: (0..<schedule.chunks).map { pieces[schedule.piece(stage: stage, chunk: $0)] })
    }

    public override func childName(_ label: String, _ index: Int) -> String { label == "chunks" ? "" : super.childName(label, index) }

    /// Parameters this stage shares with another stage (see `PipelinePiece.tiedParameters`).
    public var tiedParameters: [Tensor] {
        var seen = Set<ObjectIdentifier>()
        return chunks.flatMap(\.tiedParameters).filter { seen.insert(ObjectIdentifier($0)).inserted }
    }
}
