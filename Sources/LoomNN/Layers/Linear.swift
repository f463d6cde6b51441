import LoomCore

/// y = x Wᵀ + b. weight [out, in], bias [out]; PyTorch's default initialisation,
/// U(-1/sqrt(in), 1/sqrt(in)) for both.
public final class Linear: Module, UnaryLayer {
    public let weight: Tensor  // [out, in]
    public let bias: Tensor?   // [out]

    public init(_ inputFeatures: Int, _ outputFeatures: Int, bias: Bool = true, rng: inout Philox,
                on backend: any Backend = DefaultBackend.current) {
        let bound = 1 / Float(inputFeatures).squareRoot()
        weight = parameter(.uniform([outputFeatures, inputFeatures], low: -bound, high: bound, rng: &rng, on: backend))
        self.bias = bias ? parameter(.uniform([outputFeatures], low: -bound, high: bound, rng: &rng, on: backend)) : nil
    }

    /// Initialised N(0, std) weights and zero bias (GPT-2's scheme).
    public init(_ inputFeatures: Int, _ outputFeatures: Int, bias: Bool = true, std: Float, rng: inout Philox,
                on backend: any Backend = DefaultBackend.current) {
        weight = parameter(.randn([outputFeatures, inputFeatures], std: std, rng: &rng, on: backend))
        self.bias = bias ? parameter(Tensor(repeating: 0, shape: [outputFeatures], on: backend)) : nil
    }

    /// [..., in] -> [..., out]
    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        try x.linear(weight: weight, bias: bias)
    }
}
