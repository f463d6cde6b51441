import LoomCore

// Elementwise, reductions, products and layout, lowered to StableHLO. Each method reads
// its operands' views from the trace, builds the result and writes it to its output view;
// the formulas are the CPU backend's (CPU+Elementwise.swift, …), so results agree to
// float32 rounding.

extension XLABackend {
    var hlo: HLOBuilder { trace.hlo }

    public func fill(_ tensor: Tensor, value: Float) {
        lock.withLock {
            let (_, s) = slot(tensor)
            write(tensor, hlo.constant(Double(value), tensor.shape, s.type!))
        }
    }

    public func copy(_ source: Tensor, into destination: Tensor) {
        lock.withLock { write(destination, hlo.reshape(read(source), destination.shape)) }
    }

    public func cast(_ x: Tensor, into y: Tensor) {
        lock.withLock { write(y, hlo.convert(hlo.reshape(read(x), y.shape), HLOType(y.dtype))) }
    }

    // MARK: Elementwise

    public func unary(_ op: UnaryOp, _ x: Tensor, into y: Tensor) {
        lock.withLock {
            let v = read(x)
            let r: HLOValue
            switch op {
            case .neg: r = hlo.unary("negate", v)
            case .exp: r = hlo.unary("exponential", v)
            case .log: r = hlo.unary("log", v)
            case .tanh: r = hlo.unary("tanh", v)
            case .relu: r = hlo.max(v, hlo.constant(0, v.shape))
            case .gelu:  // 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))
                let inner = hlo.withConstant("multiply", hlo.add(v, hlo.withConstant("multiply", hlo.mul(hlo.mul(v, v), v), 0.044715)),
                                             0.7978845608028654)
                r = hlo.mul(hlo.withConstant("multiply", v, 0.5), hlo.withConstant("add", hlo.unary("tanh", inner), 1))
            case .sqrt: r = hlo.unary("sqrt", v)
            case .sigmoid: r = hlo.unary("logistic", v)
            case .square: r = hlo.mul(v, v)
            case .reciprocal: r = hlo.div(hlo.constant(1, v.shape), v)
            }
            write(y, r)
        }
    }

    public func unaryBackward(_ op: UnaryOp, x: Tensor, y: Tensor, gradOutput: Tensor, into gx: Tensor) {
        lock.withLock {
            let g = read(gradOutput)
            func xv() -> HLOValue { hlo.reshape(read(x), g.shape) }
            func yv() -> HLOValue { hlo.reshape(read(y), g.shape) }
            let one = { self.hlo.constant(1, g.shape) }
            let r: HLOValue
            switch op {
            case .neg: r = hlo.unary("negate", g)
            case .exp: r = hlo.mul(g, yv())
            case .log: r = hlo.div(g, xv())
            case .tanh: let t = yv(); r = hlo.mul(g, hlo.sub(one(), hlo.mul(t, t)))
            case .relu: r = hlo.select(hlo.compare(xv(), hlo.constant(0, g.shape), "LE"), hlo.constant(0, g.shape), g)
            case .gelu:
                let v = xv(), v2 = hlo.mul(v, v)
                let t = hlo.unary("tanh", hlo.withConstant("multiply", hlo.add(v, hlo.withConstant("multiply", hlo.mul(v2, v), 0.044715)),
                                                           0.7978845608028654))
                let du = hlo.withConstant("multiply", hlo.withConstant("add", hlo.withConstant("multiply", v2, 3 * 0.044715), 1), 0.7978845608028654)
                let left = hlo.withConstant("multiply", hlo.add(one(), t), 0.5)
                let right = hlo.mul(hlo.mul(hlo.withConstant("multiply", v, 0.5), hlo.sub(one(), hlo.mul(t, t))), du)
                r = hlo.mul(g, hlo.add(left, right))
            case .sqrt: r = hlo.div(hlo.withConstant("multiply", g, 0.5), yv())
            case .sigmoid: let s = yv(); r = hlo.mul(hlo.mul(g, s), hlo.sub(one(), s))
            case .square: r = hlo.mul(hlo.withConstant("multiply", g, 2), xv())
            case .reciprocal: let s = yv(); r = hlo.mul(hlo.mul(hlo.unary("negate", g), s), s)
            }
            write(gx, r)
        }
    }

    /// x broadcast to `shape` by numpy's rules (trailing axes aligned, size-1 axes spread).
    func broadcast(_ x: HLOValue, to shape: [Int]) -> HLOValue {
        if x.shape == shape { return x }
        let lead = shape.count - x.shape.count
        let kept = x.shape.indices.filter { x.shape[$0] == shape[lead + $0] }
        let squeezed = hlo.reshape(x, kept.map { x.shape[$0] })
        return hlo.broadcast(squeezed, shape, dims: kept.map { lead + $0 })
    }

    public func binary(_ op: BinaryOp, _ a: Tensor, _ b: Tensor, into out: Tensor) {
        lock.withLock {
            let x = broadcast(read(a), to: out.shape), y = broadcast(read(b), to: out.shape)
            let names: [BinaryOp: String] = [.add: "add", .sub: "subtract", .mul: "multiply", .div: "divide"]
            write(out, hlo.binary(names[op]!, x, y))
        }
    }

    public func scalar(_ op: ScalarOp, _ x: Tensor, _ s: Float, into y: Tensor) {
        lock.withLock {
            let v = hlo.reshape(read(x), y.shape), c = scalar(s)
            let names: [ScalarOp: String] = [.add: "add", .mul: "multiply", .pow: "power", .maximum: "maximum"]
            write(y, hlo.withScalar(names[op]!, v, c))
        }
    }

    // MARK: Reductions

    public func reduce(_ op: ReduceOp, _ x: Tensor, outer: Int, n: Int, inner: Int, into y: Tensor) {
        lock.withLock {
            write(y, hlo.reduce(hlo.reshape(read(x), [outer, n, inner]), op, dimensions: [1]))
        }
    }

    /// The index of the first maximum along the middle axis, as the CPU picks it.
    public func argmax(_ x: Tensor, outer: Int, n: Int, inner: Int, into indices: Tensor) {
        lock.withLock {
            let v = hlo.reshape(read(x), [outer, n, inner])
            let best = hlo.broadcast(hlo.reduce(v, .max, dimensions: [1]), v.shape, dims: [0, 2])
            let at = hlo.iota(v.shape, dimension: 1)
            let candidates = hlo.select(hlo.compare(v, best, "EQ"), at, hlo.constant(Double(n), v.shape, .i32))
            write(indices, hlo.unary("negate", hlo.reduce(hlo.unary("negate", candidates), .max, dimensions: [1])))
        }
    }

    /// A one-hot [outer, n, inner] mask of `indices` [outer, inner] (out-of-range: none).
    private func oneHot(_ indices: Tensor, outer: Int, n: Int, inner: Int) -> HLOValue {
        let idx = hlo.broadcast(hlo.reshape(read(indices), [outer, inner]), [outer, n, inner], dims: [0, 2])
        return hlo.compare(hlo.iota([outer, n, inner], dimension: 1), idx, "EQ")
    }

    public func gatherAlongAxis(_ x: Tensor, indices: Tensor, outer: Int, n: Int, inner: Int, into y: Tensor) {
        lock.withLock {
            let v = hlo.reshape(read(x), [outer, n, inner])
            let picked = hlo.select(oneHot(indices, outer: outer, n: n, inner: inner), v, hlo.constant(0, v.shape))
            write(y, hlo.reduce(picked, .sum, dimensions: [1]))
        }
    }

    public func scatterAlongAxis(_ src: Tensor, indices: Tensor, outer: Int, n: Int, inner: Int, into y: Tensor) {
        lock.withLock {
            let s = hlo.broadcast(hlo.reshape(read(src), [outer, inner]), [outer, n, inner], dims: [0, 2])
            let spread = hlo.select(oneHot(indices, outer: outer, n: n, inner: inner), s, hlo.constant(0, s.shape))
            write(y, hlo.add(hlo.reshape(read(y), [outer, n, inner]), spread))
        }
    }

    public func localIndices(_ indices: Tensor, range: Range<Int>, local: Tensor, mask: Tensor) {
        lock.withLock {
            let i = read(indices)
            let lo = hlo.constant(Double(range.lowerBound), i.shape, .i32), hi = hlo.constant(Double(range.upperBound), i.shape, .i32)
            let inside = hlo.binary("and", hlo.compare(i, lo, "GE"), hlo.compare(i, hi, "LT"))
            write(local, hlo.select(inside, hlo.sub(i, lo), hlo.constant(0, i.shape, .i32)))
            write(mask, hlo.select(inside, hlo.constant(1, i.shape), hlo.constant(0, i.shape)))
        }
    }

    public func sumOfSquares(_ tensors: [Tensor]) -> Double {
        lock.withLock {
            var total = hlo.constant(0)
            for t in tensors {
                let v = read(t)
                total = hlo.add(total, hlo.reduce(hlo.mul(v, v), .sum, dimensions: Array(v.shape.indices)))
            }
            do {
                let out = try flush(extra: [total])
                var s: Float = 0
                try withUnsafeMutableBytes(of: &s) { try client.download(out[0], into: $0.baseAddress!, bytes: 4) }
                return Double(s)
            } catch { fatalError("\(error)") }
        }
    }

    // MARK: Products and layout

    public func gemm(_ a: GEMMOperand, _ b: GEMMOperand, _ c: GEMMOperand, m: Int, n: Int, k: Int, batch: Int,
                     alpha: Float, beta: Float) {
        lock.withLock {
            flops += 2 * Double(m) * Double(n) * Double(k) * Double(batch)
            // Stored matrices, then op(A) [batch, m, k] · op(B) [batch, k, n].
            let av = readWindow(a, batch: batch, rows: a.transposed ? k : m, cols: a.transposed ? m : k)
            let bv = readWindow(b, batch: batch, rows: b.transposed ? n : k, cols: b.transposed ? k : n)
            // A single product as a plain 2-D dot: XLA:CPU runs batched dots on a slower path.
            var r = batch == 1
                ? hlo.reshape(hlo.dot(hlo.reshape(av, Array(av.shape.dropFirst())), hlo.reshape(bv, Array(bv.shape.dropFirst())), batch: [],
                                      contractA: a.transposed ? 0 : 1, contractB: b.transposed ? 1 : 0), [1, m, n])
                : hlo.dot(av, bv, batch: [0], contractA: a.transposed ? 1 : 2, contractB: b.transposed ? 2 : 1)  // [batch, m, n]
            if alpha != 1 { r = hlo.withScalar("multiply", r, scalar(alpha)) }
            if beta != 0 {
                let old = readWindow(c, batch: batch, rows: m, cols: n)
                r = hlo.add(r, beta == 1 ? old : hlo.withScalar("multiply", old, scalar(beta)))
            }
            writeWindow(c, r, batch: batch, rows: m, cols: n)
        }
    }

    public func permute(_ x: Tensor, perm: [Int], into y: Tensor) {
        lock.withLock { write(y, hlo.transpose(read(x), perm)) }
    }

    public func copyBlocks(_ src: Tensor, srcOffset: Int, srcStride: Int, into dst: Tensor, dstOffset: Int, dstStride: Int,
                           rows: Int, width: Int, accumulate: Bool) {
        lock.withLock {
            guard rows > 0 && width > 0 else { return }
            let (sid, ss) = slot(src)
            let from = Window(start: src.offset + srcOffset, rows: rows, cols: width, ld: srcStride)
            var v = from.read(value(sid, ss), slotCount: ss.count, hlo)
            let (did, ds) = slot(dst)
            let to = Window(start: dst.offset + dstOffset, rows: rows, cols: width, ld: dstStride)
            if accumulate { v = hlo.add(to.read(value(did, ds), slotCount: ds.count, hlo), v) }
            trace.set(did, to.write(v, into: value(did, ds), slotCount: ds.count, hlo))
        }
    }
}
