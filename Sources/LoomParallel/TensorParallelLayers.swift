import LoomCore
import LoomDistributed
import LoomNN

/// y = x Wᵀ + b with W's rows (output features) split across the TP group: this rank
/// holds weight [out/tp, in] and bias [out/tp] and produces its slice of the outputs.
public final class ColumnParallelLinear: Module {
    public let weight: Tensor
    public let bias: Tensor?
    let comm: Communicator

    public init(weight: Tensor, bias: Tensor?, comm: Communicator) {
        self.weight = parameter(weight)
        self.bias = bias.map { parameter($0) }
        self.comm = comm
    }

    /// [..., in] (replicated) -> [..., out/tp]
    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        try x.copyToTensorParallel(comm).linear(weight: weight, bias: bias)
    }
}

/// y = x Wᵀ + b with W's columns (input features) split: this rank holds weight
/// [out, in/tp] and takes its slice of the input; partial outputs are summed across the
/// group, then the (replicated) bias is added once.
public final class RowParallelLinear: Module {
    public let weight: Tensor
    public let bias: Tensor?
    let comm: Communicator

    public init(weight: Tensor, bias: Tensor?, comm: Communicator) {
        self.weight = parameter(weight)
        self.bias = bias.map { parameter($0) }
        self.comm = comm
    }

    /// [..., in/tp] -> [..., out] (replicated)
    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        let y = try x.linear(weight: weight, bias: nil).reduceFromTensorParallel(comm)
        return try bias.map { try y.add($0) } ?? y
    }
}

/// Attention with heads split across the group: qkv column-parallel (this rank's heads'
/// queries, keys and values), the fused attention on those heads, proj row-parallel.
public final class TensorParallelAttention: Module {
    public let qkv: ColumnParallelLinear
    public let proj: RowParallelLinear
    public let heads: Int  // local heads

    init(sharding full: CausalSelfAttention, comm: Communicator) throws {
        let (r, n) = (comm.rank, comm.size)
        let c = full.proj.weight.shape[0], local = c / n
        // qkv rows are [q heads | k heads | v heads]: take this rank's heads from each.
        let rows = { (t: Tensor) throws -> Tensor in
            try Tensor.concat((0..<3).map { try t.slice(axis: 0, ($0 * c + r * local)..<($0 * c + (r + 1) * local)) }, axis: 0)
        }
        qkv = ColumnParallelLinear(weight: try withoutGrad { try rows(full.qkv.weight) },
                                   bias: try full.qkv.bias.map { b in try withoutGrad { try rows(b) } }, comm: comm)
        proj = RowParallelLinear(weight: try withoutGrad { try full.proj.weight.slice(axis: 1, (r * local)..<((r + 1) * local)) },
                                 bias: try full.proj.bias.map { try $0.copied() }, comm: comm)
        heads = full.heads / n
    }

    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        try proj(qkv(x).causalSelfAttention(heads: heads))
    }
}

/// The transformer MLP split column -> row: C -> 4C/tp, GELU, 4C/tp -> C, summed.
public final class TensorParallelFeedForward: Module {
    public let fc: ColumnParallelLinear
    public let proj: RowParallelLinear

    init(sharding full: FeedForward, comm: Communicator) throws {
        let (r, n) = (comm.rank, comm.size)
        let h = full.fc.weight.shape[0] / n
        fc = ColumnParallelLinear(weight: try withoutGrad { try full.fc.weight.slice(axis: 0, (r * h)..<((r + 1) * h)) },
                                  bias: try full.fc.bias.map { b in try withoutGrad { try b.slice(axis: 0, (r * h)..<((r + 1) * h)) } },
                                  comm: comm)
        proj = RowParallelLinear(weight: try withoutGrad { try full.proj.weight.slice(axis: 1, (r * h)..<((r + 1) * h)) },
                                 bias: try full.proj.bias.map { try $0.copied() }, comm: comm)
    }

    public func callAsFunction(_ x: Tensor) throws -> Tensor { try proj(fc(x).gelu()) }
}

public final class TensorParallelBlock: Module {
    public let ln1: LayerNorm
    public let attention: TensorParallelAttention
    public let ln2: LayerNorm
    public let mlp: TensorParallelFeedForward
    /// On the residual stream, which every TP rank holds whole: the same generator on
    /// every rank draws the same masks (Megatron's "default" RNG for replicated regions),
    /// and the same masks as the single-process model.
    public let dropout: Dropout

    init(sharding full: TransformerBlock, comm: Communicator) throws {
        ln1 = full.ln1; ln2 = full.ln2  // replicated: the same parameters on every TP rank
        attention = try TensorParallelAttention(sharding: full.attention, comm: comm)
        mlp = try TensorParallelFeedForward(sharding: full.mlp, comm: comm)
        dropout = full.dropout
    }

    /// [B, T, C] -> [B, T, C], as `TransformerBlock`.
    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        let h = try x.add(dropout(attention(ln1(x))))
        return try h.add(dropout(mlp(ln2(h))))
    }
}

/// A GPT split across a tensor-parallel group in the manner of Megatron-LM: attention
/// heads and MLP columns split (one all-reduce each way per sub-block), the token
/// embedding split by vocabulary rows (and, being tied, the output head with it), and a
/// vocabulary-parallel cross-entropy. Layer norms and position embeddings are replicated.
///
/// Built by slicing a full model, so a TP run starts from exactly the single-process
/// initialisation. Parameter names are the full model's; each holds this rank's shard.
public final class TensorParallelGPT: Module {
    public let config: GPTConfig
    public let wte: VocabularyShard  // weight [V/tp, C]: rows `vocabulary` of the full table
    public let wpe: Embedding        // [T, C], replicated
    public let blocks: [TensorParallelBlock]
    public let lnf: LayerNorm
    public let vocabulary: Range<Int>
    let comm: Communicator

    public init(sharding full: GPT, comm: Communicator) throws {
        let (r, n) = (comm.rank, comm.size)
        let v = full.config.vocabSize
        guard v % n == 0, full.config.heads % n == 0 else {
            throw LoomError.config("tensor parallel \(n): vocabulary \(v) and heads \(full.config.heads) must both be divisible by \(n)")
        }
        config = full.config
        let rows = (r * v / n)..<((r + 1) * v / n)
        vocabulary = rows
        wte = VocabularyShard(weight: parameter(try withoutGrad { try full.wte.weight.slice(axis: 0, rows) }))
        wpe = full.wpe
        blocks = try full.blocks.map { try TensorParallelBlock(sharding: $0, comm: comm) }
        lnf = full.lnf
        self.comm = comm
    }

    /// Mean next-token cross-entropy of int32 tokens [B, T] against targets [B, T].
    public func loss(tokens: Tensor, targets: Tensor) throws -> Tensor {
        let t = tokens.shape[1]
        let positions = Tensor(indices: (0..<Int32(t)).map { $0 }, shape: [t], on: wte.weight.backend)
        var x = try Tensor.embeddingShard(wte.weight, rows: vocabulary, indices: tokens).reduceFromTensorParallel(comm)
            .add(wpe(positions))
        for block in blocks { x = try block(x) }
        let logits = try lnf(x).copyToTensorParallel(comm).matmul(wte.weight, transposeB: true)  // [B, T, V/tp]
        return try logits.vocabParallelCrossEntropy(targets: targets, classes: vocabulary, comm: comm)
    }

    /// How each tensor of the full model is split here (nil: replicated), by the full
    /// model's names: checkpoints gather shards into full tensors and slice them back.
    public func shardSpec(_ qualified: String) -> ShardSpec? {
        // Optimizer state is split like the parameter it belongs to.
        let name = ["exp_avg_sq", "exp_avg", "momentum_buffer"].reduce(qualified) { n, s in
            n.hasSuffix("." + s) ? String(n.dropLast(s.count + 1)) : n
        }
        if name == "wte.weight" { return ShardSpec(axis: 0, pieces: 1) }
        if name.hasSuffix("attention.qkv.weight") || name.hasSuffix("attention.qkv.bias") { return ShardSpec(axis: 0, pieces: 3) }
        if name.hasSuffix("mlp.fc.weight") || name.hasSuffix("mlp.fc.bias") { return ShardSpec(axis: 0, pieces: 1) }
        if name.hasSuffix("attention.proj.weight") || name.hasSuffix("mlp.proj.weight") { return ShardSpec(axis: 1, pieces: 1) }
        return nil
    }

    /// Collective over the TP group: this rank's shard of `name` -> the full tensor.
    public func gather(_ name: String, _ shard: Tensor) throws -> Tensor {
        guard let spec = shardSpec(name) else { return shard }
        let all = try Tensor(uninitialized: [comm.size * shard.count], on: shard.backend)
        try comm.allGather(shard.copied(), into: all)
        let pieces = try (0..<comm.size).map { all.view(shard.shape, offset: $0 * shard.count) }.map { s in
            try s.split(Array(repeating: s.shape[spec.axis] / spec.pieces, count: spec.pieces), axis: spec.axis)
        }
        // Full = for each piece p, the ranks' p-th pieces in rank order.
        return try withoutGrad {
            try Tensor.concat((0..<spec.pieces).flatMap { p in pieces.map { $0[p] } }, axis: spec.axis)
        }
    }

    /// This rank's shard of the full tensor `name` (the inverse of `gather`).
    public func shard(_ name: String, _ full: Tensor) throws -> Tensor {
        guard let spec = shardSpec(name) else { return full }
        let r = comm.rank, n = comm.size
        let piece = full.shape[spec.axis] / spec.pieces, w = piece / n
        return try withoutGrad {
            try Tensor.concat((0..<spec.pieces).map { p in try full.slice(axis: spec.axis, (p * piece + r * w)..<(p * piece + (r + 1) * w)) },
                              axis: spec.axis)
        }
    }
}

/// A tensor split along `axis` into `pieces` equal blocks, each block split across the
/// TP ranks (qkv: 3 blocks, q, k and v, each split by heads).
public struct ShardSpec: Equatable, Sendable {
    public let axis: Int
    public let pieces: Int
}

/// The token table's rows this rank holds (a module, so its parameter is named
/// `wte.weight` as in the full model).
public final class VocabularyShard: Module {
    public let weight: Tensor
    init(weight: Tensor) { self.weight = weight }
}
