import LoomCore

/// Which examples make up each batch: a fresh seeded permutation every epoch, cut into
/// global batches; with data parallelism, rank r of W takes the r-th slice of every
/// global batch, so the ranks' shards are disjoint and together are the global batch.
///
/// The order is a pure function of (seed, epoch, step): a resumed run, or a run with a
/// different number of ranks, sees the same global batches.
public struct EpochSampler: Sendable, Equatable {
    public let count: Int
    public let globalBatch: Int
    public let seed: UInt64
    public let shuffle: Bool
    public let rank: Int
    public let worldSize: Int

    public init(count: Int, globalBatch: Int, seed: UInt64, shuffle: Bool = true, rank: Int = 0, worldSize: Int = 1) throws {
        guard globalBatch > 0, globalBatch <= count else {
            throw LoomError.config("batch size \(globalBatch) must be between 1 and the dataset size \(count)")
        }
        guard worldSize > 0, rank >= 0, rank < worldSize, globalBatch % worldSize == 0 else {
            throw LoomError.config("global batch \(globalBatch) must divide evenly across \(worldSize) ranks")
        }
        self.count = count; self.globalBatch = globalBatch; self.seed = seed; self.shuffle = shuffle
        self.rank = rank; self.worldSize = worldSize
    }

    /// Full batches per epoch (the last partial batch is dropped).
    public var batchesPerEpoch: Int { count / globalBatch }

    public func order(epoch: Int) -> [Int] {
        guard shuffle else { return Array(0..<count) }
        var rng = Philox(seed: seed).derived(0x5A4D_0000 &+ UInt64(epoch))
        return rng.permutation(count)
    }

    /// This rank's indices for global step `step` (counting from 0 across epochs).
    public func indices(step: Int, order cached: [Int]? = nil) -> [Int] {
        let epoch = step / batchesPerEpoch, b = step % batchesPerEpoch
        let order = cached ?? self.order(epoch: epoch)
        let local = globalBatch / worldSize
        let start = b * globalBatch + rank * local
        return Array(order[start..<(start + local)])
    }
}
