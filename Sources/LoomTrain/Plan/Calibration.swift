import Foundation
import LoomCore
import LoomDistributed

/// `loom plan --calibrate`: this machine measured as a `Cluster` — matrix products (the
/// shapes the planned model uses, and a large one for the rest), convolution,
/// elementwise bandwidth and the host's cost per op, each with one thread and with every
/// core; in-process all-reduce at several sizes and rank counts, fitted to the α–β ring
/// model the planner prices collectives with.
public enum Calibration {
    /// What to time exactly: a model's products, attention ops and kernels at the sizes
    /// its layouts use (`PlanInput.shapes`).
    public struct Shapes: Sendable {
        public var gemms: Set<GEMMShape> = []
        public var attentions: Set<AttentionOp> = []
        public var kernels: Set<KernelUse> = []
        public init(gemms: Set<GEMMShape> = [], attentions: Set<AttentionOp> = [], kernels: Set<KernelUse> = []) {
            self.gemms = gemms; self.attentions = attentions; self.kernels = kernels
        }
    }

    /// Best of `repeats` runs of `body` after one untimed run.
    static func best(_ repeats: Int = 5, _ body: () throws -> Void) rethrows -> Double {
        try body()
        var t = Double.infinity
        for _ in 0..<repeats {
            let t0 = monotonicSeconds()
            try body()
            t = min(t, monotonicSeconds() - t0)
        }
        return t
    }

    /// Seconds of one `shape` product on `backend` (contiguous float32 operands), into a
    /// new output each time, as a training step's products write theirs.
    static func gemm(_ s: GEMMShape, on backend: CPUBackend) throws -> Double {
        let a = Tensor(repeating: 0.5, shape: [s.batch * s.m * s.k], on: backend)
        let b = Tensor(repeating: 0.25, shape: [s.batch * s.k * s.n], on: backend)
        let repeats = s.flops < 1e8 ? 9 : 3
        return try best(repeats) {
            let c = try Tensor(uninitialized: [s.batch * s.m * s.n], on: backend)
            backend.gemm(GEMMOperand(a, ld: s.k, batchStride: s.m * s.k), GEMMOperand(b, ld: s.n, batchStride: s.k * s.n),
                         GEMMOperand(c, ld: s.n, batchStride: s.m * s.n), m: s.m, n: s.n, k: s.k, batch: s.batch, alpha: 1, beta: 0)
        }
    }

    /// Measures this machine. `shapes`: the products to time exactly (a model's, at the
    /// micro-batch sizes and tensor splits its layouts use); `maxRanks`: the most
    /// in-process ranks to time collectives over.
    /// `step`: a config (and its model) whose one-rank step is then trained for a few
    /// steps at each thread count, to fit `Device.stepScale`.
    public static func measure(_ shapes: Shapes, convolution: (x: [Int], w: [Int])? = nil, maxRanks: Int = 8,
                               step: (config: TrainConfig, model: ModelCosts)? = nil, log: (String) -> Void = { _ in }) throws -> Cluster {
        let cores = CPUBackend.defaultThreads
        var c = Cluster()
        c.name = "this machine: \(cores) cores of \(CPUInfo.modelName ?? "an unnamed processor") (loom plan --calibrate)"
        c.nodes = 1
        c.devicesPerNode = max(maxRanks, cores)
        c.device.name = CPUInfo.modelName ?? "CPU"
        // The machine's memory divided among the ranks it runs (in-process ranks share it).
        c.device.memoryBytes = Double(ProcessInfo.processInfo.physicalMemory) / Double(c.devicesPerNode)
        c.device.cores = cores
        c.device.threads = Array(Set([1, cores])).sorted()
        c.device.matmulFloat32 = []; c.device.matmulBF16 = []; c.device.memoryBandwidth = []
        var conv: [Double] = []
        for t in c.device.threads {
            let backend = CPUBackend(threads: t)
            let n = 1024
            let big = GEMMShape(m: n, n: n, k: n)
            c.device.matmulFloat32.append(big.flops / (try gemm(big, on: backend)))
            // bf16: the same product through Linear's autocast path, against float32's.
            let x = Tensor(repeating: 0.5, shape: [n, n], on: backend), w = Tensor(repeating: 0.25, shape: [n, n], on: backend)
            let f32 = try best(3) { _ = try withoutGrad { try x.linear(weight: w, bias: nil) } }
            let b16 = try best(3) { _ = try withPrecision(.bfloat16) { try withoutGrad { try x.linear(weight: w, bias: nil) } } }
            c.device.matmulBF16.append(c.device.matmulFloat32.last! * f32 / b16)
            // Streaming: a + b into a new tensor (read 2, write 1), 8 Mi elements, as a
            // step's elementwise ops run, on more than a cache holds: the output's allocation included.
            let e = 1 << 23
            let p = Tensor(repeating: 1, shape: [e], on: backend), q = Tensor(repeating: 2, shape: [e], on: backend)
            c.device.memoryBandwidth.append(Double(12 * e) / (try best(9) { _ = try withoutGrad { try p.add(q) } }))
            if let (xs, ws) = convolution {
                let xi = Tensor(repeating: 0.5, shape: xs, on: backend), wi = Tensor(repeating: 0.1, shape: ws, on: backend)
                let seconds = try best(3) { _ = try withoutGrad { try xi.conv2d(weight: wi, bias: nil, padding: ws[2] / 2) } }
                conv.append(2 * Double(xs[0] * ws[0] * xs[2] * xs[3] * ws[1] * ws[2] * ws[3]) / seconds)
            }
            log(String(format: "%d thread(s): sgemm %.1f GFLOP/s, bf16 %.1f, stream %.1f GB/s", t, c.device.matmulFloat32.last! / 1e9,
                       c.device.matmulBF16.last! / 1e9, c.device.memoryBandwidth.last! / 1e9))
        }
        if !conv.isEmpty { c.device.convolution = conv }
        // The host's cost per op: recorded ops (a product, a residual sum) on an activation of
        // 32 Ki elements, forward and backward, less what their bytes take to stream.
        do {
            let backend = CPUBackend(threads: 1)
            let n = 1 << 15
            let a = Tensor(repeating: 0.5, shape: [n], on: backend)
            a.requiresGrad = true
            let ops = 100
            let seconds = try best(5) {
                var y = a
                for _ in 0..<(ops / 2) { y = try y.mul(a).add(a) }
                try y.sum().backward()
                a.grad = nil
            }
            // Forward: each op reads two tensors and writes one; backward about twice.
            let streamed = 3 * Double(ops) * 3 * 4 * Double(n) / c.device.memoryBandwidth[0]
            c.device.opOverhead = max(seconds - streamed, 0) / Double(3 * ops)
            log(String(format: "host time per op: %.2f us", c.device.opOverhead * 1e6))
        }
        // GEMMs of the model's shapes.
        for t in c.device.threads {
            let backend = CPUBackend(threads: t)
            for s in shapes.gemms.sorted(by: { $0.flops < $1.flops }) {
                c.gemms.append(Cluster.GEMMSample(shape: s, threads: t, seconds: try gemm(s, on: backend)))
            }
        }
        // The fused attention op as a step runs it: forward, then backward from a gradient.
        for t in c.device.threads {
            let backend = CPUBackend(threads: t)
            for op in shapes.attentions.sorted(by: { ($0.batch, $0.heads) < ($1.batch, $1.heads) }) {
                let qkv = Tensor(repeating: 0.01, shape: [op.batch, op.length, 3 * op.heads * op.headSize], on: backend)
                qkv.requiresGrad = true
                var forward = Double.infinity, backward = Double.infinity
                for _ in 0..<4 {
                    let t0 = monotonicSeconds()
                    let y = try qkv.causalSelfAttention(heads: op.heads)
                    let t1 = monotonicSeconds()
                    try y.backward(seed: Tensor(repeating: 1, shape: y.shape, on: backend))
                    let t2 = monotonicSeconds()
                    qkv.grad = nil
                    forward = min(forward, t1 - t0); backward = min(backward, t2 - t1)
                }
                c.attentions.append(Cluster.AttentionSample(op: op, threads: t, forward: forward, backward: backward))
            }
        }
        for t in c.device.threads {
            let backend = CPUBackend(threads: t)
            for k in shapes.kernels.sorted(by: { ($0.kind.rawValue, $0.elements) < ($1.kind.rawValue, $1.elements) }) {
                let (f, b) = try kernel(k, on: backend)
                c.kernels.append(Cluster.KernelSample(use: k, threads: t, forward: f, backward: b))
            }
        }
        log("timed \(shapes.gemms.count) matrix-product shapes, \(shapes.attentions.count) attention and \(shapes.kernels.count) kernel sizes at \(c.device.threads.map(String.init).joined(separator: " and ")) thread(s)")
        c.intraNode = try collectives(maxRanks: maxRanks, log: log)
        c.interNode = c.intraNode
        if let (config, model) = step {
            // What composing kernels timed alone misses, measured where the layouts run: one
            // rank on every core, and (for one thread) two ranks of a thread each side by
            // side (dp 2, its all-reduce priced by the fit below), each the best of three runs.
            var scales: [Double] = []
            for t in c.device.threads {
                var one = c
                one.device.stepScale = one.device.threads.map { _ in 1 }
                let layout = t < cores && cores >= 2 && config.batchSize % 2 == 0 ? Layout(dp: 2) : Layout()
                one.device.cores = t * layout.ranks
                let kernels = try CostModel(model: model, cluster: one, config: config).predict(layout).time.total
                let measured = try (0..<3).map { _ in
                    try LayoutMeasurement.measure(config, layout, steps: 6, warmup: 2, threads: t * layout.ranks).stepSeconds
                }.min()!
                scales.append(measured / kernels)
                log(String(format: "%d thread(s) a rank: %@ takes %.1f ms a step, its kernels and collectives %.1f ms: step scale %.3f", t,
                           layout.ranks == 1 ? "one rank" : "dp 2", measured * 1e3, kernels * 1e3, scales.last!))
            }
            c.device.stepScale = scales
        } else {
            c.device.stepScale = c.device.threads.map { _ in 1 }
        }
        return c
    }

    /// Forward and backward seconds of one kernel as a step runs it (Loom's op, recorded,
    /// its backward from a gradient), best of 4.
    static func kernel(_ k: KernelUse, on backend: CPUBackend) throws -> (Double, Double) {
        let inner = max(k.inner, 1), rows = max(k.elements / inner, 1)
        let x = Tensor(repeating: 0.3, shape: [rows, inner], on: backend)
        x.requiresGrad = true
        let op: () throws -> Tensor
        switch k.kind {
        case .layerNorm:
            let g = Tensor(repeating: 1, shape: [inner], on: backend), b = Tensor(repeating: 0, shape: [inner], on: backend)
            g.requiresGrad = true; b.requiresGrad = true
            op = { try x.layerNorm(gamma: g, beta: b) }
        case .gelu: op = { try x.gelu() }
        case .relu: op = { try x.relu() }
        case .add:
            let y = Tensor(repeating: 0.1, shape: [rows, inner], on: backend)
            op = { try x.add(y) }
        case .batchNorm:
            let c = max(rows / 8, 1), n = max(rows / c, 1)
            let x4 = Tensor(repeating: 0.3, shape: [n, c, inner, 1], on: backend)
            x4.requiresGrad = true
            let g = Tensor(repeating: 1, shape: [c], on: backend), b = Tensor(repeating: 0, shape: [c], on: backend)
            g.requiresGrad = true; b.requiresGrad = true
            let rm = Tensor(repeating: 0, shape: [c], on: backend), rv = Tensor(repeating: 1, shape: [c], on: backend)
            op = { try x4.batchNorm(gamma: g, beta: b, runningMean: rm, runningVar: rv, training: true) }
        case .crossEntropy:
            let targets = Tensor(indices: (0..<rows).map { Int32($0 % inner) }, shape: [rows], on: backend)
            op = { try x.crossEntropy(targets: targets) }
        case .maxPool:
            let side = max(Int(Double(k.elements / 8).squareRoot()), 2) & ~1
            let x4 = Tensor(repeating: 0.3, shape: [8, 1, side, side], on: backend)
            x4.requiresGrad = true
            op = { try x4.maxPool2d(kernel: 2) }
        }
        var forward = Double.infinity, backward = Double.infinity
        for _ in 0..<5 {
            let t0 = monotonicSeconds()
            let y = try op()
            let t1 = monotonicSeconds()
            try y.backward(seed: Tensor(repeating: 1, shape: y.shape, on: backend))
            let t2 = monotonicSeconds()
            forward = min(forward, t1 - t0); backward = min(backward, t2 - t1)
        }
        return (forward, backward)
    }

    /// In-process all-reduce timed at 64 KiB to 4 MiB over 2 to `maxRanks` ranks (one
    /// thread each), fitted by least squares to t = 2(n-1)(α + S/(nβ)).
    static func collectives(maxRanks: Int, log: (String) -> Void) throws -> Cluster.Link {
        var rows: [(x1: Double, x2: Double, y: Double)] = []
        var n = 2
        while n <= max(2, maxRanks) {
            for bytes in [1 << 16, 1 << 18, 1 << 20, 1 << 22] {
                // Each rank computes (a product of about a millisecond) and then all-reduces,
                // as a step does: the ranks arrive apart and wait for each other. The
                // collective's cost is the loop's time less the same loop without it.
                let times = try InProcessWorld.run(size: n) { comm -> Double in
                    let backend = CPUBackend(threads: 1)
                    let t = Tensor(repeating: 1, shape: [bytes / 4], on: backend)
                    let a = Tensor(repeating: 0.5, shape: [256, 256], on: backend)
                    func loop(_ collective: Bool) throws -> Double {
                        try comm.barrier()
                        let t0 = monotonicSeconds()
                        for _ in 0..<8 {
                            backend.gemm(GEMMOperand(a, ld: 256), GEMMOperand(a, ld: 256), GEMMOperand(try Tensor(uninitialized: [256, 256], on: backend), ld: 256),
                                         m: 256, n: 256, k: 256, batch: 1, alpha: 1, beta: 0)
                            if collective { try comm.allReduce(t) }
                        }
                        try comm.barrier()
                        return (monotonicSeconds() - t0) / 8
                    }
                    _ = try loop(true)
                    var with: [Double] = [], without: [Double] = []
                    for _ in 0..<3 { with.append(try loop(true)); without.append(try loop(false)) }
                    return max(with.sorted()[1] - without.sorted()[1], 1e-7)
                }
                let y = times[0]
                rows.append((2 * Double(n - 1), 2 * Double(n - 1) * Double(bytes) / Double(n), y))
            }
            n *= 2
        }
        // Least squares for y = α x1 + x2 / β.
        var s11 = 0.0, s12 = 0.0, s22 = 0.0, s1y = 0.0, s2y = 0.0
        for r in rows { s11 += r.x1 * r.x1; s12 += r.x1 * r.x2; s22 += r.x2 * r.x2; s1y += r.x1 * r.y; s2y += r.x2 * r.y }
        let det = s11 * s22 - s12 * s12
        var alpha = (s1y * s22 - s2y * s12) / det, inverse = (s11 * s2y - s12 * s1y) / det
        if alpha < 0 || inverse <= 0 {  // a degenerate fit: bandwidth from the largest message alone
            alpha = max(alpha, 1e-6)
            let r = rows.max { $0.x2 < $1.x2 }!
            inverse = max((r.y - alpha * r.x1) / r.x2, 1e-12)
        }
        log(String(format: "in-process all-reduce: latency %.1f us, bandwidth %.2f GB/s per rank", alpha * 1e6, 1 / inverse / 1e9))
        return Cluster.Link(bandwidth: 1 / inverse, latency: alpha)
    }
}
