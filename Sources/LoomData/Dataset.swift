import LoomCore

/// Examples addressable by index; a batch is the examples at some indices, stacked.
public protocol Dataset: Sendable {
    var count: Int { get }
    /// Inputs and targets for the examples at `indices`, as host (CPU) tensors.
    func batch(_ indices: [Int]) -> (inputs: Tensor, targets: Tensor)
    /// The batch of training step `step`: a dataset that draws random augmentations keys
    /// them on the step and each example's index, so the same step gives the same batch in
    /// every layout and after a resume. Others ignore the step.
    func batch(_ indices: [Int], step: Int) -> (inputs: Tensor, targets: Tensor)
}

extension Dataset {
    public func batch(_ indices: [Int], step: Int) -> (inputs: Tensor, targets: Tensor) { batch(indices) }
}

/// Images with integer class labels: pixels [N, C, H, W] (row-major) and labels [N].
/// A batch's inputs are [B, C, H, W] (`shape` = [C, H, W]; a flat dataset's is [features]).
public struct ImageDataset: Dataset {
    public let pixels: [Float]
    public let labels: [Int32]
    /// One example's shape: [C, H, W], or [features] for flat rows.
    public let shape: [Int]
    public let classes: Int

    public init(pixels: [Float], labels: [Int32], shape: [Int], classes: Int) {
        self.pixels = pixels; self.labels = labels; self.shape = shape; self.classes = classes
    }

    /// Flat rows of `features` values; 784 of them are a 28x28 grey image.
    public init(pixels: [Float], labels: [Int32], features: Int, classes: Int) {
        self.init(pixels: pixels, labels: labels, shape: features == 784 ? [1, 28, 28] : [features], classes: classes)
    }

    public var count: Int { labels.count }
    /// Values per example.
    public var features: Int { shape.reduce(1, *) }

    public func batch(_ indices: [Int]) -> (inputs: Tensor, targets: Tensor) {
        let features = self.features
        var x = [Float](repeating: 0, count: indices.count * features)
        x.withUnsafeMutableBufferPointer { dst in
            pixels.withUnsafeBufferPointer { src in
                for (row, i) in indices.enumerated() {
                    (dst.baseAddress! + row * features).update(from: src.baseAddress! + i * features, count: features)
                }
            }
        }
        return (Tensor(x, shape: [indices.count] + shape), Tensor(indices: indices.map { labels[$0] }, shape: [indices.count]))
    }

    /// The rows in the order `order` (a permutation of 0..<count).
    public func reordered(_ order: [Int]) -> ImageDataset {
        ImageDataset(pixels: batch(order).inputs.floats, labels: order.map { labels[$0] }, shape: shape, classes: classes)
    }

    /// Rows `range` as a dataset of their own (train/validation splits).
    public func subset(_ range: Range<Int>) -> ImageDataset {
        ImageDataset(pixels: Array(pixels[(range.lowerBound * features)..<(range.upperBound * features)]),
                     labels: Array(labels[range]), shape: shape, classes: classes)
    }

    /// Per-channel mean and standard deviation (population) of the pixels: what
    /// normalisation subtracts and divides by.
    public func channelStatistics() -> (mean: [Float], std: [Float]) {
        let channels = shape.count == 3 ? shape[0] : 1, plane = features / channels
        var sum = [Double](repeating: 0, count: channels), squares = sum
        for n in 0..<count {
            for c in 0..<channels {
                let base = n * features + c * plane
                var s = 0.0, q = 0.0
                for i in 0..<plane { let v = Double(pixels[base + i]); s += v; q += v * v }
                sum[c] += s; squares[c] += q
            }
        }
        let total = Double(max(count * plane, 1))
        let mean = sum.map { $0 / total }
        let std = zip(squares, mean).map { (max($0 / total - $1 * $1, 1e-12)).squareRoot() }
        return (mean.map(Float.init), std.map(Float.init))
    }

    /// (x - mean[c]) / std[c] for each channel.
    public func normalized(mean: [Float], std: [Float]) -> ImageDataset {
        let channels = mean.count, plane = features / channels
        var out = pixels
        for n in 0..<count {
            for c in 0..<channels {
                let base = n * features + c * plane, m = mean[c], s = std[c]
                for i in 0..<plane { out[base + i] = (out[base + i] - m) / s }
            }
        }
        return ImageDataset(pixels: out, labels: labels, shape: shape, classes: classes)
    }
}

/// A token stream cut into windows of `context` tokens; example i is the window
/// starting at i * context, its target the same window shifted by one token.
public struct TokenWindows: Dataset {
    public let tokens: [Int32]
    public let context: Int

    public init(tokens: [Int32], context: Int) {
        self.tokens = tokens
        self.context = context
    }

    public var count: Int { max(0, (tokens.count - 1) / context) }

    public func batch(_ indices: [Int]) -> (inputs: Tensor, targets: Tensor) {
        var x = [Int32](), y = [Int32]()
        x.reserveCapacity(indices.count * context); y.reserveCapacity(indices.count * context)
        for i in indices {
            let s = i * context
            x.append(contentsOf: tokens[s..<(s + context)])
            y.append(contentsOf: tokens[(s + 1)..<(s + context + 1)])
        }
        return (Tensor(indices: x, shape: [indices.count, context]), Tensor(indices: y, shape: [indices.count, context]))
    }
}
