import LoomCore
import LoomDistributed

// Megatron-LM's parallel layers. Each is built from the whole layer's initial weights
// (so every layout starts from the single-process initialisation) and keeps this rank's
// part, marking it with its `Sharding`. With no group (tp = 1) each is exactly the plain
// layer: the same parameters, the same kernels, the same numbers.

/// y = x Wᵀ + b with W's rows (output features) split across the group: this rank holds
/// weight [out/tp, in] and bias [out/tp] and produces its slice of the outputs.
/// `pieces`: the rows form that many blocks, each split across the group (a fused qkv
/// projection is 3: this rank's heads' queries, keys and values).
public final class ColumnParallelLinear: Module, UnaryLayer {
    public let weight: Tensor
    public let bias: Tensor?
    let group: Communicator?

    public init(whole: Linear, pieces: Int = 1, group: Communicator?) throws {
        let sharding = Sharding(axis: 0, pieces: pieces)
        weight = parameter(try whole.weight.shard(sharding, group))
        bias = try whole.bias.map { parameter(try $0.shard(sharding, group)) }
        self.group = group
    }

    /// [..., in] (replicated) -> [..., out/tp]
    public func callAsFunction(_ x: Tensor) throws -> Tensor { try input(x).linear(weight: weight, bias: bias) }

    /// x as this rank's product reads it: x itself forward; backward sums dx across the group.
    public func input(_ x: Tensor) throws -> Tensor {
        guard let group else { return x }
        return try x.copyToTensorParallel(group)
    }
}

/// y = x Wᵀ + b with W's columns (input features) split: this rank holds weight
/// [out, in/tp] and takes its slice of the input; partial outputs are summed across the
/// group, then the (replicated) bias is added once.
public final class RowParallelLinear: Module, UnaryLayer {
    public let weight: Tensor
    public let bias: Tensor?
    let group: Communicator?

    public init(whole: Linear, group: Communicator?) throws {
        weight = parameter(try whole.weight.shard(Sharding(axis: 1), group))
        bias = whole.bias.map { parameter($0) }
        self.group = group
    }

    /// [..., in/tp] -> [..., out] (replicated)
    public func callAsFunction(_ x: Tensor) throws -> Tensor { try output(x.linear(weight: weight, bias: localBias)) }

    /// The bias this rank's product adds: the bias with no group; with one, none (it is added
    /// once, after the sum).
    public var localBias: Tensor? { group == nil ? bias : nil }

    /// This rank's product (which added `localBias`) as the layer's output: itself with no
    /// group; with one, summed across the group, then the bias.
    public func output(_ partial: Tensor) throws -> Tensor {
        guard let group else { return partial }
        let y = try partial.reduceFromTensorParallel(group)
        return try bias.map { try y.add($0) } ?? y
    }
}

/// A token table split by vocabulary rows across the group (weight [V/tp, D], rows
/// `vocabulary` of the whole table), which is also the output head when tied: lookups sum
/// the ranks' partial results, logits stay split by vocabulary, and the loss is the
/// vocabulary-parallel cross-entropy.
public final class VocabParallelEmbedding: Module {
    public let weight: Tensor
    public let vocabulary: Range<Int>
    let group: Communicator?

    public init(whole: Embedding, group: Communicator?) throws {
        let v = whole.weight.shape[0], n = group?.size ?? 1, r = group?.rank ?? 0
        guard v % n == 0 else {
            throw LoomError.config("tensor parallel \(n): the vocabulary of \(v) tokens is not divisible by \(n)")
        }
        weight = parameter(try whole.weight.shard(Sharding(axis: 0), group))
        vocabulary = (r * v / n)..<((r + 1) * v / n)
        self.group = group
    }

    /// int32 indices [S...] -> [S..., D]
    public func callAsFunction(_ indices: Tensor) throws -> Tensor {
        guard let group else { return try Tensor.embedding(weight, indices: indices) }
        return try Tensor.embeddingShard(weight, rows: vocabulary, indices: indices).reduceFromTensorParallel(group)
    }

    /// The tied head: h [..., D] -> logits [..., V/tp].
    public func logits(_ h: Tensor) throws -> Tensor {
        guard let group else { return try h.matmul(weight, transposeB: true) }
        return try h.copyToTensorParallel(group).matmul(weight, transposeB: true)
    }

    /// Mean cross-entropy of this rank's logits [..., V/tp] against targets [...].
    public func loss(logits: Tensor, targets: Tensor) throws -> Tensor {
        guard let group else { return try logits.crossEntropy(targets: targets) }
        return try logits.vocabParallelCrossEntropy(targets: targets, classes: vocabulary, comm: group)
    }
}

extension Tensor {
    /// This rank's part of a whole tensor under `sharding` (the whole tensor itself, with
    /// no sharding mark, when there is no group or it has one rank).
    public func shard(_ sharding: Sharding, _ group: Communicator?) throws -> Tensor {
        guard let group, group.size > 1 else { return self }
        let full = shape[sharding.axis]
        guard full % (sharding.pieces * group.size) == 0 else {
            throw LoomError.shapeMismatch("shard: axis \(sharding.axis) of \(describe(shape)) does not split into \(sharding.pieces) piece(s) across \(group.size) ranks")
        }
        let part = try withoutGrad {
            try Tensor.concat(sharding.ranges(fullSize: full, rank: group.rank, ranks: group.size).map { try slice(axis: sharding.axis, $0) },
                              axis: sharding.axis)
        }
        part.sharding = sharding
        return part
    }
}
