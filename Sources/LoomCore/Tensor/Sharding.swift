/// How a tensor is one rank's part of a larger logical tensor: split along `axis` into
/// `pieces` equal blocks, each block split evenly across the ranks of one parallel
/// group, in rank order. A fused qkv weight is 3 pieces (q, k and v, each split by heads);
/// most split tensors are 1 piece.
///
/// Parallel layers set it on the parameters they shard; optimizers give their state the
/// parameter's sharding; checkpoints gather and re-slice by it. Nothing is inferred from
/// names.
public struct Sharding: Equatable, Hashable, Sendable {
    public enum Group: String, Sendable {
        /// The tensor-parallel group (Megatron's column/row-parallel layers).
        case tensor
    }

    public let axis: Int
    public let pieces: Int
    public let group: Group

    public init(axis: Int, pieces: Int = 1, across group: Group = .tensor) {
        self.axis = axis; self.pieces = pieces; self.group = group
    }

    /// The rows (along `axis`) of the full tensor that rank `rank` of `ranks` holds, as
    /// one range per piece: piece p, rank r holds [p·P + r·w, p·P + (r+1)·w) with P the
    /// piece size and w = P / ranks.
    public func ranges(fullSize: Int, rank: Int, ranks: Int) -> [Range<Int>] {
        let piece = fullSize / pieces, w = piece / ranks
        return (0..<pieces).map { p in (p * piece + rank * w)..<(p * piece + (rank + 1) * w) }
    }
}
