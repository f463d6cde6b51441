/// One tensor of a checkpoint as one rank of a run writes it: the whole tensor's name,
/// dtype and shape, and the pieces of it this rank holds and writes. Every rank writes
/// its own pieces straight into the one file (no rank gathers what another holds), and
/// the ranks' pieces of an entry tile it exactly: a replicated tensor is one piece on one
/// rank; a ZeRO chunk is a piece of each parameter it overlaps; a tensor-parallel shard
/// is a piece per row block of the rank's slice.
///
/// ```
/// a [4, 6] weight column-split over 2 tensor ranks (Sharding(axis: 1)), ZeRO chunks of
/// 6 elements over 2 data ranks: tensor rank 1, data rank 0 holds local [4, 3] elements
/// 0..<6, its rows 0 and 1, which are whole-tensor elements 3..<6 and 9..<12:
///   pieces [TensorPiece(offset: 3, count: 3), TensorPiece(offset: 9, count: 3)]
/// ```
public struct CheckpointEntry {
    public let name: String
    public let dtype: DType
    /// The shape of what this rank's pieces index: the whole tensor, or this rank's
    /// tensor-parallel slice of it while `sharding` is set (`unsharded` maps it).
    public let shape: [Int]
    public var sharding: Sharding?
    public var pieces: [TensorPiece]

    public init(name: String, dtype: DType, shape: [Int], sharding: Sharding? = nil, pieces: [TensorPiece]) {
        self.name = name; self.dtype = dtype; self.shape = shape; self.sharding = sharding; self.pieces = pieces
    }

    /// `tensor` whole, written by this rank if `writes` (else by another that holds it too).
    public init(_ name: String, _ tensor: Tensor, writes: Bool) {
        self.init(name: name, dtype: tensor.dtype, shape: tensor.shape, sharding: tensor.sharding,
                  pieces: writes ? [TensorPiece(offset: 0, count: tensor.count) { tensor }] : [])
    }

    public var count: Int { shape.reduce(1, *) }

    /// The whole tensor, when this rank holds all of it as one piece (one process).
    public var whole: LazyTensor {
        get throws {
            guard sharding == nil, pieces.count == 1, let piece = pieces.first, piece.offset == 0, piece.count == count else {
                throw LoomError.invalidArgument("checkpoint entry '\(name)': this rank holds \(pieces.map { "\($0.offset)..<\($0.offset + $0.count)" }) of \(count) elements, not the whole")
            }
            return LazyTensor(name: name, dtype: dtype, shape: shape, make: piece.make)  // the writer checks what it makes
        }
    }

    public func renamed(_ newName: String) -> CheckpointEntry {
        CheckpointEntry(name: newName, dtype: dtype, shape: shape, sharding: sharding, pieces: pieces)
    }

    /// The same pieces placed in the whole tensor this rank's slice is part of: rank
    /// `rank` of `ranks` holds, along `sharding.axis`, the rows `Sharding.ranges` names.
    /// A contiguous piece of the slice is one run of the whole per (outer index, sharding
    /// piece) it crosses. An entry without sharding is unchanged.
    public func unsharded(rank: Int, ranks: Int) -> CheckpointEntry {
        guard let sharding, ranks > 1 else { return self }
        let axis = sharding.axis
        let inner = shape[(axis + 1)...].reduce(1, *)
        let local = shape[axis], rows = local / sharding.pieces  // rows per sharding piece in the slice
        var whole = shape
        whole[axis] = local * ranks
        let starts = sharding.ranges(fullSize: whole[axis], rank: rank, ranks: ranks).map(\.lowerBound)
        var out: [TensorPiece] = []
        for piece in pieces {
            var at = piece.offset
            let end = piece.offset + piece.count
            while at < end {
                let i = at / (local * inner), row = at % (local * inner) / inner, p = row / rows
                let blockEnd = i * local * inner + (p + 1) * rows * inner  // the end of this (outer, piece) block in the slice
                let n = min(end, blockEnd) - at
                let target = (i * whole[axis] + starts[p] + row % rows) * inner + at % inner
                let from = at - piece.offset, make = piece.make
                out.append(TensorPiece(offset: target, count: n) { try make().flatView(from: from, count: n) })
                at += n
            }
        }
        return CheckpointEntry(name: name, dtype: dtype, shape: whole, sharding: nil, pieces: out)
    }
}

/// Elements [offset, offset + count) of a checkpoint entry (row-major), made when written.
public struct TensorPiece {
    public let offset: Int
    public let count: Int
    /// A tensor of `count` elements (a view of what the rank holds, or one made for it).
    public let make: () throws -> Tensor

    public init(offset: Int, count: Int, make: @escaping () throws -> Tensor) {
        self.offset = offset; self.count = count; self.make = make
    }
}

extension Tensor {
    /// `count` elements from element `from`, as a flat view (no copy).
    public func flatView(from: Int, count: Int) -> Tensor {
        precondition(from >= 0 && from + count <= self.count, "flatView: \(from)..<\(from + count) of \(self.count) elements")
        return view([count], offset: from)
    }
}
