// Embedding lookup: rows of a table by integer index.

extension Tensor {
    /// table [V, D] looked up at `indices` (int32, any shape S) -> [S..., D].
    public static func embedding(_ table: Tensor, indices: Tensor) throws -> Tensor {
        try requireFloat("embedding", table)
        guard table.rank == 2 else { throw LoomError.shapeMismatch("embedding: table must be [V, D], got \(describe(table.shape))") }
        guard indices.dtype == .int32 else { throw LoomError.deviceMismatch("embedding: indices must be int32, got \(indices.dtype)") }
        try requireSameDevice("embedding", table, indices)
        let out = try table.empty(indices.shape + [table.shape[1]])
        try table.backend.gather(table, indices: indices, into: out)
        return Tensor.differentiable("embedding", output: out, inputs: [table]) { g in
            let gt = try Tensor.zeros(table.shape, on: table.backend)
            table.backend.scatterAdd(g, indices: indices, into: gt)
            return [gt]
        }
    }
}
