import LoomCore
import LoomDistributed

/// ResNet's basic block (He et al., 2015): relu(bn(conv3x3(relu(bn(conv3x3(x))))) + s(x)),
/// the first convolution striding when the block halves the image; the shortcut s is the
/// identity, or a strided 1x1 convolution and batch norm where the shape changes
/// (torchvision's `BasicBlock` with its `downsample`).
public final class BasicBlock: Module, UnaryLayer {
    public let conv1: Conv2d
    public let bn1: BatchNorm
    public let conv2: Conv2d
    public let bn2: BatchNorm
    public let downsample: Sequential?

    /// `batchNormGroup`: the ranks whose batch statistics its batch norms share (nil: none).
    public init(_ inChannels: Int, _ outChannels: Int, stride: Int, rng: inout Philox, batchNormGroup: Communicator? = nil,
                on backend: any Backend) {
        conv1 = Conv2d(inChannels, outChannels, kernel: 3, stride: stride, padding: 1, bias: false, rng: &rng, on: backend)
        bn1 = BatchNorm(outChannels, syncGroup: batchNormGroup, on: backend)
        conv2 = Conv2d(outChannels, outChannels, kernel: 3, padding: 1, bias: false, rng: &rng, on: backend)
        bn2 = BatchNorm(outChannels, syncGroup: batchNormGroup, on: backend)
        downsample = stride != 1 || inChannels != outChannels
            ? Sequential([Conv2d(inChannels, outChannels, kernel: 1, stride: stride, bias: false, rng: &rng, on: backend),
                          BatchNorm(outChannels, syncGroup: batchNormGroup, on: backend)])
            : nil
    }

    /// [N, C, H, W] -> [N, OC, H/stride, W/stride]
    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        let h = try bn2(conv2(bn1(conv1(x)).relu()))
        return try h.add(downsample.map { try $0(x) } ?? x).relu()
    }
}

/// Mean over the spatial axes: [N, C, H, W] -> [N, C].
public final class GlobalAveragePool: Module, UnaryLayer {
    public override init() {}
    public func callAsFunction(_ x: Tensor) throws -> Tensor { try x.mean(axes: [2, 3]) }
}

/// The ResNet family on images of any size and channel count.
///
/// - CIFAR-style ResNet-20/32/56 (He et al., section 4.2; depth 6n + 2): a 3x3
///   convolution to w channels, three stages of n basic blocks of w, 2w and 4w channels
///   (the last two halving the image), global average pooling, a linear layer; w = 16 in
///   the paper.
/// - ImageNet-style ResNet-18/34 (torchvision's `resnet18`/`resnet34`): a 7x7 stride-2
///   convolution to w channels and 3x3 stride-2 max pooling (padding 1), four stages of
///   [2, 2, 2, 2] or [3, 4, 6, 3] blocks of w, 2w, 4w and 8w channels, global average
///   pooling, a linear layer; w = 64 in torchvision.
///
/// w is `model.width` (0: the paper's). A chain of layers, each block one link, so a
/// pipeline can cut it between blocks. Under a `UnitSharding` (ZeRO-3) each block is a
/// unit; the stem and head are the root's.
public final class ResNet: Module, UnaryLayer {
    public let stem: Sequential
    public let blocks: Sequential
    public let head: Sequential
    let sharding: (any UnitSharding)?

    public static let depths = [18, 20, 32, 34, 56]

    /// `batchNormGroup`: the data-parallel ranks whose shards make up the batch, when batch
    /// norm takes its statistics over the whole batch (nil: each rank's shard). `sharding`:
    /// each block sharded as a unit as soon as it is built.
    public init(depth: Int, width: Int = 0, channels: Int, classes: Int, seed: UInt64, batchNormGroup: Communicator? = nil,
                sharding: (any UnitSharding)? = nil, on backend: any Backend = DefaultBackend.current) throws {
        var rng = Philox(seed: seed)
        let stages: [(channels: Int, blocks: Int)]
        var stem: [any UnaryLayer]
        switch depth {
        case 20, 32, 56:
            let n = (depth - 2) / 6, w = width > 0 ? width : 16
            stages = [(w, n), (2 * w, n), (4 * w, n)]
            stem = [Conv2d(channels, w, kernel: 3, padding: 1, bias: false, rng: &rng, on: backend), BatchNorm(w, syncGroup: batchNormGroup, on: backend), ReLU()]
        case 18, 34:
            let counts = depth == 18 ? [2, 2, 2, 2] : [3, 4, 6, 3], w = width > 0 ? width : 64
            stages = zip([w, 2 * w, 4 * w, 8 * w], counts).map { ($0, $1) }
            stem = [Conv2d(channels, w, kernel: 7, stride: 2, padding: 3, bias: false, rng: &rng, on: backend),
                    BatchNorm(w, syncGroup: batchNormGroup, on: backend), ReLU(), MaxPool2d(3, stride: 2, padding: 1)]
        default:
            throw LoomError.config("resnet: depth \(depth); valid: \(ResNet.depths.map(String.init).joined(separator: ", "))")
        }
        var blocks: [any UnaryLayer] = []
        var inChannels = stages[0].channels
        for (s, stage) in stages.enumerated() {
            for b in 0..<stage.blocks {
                let block = BasicBlock(inChannels, stage.channels, stride: s > 0 && b == 0 ? 2 : 1, rng: &rng,
                                       batchNormGroup: batchNormGroup, on: backend)
                try sharding?.shard([block], as: block)
                blocks.append(block)
                inChannels = stage.channels
            }
        }
        self.stem = Sequential(stem)
        self.blocks = Sequential(blocks)
        head = Sequential([GlobalAveragePool(), Linear(inChannels, classes, rng: &rng, on: backend)])
        self.sharding = sharding
    }

    /// [N, C, H, W] -> [N, classes]
    public func callAsFunction(_ x: Tensor) throws -> Tensor {
        var h = try stem(x)
        for case let block as BasicBlock in blocks.layers { h = try sharding.forward(block) { try block(h) } }
        return try head(h)
    }
}

extension ResNet: LayerChain {
    public var chain: [(name: String, layer: any UnaryLayer)] { stem.chain("stem") + blocks.chain("blocks") + head.chain("head") }
    public func prepareInput(_ x: Tensor) throws -> Tensor { x }
}
