import Foundation
import LoomCore
import LoomDistributed

// Megatron-LM's tensor parallelism rests on two conjugate operations over a TP group:
//   f = copyToTensorParallel:     identity forward, all-reduce (sum) backward
//   g = reduceFromTensorParallel: all-reduce (sum) forward, identity backward
// A column-parallel linear is f then a local GEMM; a row-parallel linear is a local GEMM
// then g. An MLP or attention block split column -> row communicates once each way.

extension Tensor {
    /// f: the input enters a tensor-parallel region; each rank's gradient is partial, so
    /// backward sums them.
    public func copyToTensorParallel(_ comm: Communicator) -> Tensor {
        Tensor.differentiable("copyToTensorParallel", output: detach(), inputs: [self]) { g in
            let s = try g.copied()
            try comm.allReduce(s, .sum, label: "tensor-parallel all-reduce (backward of copy)")
            return [s]
        }
    }

    /// g: the partial outputs of a row-parallel GEMM are summed across the group.
    public func reduceFromTensorParallel(_ comm: Communicator) throws -> Tensor {
        let s = try copied()
        try comm.allReduce(s, .sum, label: "tensor-parallel all-reduce (forward of reduce)")
        return Tensor.differentiable("reduceFromTensorParallel", output: s, inputs: [self]) { g in [g] }
    }

    /// Rows `range` of a table; tokens outside the range look up zeros (vocab-parallel
    /// embedding: the ranks' partial lookups sum to the full one). All on the backend.
    public static func embeddingShard(_ shard: Tensor, rows range: Range<Int>, indices: Tensor) throws -> Tensor {
        let be = shard.backend
        let local = try Tensor(uninitialized: indices.shape, dtype: .int32, on: be)
        let mask = try Tensor(uninitialized: indices.shape + [1], on: be)
        be.localIndices(indices, range: range, local: local, mask: mask)
        return try Tensor.embedding(shard, indices: local).mul(mask)
    }

    /// Mean cross-entropy when the class axis is split across a TP group: this rank holds
    /// logits x for classes `range` ([..., range.count]), all on its backend (Megatron's
    /// vocab-parallel cross-entropy). With m the global row max, S = Σ_all exp(x - m) and
    /// z the target's shifted logit (held by one rank, 0 on the others):
    ///   loss_r = log S_r - z_r;   d loss_r / d x_rj = exp(x_rj - m_r) / S_r - [j = target_r]
    /// The row maxima are all-gathered (the communicator has no max), S and z summed.
    public func vocabParallelCrossEntropy(targets: Tensor, classes range: Range<Int>, comm: Communicator) throws -> Tensor {
        let v = shape.last!, rows = count / v, p = comm.size, be = backend
        let x = detach().view([rows, v])
        // m [rows]: the max over every rank's classes.
        let localMax = try Tensor(uninitialized: [rows], on: be)
        be.reduce(.max, x, outer: rows, n: v, inner: 1, into: localMax)
        let maxima = try Tensor(uninitialized: [p, rows], on: be)
        try comm.allGather(localMax, into: maxima)
        let m = try Tensor(uninitialized: [rows, 1], on: be)
        be.reduce(.max, maxima, outer: 1, n: p, inner: rows, into: m)
        // e = exp(x - m) [rows, v]; sums = [S_local | z_local] [2, rows], summed over ranks.
        let shifted = try x.empty(), e = try x.empty()
        be.binary(.sub, x, m, into: shifted)
        be.unary(.exp, shifted, into: e)
        let sums = try Tensor(uninitialized: [2, rows], on: be)
        be.reduce(.sum, e, outer: rows, n: v, inner: 1, into: sums.view([rows]))
        let local = try Tensor(uninitialized: [rows], dtype: .int32, on: be)
        let mask = try Tensor(uninitialized: [rows], on: be)
        be.localIndices(targets.view([rows]), range: range, local: local, mask: mask)
        let z = sums.view([rows], offset: rows)
        be.gatherAlongAxis(shifted, indices: local, outer: rows, n: v, inner: 1, into: z)
        be.binary(.mul, z, mask, into: z)
        try comm.allReduce(sums, .sum, label: "vocab-parallel cross-entropy")
        let s = sums.view([rows])
        // loss = mean_r (log S_r - z_r)
        let perRow = try Tensor(uninitialized: [rows], on: be)
        be.unary(.log, s, into: perRow)
        be.binary(.sub, perRow, z, into: perRow)
        let loss = try Tensor(uninitialized: [], on: be)
        be.reduce(.sum, perRow, outer: 1, n: rows, inner: 1, into: loss)
        be.scalar(.mul, loss, 1 / Float(rows), into: loss)
        let logits = self
        return Tensor.differentiable("vocabParallelCrossEntropy", output: loss, inputs: [self]) { g in
            // scale = g / rows; gx = e / S * scale, then -scale at this rank's targets.
            let scale = try Tensor(uninitialized: [], on: be)
            be.scalar(.mul, g, 1 / Float(rows), into: scale)
            let gx = try Tensor(uninitialized: [rows, v], on: be)
            be.binary(.div, e, s.view([rows, 1]), into: gx)
            be.binary(.mul, gx, scale, into: gx)
            let minus = try Tensor(uninitialized: [rows], on: be)
            be.binary(.mul, mask, scale, into: minus)
            be.scalar(.mul, minus, -1, into: minus)
            be.scatterAlongAxis(minus, indices: local, outer: rows, n: v, inner: 1, into: gx)
            return [gx.view(logits.shape)]
        }
    }
}
