import CLoomKernels
#if canImport(Glibc)
import Glibc
#endif

/// Elementwise kernels: chunks of at least `grain` elements per thread.
private let grain = 1 << 15

extension CPUBackend {
    public func unary(_ op: UnaryOp, _ x: Tensor, into y: Tensor) {
        let started = monotonicSeconds(); defer { count(.elementwise, since: started) }
        let px = x.ptr, py = y.ptr
        parallelFor(x.count, grain: grain, threads: threads) { r in
            unaryKernel(op, px + r.lowerBound, py + r.lowerBound, r.count)
        }
    }

    /// y[0..<n] = op(x[0..<n]) on the calling thread.
    private func unaryKernel(_ op: UnaryOp, _ x: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        switch op {
        case .neg: map8(x, y, n) { -$0 }
        case .exp: loom_exp(x, y, Int64(n))
        case .log: for i in 0..<n { y[i] = logf(x[i]) }
        case .tanh: map8(x, y, n) { tanh8($0) }
        case .relu: map8(x, y, n) { vmax($0, F8()) }
        case .gelu: loom_gelu(x, y, Int64(n))
        case .sqrt: map8(x, y, n) { $0.squareRoot() }
        case .sigmoid: map8(x, y, n) { sigmoid8($0) }
        case .square: map8(x, y, n) { $0 * $0 }
        case .reciprocal: map8(x, y, n) { 1 / $0 }
        }
    }

    /// Blocks of a thread's elements computed into a float32 buffer on its stack (in L1) and
    /// rounded from there: one pass over memory.
    public func unaryRoundingToBF16(_ op: UnaryOp, _ x: Tensor, into y: Tensor) {
        precondition(x.dtype == .float32 && y.dtype == .bfloat16 && x.count == y.count,
                     "\(op.rawValue) rounded to bf16: x \(x.dtype) \(describe(x.shape)) into y \(y.dtype) \(describe(y.shape))")
        let started = monotonicSeconds(); defer { count(.elementwise, since: started) }
        let px = x.ptr, py = y.halfPtr, round = streamsRounding(of: x.shape) ? loom_f32_to_bf16_streaming : loom_f32_to_bf16
        parallelFor(x.count, grain: grain, threads: threads) { r in
            let block = 2048
            withUnsafeTemporaryAllocation(of: Float.self, capacity: block) { wide in
                for lo in stride(from: r.lowerBound, to: r.upperBound, by: block) {
                    let n = min(block, r.upperBound - lo)
                    unaryKernel(op, px + lo, wide.baseAddress!, n)
                    round(wide.baseAddress!, py + lo, Int64(n))
                }
            }
        }
    }

    public func unaryBackward(_ op: UnaryOp, x: Tensor, y: Tensor, gradOutput: Tensor, into gx: Tensor) {
        let started = monotonicSeconds(); defer { count(.elementwise, since: started) }
        let px = x.ptr, py = y.ptr, pg = gradOutput.ptr, pgx = gx.ptr
        parallelFor(x.count, grain: grain, threads: threads) { r in
            let lo = r.lowerBound
            unaryBackwardKernel(op, px + lo, py + lo, pg + lo, pgx + lo, r.count)
        }
    }

    /// The gradient computed a few rows at a time into a buffer in L1, rounded and summed from
    /// there (`roundingSummingRows`): one pass over x and dY.
    public func unaryBackward(_ op: UnaryOp, x: Tensor, gradOutput: Tensor, roundingInto gx: Tensor, summingColumns sums: Tensor?,
                              rows: Int, cols: Int) {
        precondition(op == .gelu || op == .relu, "\(op.rawValue) backward rounded to bf16: its gradient reads its output")
        precondition(x.dtype == .float32 && gradOutput.dtype == .float32 && gx.dtype == .bfloat16 && x.count == rows * cols
                     && gradOutput.count == x.count && gx.count == x.count && (sums?.count ?? cols) == cols,
                     "\(op.rawValue) backward rounded to bf16: x \(describe(x.shape)), dY \(describe(gradOutput.shape)), dX \(gx.dtype) \(describe(gx.shape)) for [\(rows), \(cols)]")
        guard rows > 0, cols > 0 else { return }
        let started = monotonicSeconds(); defer { count(.elementwise, since: started) }
        let px = x.ptr, pg = gradOutput.ptr
        roundingSummingRows(rows: rows, cols: cols, into: gx.halfPtr, summingColumns: sums?.ptr) { r0, n, buffer in
            let at = r0 * cols
            unaryBackwardKernel(op, px + at, px + at, pg + at, buffer, n * cols)
            return UnsafePointer(buffer)
        }
    }

    /// gx[0..<n] = g · op'(x or y) on the calling thread.
    private func unaryBackwardKernel(_ op: UnaryOp, _ x: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                                     _ g: UnsafeMutablePointer<Float>, _ gx: UnsafeMutablePointer<Float>, _ n: Int) {
        switch op {
        case .neg: map8(g, gx, n) { -$0 }
        case .exp: zip8(g, y, gx, n) { $0 * $1 }
        case .log: zip8(g, x, gx, n) { $0 / $1 }
        case .tanh: zip8(g, y, gx, n) { $0 * (1 - $1 * $1) }
        case .relu: zip8(g, x, gx, n) { g, x in g.replacing(with: 0, where: x .<= 0) }
        case .gelu: loom_gelu_backward(x, g, gx, Int64(n))
        case .sqrt: zip8(g, y, gx, n) { $0 * 0.5 / $1 }
        case .sigmoid: zip8(g, y, gx, n) { $0 * $1 * (1 - $1) }
        case .square: zip8(g, x, gx, n) { $0 * 2 * $1 }
        case .reciprocal: zip8(g, y, gx, n) { -$0 * $1 * $1 }
        }
    }

    public func scalar(_ op: ScalarOp, _ x: Tensor, _ s: Float, into y: Tensor) {
        let started = monotonicSeconds(); defer { count(.elementwise, since: started) }
        let px = x.ptr, py = y.ptr
        parallelFor(x.count, grain: grain, threads: threads) { r in
            let x = px + r.lowerBound, y = py + r.lowerBound, n = r.count
            switch op {
            case .add: map8(x, y, n) { $0 + s }
            case .mul: map8(x, y, n) { $0 * s }
            case .pow: for i in 0..<n { y[i] = powf(x[i], s) }
            case .maximum: map8(x, y, n) { vmax($0, F8(repeating: s)) }
            }
        }
    }

    public func binary(_ op: BinaryOp, _ a: Tensor, _ b: Tensor, into out: Tensor) {
        let started = monotonicSeconds(); defer { count(.elementwise, since: started) }
        let n = out.count
        let pa = a.ptr, pb = b.ptr, po = out.ptr
        // Same shape: one flat loop.
        if a.count == n && b.count == n {
            parallelFor(n, grain: grain, threads: threads) { r in
                binaryRun(op, pa + r.lowerBound, 1, pb + r.lowerBound, 1, po + r.lowerBound, r.count)
            }
            return
        }
        // General broadcast: walk out's rows (all axes but the last); in each row a and b
        // advance by their own stride along the last axis (1, or 0 when broadcast).
        let shape = out.shape
        let sa = broadcastStrides(a.shape, to: shape), sb = broadcastStrides(b.shape, to: shape)
        let cols = shape.last ?? 1
        let rows = n / max(cols, 1)
        let ia = sa.last ?? 0, ib = sb.last ?? 0
        parallelFor(rows, grain: max(1, grain / max(cols, 1)), threads: threads) { r in
            var index = [Int](repeating: 0, count: max(shape.count - 1, 0))
            // Decompose the first row of this chunk into a multi-index over the leading axes.
            var rem = r.lowerBound
            for d in stride(from: shape.count - 2, through: 0, by: -1) { index[d] = rem % shape[d]; rem /= shape[d] }
            var oa = 0, ob = 0
            for d in 0..<index.count { oa += index[d] * sa[d]; ob += index[d] * sb[d] }
            for row in r {
                binaryRun(op, pa + oa, ia, pb + ob, ib, po + row * cols, cols)
                // Advance the multi-index by one row.
                var d = index.count - 1
                while d >= 0 {
                    index[d] += 1; oa += sa[d]; ob += sb[d]
                    if index[d] < shape[d] { break }
                    oa -= sa[d] * shape[d]; ob -= sb[d] * shape[d]; index[d] = 0
                    d -= 1
                }
            }
        }
    }
}

/// Element strides of `shape` viewed as broadcast to `target` (0 on broadcast axes).
public func broadcastStrides(_ shape: [Int], to target: [Int]) -> [Int] {
    var strides = [Int](repeating: 0, count: target.count)
    var s = 1
    for i in stride(from: shape.count - 1, through: 0, by: -1) {
        let t = target.count - shape.count + i
        strides[t] = shape[i] == 1 ? 0 : s
        s *= shape[i]
    }
    return strides
}

/// out[j] = a[j*ia] op b[j*ib] for j < n; ia, ib are 0 or 1.
@inline(__always)
private func binaryRun(_ op: BinaryOp, _ a: UnsafePointer<Float>, _ ia: Int, _ b: UnsafePointer<Float>, _ ib: Int,
                       _ out: UnsafeMutablePointer<Float>, _ n: Int) {
    switch (ia, ib) {
    case (1, 1):
        switch op {
        case .add: zip8(a, b, out, n, +)
        case .sub: zip8(a, b, out, n, -)
        case .mul: zip8(a, b, out, n, *)
        case .div: zip8(a, b, out, n, /)
        }
    case (1, 0):
        let s = b[0]
        switch op {
        case .add: map8(a, out, n) { $0 + s }
        case .sub: map8(a, out, n) { $0 - s }
        case .mul: map8(a, out, n) { $0 * s }
        case .div: map8(a, out, n) { $0 / s }
        }
    case (0, 1):
        let s = a[0]
        switch op {
        case .add: map8(b, out, n) { s + $0 }
        case .sub: map8(b, out, n) { s - $0 }
        case .mul: map8(b, out, n) { s * $0 }
        case .div: map8(b, out, n) { s / $0 }
        }
    default:
        let x = a[0], y = b[0]
        let v: Float
        switch op {
        case .add: v = x + y
        case .sub: v = x - y
        case .mul: v = x * y
        case .div: v = x / y
        }
        out.update(repeating: v, count: n)
    }
}
