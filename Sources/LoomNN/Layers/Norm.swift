import LoomCore

/// Layer norm over the last axis with learned scale and shift.
public final class LayerNorm: Module, UnaryLayer {
    public let weight: Tensor  // [C], ones
    public let bias: Tensor    // [C], zeros
    public let eps: Float

    public init(_ features: Int, eps: Float = 1e-5, on backend: any Backend = CPUBackend.shared) {
        weight = parameter(.ones([features], on: backend))
        bias = parameter(.zeros([features], on: backend))
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

    public init(_ channels: Int, momentum: Float = 0.1, eps: Float = 1e-5, on backend: any Backend = CPUBackend.shared) {
        weight = parameter(.ones([channels], on: backend))
        bias = parameter(.zeros([channels], on: backend))
        runningMean = .zeros([channels], on: backend)
        runningVar = .ones([channels], on: backend)
        self.momentum = momentum
        self.eps = eps
    }

    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        try x.batchNorm(gamma: weight, beta: bias, runningMean: runningMean, runningVar: runningVar,
                        training: training, momentum: momentum, eps: eps)
    }
}
