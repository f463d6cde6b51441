import LoomCore
import LoomNN

/// A model as the planner prices it: its pieces in forward order, each for one
/// micro-batch of `b` examples on one rank of a tensor-parallel group of `tp`
/// (`PieceCost`). GPTs are cut into pipeline stages by blocks, as `GPT.balancedSplit`
/// cuts them; the image models are planned whole on each rank (data parallelism).
///
/// Sizes in elements below: N = b·T tokens, C = d_model, H heads, V vocabulary, t = tp.
public struct ModelCosts: Sendable {
    public let spec: ModelSpec
    public let input: ModelInput
    public let precision: Precision

    /// A GPT's blocks per piece as `GPT.balancedSplit` cuts them, by piece count (those it
    /// can cut), made once: the search asks for the same few splits thousands of times.
    let balancedSplits: [Int: [Int]]

    public init(spec: ModelSpec, input: ModelInput, precision: Precision = .float32) {
        self.spec = spec; self.input = input; self.precision = precision
        var splits: [Int: [Int]] = [:]
        if case let .tokens(vocabulary) = input, let g = spec.gptConfig(vocabularySize: vocabulary) {
            for pieces in 1...(g.layers + 2) { splits[pieces] = try? GPT.balancedSplit(g, pieces: pieces) }
        }
        balancedSplits = splits
    }

    /// Bytes per element of activations and parameters (Loom keeps both in float32; bf16
    /// adds bf16 copies of GEMM operands, `operandCopy`).
    static let f = 4.0
    /// Bytes of a bf16 operand copy a GEMM saves for backward (0 in float32).
    var operandCopy: Double { precision == .bfloat16 ? 2 : 0 }

    /// Whether a pipeline can cut the model (GPT blocks).
    public var pipelines: Bool { if case .gpt = spec { return true } else { return false } }
    /// Whether tensor parallelism splits the model (GPT heads, MLP columns, vocabulary).
    public var tensorParallel: Bool { pipelines }

    /// The GPT the spec describes, when it is one.
    public var gpt: GPTConfig? {
        guard case let .tokens(vocabulary) = input else { return nil }
        return spec.gptConfig(vocabularySize: vocabulary)
    }

    /// Every piece in forward order (a GPT's embedding, its blocks, its head).
    public func pieces(tp: Int, microBatch b: Int) -> [PieceCost] {
        switch spec {
        case .gpt: return gptPieces(gpt!, tp: tp, b: b)
        case let .resnet(depth, width): return resNetPieces(depth: depth, width: width, b: b)
        case let .mlp(hidden): return mlpPieces(hidden: hidden, b: b)
        case let .cnn(residual): return cnnPieces(residual: residual, b: b)
        }
    }

    /// The pieces of each of `pp` stages (a GPT's embedding on the first, its head on the
    /// last, blocks as `GPT.balancedSplit` cuts them; `split` overrides).
    public func stages(pp: Int, tp: Int, microBatch b: Int, split: [Int]? = nil) throws -> [[PieceCost]] {
        let all = pieces(tp: tp, microBatch: b)
        guard pp > 1, let g = gpt else { return [all] }
        let counts = try split ?? balancedSplits[pp] ?? GPT.balancedSplit(g, pieces: pp)
        var stages: [[PieceCost]] = [], next = 1
        for (i, n) in counts.enumerated() {
            var s = Array(all[next..<(next + n)])
            next += n
            if i == 0 { s.insert(all[0], at: 0) }
            if i == pp - 1 { s.append(all[all.count - 1]) }
            stages.append(s)
        }
        return stages
    }

    // MARK: GPT

    func gptPieces(_ g: GPTConfig, tp t: Int, b: Int) -> [PieceCost] {
        let T = Double(g.contextLength), C = Double(g.dModel), V = Double(g.vocabSize), H = Double(g.heads), td = Double(t)
        let N = Double(b) * T, NC = N * C, f = ModelCosts.f, cp = operandCopy
        let n = b * g.contextLength, c = g.dModel
        // Embedding: token lookup [N, C] (+ under TP the masked partial and its all-reduced
        // copy, local indices and mask), position lookup [T, C], their sum x0 [N, C].
        var emb = PieceCost(name: "embedding")
        emb.parameters = V * C / td + T * C
        emb.unitParameters = V * C + T * C  // the root unit (with the final norm)
        emb.kept = f * ((t == 1 ? 1 : 3) * NC + T * C + NC) + (t == 1 ? 0 : 2 * f * N)
        emb.output = f * NC
        emb.streamed = f * ((t == 1 ? 2 : 6) * NC)
        emb.kernels = [KernelUse(.add, elements: n * c)]
        emb.ops = t == 1 ? 3 : 6
        emb.tensorAllReduces = t == 1 ? [] : [f * NC]
        emb.backwardScratch = f * 2 * NC

        // Block: ln1 [N, C] (+ mean, rstd [N]), qkv [N, 3C/t], probabilities [b, H/t, T, T],
        // attention output [N, C/t], projection [N, C] (under TP: partial, reduced, +bias:
        // 3 of them), residual sum h, ln2, fc [N, 4C/t], GELU [N, 4C/t], projection again,
        // residual sum (the block's output).
        let row = t == 1 ? 1.0 : 3.0
        let probs = Double(b) * H / td * T * T
        var block = PieceCost(name: "block")
        block.parameters = 4 * C + 2 * C + (3 * C * C + 3 * C + C * C + 4 * C * C + 4 * C + 4 * C * C) / td
        block.unitParameters = 12 * C * C + 13 * C
        block.kept = f * (NC + 2 * N + 3 * NC / td + probs + NC / td + row * NC + NC + NC + 2 * N + 4 * NC / td + 4 * NC / td + row * NC + NC)
            + cp * (NC + 3 * C * C / td + 3 * NC / td + probs + NC / td + C * C / td + NC + 4 * C * C / td + 4 * NC / td + 4 * C * C / td)
        block.output = f * NC
        block.gemms = [GEMMShape(m: n, n: 3 * c / t, k: c), GEMMShape(m: n, n: c, k: c / t),
                       GEMMShape(m: n, n: 4 * c / t, k: c), GEMMShape(m: n, n: c, k: 4 * c / t)]
        let heads = b * g.heads / t, d = c / g.heads, T_ = g.contextLength
        block.attentionGEMMs = [GEMMShape(m: T_, n: T_, k: d, batch: heads), GEMMShape(m: T_, n: d, k: T_, batch: heads)]
        block.attention = AttentionOp(batch: b, heads: g.heads / t, length: T_, headSize: d)
        // Two layer norms, GELU, two residual sums; bias rows written under four products
        // and TP's copies streamed (attention's softmax is in its own timing).
        block.kernels = [KernelUse(.layerNorm, elements: n * c, inner: c), KernelUse(.add, elements: n * c),
                         KernelUse(.layerNorm, elements: n * c, inner: c), KernelUse(.gelu, elements: n * 4 * c / t), KernelUse(.add, elements: n * c)]
        // Dropout (p > 0) after the attention and after the MLP: each a float32 mask and the
        // masked output, kept by the product that makes it.
        if g.dropout > 0 {
            block.kept += f * 4 * NC
            block.kernels += [KernelUse(.add, elements: n * c), KernelUse(.add, elements: n * c)]  // mask and product, priced as sums
        }
        block.streamed = f * (2 * (3 * NC / td + NC + 4 * NC / td + NC) + (t == 1 ? 0 : 4 * NC))
        block.ops = t == 1 ? 11 : 15
        block.tensorAllReduces = t == 1 ? [] : [f * NC, f * NC]
        // Backward's worst moment: attention's (residual gradient, dY, dqkv, a probabilities-
        // sized scratch) or the MLP's (residual gradient, dGELU, dfc).
        block.backwardScratch = f * max(NC + NC / td + 3 * NC / td + probs, NC + 8 * NC / td)

        // Head: final layer norm [N, C], logits [N, V/t] against the tied table, the
        // softmax cross-entropy saves [N, V/t] (TP: shifted logits and exponentials).
        var head = PieceCost(name: "head")
        head.parameters = 2 * C + V * C / td
        head.unitParameters = 2 * C
        head.kept = f * (NC + 2 * N + N * V / td + (t == 1 ? 1 : 2) * N * V / td + 4 * N) + cp * (NC + V * C / td)
        head.gemms = [GEMMShape(m: n, n: g.vocabSize / t, k: c)]
        head.kernels = [KernelUse(.layerNorm, elements: n * c, inner: c), KernelUse(.crossEntropy, elements: n * g.vocabSize / t, inner: g.vocabSize / t)]
        head.streamed = t == 1 ? 0 : f * 4 * N * V / td
        head.ops = t == 1 ? 8 : 20
        head.tensorAllReduces = t == 1 ? [] : [f * NC]
        head.backwardScratch = f * (N * V / td + 2 * NC)
        return [emb] + Array(repeating: block, count: g.layers).enumerated().map { i, p in
            var q = p; q.name = "block \(i)"; q.unit = i; return q
        } + [head]
    }

    /// What Megatron-LM stores for backward in one transformer layer, in bytes, 16-bit
    /// activations, no recomputation, no tensor parallelism (Korthikanti et al. 2022,
    /// "Reducing Activation Recomputation in Large Transformer Models", section 4.1), as
    /// an inventory: s tokens per sequence, b sequences, h hidden, a heads. Sums to
    /// s·b·h·(34 + 5·a·s/h); `gptPieces` is Loom's own inventory of the same layer.
    public static func megatronLayerActivations(s: Int, b: Int, h: Int, a: Int) -> [(String, Double)] {
        let sbh = Double(s * b * h), as2b = Double(a * s * s * b)
        return [
            ("layer norm 1 input", 2 * sbh),
            ("QKV projection input", 2 * sbh),
            ("Q and K for QKᵀ", 4 * sbh),
            ("softmax output", 2 * as2b),
            ("attention dropout mask (1 byte)", as2b),
            ("attention dropout output (for ×V)", 2 * as2b),
            ("V", 2 * sbh),
            ("output projection input", 2 * sbh),
            ("attention dropout mask after the projection (1 byte)", sbh),
            ("layer norm 2 input", 2 * sbh),
            ("MLP first linear input", 2 * sbh),
            ("GELU input", 8 * sbh),
            ("MLP second linear input (GELU output)", 8 * sbh),
            ("MLP dropout mask (1 byte)", sbh),
        ]
    }

    // MARK: image models

    /// [C, H, W] and classes of the input (flat rows: [features, 1, 1]).
    var image: (c: Int, h: Int, w: Int, classes: Int) {
        guard case let .images(shape, classes) = input else { return (1, 28, 28, 10) }
        if shape.count == 3 { return (shape[0], shape[1], shape[2], classes) }
        return (shape.reduce(1, *), 1, 1, classes)
    }

    /// A convolution's piece: output [b, oc, oh, ow], then `then` kernels on it (batch
    /// norm, ReLU, a residual sum), each keeping a tensor of that size.
    func conv(_ name: String, b: Int, ic: Int, oc: Int, kernel: Int, oh: Int, ow: Int, then: [KernelKind]) -> PieceCost {
        let after = Double(then.count)
        let out = Double(b * oc * oh * ow), f = ModelCosts.f
        var p = PieceCost(name: name)
        p.parameters = Double(oc * ic * kernel * kernel)
        p.unitParameters = p.parameters
        p.kept = f * out * (1 + after)
        p.output = f * out
        p.convolutionFlops = 2 * out * Double(ic * kernel * kernel)
        p.kernels = then.map { KernelUse($0, elements: b * oc * oh * ow, inner: $0 == .batchNorm ? oh * ow : 1) }
        // Synchronised batch norm (when data parallel): the channel means, then the squared
        // deviations, forward; the two gradient sums together, backward.
        for k in then where k == .batchNorm { p.dataAllReduces += [f * Double(oc), f * Double(oc), 2 * f * Double(oc)] }
        p.ops = 1 + then.count
        p.backwardScratch = f * out * 2
        return p
    }

    /// Fully connected layers `features` -> hidden... -> classes, a piece each (ReLU after
    /// all but the last), the last with the softmax cross-entropy.
    func dense(b: Int, features: Int, hidden: [Int], classes: Int, name: String = "head") -> [PieceCost] {
        let f = ModelCosts.f, sizes = [features] + hidden + [classes]
        return (0..<(sizes.count - 1)).map { i in
            let last = i == sizes.count - 2
            var p = PieceCost(name: sizes.count > 2 ? "\(name) \(i)" : name)
            p.parameters = Double(sizes[i] * sizes[i + 1] + sizes[i + 1])
            p.unitParameters = p.parameters
            p.gemms = [GEMMShape(m: b, n: sizes[i + 1], k: sizes[i])]
            p.kept = f * Double(b * sizes[i + 1]) * (last ? 1 : 2) + operandCopy * Double(b * sizes[i] + sizes[i] * sizes[i + 1])
            p.streamed = f * Double(b * sizes[i + 1]) * 2  // the bias rows, the bias gradient's sum
            p.output = f * Double(b * sizes[i + 1])
            p.ops = last ? 7 : 2
            // Backward's worst moment: the output's gradient and the input's, and the weight's.
            p.backwardScratch = f * (Double(b * (sizes[i] + sizes[i + 1])) + p.parameters)
            if last {
                p.kept += f * Double(2 * b * classes + 2 * b)  // softmax probabilities, losses, weights
                p.kernels = [KernelUse(.crossEntropy, elements: b * classes, inner: classes)]
            } else {
                p.kernels = [KernelUse(.relu, elements: b * sizes[i + 1])]
            }
            return p
        }
    }

    func resNetPieces(depth: Int, width: Int, b: Int) -> [PieceCost] {
        let (c, h0, w0, classes) = image
        let imagenet = depth == 18 || depth == 34
        let w = width > 0 ? width : (imagenet ? 64 : 16)
        var pieces: [PieceCost] = []
        var h = h0, wd = w0
        if imagenet {
            h = (h + 1) / 2; wd = (wd + 1) / 2
            var stem = conv("stem", b: b, ic: c, oc: w, kernel: 7, oh: h, ow: wd, then: [.batchNorm, .relu])
            h = (h + 1) / 2; wd = (wd + 1) / 2
            stem.kept += ModelCosts.f * Double(b * w * h * wd) * 2  // max pool output and its int32 indices
            stem.kernels.append(KernelUse(.maxPool, elements: b * w * h * wd))
            pieces.append(stem)
        } else {
            pieces.append(conv("stem", b: b, ic: c, oc: w, kernel: 3, oh: h, ow: wd, then: [.batchNorm, .relu]))
        }
        let counts = imagenet ? (depth == 18 ? [2, 2, 2, 2] : [3, 4, 6, 3]) : Array(repeating: (depth - 2) / 6, count: 3)
        var inC = w
        for (s, n) in counts.enumerated() {
            let outC = w << s
            for i in 0..<n {
                let stride = s > 0 && i == 0 ? 2 : 1
                if stride == 2 { h = (h + 1) / 2; wd = (wd + 1) / 2 }
                // conv1, bn1, relu, conv2, bn2, (downsample conv, bn), sum, relu.
                var block = conv("block \(pieces.count - 1)", b: b, ic: inC, oc: outC, kernel: 3, oh: h, ow: wd, then: [.batchNorm, .relu])
                block.absorb(conv("", b: b, ic: outC, oc: outC, kernel: 3, oh: h, ow: wd, then: [.batchNorm, .add, .relu]))
                block.parameters += 4 * Double(outC)
                if inC != outC || stride != 1 {
                    block.absorb(conv("", b: b, ic: inC, oc: outC, kernel: 1, oh: h, ow: wd, then: [.batchNorm]))
                    block.parameters += 2 * Double(outC)
                }
                block.unitParameters = block.parameters
                block.unit = pieces.count
                block.backwardScratch = ModelCosts.f * Double(b * outC * h * wd) * 3
                pieces.append(block)
                inC = outC
            }
        }
        pieces[0].parameters += 2 * Double(w)
        var top = dense(b: b, features: inC, hidden: [], classes: classes)
        top[0].kept += ModelCosts.f * Double(b * inC)  // the pooled features
        pieces += top
        return pieces
    }

    func mlpPieces(hidden: [Int], b: Int) -> [PieceCost] {
        let (c, h, w, classes) = image
        return dense(b: b, features: c * h * w, hidden: hidden, classes: classes, name: "layer")
    }

    func cnnPieces(residual: Bool, b: Int) -> [PieceCost] {
        let (c, h, w, classes) = image
        var first = conv("conv1", b: b, ic: c, oc: 16, kernel: 5, oh: h, ow: w, then: [.relu])
        first.kept += ModelCosts.f * Double(b * 16 * (h / 2) * (w / 2)) * 2  // pool output and indices
        first.kernels.append(KernelUse(.maxPool, elements: b * 16 * h * w))
        var second = conv("conv2", b: b, ic: 16, oc: 32, kernel: 5, oh: h / 2, ow: w / 2, then: [.relu])
        second.kept += ModelCosts.f * Double(b * 32 * (h / 4) * (w / 4)) * 2
        second.kernels.append(KernelUse(.maxPool, elements: b * 32 * (h / 2) * (w / 2)))
        first.parameters += 16; second.parameters += 32
        var pieces = [first, second]
        if residual {
            var r = conv("residual", b: b, ic: 32, oc: 32, kernel: 3, oh: h / 4, ow: w / 4, then: [.batchNorm, .relu])
            r.absorb(conv("", b: b, ic: 32, oc: 32, kernel: 3, oh: h / 4, ow: w / 4, then: [.batchNorm, .add, .relu]))
            r.parameters += 4 * 32 + 64
            pieces.append(r)
        }
        pieces += dense(b: b, features: 32 * (h / 4) * (w / 4), hidden: [128], classes: classes, name: "classifier")
        return pieces
    }
}

extension PieceCost {
    /// Adds `other`'s parameters, activations and work to this piece (a residual block's
    /// second convolution into its first).
    mutating func absorb(_ other: PieceCost) {
        parameters += other.parameters; kept += other.kept; convolutionFlops += other.convolutionFlops
        kernels += other.kernels; streamed += other.streamed; ops += other.ops; gemms += other.gemms
        dataAllReduces += other.dataAllReduces
    }
}
