import LoomCore

/// Examples addressable by index; a batch is the examples at some indices, stacked.
public protocol Dataset: Sendable {
    var count: Int { get }
    /// Inputs and targets for the examples at `indices`, as host (CPU) tensors.
    func batch(_ indices: [Int]) -> (inputs: Tensor, targets: Tensor)
}

/// Images with integer class labels: pixels [N, H*W] scaled to [0, 1] and normalised.
public struct ImageDataset: Dataset {
    public let pixels: [Float]   // [N, features], row-major
    public let labels: [Int32]   // [N]
    public let features: Int
    public let classes: Int

    public init(pixels: [Float], labels: [Int32], features: Int, classes: Int) {
        self.pixels = pixels; self.labels = labels; self.features = features; self.classes = classes
    }

    public var count: Int { labels.count }

    public func batch(_ indices: [Int]) -> (inputs: Tensor, targets: Tensor) {
        var x = [Float](repeating: 0, count: indices.count * features)
        x.withUnsafeMutableBufferPointer { dst in
            pixels.withUnsafeBufferPointer { src in
                for (row, i) in indices.enumerated() {
                    (dst.baseAddress! + row * features).update(from: src.baseAddress! + i * features, count: features)
                }
            }
        }
        return (Tensor(x, shape: [indices.count, features]), Tensor(indices: indices.map { labels[$0] }, shape: [indices.count]))
    }

    /// The rows in the order `order` (a permutation of 0..<count).
    public func reordered(_ order: [Int]) -> ImageDataset {
        ImageDataset(pixels: batch(order).inputs.floats, labels: order.map { labels[$0] }, features: features, classes: classes)
    }

    /// Rows `range` as a dataset of their own (train/validation splits).
    public func subset(_ range: Range<Int>) -> ImageDataset {
        ImageDataset(pixels: Array(pixels[(range.lowerBound * features)..<(range.upperBound * features)]),
                     labels: Array(labels[range]), features: features, classes: classes)
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
