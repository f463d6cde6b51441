import Foundation

/// The conformance suite: every op, forward and backward, on a backend against a
/// reference (`CPUBackend` with one thread) on random inputs, and multi-tensor SGD and
/// AdamW steps. Float32 cases must agree to a relative error of 1e-5 (max |a − b| /
/// max(1, max |reference|)); bf16 cases to 1e-4 (`OpCase.tolerance` says why).
///
/// The tests run it on the CPU backend with 4 threads, on CUDA under Loom's emulator, and
/// on a real GPU where there is one; `loom check --device cuda` runs it on a machine
/// without Swift (the GPU check does).
public enum BackendConformance {
    public struct OpCase {
        public let name: String
        public let inputs: [(shape: [Int], kind: InputKind)]
        /// Relative error allowed: 1e-5, or bf16's 1e-4. Products in bf16 read operands
        /// rounded to 8-bit mantissas; the backends' float32 values before that rounding
        /// may differ by an ulp (their exp and FMA contractions differ), which moves an
        /// operand's rounding by one bf16 step (2^-8 of it) now and then.
        public var tolerance: Float = 1e-5
        public let body: ([Tensor]) throws -> Tensor
    }

    public enum InputKind { case positive, indices(Int), parameter }

    public static let cases: [OpCase] = [
        OpCase(name: "add (broadcast)", inputs: [([64, 1025], .parameter), ([1025], .parameter)]) { try $0[0].add($0[1]) },
        OpCase(name: "mul", inputs: [([64, 1025], .parameter), ([64, 1025], .parameter)]) { try $0[0].mul($0[1]) },
        OpCase(name: "div", inputs: [([64, 1025], .parameter), ([64, 1025], .positive)]) { try $0[0].div($0[1]) },
        OpCase(name: "relu gelu tanh sigmoid", inputs: [([64, 1025], .parameter)]) { x in try x[0].relu().add(x[0].gelu()).add(x[0].tanh()).add(x[0].sigmoid()) },
        OpCase(name: "exp log sqrt", inputs: [([64, 1025], .positive)]) { x in try x[0].exp().add(x[0].log()).add(x[0].sqrt()) },
        OpCase(name: "sum and mean over axes", inputs: [([16, 65, 129], .parameter)]) { x in try x[0].sum(axes: [1]).add(x[0].mean(axes: [1])) },
        // Bias gradients' shape: few columns, many rows (tiles and runs of rows on CUDA).
        OpCase(name: "column sums and maxima over many rows", inputs: [([1000, 80], .parameter)]) { x in
            try x[0].sum(axes: [0]).add(x[0].max(axis: 0))
        },
        OpCase(name: "max", inputs: [([6, 40], .parameter)]) { try $0[0].max(axis: 1) },
        OpCase(name: "matmul", inputs: [([256, 192], .parameter), ([192, 256], .parameter)]) { try $0[0].matmul($0[1]) },
        OpCase(name: "matmul transposed, batched", inputs: [([3, 128, 96], .parameter), ([3, 112, 96], .parameter)]) { try $0[0].matmul($0[1], transposeB: true) },
        OpCase(name: "linear", inputs: [([300, 128], .parameter), ([256, 128], .parameter), ([256], .parameter)]) { try $0[0].linear(weight: $0[1], bias: $0[2]) },
        OpCase(name: "softmax", inputs: [([128, 600], .parameter)]) { try $0[0].softmax() },
        OpCase(name: "logSoftmax", inputs: [([128, 600], .parameter)]) { try $0[0].logSoftmax() },
        OpCase(name: "layerNorm", inputs: [([256, 256], .parameter), ([256], .parameter), ([256], .parameter)]) { try $0[0].layerNorm(gamma: $0[1], beta: $0[2]) },
        OpCase(name: "permute", inputs: [([3, 5, 7], .parameter)]) { try $0[0].permuted([2, 0, 1]) },
        OpCase(name: "concat and slice", inputs: [([4, 6], .parameter), ([4, 3], .parameter)]) { x in
            try Tensor.concat([x[0], x[1]], axis: 1).slice(axis: 1, 2..<8)
        },
        OpCase(name: "embedding", inputs: [([50, 16], .parameter), ([4, 9], .indices(50))]) { try Tensor.embedding($0[0], indices: $0[1]) },
        OpCase(name: "crossEntropy", inputs: [([24, 30], .parameter), ([24], .indices(30))]) { try $0[0].crossEntropy(targets: $0[1]) },
        OpCase(name: "conv2d", inputs: [([4, 3, 28, 28], .parameter), ([8, 3, 3, 3], .parameter), ([8], .parameter)]) {
            try $0[0].conv2d(weight: $0[1], bias: $0[2], padding: 1)
        },
        OpCase(name: "maxPool2d", inputs: [([4, 8, 28, 28], .parameter)]) { try $0[0].maxPool2d(kernel: 2) },
        OpCase(name: "causalSelfAttention", inputs: [([4, 64, 3 * 32], .parameter)]) { try $0[0].causalSelfAttention(heads: 4) },
        // Three row blocks of the CPU's kernel, the last partial.
        OpCase(name: "causalSelfAttention, T = 77", inputs: [([2, 77, 3 * 24], .parameter)]) { try $0[0].causalSelfAttention(heads: 3) },
        OpCase(name: "sum of long rows, max over columns", inputs: [([8, 3000], .parameter)]) { x in
            try x[0].sum(axes: [1]).add(x[0].max(axis: 0).sum())
        },
        OpCase(name: "strided conv2d, overlapping maxPool2d", inputs: [([2, 3, 17, 15], .parameter), ([5, 3, 5, 3], .parameter), ([5], .parameter)]) {
            try $0[0].conv2d(weight: $0[1], bias: $0[2], stride: 2, padding: 2).maxPool2d(kernel: 3, stride: 1)
        },
        OpCase(name: "batchNorm (training)", inputs: [([6, 4, 5, 5], .parameter), ([4], .parameter), ([4], .parameter)]) { x in
            try x[0].batchNorm(gamma: x[1], beta: x[2], runningMean: Tensor(repeating: 0, shape: [4], on: x[0].backend),
                               runningVar: Tensor(repeating: 1, shape: [4], on: x[0].backend), training: true)
        },
        OpCase(name: "pow, scale, shift, mse", inputs: [([33, 70], .positive), ([33, 70], .parameter)]) { x in
            try x[0].pow(1.5).scaled(0.5).shifted(0.25).mseLoss(x[1])
        },
        OpCase(name: "crossEntropy with ignored rows", inputs: [([40, 300], .parameter), ([40], .indices(300))]) { x in
            let t = x[1].ints.enumerated().map { $0.offset % 5 == 0 ? Int32(-100) : $0.element }
            return try x[0].crossEntropy(targets: Tensor(indices: t, shape: [40], on: x[0].backend))
        },
        OpCase(name: "cast to bfloat16 and float16 and back", inputs: [([64, 129], .parameter)]) { x in
            try x[0].cast(to: .bfloat16).cast(to: .float32).add(x[0].cast(to: .float16).cast(to: .float32))
        },
        OpCase(name: "maxPool2d 3x3 stride 2 padding 1 (ResNet's stem)", inputs: [([2, 3, 13, 12], .parameter)]) {
            try $0[0].maxPool2d(kernel: 3, stride: 2, padding: 1)
        },
        OpCase(name: "global average pool", inputs: [([3, 5, 7, 6], .parameter)]) { try $0[0].mean(axes: [2, 3]) },
        // The mask is a pure function of (seed, counter): the counter's low word wraps into
        // the high one here, and 1001 elements end mid-block.
        OpCase(name: "dropout (Philox mask)", inputs: [([7, 143], .parameter)]) { x in
            var rng = Philox(seed: 0xDEAD_BEEF_0123)
            rng.position = (1 << 34) - 8
            return try x[0].dropout(p: 0.3, rng: &rng)
        },
        // Mixed precision: the products read bf16 operands (cuBLAS GemmEx on CUDA).
        OpCase(name: "linear in bf16", inputs: [([300, 128], .parameter), ([256, 128], .parameter), ([256], .parameter)],
               tolerance: 1e-4) { x in
            try withPrecision(.bfloat16) { try x[0].linear(weight: x[1], bias: x[2]) }
        },
        OpCase(name: "matmul transposed, batched, in bf16", inputs: [([3, 128, 96], .parameter), ([3, 112, 96], .parameter)],
               tolerance: 1e-4) { x in
            try withPrecision(.bfloat16) { try x[0].matmul(x[1], transposeB: true) }
        },
        OpCase(name: "causalSelfAttention in bf16", inputs: [([4, 64, 3 * 32], .parameter)], tolerance: 1e-4) { x in
            try withPrecision(.bfloat16) { try x[0].causalSelfAttention(heads: 4) }
        },
    ]

    /// Output and input gradients of `op` on `backend`, from the same host inputs.
    public static func run(_ op: OpCase, on backend: any Backend) throws -> [[Float]] {
        var rng = Philox(seed: 77)
        let inputs: [Tensor] = op.inputs.map { shape, kind in
            let n = shape.reduce(1, *)
            switch kind {
            case .indices(let k): return Tensor(indices: (0..<n).map { _ in Int32(rng.nextInt(below: k)) }, shape: shape, on: backend)
            case .positive:  // a parameter kept away from 0 (log, sqrt, divisors)
                let t = Tensor((0..<n).map { _ in 0.5 + rng.nextFloat() }, shape: shape, on: backend)
                t.requiresGrad = true
                return t
            case .parameter:
                let t = Tensor((0..<n).map { _ in 2 * rng.nextFloat() - 1 }, shape: shape, on: backend)
                t.requiresGrad = true
                return t
            }
        }
        let out = try op.body(inputs)
        // A fixed random projection makes every output element matter to the gradient.
        let weights = Tensor((0..<out.count).map { _ in 2 * rng.nextFloat() - 1 }, shape: out.shape, on: backend)
        try out.mul(weights).sum().backward()
        return [out.floats] + inputs.filter(\.requiresGrad).map { $0.grad?.floats ?? [] }
    }

    /// Every case on `backend` against `reference`: one line per output or gradient that
    /// differs (in size, or by more than the case's tolerance), or per case that failed
    /// to run; then the optimizers'. Empty: the backend conforms.
    public static func disagreements(of backend: any Backend, reference: any Backend = CPUBackend(threads: 1)) -> [String] {
        var out: [String] = []
        for op in cases {
            let want: [[Float]], got: [[Float]]
            do { want = try run(op, on: reference); got = try run(op, on: backend) } catch {
                out.append("\(op.name): \(error)"); continue
            }
            if want.count != got.count { out.append("\(op.name): \(got.count) tensors, want \(want.count)"); continue }
            for (i, (a, b)) in zip(want, got).enumerated() {
                let what = "\(op.name) \(i == 0 ? "forward" : "gradient of input \(i - 1)")"
                if a.count != b.count { out.append("\(what): \(b.count) elements, want \(a.count)"); continue }
                let scale = Swift.max(1, a.map(abs).max() ?? 0)
                let err = (zip(a, b).map { abs($0 - $1) }.max() ?? 0) / scale
                if !(err <= op.tolerance) { out.append("\(what): relative error \(err)") }
            }
        }
        return out + optimizerDisagreements(of: backend, reference: reference)
    }

    /// Multi-tensor SGD (momentum, Nesterov, decay) and AdamW steps over 100 parameters of
    /// sizes 0 to 3000 (two launches on CUDA: 96 and 4), three steps each, against the
    /// reference: one line per parameter or state tensor that differs by more than 1e-6.
    static func optimizerDisagreements(of backend: any Backend, reference: any Backend) -> [String] {
        var rng = Philox(seed: 11)
        let sizes = (0..<100).map { i in i == 7 ? 0 : 1 + rng.nextInt(below: 3000) }
        // Per parameter: value, gradient, momentum or first moment, second moment (positive).
        let values = sizes.map { n in (0..<4).map { k in (0..<n).map { _ in k == 3 ? rng.nextFloat() : 2 * rng.nextFloat() - 1 } } }
        func run(on b: any Backend, adam: Bool) -> [[Float]] {
            let t = values.map { v in v.map { Tensor($0, shape: [$0.count], on: b) } }
            for step in 1...3 {
                if adam {
                    b.adamStep(t.map { AdamTensors(param: $0[0], grad: $0[1], m: $0[2], v: $0[3]) }, lr: 0.01, beta1: 0.9, beta2: 0.99,
                               eps: 1e-8, weightDecay: 0.1, decoupled: true, step: step)
                } else {
                    b.sgdStep(t.map { SGDTensors(param: $0[0], grad: $0[1], momentum: $0[2]) }, lr: 0.05, momentumFactor: 0.9,
                              dampening: 0.1, weightDecay: 0.01, nesterov: true)
                }
            }
            return t.flatMap { [$0[0].floats, $0[2].floats, $0[3].floats] }
        }
        var out: [String] = []
        for adam in [false, true] {
            for (i, (a, b)) in zip(run(on: reference, adam: adam), run(on: backend, adam: adam)).enumerated() {
                let err = zip(a, b).map { abs($0 - $1) }.max() ?? 0
                if a.count != b.count || !(err <= 1e-6) {
                    out.append("\(adam ? "adamw" : "sgd") step, parameter \(i / 3) (\(sizes[i / 3]) elements) \(["value", "state 1", "state 2"][i % 3]): error \(err)")
                }
            }
        }
        return out
    }
}
