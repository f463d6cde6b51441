#if canImport(Glibc)
import Glibc
#endif

/// A backend whose memory the host cannot reach except through `upload` and `download`:
/// the stand-in for an accelerator that proves, on a machine without one, that nothing
/// above the backend seam reads or writes tensor memory.
///
/// Its blocks live in host memory private to it. A storage's handle is not their address
/// but a non-canonical one (bit 63 set, an x86-64 address no process can map), so code
/// that took a handle for a host pointer faults at once instead of working by accident;
/// `Storage.hostAddress` is nil (the device is `.isolated(n)`), and `HostBuffer` stages
/// through a copy as it would for GPU memory. Inside each call the backend maps its
/// blocks to host views and runs the CPU backend's kernels on them, so results are
/// bit-identical to the CPU backend with the same thread count.
///
/// It counts what crosses the seam: `downloads` (a synchronisation on a real device) and
/// `uploads`, so tests can assert that a training step reads nothing back but its loss.
public final class IsolatedBackend: Backend, @unchecked Sendable {
    public let device: Device
    public var name: String { "isolated:\(index) (\(inner.name) kernels)" }
    public let index: Int
    let inner: CPUBackend
    private let lock = SpinLock()
    private var blocks: [UInt: UnsafeMutableRawPointer] = [:]
    private var nextBlock: UInt = 1
    private var counters = (uploads: 0, downloads: 0, uploadBytes: 0, downloadBytes: 0)
    /// Fails every allocation above this many bytes (tests of out-of-memory errors).
    public var capacityBytes = Int.max
    private var allocatedBytes = 0

    private static let marker: UInt = 1 << 63

    public init(index: Int = 0, threads: Int = 1) {
        self.index = index
        device = .isolated(index)
        inner = CPUBackend(threads: threads)
        Backends.register(self)
    }

    /// Host-to-device copies since the last `resetCounters()`.
    public var uploads: Int { lock.withLock { counters.uploads } }
    /// Device-to-host copies since the last `resetCounters()`.
    public var downloads: Int { lock.withLock { counters.downloads } }
    public func resetCounters() { lock.withLock { counters = (0, 0, 0, 0) } }

    // MARK: Memory

    public func allocate(bytes: Int) throws -> Storage {
        let size = max(bytes, 64)
        let (id, raw): (UInt, UnsafeMutableRawPointer) = try lock.withLock {
            guard allocatedBytes + size <= capacityBytes else {
                throw allocationError(bytes: bytes, device: device,
                                      detail: "\(allocatedBytes) of \(capacityBytes) bytes in use")
            }
            var p: UnsafeMutableRawPointer?
            guard posix_memalign(&p, 64, size) == 0, let p else { throw allocationError(bytes: bytes, device: device) }
            let id = nextBlock
            nextBlock += 1
            blocks[id] = p
            allocatedBytes += size
            return (id, p)
        }
        _ = raw
        return Storage(device: device, byteCount: size, handle: IsolatedBackend.marker | (id << 6)) { [weak self] handle, size in
            guard let self else { return }
            let p = self.lock.withLock { () -> UnsafeMutableRawPointer? in
                self.allocatedBytes -= size
                return self.blocks.removeValue(forKey: (handle & ~IsolatedBackend.marker) >> 6)
            }
            free(p)
        }
    }

    /// The CPU view of one of this backend's tensors, valid for the call in progress.
    private func host(_ t: Tensor) -> Tensor {
        precondition(t.device == device, "\(name): a tensor on \(t.device) was passed to a kernel of \(device)")
        let id = (t.storage.handle & ~IsolatedBackend.marker) >> 6
        guard let p = lock.withLock({ blocks[id] }) else { fatalError("\(name): unknown block \(id)") }
        let view = Storage(device: .cpu, byteCount: t.storage.byteCount, handle: UInt(bitPattern: p), metered: false) { _, _ in }
        return Tensor(shape: t.shape, dtype: t.dtype, storage: view, offset: t.offset, backend: inner)
    }

    private func host(_ t: Tensor?) -> Tensor? { t.map { host($0) } }

    private func host(_ o: GEMMOperand) -> GEMMOperand {
        GEMMOperand(host(o.tensor), offset: o.offset, ld: o.ld, batchStride: o.batchStride, transposed: o.transposed)
    }

    public func upload(_ source: UnsafeRawBufferPointer, to tensor: Tensor) {
        lock.withLock { counters.uploads += 1; counters.uploadBytes += source.count }
        inner.upload(source, to: host(tensor))
    }

    public func download(_ tensor: Tensor, into destination: UnsafeMutableRawBufferPointer) {
        lock.withLock { counters.downloads += 1; counters.downloadBytes += destination.count }
        inner.download(host(tensor), into: destination)
    }

    public func fill(_ tensor: Tensor, value: Float) { inner.fill(host(tensor), value: value) }
    public func copy(_ source: Tensor, into destination: Tensor) { inner.copy(host(source), into: host(destination)) }
    public func cast(_ x: Tensor, into y: Tensor) { inner.cast(host(x), into: host(y)) }
    public func cast(_ x: Tensor, into y: Tensor, summingColumns columnSums: Tensor, rows: Int, cols: Int) {
        inner.cast(host(x), into: host(y), summingColumns: host(columnSums), rows: rows, cols: cols)
    }
    public func synchronize() {}

    // MARK: Kernels: the CPU backend's, on host views

    public func unary(_ op: UnaryOp, _ x: Tensor, into y: Tensor) { inner.unary(op, host(x), into: host(y)) }
    public func unaryRoundingToBF16(_ op: UnaryOp, _ x: Tensor, into y: Tensor) { inner.unaryRoundingToBF16(op, host(x), into: host(y)) }
    public func unaryBackward(_ op: UnaryOp, x: Tensor, gradOutput: Tensor, roundingInto gx: Tensor, summingColumns sums: Tensor?,
                              rows: Int, cols: Int) {
        inner.unaryBackward(op, x: host(x), gradOutput: host(gradOutput), roundingInto: host(gx), summingColumns: host(sums), rows: rows,
                            cols: cols)
    }
    public func unaryBackward(_ op: UnaryOp, x: Tensor, y: Tensor, gradOutput: Tensor, into gx: Tensor) {
        inner.unaryBackward(op, x: host(x), y: host(y), gradOutput: host(gradOutput), into: host(gx))
    }
    public func binary(_ op: BinaryOp, _ a: Tensor, _ b: Tensor, into out: Tensor) { inner.binary(op, host(a), host(b), into: host(out)) }
    public func scalar(_ op: ScalarOp, _ x: Tensor, _ s: Float, into y: Tensor) { inner.scalar(op, host(x), s, into: host(y)) }
    public func reduce(_ op: ReduceOp, _ x: Tensor, outer: Int, n: Int, inner i: Int, into y: Tensor) {
        inner.reduce(op, host(x), outer: outer, n: n, inner: i, into: host(y))
    }
    public func argmax(_ x: Tensor, outer: Int, n: Int, inner i: Int, into indices: Tensor) {
        inner.argmax(host(x), outer: outer, n: n, inner: i, into: host(indices))
    }
    public func gatherAlongAxis(_ x: Tensor, indices: Tensor, outer: Int, n: Int, inner i: Int, into y: Tensor) {
        inner.gatherAlongAxis(host(x), indices: host(indices), outer: outer, n: n, inner: i, into: host(y))
    }
    public func scatterAlongAxis(_ src: Tensor, indices: Tensor, outer: Int, n: Int, inner i: Int, into y: Tensor) {
        inner.scatterAlongAxis(host(src), indices: host(indices), outer: outer, n: n, inner: i, into: host(y))
    }
    public func localIndices(_ indices: Tensor, range: Range<Int>, local: Tensor, mask: Tensor) {
        inner.localIndices(host(indices), range: range, local: host(local), mask: host(mask))
    }
    public func sumOfSquares(_ tensors: [Tensor]) -> Double { inner.sumOfSquares(tensors.map { host($0) }) }
    public func gemm(_ a: GEMMOperand, _ b: GEMMOperand, _ c: GEMMOperand, m: Int, n: Int, k: Int, batch: Int, alpha: Float, beta: Float) {
        inner.gemm(host(a), host(b), host(c), m: m, n: n, k: k, batch: batch, alpha: alpha, beta: beta)
    }
    public func gemm(_ a: GEMMOperand, _ b: GEMMOperand, _ c: GEMMOperand, m: Int, n: Int, k: Int, alpha: Float,
                     addingToEachRow bias: Tensor) throws {
        try inner.gemm(host(a), host(b), host(c), m: m, n: n, k: k, alpha: alpha, addingToEachRow: host(bias))
    }
    public func permute(_ x: Tensor, perm: [Int], into y: Tensor) { inner.permute(host(x), perm: perm, into: host(y)) }
    public func copyBlocks(_ src: Tensor, srcOffset: Int, srcStride: Int, into dst: Tensor, dstOffset: Int, dstStride: Int,
                           rows: Int, width: Int, accumulate: Bool) {
        inner.copyBlocks(host(src), srcOffset: srcOffset, srcStride: srcStride, into: host(dst), dstOffset: dstOffset,
                         dstStride: dstStride, rows: rows, width: width, accumulate: accumulate)
    }
    public func softmax(_ x: Tensor, rows: Int, cols: Int, log: Bool, into y: Tensor) {
        inner.softmax(host(x), rows: rows, cols: cols, log: log, into: host(y))
    }
    public func softmaxBackward(y: Tensor, gradOutput: Tensor, rows: Int, cols: Int, log: Bool, into gx: Tensor) {
        inner.softmaxBackward(y: host(y), gradOutput: host(gradOutput), rows: rows, cols: cols, log: log, into: host(gx))
    }
    public func maskUpperTriangle(_ x: Tensor, rows: Int, cols: Int, value: Float) {
        inner.maskUpperTriangle(host(x), rows: rows, cols: cols, value: value)
    }
    public func layerNorm(_ x: Tensor, gamma: Tensor, beta: Tensor, eps: Float, rows: Int, cols: Int,
                          into y: Tensor, mean: Tensor, rstd: Tensor) {
        inner.layerNorm(host(x), gamma: host(gamma), beta: host(beta), eps: eps, rows: rows, cols: cols,
                        into: host(y), mean: host(mean), rstd: host(rstd))
    }
    public func layerNormBackward(x: Tensor, gamma: Tensor, mean: Tensor, rstd: Tensor, gradOutput: Tensor,
                                  rows: Int, cols: Int, gradInput: Tensor, gradGamma: Tensor, gradBeta: Tensor) {
        inner.layerNormBackward(x: host(x), gamma: host(gamma), mean: host(mean), rstd: host(rstd), gradOutput: host(gradOutput),
                                rows: rows, cols: cols, gradInput: host(gradInput), gradGamma: host(gradGamma), gradBeta: host(gradBeta))
    }
    public func channelMoments(_ x: Tensor, n: Int, channels: Int, inner i: Int, mean: Tensor, variance: Tensor) {
        inner.channelMoments(host(x), n: n, channels: channels, inner: i, mean: host(mean), variance: host(variance))
    }
    public func channelAffine(_ x: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, n: Int, channels: Int, inner i: Int, into y: Tensor) {
        inner.channelAffine(host(x), mean: host(mean), scale: host(scale), shift: host(shift), n: n, channels: channels, inner: i,
                            into: host(y))
    }
    public func channelCombine(_ g: Tensor, _ x: Tensor, gScale: Tensor, xScale: Tensor, shift: Tensor, n: Int, channels: Int, inner i: Int,
                               into y: Tensor) {
        inner.channelCombine(host(g), host(x), gScale: host(gScale), xScale: host(xScale), shift: host(shift), n: n, channels: channels,
                             inner: i, into: host(y))
    }
    public func channelGradSums(x: Tensor, mean: Tensor, gradOutput: Tensor, n: Int, channels: Int, inner i: Int,
                                sumGrad: Tensor, sumGradXmu: Tensor) {
        inner.channelGradSums(x: host(x), mean: host(mean), gradOutput: host(gradOutput), n: n, channels: channels, inner: i,
                              sumGrad: host(sumGrad), sumGradXmu: host(sumGradXmu))
    }
    public func runsConvolution(operands dtype: DType) -> Bool { inner.runsConvolution(operands: dtype) }
    public func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor?, geometry: ConvGeometry, into y: Tensor) {
        inner.conv2d(host(x), weight: host(weight), bias: host(bias), geometry: geometry, into: host(y))
    }
    public func conv2dBackward(x: Tensor, weight: Tensor, gradOutput: Tensor, geometry: ConvGeometry,
                               gradInput: Tensor?, gradWeight: Tensor?, gradBias: Tensor?) {
        inner.conv2dBackward(x: host(x), weight: host(weight), gradOutput: host(gradOutput), geometry: geometry,
                             gradInput: host(gradInput), gradWeight: host(gradWeight), gradBias: host(gradBias))
    }
    public func maxPool2d(_ x: Tensor, geometry: PoolGeometry, into y: Tensor, indices: Tensor) {
        inner.maxPool2d(host(x), geometry: geometry, into: host(y), indices: host(indices))
    }
    public func maxPool2dBackward(gradOutput: Tensor, indices: Tensor, geometry: PoolGeometry, into gx: Tensor) {
        inner.maxPool2dBackward(gradOutput: host(gradOutput), indices: host(indices), geometry: geometry, into: host(gx))
    }
    public func gather(_ table: Tensor, indices: Tensor, into out: Tensor) throws {
        try inner.gather(host(table), indices: host(indices), into: host(out))
    }
    public func scatterAdd(_ src: Tensor, indices: Tensor, into grad: Tensor) {
        inner.scatterAdd(host(src), indices: host(indices), into: host(grad))
    }
    public func crossEntropy(logits: Tensor, targets: Tensor, rows: Int, classes: Int, ignoreIndex: Int32,
                             losses: Tensor, weights: Tensor, probabilities: Tensor) throws {
        try inner.crossEntropy(logits: host(logits), targets: host(targets), rows: rows, classes: classes, ignoreIndex: ignoreIndex,
                               losses: host(losses), weights: host(weights), probabilities: host(probabilities))
    }
    public func crossEntropyBackward(probabilities: Tensor, targets: Tensor, rows: Int, classes: Int, ignoreIndex: Int32,
                                     scale: Tensor, into gx: Tensor) {
        inner.crossEntropyBackward(probabilities: host(probabilities), targets: host(targets), rows: rows, classes: classes,
                                   ignoreIndex: ignoreIndex, scale: host(scale), into: host(gx))
    }
    public func dropoutMask(_ mask: Tensor, p: Float, seed: UInt64, counter: UInt64) {
        inner.dropoutMask(host(mask), p: p, seed: seed, counter: counter)
    }
    public func sgdStep(_ parameters: [SGDTensors], lr: Float, momentumFactor: Float, dampening: Float, weightDecay: Float,
                        nesterov: Bool) {
        inner.sgdStep(parameters.map { SGDTensors(param: host($0.param), grad: host($0.grad), momentum: host($0.momentum)) }, lr: lr,
                      momentumFactor: momentumFactor, dampening: dampening, weightDecay: weightDecay, nesterov: nesterov)
    }
    public func adamStep(_ parameters: [AdamTensors], lr: Float, beta1: Float, beta2: Float, eps: Float, weightDecay: Float,
                         decoupled: Bool, step: Int) {
        inner.adamStep(parameters.map { AdamTensors(param: host($0.param), grad: host($0.grad), m: host($0.m), v: host($0.v)) },
                       lr: lr, beta1: beta1, beta2: beta2, eps: eps, weightDecay: weightDecay, decoupled: decoupled, step: step)
    }
}

// The CPU's attention kernel too: a device whose kernels are the CPU's runs all of them.
extension IsolatedBackend: CausalAttentionKernels {
    public func runsCausalAttention(operands dtype: DType) -> Bool { inner.runsCausalAttention(operands: dtype) }
    public func causalAttention(qkv: Tensor, shape: AttentionShape, scale: Float, probs: Tensor, into y: Tensor) {
        inner.causalAttention(qkv: host(qkv), shape: shape, scale: scale, probs: host(probs), into: host(y))
    }
    public func causalAttentionBackward(qkv: Tensor, probs: Tensor, gradOutput: Tensor, shape: AttentionShape, scale: Float,
                                        into gqkv: Tensor) {
        inner.causalAttentionBackward(qkv: host(qkv), probs: host(probs), gradOutput: host(gradOutput), shape: shape,
                                      scale: scale, into: host(gqkv))
    }
}
