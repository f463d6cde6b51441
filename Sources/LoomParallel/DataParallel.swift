import LoomCore
import LoomDistributed
import LoomNN

/// Data parallelism in the manner of PyTorch's DistributedDataParallel: every rank holds
/// the whole model and computes gradients on its shard of the global batch; gradients
/// are averaged across ranks while backward is still running.
///
/// Gradients are packed into buckets of about `bucketBytes`, filled in reverse parameter
/// order (backward produces the last layers' gradients first). The engine calls a hook as
/// each parameter's gradient is final; when a bucket's last gradient arrives its
/// all-reduce starts, and backward goes on computing the earlier layers meanwhile.
/// `synchronize()` then waits for the buckets and hands each parameter its average.
///
/// Bucket layout and launch order are the same on every rank (they depend only on the
/// parameter list and the graph), which collectives require.
public final class DataParallel {
    public let communicator: Communicator
    public let parameters: [(name: String, tensor: Tensor)]
    /// False during the first micro-steps of gradient accumulation: gradients then stay
    /// local, and only the last micro-step's backward communicates.
    public var syncGradients = true
    /// Seconds the training thread spent blocked in `synchronize()` (communication that
    /// backward did not hide), since the last `resetTimers()`.
    public private(set) var waitSeconds = 0.0
    /// Its collectives and the waits for them, for a trace.
    public let timeline = CommTimeline()
    private var buckets: [Bucket] = []
    /// A bucket's buffer that could not be allocated during backward (ZeRO-2), for `synchronize`.
    private var launchError: Error?
    /// ZeRO-2: the buckets whose reductions run, oldest first; at most `maxInFlight`, so a
    /// rank's whole-gradient buffers stay within two buckets (DeepSpeed's double-buffered
    /// reduction bucket).
    private var inFlight: [Int] = []
    static let maxInFlight = 2
    private var bucketOf: [ObjectIdentifier: (bucket: Int, slot: Int)] = [:]

    /// ZeRO (stage 1 or 2): gradients are reduce-scattered, each rank keeping the average
    /// of its 1/N chunk of every bucket in `Bucket.shardGrad`, for `ZeroOptimizer`.
    public let zero: Bool
    /// ZeRO stage 2: the bucket's whole buffer is released once its reduce-scatter is done,
    /// so a rank keeps 1/N of the gradients between steps (stage 1 keeps them all, in the
    /// buckets). Under both, a parameter's own gradient is dropped once its bucket has
    /// copied it.
    public let releasesGradients: Bool

    final class Bucket {
        let members: [Int]           // indices into parameters
        let offsets: [Int]           // element offset of each member in `flat`
        let padded: Int              // the members, then zeros up to a multiple of the rank count
        var flat: Tensor?            // [padded]; under ZeRO-2 only while its reduction runs
        let shardGrad: Tensor?       // [padded / ranks], ZeRO only
        /// ZeRO: the members' values, laid out as the gradients are; each member parameter
        /// points into it (so a rank's chunk of the parameters is a view, not a copy, and
        /// the all-gather after the update writes the parameters in place).
        var parameters: Tensor?
        var pending: Int
        var request: CommRequest?
        /// Reduced this step (and its request waited for).
        var done = false
        init(members: [Int], offsets: [Int], padded: Int, flat: Tensor?, shardGrad: Tensor?) {
            self.members = members; self.offsets = offsets; self.padded = padded; self.flat = flat; self.shardGrad = shardGrad
            pending = members.count
        }
    }

    /// Broadcasts rank 0's parameters to every rank, then lays out the buckets. `zero`: the
    /// ZeRO stage whose gradients this keeps (0: all-reduce; 1: reduce-scatter; 2:
    /// reduce-scatter, whole gradients released).
    public init(parameters: [(name: String, tensor: Tensor)], communicator: Communicator,
                bucketBytes: Int = DataParallel.defaultBucketBytes, zero stage: Int = 0) throws {
        precondition((0...2).contains(stage), "DataParallel: ZeRO stage \(stage)")
        self.communicator = communicator
        self.parameters = parameters
        zero = stage >= 1
        releasesGradients = stage >= 2
        for (_, p) in parameters { try communicator.broadcast(p, root: 0) }

        var current: [Int] = [], offsets: [Int] = [], size = 0
        func close() throws {
            guard !current.isEmpty, let backend = parameters.first?.tensor.backend else { return }
            let ranks = communicator.size
            let padded = (size + ranks - 1) / ranks * ranks
            let flat = releasesGradients ? nil : try Tensor.zeros([padded], on: backend)
            let shard = zero ? try Tensor.zeros([padded / ranks], on: backend) : nil
            flat?.tagMemory(.communication)
            shard?.tagMemory(.gradients)
            for (slot, i) in current.enumerated() { bucketOf[ObjectIdentifier(parameters[i].tensor)] = (buckets.count, slot) }
            let bucket = Bucket(members: current, offsets: offsets, padded: padded, flat: flat, shardGrad: shard)
            if zero {
                // One parameter at a time into the flat buffer: building it holds one
                // parameter twice at most.
                let values = try Tensor.zeros([padded], on: backend)
                values.tagMemory(.parameters)
                for (i, offset) in zip(current, offsets) {
                    let p = parameters[i].tensor
                    backend.copy(p, into: values.view(p.shape, offset: offset))
                    p.rebind(to: values.storage, offset: values.offset + offset)
                }
                bucket.parameters = values
            }
            buckets.append(bucket)
            current = []; offsets = []; size = 0
        }
        for i in parameters.indices.reversed() {
            current.append(i); offsets.append(size); size += parameters[i].tensor.count
            if size * 4 >= bucketBytes { try close() }
        }
        try close()
        for (_, p) in parameters {
            p.onGradAccumulated = { [weak self] t in self?.gradientReady(t) }
        }
    }

    /// 1 MiB: small enough that a model of a few MB is split into several buckets whose
    /// all-reduces overlap backward (PyTorch's 25 MB default targets far larger models).
    public static let defaultBucketBytes = 1 << 20

    public var bucketCount: Int { buckets.count }

    public func resetTimers() { waitSeconds = 0 }

    private func gradientReady(_ p: Tensor) {
        guard syncGradients, let (b, _) = bucketOf[ObjectIdentifier(p)] else { return }
        let bucket = buckets[b]
        bucket.pending -= 1
        if bucket.pending == 0 { launch(b) }
    }

    private func launch(_ b: Int) {
        let bucket = buckets[b]
        guard bucket.request == nil, !bucket.done else { return }
        let flat: Tensor
        if let kept = bucket.flat {
            flat = kept
        } else {
            // ZeRO-2: a buffer for this reduction only, once the oldest of two in flight
            // is done. Launched from backward's hook, which cannot throw: a failed
            // allocation or reduction is thrown by `synchronize`.
            let t0 = monotonicSeconds()
            defer { waitSeconds += monotonicSeconds() - t0 }  // backward waits here: not hidden
            while inFlight.count >= DataParallel.maxInFlight {
                do { try finish(inFlight[0]) } catch {
                    if launchError == nil { launchError = error }
                    return
                }
            }
            do { flat = try Tensor.zeros([bucket.padded], on: parameters[bucket.members[0]].tensor.backend) } catch {
                if launchError == nil { launchError = error }
                return
            }
            flat.tagMemory(.communication)
            bucket.flat = flat
        }
        for (slot, i) in bucket.members.enumerated() {
            let p = parameters[i].tensor
            let dst = flat.view(p.shape, offset: bucket.offsets[slot])
            if let g = p.grad { p.backend.copy(g, into: dst) } else { p.backend.fill(dst, value: 0) }
            if zero { p.grad = nil }  // its bytes are in the bucket now (ZeRO reads only its chunk of the reduction)
        }
        if releasesGradients { inFlight.append(b) }
        if let shard = bucket.shardGrad {
            bucket.request = communicator.reduceScatterAsync(flat, into: shard, .average, label: "reduce-scatter of gradient bucket \(b)")
        } else {
            bucket.request = communicator.allReduceAsync(flat, .average, label: "all-reduce of gradient bucket \(b)")
        }
    }

    /// Waits for every bucket's all-reduce (starting those whose parameters got no
    /// gradient this step) and sets each parameter's gradient to the average over ranks.
    public func synchronize() throws {
        let t0 = monotonicSeconds()
        defer { waitSeconds += monotonicSeconds() - t0 }
        for b in buckets.indices where buckets[b].request == nil && !buckets[b].done { launch(b) }
        if let error = launchError { launchError = nil; throw error }
        for (b, bucket) in buckets.enumerated() {
            try finish(b)
            bucket.done = false
            bucket.pending = bucket.members.count
            if zero { continue }  // the averaged chunk is in shardGrad, for ZeroOptimizer
            for (slot, i) in bucket.members.enumerated() {
                let p = parameters[i].tensor
                // A view into the bucket, not a copy. Safe: the bucket is refilled only
                // from the next backward's gradients, and a gradient accumulated onto
                // this one is a new tensor (the engine adds out of place).
                p.grad = bucket.flat!.view(p.shape, offset: bucket.offsets[slot])
            }
        }
    }

    /// Waits for bucket `b`'s reduction (if it runs); under ZeRO-2 releases its buffer.
    private func finish(_ b: Int) throws {
        let bucket = buckets[b]
        guard let request = bucket.request else { return }
        bucket.request = nil
        bucket.done = true
        inFlight.removeAll { $0 == b }
        try timeline.wait(request)
        if releasesGradients { bucket.flat = nil }
    }

    /// Bucket layout for ZeroOptimizer: members, offsets, padded size, this rank's shard gradient.
    var layout: [ZeroOptimizer.Segment] {
        buckets.map { ($0.members, $0.offsets, $0.padded, $0.shardGrad) }
    }

    /// ZeRO: each bucket's parameters, flat (the members point into them).
    var parameterBuffers: [Tensor] { buckets.compactMap(\.parameters) }

    /// Detaches the hooks (the parameters go back to plain local gradients).
    public func detach() { for (_, p) in parameters { p.onGradAccumulated = nil } }
}
