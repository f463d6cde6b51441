import LoomCore

/// Training images, randomly augmented as the CIFAR ResNets were trained: each image
/// shifted by a random crop of the image padded with zeros on every side (`cropPadding`
/// pixels; 0: none), and flipped left-right with probability 1/2 (`flip`).
///
/// The draws are keyed on (seed, step, example index): the loader's prefetch workers
/// compute them off the step's critical path, the same step gives the same batch in every
/// parallel layout (each rank augments its own shard's examples as the whole batch would),
/// and a resumed run draws what the uninterrupted one drew.
public struct AugmentedImages: Dataset {
    public let base: ImageDataset
    public let cropPadding: Int
    public let flip: Bool
    public let seed: UInt64

    public init(_ base: ImageDataset, cropPadding: Int, flip: Bool, seed: UInt64) {
        self.base = base; self.cropPadding = cropPadding; self.flip = flip; self.seed = seed
    }

    public var count: Int { base.count }

    /// Without a step (evaluation, inspection): the images as they are.
    public func batch(_ indices: [Int]) -> (inputs: Tensor, targets: Tensor) { base.batch(indices) }

    public func batch(_ indices: [Int], step: Int) -> (inputs: Tensor, targets: Tensor) {
        let (inputs, targets) = base.batch(indices)
        guard base.shape.count == 3, cropPadding > 0 || flip else { return (inputs, targets) }
        let (c, h, w) = (base.shape[0], base.shape[1], base.shape[2]), p = cropPadding
        var x = inputs.floats
        var plane = [Float](repeating: 0, count: h * w)
        let stepStream = Philox(seed: seed).derived(UInt64(step))
        for (row, index) in indices.enumerated() {
            var rng = stepStream.derived(UInt64(index))
            // Offsets into the padded image: dy, dx in 0...2p (p: no shift).
            let dy = p > 0 ? rng.nextInt(below: 2 * p + 1) - p : 0, dx = p > 0 ? rng.nextInt(below: 2 * p + 1) - p : 0
            let mirror = flip && rng.nextFloat() < 0.5
            for ch in 0..<c {
                let base = (row * c + ch) * h * w
                for y in 0..<h {
                    let sy = y + dy
                    for xo in 0..<w {
                        let sx = (mirror ? w - 1 - xo : xo) + dx
                        plane[y * w + xo] = sy >= 0 && sy < h && sx >= 0 && sx < w ? x[base + sy * w + sx] : 0
                    }
                }
                x.replaceSubrange(base..<(base + h * w), with: plane)
            }
        }
        return (Tensor(x, shape: inputs.shape), targets)
    }
}

/// Per-channel normalisation of images, (x - mean[c]) / std[c], from the training split's
/// statistics: computed once by the run that starts, saved in its checkpoint
/// (`loom.normalization`) and reused by a resumed run, `loom eval` and `--init`.
public struct ChannelNormalization: Equatable, Sendable, Codable {
    public var mean: [Float]
    public var std: [Float]

    public init(mean: [Float], std: [Float]) { self.mean = mean; self.std = std }

    public init(of images: ImageDataset) {
        (mean, std) = images.channelStatistics()
    }

    public func apply(_ images: ImageDataset) -> ImageDataset { images.normalized(mean: mean, std: std) }
}
