import LoomCore
import LoomDistributed

/// Token (or any index) embedding: table [V, D].
public final class Embedding: Module {
    public let weight: Tensor

    public init(_ count: Int, _ dimensions: Int, std: Float = 1, rng: inout Philox, on backend: any Backend = DefaultBackend.current) {
        weight = parameter(.randn([count, dimensions], std: std, rng: &rng, on: backend))
    }

    /// int32 indices [S...] -> [S..., D]
    public func callAsFunction(_ indices: Tensor) throws -> Tensor { try Tensor.embedding(weight, indices: indices) }
}

/// Inverted dropout; the identity in evaluation mode. Its generator state is part of
/// the module so that a resumed run draws the same masks.
public final class Dropout: Module, UnaryLayer {
    public let p: Float
    public var rng: Philox

    public init(_ p: Float, rng: Philox) {
        self.p = p
        self.rng = rng
    }

    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        guard training, p > 0 else { return x }
        return try x.dropout(p: p, rng: &rng)
    }
}

public final class ReLU: Module, UnaryLayer {
    public override init() {}
    public func callAsFunction(_ x: Tensor) throws -> Tensor { try x.relu() }
}

public final class GELU: Module, UnaryLayer {
    public override init() {}
    public func callAsFunction(_ x: Tensor) throws -> Tensor { try x.gelu() }
}

/// [N, ...] -> [N, prod(...)]
public final class Flatten: Module, UnaryLayer {
    public override init() {}
    public func callAsFunction(_ x: Tensor) throws -> Tensor { try x.flattened() }
}

/// Layers applied in order; children are named 0, 1, 2, ...
public final class Sequential: Module, UnaryLayer {
    public let layers: [Module]

    public init(_ layers: [any UnaryLayer]) { self.layers = layers }

    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        var h = x
        for layer in layers { h = try (layer as! any UnaryLayer)(h) }
        return h
    }
}

/// A ResNet basic block: relu(x + bn(conv(relu(bn(conv(x)))))), 3x3 convolutions that
/// keep the shape.
public final class ResidualBlock: Module, UnaryLayer {
    public let conv1: Conv2d
    public let bn1: BatchNorm
    public let conv2: Conv2d
    public let bn2: BatchNorm

    /// `batchNormGroup`: the ranks whose batch statistics its batch norms share (nil: none).
    public init(channels: Int, rng: inout Philox, batchNormGroup: Communicator? = nil, on backend: any Backend = DefaultBackend.current) {
        conv1 = Conv2d(channels, channels, kernel: 3, padding: 1, bias: false, rng: &rng, on: backend)
        bn1 = BatchNorm(channels, syncGroup: batchNormGroup, on: backend)
        conv2 = Conv2d(channels, channels, kernel: 3, padding: 1, bias: false, rng: &rng, on: backend)
        bn2 = BatchNorm(channels, syncGroup: batchNormGroup, on: backend)
    }

    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        let h = try bn1(conv1(x)).relu()
        return try x.add(bn2(conv2(h))).relu()
    }
}
