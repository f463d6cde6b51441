import LoomCore

/// 2-D convolution, NCHW. weight [OC, C, K, K], bias [OC].
public final class Conv2d: Module, UnaryLayer {
    public let weight: Tensor
    public let bias: Tensor?
    public let stride: Int
    public let padding: Int

    public init(_ inChannels: Int, _ outChannels: Int, kernel: Int, stride: Int = 1, padding: Int = 0,
                bias: Bool = true, rng: inout Philox, on backend: any Backend = DefaultBackend.current) {
        let bound = 1 / Float(inChannels * kernel * kernel).squareRoot()
        weight = parameter(.uniform([outChannels, inChannels, kernel, kernel], low: -bound, high: bound, rng: &rng, on: backend))
        self.bias = bias ? parameter(.uniform([outChannels], low: -bound, high: bound, rng: &rng, on: backend)) : nil
        self.stride = stride
        self.padding = padding
    }

    /// [N, C, H, W] -> [N, OC, OH, OW]
    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        try x.conv2d(weight: weight, bias: bias, stride: stride, padding: padding)
    }
}

/// Max pooling with a square window (padding: -inf around the image).
public final class MaxPool2d: Module, UnaryLayer {
    public let kernel: Int
    public let stride: Int
    public let padding: Int

    public init(_ kernel: Int, stride: Int? = nil, padding: Int = 0) {
        self.kernel = kernel
        self.stride = stride ?? kernel
        self.padding = padding
    }

    public func callAsFunction(_ x: Tensor) throws -> Tensor { try x.maxPool2d(kernel: kernel, stride: stride, padding: padding) }
}
