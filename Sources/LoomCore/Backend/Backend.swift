/// The seam between tensors and hardware. A backend owns memory and runs kernels on
/// contiguous tensors it allocated; shape checking, broadcasting rules and autodiff
/// live above it, in `Ops/`, so a new backend implements arithmetic and nothing else.
///
/// `CPUBackend` is the reference: every other backend is tested against it.
/// All calls write into tensors the caller allocated (`into:`), which may alias an input
/// only where a method says so.
public protocol Backend: AnyObject, Sendable {
    var device: Device { get }
    var name: String { get }

    // MARK: Memory
    /// A block of at least `bytes` bytes. Throws (naming the bytes and the device) when
    /// the device is out of memory.
    func allocate(bytes: Int) throws -> Storage
    /// Host bytes into the tensor's view (exactly its byte count).
    func upload(_ source: UnsafeRawBufferPointer, to tensor: Tensor)
    /// The tensor's view into host bytes (exactly its byte count).
    func download(_ tensor: Tensor, into destination: UnsafeMutableRawBufferPointer)
    /// Every element set to `value` (converted to the tensor's dtype).
    func fill(_ tensor: Tensor, value: Float)
    /// dst = src (same element count and dtype; any shapes).
    func copy(_ source: Tensor, into destination: Tensor)
    /// y = x converted between floating-point dtypes (float32, bfloat16, float16), same
    /// element count: narrowing rounds to nearest even, NaN and infinities are kept.
    func cast(_ x: Tensor, into y: Tensor)
    /// `cast(x, into: y)` and, for x viewed as [rows, cols], the column sums of x into
    /// `columnSums` [cols]: a linear layer's dY under bf16 precision, its products' operand
    /// and its bias gradient. The default casts and reduces; the CPU reads x once for both
    /// (its sums in another order than `reduce`'s: equal to float32 rounding).
    func cast(_ x: Tensor, into y: Tensor, summingColumns columnSums: Tensor, rows: Int, cols: Int)
    /// Waits for queued work (a no-op on the CPU).
    func synchronize()
    /// Throws what queued work found wrong with its input (on a GPU, an index outside an
    /// embedding table or a target outside the classes, checked on the device without
    /// stopping the host), once the host has waited for that work; the step calls it after
    /// its loss is read. The CPU checks at the call and has nothing to add.
    func deferredErrors() throws
    /// The end of a training step: a lazy backend (XLA) compiles and starts what the step
    /// recorded, and returns without waiting for it (PyTorch/XLA's `mark_step`), so that
    /// the host records the next step while this one runs. Backends that run each call as
    /// it comes have nothing to do.
    func endStep() throws

    // MARK: Elementwise
    /// y = op(x). May alias.
    func unary(_ op: UnaryOp, _ x: Tensor, into y: Tensor)
    /// y = op(x) rounded to bf16 (x float32, y bfloat16): an activation that only bf16
    /// products read, written once where it is made. The default writes float32 and casts.
    func unaryRoundingToBF16(_ op: UnaryOp, _ x: Tensor, into y: Tensor)
    /// gx = gy * op'(x), from `x` or the saved output `y` (whichever the op needs).
    func unaryBackward(_ op: UnaryOp, x: Tensor, y: Tensor, gradOutput: Tensor, into gx: Tensor)
    /// gx = gy * op'(x) rounded to bf16 (gx bfloat16), and, where `sums`, for gx viewed as
    /// [rows, cols], the column sums of its float32 values: the gradient of a linear layer's
    /// output that only its bf16 products and its bias gradient read. For an op whose
    /// gradient reads x alone (GELU, ReLU). The default computes float32, then
    /// `cast(_:into:summingColumns:)`.
    func unaryBackward(_ op: UnaryOp, x: Tensor, gradOutput: Tensor, roundingInto gx: Tensor, summingColumns sums: Tensor?,
                       rows: Int, cols: Int)
    /// out = a op b, with a and b broadcast to out's shape (numpy rules; the caller has
    /// checked them). May alias `a` when a has out's shape.
    func binary(_ op: BinaryOp, _ a: Tensor, _ b: Tensor, into out: Tensor)
    /// y = x op s.
    func scalar(_ op: ScalarOp, _ x: Tensor, _ s: Float, into y: Tensor)

    // MARK: Reductions
    /// Reduces x viewed as [outer, n, inner] over the middle axis into y [outer, inner].
    func reduce(_ op: ReduceOp, _ x: Tensor, outer: Int, n: Int, inner: Int, into y: Tensor)
    /// Index (int32) of the maximum over the middle axis of [outer, n, inner].
    func argmax(_ x: Tensor, outer: Int, n: Int, inner: Int, into indices: Tensor)
    /// y[o, c] = x[o, index[o, c], c] for x viewed as [outer, n, inner] and int32
    /// indices [outer, inner]; an index outside 0..<n reads 0 (PyTorch's gather along
    /// one axis, with out-of-range entries masked).
    func gatherAlongAxis(_ x: Tensor, indices: Tensor, outer: Int, n: Int, inner: Int, into y: Tensor)
    /// y[o, index[o, c], c] += src[o, c] (scatter-add along one axis; out-of-range
    /// indices are skipped). The adjoint of `gatherAlongAxis`.
    func scatterAlongAxis(_ src: Tensor, indices: Tensor, outer: Int, n: Int, inner: Int, into y: Tensor)
    /// For int32 indices and a range of rows one rank holds: local = index - lower inside
    /// the range, else 0 (int32); mask = 1 inside, else 0 (float32). Vocabulary-parallel
    /// embedding and cross-entropy.
    func localIndices(_ indices: Tensor, range: Range<Int>, local: Tensor, mask: Tensor)
    /// Sum of squares of all elements of each tensor, as one host scalar (gradient norms).
    func sumOfSquares(_ tensors: [Tensor]) -> Double

    // MARK: Linear algebra
    /// C[i] = alpha * op(A[i]) op(B[i]) + beta * C[i] for i in 0..<batch, row-major,
    /// op(A) [m, k], op(B) [k, n]. Operands carry their offset, leading dimension and
    /// batch stride, so heads inside a fused [B, T, 3C] buffer are addressed in place.
    /// A and B are both float32, or both bfloat16 (products accumulated in float32); C is
    /// float32.
    func gemm(_ a: GEMMOperand, _ b: GEMMOperand, _ c: GEMMOperand, m: Int, n: Int, k: Int, batch: Int,
              alpha: Float, beta: Float)
    /// C = alpha · op(A) · op(B) + bias, the bias [n] added to every row of C, whose values
    /// before are not read: a linear layer's forward (one matrix, C contiguous [m, n]). The
    /// default writes the bias into C and runs `gemm` with beta 1; the CPU's bf16 kernel adds
    /// it as it stores C (the same float32 values: alpha · acc + bias rounds once either way).
    func gemm(_ a: GEMMOperand, _ b: GEMMOperand, _ c: GEMMOperand, m: Int, n: Int, k: Int, alpha: Float,
              addingToEachRow bias: Tensor) throws

    // MARK: Layout
    /// y = x permuted: y's axis i is x's axis perm[i].
    func permute(_ x: Tensor, perm: [Int], into y: Tensor)
    /// Copies `rows` blocks of `width` elements: dst[r*dstStride + dstOffset + j] = src[r*srcStride + srcOffset + j].
    /// Slicing and concatenation along any axis reduce to this.
    func copyBlocks(_ src: Tensor, srcOffset: Int, srcStride: Int, into dst: Tensor, dstOffset: Int, dstStride: Int,
                    rows: Int, width: Int, accumulate: Bool)

    // MARK: Neural-network kernels
    /// Softmax (or log-softmax) over the last axis of x viewed as [rows, cols].
    func softmax(_ x: Tensor, rows: Int, cols: Int, log: Bool, into y: Tensor)
    func softmaxBackward(y: Tensor, gradOutput: Tensor, rows: Int, cols: Int, log: Bool, into gx: Tensor)
    /// Entries j > i of each [rows, cols] matrix (last two axes) set to `value` (causal
    /// masking). In place.
    func maskUpperTriangle(_ x: Tensor, rows: Int, cols: Int, value: Float)
    /// Layer norm over the last axis: y = (x - mean) * rstd * gamma + beta; saves mean, rstd [rows].
    func layerNorm(_ x: Tensor, gamma: Tensor, beta: Tensor, eps: Float, rows: Int, cols: Int,
                   into y: Tensor, mean: Tensor, rstd: Tensor)
    func layerNormBackward(x: Tensor, gamma: Tensor, mean: Tensor, rstd: Tensor, gradOutput: Tensor,
                           rows: Int, cols: Int, gradInput: Tensor, gradGamma: Tensor, gradBeta: Tensor)
    /// Per-channel statistics of x viewed as [n, channels, inner]: mean and biased variance.
    func channelMoments(_ x: Tensor, n: Int, channels: Int, inner: Int, mean: Tensor, variance: Tensor)
    /// y = (x - mean[c]) * scale[c] + shift[c] over [n, channels, inner].
    func channelAffine(_ x: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, n: Int, channels: Int, inner: Int, into y: Tensor)
    /// y = gScale[c] * g + xScale[c] * x + shift[c] over [n, C, inner], in one pass (batch
    /// norm's input gradient). May write into g's storage.
    func channelCombine(_ g: Tensor, _ x: Tensor, gScale: Tensor, xScale: Tensor, shift: Tensor, n: Int, channels: Int, inner: Int,
                        into y: Tensor)
    /// Sums over [n, ., inner] per channel: sum(gy) and sum(gy * (x - mean)).
    func channelGradSums(x: Tensor, mean: Tensor, gradOutput: Tensor, n: Int, channels: Int, inner: Int,
                         sumGrad: Tensor, sumGradXmu: Tensor)
    /// Whether conv2d takes x, the weights (and in backward dY) in `dtype`: float32 always;
    /// bf16 where the backend multiplies bf16 (`--precision bf16`; outputs stay float32).
    func runsConvolution(operands dtype: DType) -> Bool
    /// y [N, OC, OH, OW] = x [N, C, H, W] ⋆ weight [OC, C, KH, KW] + bias [OC].
    func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor?, geometry: ConvGeometry, into y: Tensor)
    /// Gradients of conv2d; each output is optional (nil: not needed) and overwritten.
    func conv2dBackward(x: Tensor, weight: Tensor, gradOutput: Tensor, geometry: ConvGeometry,
                        gradInput: Tensor?, gradWeight: Tensor?, gradBias: Tensor?)
    /// Max pooling over NCHW; saves the argmax offset (in its input plane) of each output (int32).
    func maxPool2d(_ x: Tensor, geometry: PoolGeometry, into y: Tensor, indices: Tensor)
    func maxPool2dBackward(gradOutput: Tensor, indices: Tensor, geometry: PoolGeometry, into gx: Tensor)
    /// out[i, :] = table[index[i], :] (embedding lookup). Throws on an out-of-range index.
    func gather(_ table: Tensor, indices: Tensor, into out: Tensor) throws
    /// grad[index[i], :] += src[i, :] (embedding backward).
    func scatterAdd(_ src: Tensor, indices: Tensor, into grad: Tensor)
    /// Fused log-softmax + negative log likelihood per row over [rows, classes];
    /// rows whose target is `ignoreIndex` give loss 0 and weight 0, others weight 1.
    /// Writes per-row losses and weights and the probabilities (for backward).
    func crossEntropy(logits: Tensor, targets: Tensor, rows: Int, classes: Int, ignoreIndex: Int32,
                      losses: Tensor, weights: Tensor, probabilities: Tensor) throws
    /// gx = (probabilities - onehot(target)) * scale[0], zero on ignored rows. `scale` is
    /// a one-element tensor on this backend (the loss gradient times 1/counted rows), so
    /// backward needs no value on the host.
    func crossEntropyBackward(probabilities: Tensor, targets: Tensor, rows: Int, classes: Int, ignoreIndex: Int32,
                              scale: Tensor, into gx: Tensor)
    /// Dropout mask values {0, 1/(1-p)} from a counter-based stream (the same on every backend).
    func dropoutMask(_ mask: Tensor, p: Float, seed: UInt64, counter: UInt64)

    // MARK: Optimizers (in place on parameters and state)
    /// One SGD update of every listed parameter (PyTorch's formulas), as few launches as
    /// the device allows: the multi-tensor step of PyTorch's fused optimizers.
    func sgdStep(_ parameters: [SGDTensors], lr: Float, momentumFactor: Float, dampening: Float, weightDecay: Float,
                 nesterov: Bool)
    /// One Adam/AdamW update of every listed parameter; `step` counts from 1.
    func adamStep(_ parameters: [AdamTensors], lr: Float, beta1: Float, beta2: Float, eps: Float, weightDecay: Float,
                  decoupled: Bool, step: Int)
}

/// A parameter, its gradient and its momentum buffer (nil without momentum), float32,
/// all the same shape.
public struct SGDTensors {
    public var param: Tensor, grad: Tensor, momentum: Tensor?
    public init(param: Tensor, grad: Tensor, momentum: Tensor?) { self.param = param; self.grad = grad; self.momentum = momentum }
}

/// A parameter, its gradient and Adam's two moments, float32, all the same shape.
public struct AdamTensors {
    public var param: Tensor, grad: Tensor, m: Tensor, v: Tensor
    public init(param: Tensor, grad: Tensor, m: Tensor, v: Tensor) { self.param = param; self.grad = grad; self.m = m; self.v = v }
}

/// A backend that counts the matrix-product work it issues (2mnk per GEMM), for
/// `loom bench`'s GFLOP/s.
public protocol GEMMCounting: AnyObject {
    /// FLOPs issued by GEMMs since the last `resetCounters()`.
    var gemmFlops: Double { get }
    func resetCounters()
}

public enum UnaryOp: String, Sendable, CaseIterable {
    case neg, exp, log, tanh, relu, gelu, sqrt, sigmoid, square, reciprocal
}

public enum BinaryOp: String, Sendable {
    case add, sub, mul, div
}

public enum ScalarOp: String, Sendable, CaseIterable {
    /// x + s, x * s, x^s, max(x, s)
    case add, mul, pow, maximum
}

public enum ReduceOp: String, Sendable {
    case sum, max
}

/// The geometry of a 2-D convolution over NCHW input with an [OC, C, KH, KW] kernel.
public struct ConvGeometry: Equatable, Sendable {
    public var batch, channels, height, width: Int
    public var kernelH, kernelW, stride, padding: Int
    public var outH: Int { (height + 2 * padding - kernelH) / stride + 1 }
    public var outW: Int { (width + 2 * padding - kernelW) / stride + 1 }
    public var patch: Int { channels * kernelH * kernelW }
    public var positions: Int { batch * outH * outW }

    public init(batch: Int, channels: Int, height: Int, width: Int, kernelH: Int, kernelW: Int, stride: Int, padding: Int) {
        self.batch = batch; self.channels = channels; self.height = height; self.width = width
        self.kernelH = kernelH; self.kernelW = kernelW; self.stride = stride; self.padding = padding
    }
}

/// The geometry of 2-D max pooling over NCHW input; padded positions never win.
public struct PoolGeometry: Equatable, Sendable {
    public var batch, channels, height, width: Int
    public var kernel, stride: Int
    public var padding: Int
    public var outH: Int { (height + 2 * padding - kernel) / stride + 1 }
    public var outW: Int { (width + 2 * padding - kernel) / stride + 1 }

    public init(batch: Int, channels: Int, height: Int, width: Int, kernel: Int, stride: Int, padding: Int = 0) {
        self.batch = batch; self.channels = channels; self.height = height; self.width = width
        self.kernel = kernel; self.stride = stride; self.padding = padding
    }
}

/// One operand of a (batched) GEMM: a matrix inside a tensor's storage.
public struct GEMMOperand {
    public var tensor: Tensor
    /// Elements from the tensor's first element to the first matrix.
    public var offset: Int
    /// Leading dimension (row stride) of the stored, untransposed matrix.
    public var ld: Int
    /// Elements between consecutive matrices of the batch (0: shared).
    public var batchStride: Int
    public var transposed: Bool

    public init(_ tensor: Tensor, offset: Int = 0, ld: Int, batchStride: Int = 0, transposed: Bool = false) {
        self.tensor = tensor; self.offset = offset; self.ld = ld; self.batchStride = batchStride; self.transposed = transposed
    }
}

extension Backend {
    public func deferredErrors() throws {}
    public func endStep() throws {}
    public func cast(_ x: Tensor, into y: Tensor, summingColumns columnSums: Tensor, rows: Int, cols: Int) {
        cast(x, into: y)
        reduce(.sum, x, outer: 1, n: rows, inner: cols, into: columnSums)
    }
    public func unaryBackward(_ op: UnaryOp, x: Tensor, gradOutput: Tensor, roundingInto gx: Tensor, summingColumns sums: Tensor?,
                              rows: Int, cols: Int) {
        precondition(op == .gelu || op == .relu, "\(op.rawValue) backward rounded to bf16: its gradient reads its output")
        do {
            let wide = try x.empty()
            unaryBackward(op, x: x, y: x, gradOutput: gradOutput, into: wide)  // (y is not read for these)
            if let sums { cast(wide, into: gx, summingColumns: sums, rows: rows, cols: cols) } else { cast(wide, into: gx) }
        } catch { fatalError("\(op.rawValue) backward rounded to bf16: \(error)") }
    }
    public func unaryRoundingToBF16(_ op: UnaryOp, _ x: Tensor, into y: Tensor) {
        do {
            let wide = try x.empty()
            unary(op, x, into: wide)
            cast(wide, into: y)
        } catch { fatalError("\(op.rawValue) rounded to bf16: \(error)") }
    }
    public func gemm(_ a: GEMMOperand, _ b: GEMMOperand, _ c: GEMMOperand, m: Int, n: Int, k: Int, alpha: Float,
                     addingToEachRow bias: Tensor) throws {
        try gemmAfterWritingBias(a, b, c, m: m, n: n, k: k, alpha: alpha, bias: bias)
    }

    /// `gemm(addingToEachRow:)` in two passes: the bias broadcast into C, then a GEMM onto it.
    public func gemmAfterWritingBias(_ a: GEMMOperand, _ b: GEMMOperand, _ c: GEMMOperand, m: Int, n: Int, k: Int, alpha: Float,
                                     bias: Tensor) throws {
        precondition(c.ld == n && c.offset == 0 && c.tensor.count == m * n, "gemm adding a bias: C must be a whole [\(m), \(n)] tensor")
        binary(.add, try Tensor.zeros([1], on: self), bias, into: c.tensor.view([m, n]))
        gemm(a, b, c, m: m, n: n, k: k, batch: 1, alpha: alpha, beta: 1)
    }
    public func runsConvolution(operands dtype: DType) -> Bool { dtype == .float32 }
}
