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
            let s = g.copied()
            try comm.allReduce(s, .sum, label: "tensor-parallel all-reduce (backward of copy)")
            return [s]
        }
    }

    /// g: the partial outputs of a row-parallel GEMM are summed across the group.
    public func reduceFromTensorParallel(_ comm: Communicator) throws -> Tensor {
        let s = copied()
        try comm.allReduce(s, .sum, label: "tensor-parallel all-reduce (forward of reduce)")
        return Tensor.differentiable("reduceFromTensorParallel", output: s, inputs: [self]) { g in [g] }
    }

    /// Rows `range` of a table; tokens outside the range look up zeros (vocab-parallel
    /// embedding: the ranks' partial lookups sum to the full one).
    public static func embeddingShard(_ shard: Tensor, rows range: Range<Int>, indices: Tensor) throws -> Tensor {
        let ids = indices.ints
        let local = ids.map { range.contains(Int($0)) ? $0 - Int32(range.lowerBound) : 0 }
        let mask = Tensor(ids.map { range.contains(Int($0)) ? 1 : 0 }, shape: indices.shape + [1], on: shard.backend)
        let looked = try Tensor.embedding(shard, indices: Tensor(indices: local, shape: indices.shape, on: shard.backend))
        return try looked.mul(mask)
    }

    /// Mean cross-entropy when the class axis is split across a TP group: this rank holds
    /// logits for classes `range` ([..., range.count]). The global max and sum of
    /// exponentials are combined across ranks; only the rank owning a target contributes
    /// its logit. Backward: softmax minus one-hot, for this rank's classes.
    public func vocabParallelCrossEntropy(targets: Tensor, classes range: Range<Int>, comm: Communicator) throws -> Tensor {
        let v = shape.last!, rows = count / v
        let x = floats, t = targets.ints
        // Global row max: all-gather every rank's row maxima, take the max.
        var localMax = [Float](repeating: -.infinity, count: rows)
        for r in 0..<rows { for j in 0..<v { localMax[r] = Swift.max(localMax[r], x[r * v + j]) } }
        let gathered = Tensor.zeros([rows * comm.size])
        try comm.allGather(Tensor(localMax, shape: [rows]), into: gathered)
        let gm = gathered.floats
        let m = (0..<rows).map { r in (0..<comm.size).map { gm[$0 * rows + r] }.max()! }
        // Sum of exp and the target logit, summed over ranks.
        var sums = [Float](repeating: 0, count: 2 * rows)
        for r in 0..<rows {
            for j in 0..<v { sums[r] += Foundation.exp(x[r * v + j] - m[r]) }
            if range.contains(Int(t[r])) { sums[rows + r] = x[r * v + Int(t[r]) - range.lowerBound] }
        }
        let s = Tensor(sums, shape: [2 * rows])
        try comm.allReduce(s, .sum, label: "vocab-parallel cross-entropy")
        let sv = s.floats
        var total: Double = 0
        for r in 0..<rows { total += Double(Foundation.log(sv[r]) + m[r] - sv[rows + r]) }
        let loss = Tensor([Float(total / Double(rows))], shape: [], on: backend)
        let logits = self
        return Tensor.differentiable("vocabParallelCrossEntropy", output: loss, inputs: [self]) { g in
            let scale = g.item / Float(rows)
            var gx = [Float](repeating: 0, count: rows * v)
            for r in 0..<rows {
                for j in 0..<v { gx[r * v + j] = Foundation.exp(x[r * v + j] - m[r]) / sv[r] * scale }
                if range.contains(Int(t[r])) { gx[r * v + Int(t[r]) - range.lowerBound] -= scale }
            }
            return [Tensor(gx, shape: logits.shape, on: logits.backend)]
        }
    }
}
