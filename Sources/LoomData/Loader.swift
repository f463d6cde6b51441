import Foundation
import LoomCore

/// Hands out batches in sampler order, preparing the next ones on a background thread
/// while the current step computes (`prefetch` batches ahead). The order does not depend
/// on timing: batch k is always the sampler's step k.
public final class PrefetchLoader: @unchecked Sendable {
    public let dataset: any Dataset
    public let sampler: EpochSampler
    private let prefetch: Int
    private var ready: [Int: (inputs: Tensor, targets: Tensor)] = [:]
    private var nextToProduce: Int
    private var nextToConsume: Int
    private let endStep: Int
    private let condition = NSCondition()
    private var stopped = false
    private var thread: Thread?

    /// Batches for steps `start..<end`.
    public init(dataset: any Dataset, sampler: EpochSampler, start: Int, end: Int, prefetch: Int = 2) {
        self.dataset = dataset; self.sampler = sampler; self.prefetch = max(1, prefetch)
        nextToProduce = start; nextToConsume = start; endStep = end
        let t = Thread { [weak self] in self?.produce() }
        t.name = "loom-prefetch"
        thread = t
        t.start()
    }

    deinit { stop() }

    public func stop() {
        condition.lock(); stopped = true; condition.broadcast(); condition.unlock()
    }

    /// The batch for the next step, waiting only if the producer has fallen behind.
    public func next() -> (inputs: Tensor, targets: Tensor)? {
        condition.lock()
        defer { condition.unlock() }
        guard nextToConsume < endStep else { return nil }
        while ready[nextToConsume] == nil && !stopped { condition.wait() }
        let b = ready.removeValue(forKey: nextToConsume)
        nextToConsume += 1
        condition.broadcast()
        return b
    }

    private func produce() {
        var cachedEpoch = -1, order: [Int] = []
        while true {
            condition.lock()
            while !stopped && nextToProduce < endStep && nextToProduce - nextToConsume >= prefetch { condition.wait() }
            if stopped || nextToProduce >= endStep { condition.unlock(); return }
            let step = nextToProduce
            condition.unlock()

            let epoch = step / sampler.batchesPerEpoch
            if epoch != cachedEpoch { order = sampler.order(epoch: epoch); cachedEpoch = epoch }
            let batch = dataset.batch(sampler.indices(step: step, order: order), step: step)

            condition.lock()
            ready[step] = batch
            nextToProduce += 1
            condition.broadcast()
            condition.unlock()
        }
    }
}
