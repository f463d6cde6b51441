import LoomCore

/// A matrix product as the time model prices it: `batch` products of [m, k] x [k, n].
public struct GEMMShape: Hashable, Sendable, CustomStringConvertible {
    public var m: Int, n: Int, k: Int, batch: Int
    public init(m: Int, n: Int, k: Int, batch: Int = 1) { self.m = m; self.n = n; self.k = k; self.batch = batch }
    public var flops: Double { 2 * Double(m) * Double(n) * Double(k) * Double(batch) }
    /// The two products of its backward: dA [m, k] = dC [m, n] Bᵀ, dB [k, n] = Aᵀ dC.
    public var backward: [GEMMShape] { [GEMMShape(m: m, n: k, k: n, batch: batch), GEMMShape(m: k, n: n, k: m, batch: batch)] }
    public var description: String { batch == 1 ? "\(m)x\(n)x\(k)" : "\(batch)x(\(m)x\(n)x\(k))" }
}

/// A kernel the time model prices from this machine's timings (`loom plan --calibrate`
/// runs each on the sizes the model uses), or by its bytes where none were taken.
public enum KernelKind: String, CaseIterable, Sendable {
    case layerNorm = "layer_norm", gelu, add, relu, batchNorm = "batch_norm", crossEntropy = "cross_entropy", maxPool = "max_pool"

    /// Bytes one element moves, forward (backward about twice): reads and writes of float32.
    var bytesPerElement: Double {
        switch self {
        case .layerNorm, .batchNorm: return 12
        case .gelu, .relu: return 8
        case .add: return 12
        case .crossEntropy: return 12
        case .maxPool: return 6
        }
    }
}

/// A kernel run on `elements` elements, rows of `inner` (layer norm's and cross-entropy's
/// row length, batch norm's spatial size; 1 for elementwise ones).
public struct KernelUse: Hashable, Sendable {
    public var kind: KernelKind
    public var elements: Int
    public var inner: Int
    public init(_ kind: KernelKind, elements: Int, inner: Int = 1) { self.kind = kind; self.elements = elements; self.inner = inner }
}

/// One causal self-attention: `batch` sequences of `length` tokens, `heads` heads of `headSize`.
public struct AttentionOp: Hashable, Sendable {
    public var batch: Int, heads: Int, length: Int, headSize: Int
    public init(batch: Int, heads: Int, length: Int, headSize: Int) {
        self.batch = batch; self.heads = heads; self.length = length; self.headSize = headSize
    }
}

/// One piece of a model (an embedding, a transformer block, a residual block, a head),
/// for one micro-batch on one rank: the figures the memory and time models add up.
///
/// Bytes are what Loom's ops hold, read from the ops themselves (LoomCore/Ops): an op's
/// recorded node keeps every input it read until its backward has run (`GradFn.inputs`),
/// so every tensor the forward makes and a later op reads stays alive until backward
/// reaches that op, plus what an op saves besides (attention's probabilities, layer norm's
/// statistics, cross-entropy's softmax, bf16 copies of GEMM operands).
public struct PieceCost: Sendable {
    public var name: String
    /// Parameter elements this rank holds of the piece (its tensor-parallel part).
    public var parameters = 0.0
    /// The piece's parameters as ZeRO-3 gathers them (elements, whole), and which unit
    /// they belong to: its own (a GPT's or a ResNet's block), or nil, the model's root
    /// unit (the embeddings and final norm; all of an MLP or CNN; a ResNet's stem and head).
    public var unitParameters = 0.0
    public var unit: Int?
    /// Bytes of activations kept from the piece's forward until its backward.
    public var kept = 0.0
    /// Bytes alive beyond `kept` at the worst moment of the piece's backward (gradients
    /// of activations in flight, scratch).
    public var backwardScratch = 0.0
    /// Bytes of the piece's output (what a pipeline stage sends on).
    public var output = 0.0
    /// Forward matrix products; backward runs each one's two (`GEMMShape.backward`).
    public var gemms: [GEMMShape] = []
    /// Attention's batched products, forward (backward: twice as many of the same size).
    public var attentionGEMMs: [GEMMShape] = []
    /// The fused causal attention op's shape, when the piece runs one (priced as a whole
    /// where the cluster timed it: its products, mask, softmax and scratch together).
    public var attention: AttentionOp?
    /// The forward's norms, activations, residual sums and losses (backward runs one each).
    public var kernels: [KernelUse] = []
    /// Bytes the forward's remaining traffic moves (bias rows, lookups, tensor-parallel
    /// copies); backward streams about twice this.
    public var streamed = 0.0
    /// Convolution FLOPs, forward (backward: twice).
    public var convolutionFlops = 0.0
    /// Ops the forward dispatches (each has a fixed cost on the host).
    public var ops = 0
    /// Payload bytes of the tensor-parallel all-reduces in the forward; backward has as
    /// many of the same size (Megatron's f and g).
    public var tensorAllReduces: [Double] = []
    /// Payload bytes of the all-reduces over the data-parallel group that forward and
    /// backward make together (synchronised batch norm: each layer's sums and sums of
    /// squares, then its two gradient sums).
    public var dataAllReduces: [Double] = []

    /// FLOPs of the forward's products and convolutions (backward: twice).
    public var forwardFlops: Double {
        let g: Double = gemms.reduce(0) { $0 + $1.flops }
        let a: Double = attentionGEMMs.reduce(0) { $0 + $1.flops }
        return g + a + convolutionFlops
    }
}
