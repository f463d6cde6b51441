import LoomCore
import LoomDistributed

/// Layer norm over the last axis with learned scale and shift.
public final class LayerNorm: Module, UnaryLayer {
    public let weight: Tensor  // [C], ones
    public let bias: Tensor    // [C], zeros
    public let eps: Float

    public init(_ features: Int, eps: Float = 1e-5, on backend: any Backend = DefaultBackend.current) {
        weight = parameter(Tensor(repeating: 1, shape: [features], on: backend))
        bias = parameter(Tensor(repeating: 0, shape: [features], on: backend))
        self.eps = eps
    }

    public func callAsFunction(_ x: Tensor) throws -> Tensor { try x.layerNorm(gamma: weight, beta: bias, eps: eps) }
}

/// Batch norm over the channels of [N, C, ...], with running statistics as buffers.
public final class BatchNorm: Module, UnaryLayer {
    public let weight: Tensor
    public let bias: Tensor
    public let runningMean: Tensor  // buffer
    public let runningVar: Tensor   // buffer
    public let momentum: Float
    public let eps: Float
    /// Synchronised batch norm: the data-parallel ranks whose shards make up the batch
    /// (statistics over the whole batch, as PyTorch's SyncBatchNorm); nil: this rank's
    /// shard. Given when the layer is made (the run's parallel context).
    public let syncGroup: Communicator?

    public init(_ channels: Int, momentum: Float = 0.1, eps: Float = 1e-5, syncGroup: Communicator? = nil,
                on backend: any Backend = DefaultBackend.current) {
        self.syncGroup = syncGroup
        weight = parameter(Tensor(repeating: 1, shape: [channels], on: backend))
        bias = parameter(Tensor(repeating: 0, shape: [channels], on: backend))
        runningMean = Tensor(repeating: 0, shape: [channels], on: backend)
        runningVar = Tensor(repeating: 1, shape: [channels], on: backend)
        self.momentum = momentum
        self.eps = eps
    }

    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        let group = syncGroup.flatMap { $0.size > 1 ? $0 : nil }
        return try x.batchNorm(gamma: weight, beta: bias, runningMean: runningMean, runningVar: runningVar,
                               training: training, momentum: momentum, eps: eps,
                               synchronized: group.map { g in (g.size, { try g.allReduce($0, .sum, label: "synchronised batch norm") }) })
    }
}
