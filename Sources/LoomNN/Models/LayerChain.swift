import LoomCore

/// A model that is a chain of one-input layers, which a pipeline can cut between any two
/// of them: the image models (MLP, CNN).
public protocol LayerChain: Module {
    /// The layers in order, each with its name in this model (`features.layers.3`).
    var chain: [(name: String, layer: any UnaryLayer)] { get }
    /// What the model does to its input before the first layer (a reshape of flat pixels).
    func prepareInput(_ x: Tensor) throws -> Tensor
}

extension LayerChain {
    /// The chain cut into `count` pieces of consecutive layers; `split[i]` layers in piece
    /// i. By default each piece gets an equal share of the layers that hold parameters,
    /// the parameterless ones (activations, pooling) staying with the layer before them.
    public func pieces(_ count: Int, split: [Int]? = nil) throws -> [ChainPiece] {
        let layers = chain
        let counts = try split ?? defaultSplit(layers, count)
        guard counts.count == count, counts.reduce(0, +) == layers.count, counts.allSatisfy({ $0 > 0 }) else {
            throw LoomError.config("pipeline split \(counts) does not cut \(layers.count) layers into \(count) non-empty pieces")
        }
        var start = 0
        return counts.enumerated().map { i, n in
            defer { start += n }
            return ChainPiece(Array(layers[start..<(start + n)]), first: i == 0, last: i == count - 1,
                              prepare: i == 0 ? prepareInput : nil)
        }
    }

    private func defaultSplit(_ layers: [(name: String, layer: any UnaryLayer)], _ count: Int) throws -> [Int] {
        // Starts of the parameterised layers; piece p begins at the (p·K/count)-th of them.
        let starts = layers.indices.filter { i in i == 0 || !layers[i].layer.parameters.isEmpty }
        guard starts.count >= count else {
            throw LoomError.config("pipeline: \(count) stages for a model of \(starts.count) layers with parameters")
        }
        let cuts = (0..<count).map { starts[$0 * starts.count / count] } + [layers.count]
        return (0..<count).map { cuts[$0 + 1] - cuts[$0] }
    }
}

/// Consecutive layers of a `LayerChain`, named as in the whole model. The first piece
/// prepares the model's input; the last computes the classification loss.
public final class ChainPiece: Module, UnaryLayer {
    public let layers: [Module]
    private let names: [String]
    public let isFirst: Bool
    public let isLast: Bool
    private let prepare: ((Tensor) throws -> Tensor)?

    init(_ layers: [(name: String, layer: any UnaryLayer)], first: Bool, last: Bool, prepare: ((Tensor) throws -> Tensor)?) {
        self.layers = layers.map(\.layer)
        names = layers.map(\.name)
        isFirst = first
        isLast = last
        self.prepare = prepare
    }

    public override func childName(_ label: String, _ index: Int) -> String {
        label == "layers" ? names[index] : super.childName(label, index)
    }

    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        var h = try prepare?(x) ?? x
        for layer in layers { h = try (layer as! any UnaryLayer)(h) }
        return h
    }

    /// Mean cross-entropy of the last piece's logits [N, classes] against labels [N].
    public func loss(logits: Tensor, targets: Tensor) throws -> Tensor {
        try logits.crossEntropy(targets: targets)
    }
}

extension Sequential {
    /// Its layers named as in the model holding it under `prefix` (`features.layers.3`).
    func chain(_ prefix: String) -> [(name: String, layer: any UnaryLayer)] {
        layers.enumerated().map { ("\(prefix).layers.\($0.offset)", $0.element as! any UnaryLayer) }
    }
}

extension MLP: LayerChain {
    public var chain: [(name: String, layer: any UnaryLayer)] { net.chain("net") }
    public func prepareInput(_ x: Tensor) throws -> Tensor { x.rank > 2 ? try x.flattened() : x }
}

extension CNN: LayerChain {
    public var chain: [(name: String, layer: any UnaryLayer)] { features.chain("features") + classifier.chain("classifier") }
    /// Flat pixels [N, C·H·W] reshaped to the images the model was built for.
    public func prepareInput(_ x: Tensor) throws -> Tensor { x.rank == 2 ? try x.reshaped([x.shape[0]] + imageShape) : x }
}
