import LoomCore
import LoomDistributed

/// A multilayer perceptron: Linear-ReLU pairs, a final Linear. [N, in] -> [N, classes].
public final class MLP: Module, UnaryLayer {
    public let net: Sequential

    /// `sizes` = [in, hidden..., out]; the benchmark model is [784, 512, 512, 10].
    public init(sizes: [Int], seed: UInt64, on backend: any Backend = DefaultBackend.current) {
        var rng = Philox(seed: seed)
        var layers: [any UnaryLayer] = []
        for i in 0..<(sizes.count - 1) {
            layers.append(Linear(sizes[i], sizes[i + 1], rng: &rng, on: backend))
            if i < sizes.count - 2 { layers.append(ReLU()) }
        }
        net = Sequential(layers)
    }

    public func callAsFunction(_ x: Tensor) throws -> Tensor { try net(prepareInput(x)) }
}

/// The reference CNN, for images of any shape [C, H, W] (the benchmark's: 28x28, one channel):
/// conv C→16 5x5 pad 2, ReLU, pool 2; conv 16→32 5x5 pad 2, ReLU, pool 2;
/// [optional residual block on the 32 channels]; linear 32·(H/4)·(W/4)→128, ReLU; linear 128→classes.
public final class CNN: Module, UnaryLayer {
    public let features: Sequential
    public let classifier: Sequential
    /// The images it takes, [C, H, W].
    public let imageShape: [Int]

    /// `batchNormGroup`: the ranks whose batch statistics the residual block's batch norms
    /// share (nil: each rank's shard).
    public init(residual: Bool = false, imageShape: [Int] = [1, 28, 28], classes: Int = 10, seed: UInt64,
                batchNormGroup: Communicator? = nil, on backend: any Backend = DefaultBackend.current) {
        var rng = Philox(seed: seed)
        self.imageShape = imageShape
        let (c, h, w) = (imageShape[0], imageShape[1], imageShape[2])
        var f: [any UnaryLayer] = [
            Conv2d(c, 16, kernel: 5, padding: 2, rng: &rng, on: backend), ReLU(), MaxPool2d(2),
            Conv2d(16, 32, kernel: 5, padding: 2, rng: &rng, on: backend), ReLU(), MaxPool2d(2),
        ]
        if residual { f.append(ResidualBlock(channels: 32, rng: &rng, batchNormGroup: batchNormGroup, on: backend)) }
        features = Sequential(f)
        classifier = Sequential([
            Flatten(), Linear(32 * (h / 2 / 2) * (w / 2 / 2), 128, rng: &rng, on: backend), ReLU(), Linear(128, classes, rng: &rng, on: backend),
        ])
    }

    /// [N, C, H, W] (or flat, [N, C·H·W]) -> [N, classes]
    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        try classifier(features(prepareInput(x)))
    }
}
