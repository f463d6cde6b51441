// Reductions over axes: sum, mean, max; and the adjoint of broadcasting.

extension Tensor {
    /// Sum over `axes` (all axes when nil).
    public func sum(axes: [Int]? = nil, keepDims: Bool = false) throws -> Tensor {
        try requireFloat("sum", self)
        let axes = try (axes ?? Array(0..<rank)).map { try normalizeAxis($0, rank: rank, op: "sum") }
        var kept = shape
        for a in axes { kept[a] = 1 }
        let out = try reduceAxes(.sum, axes: Set(axes))
        let result = keepDims ? out.view(kept) : out.view(shape.indices.filter { !axes.contains($0) }.map { shape[$0] })
        let inShape = shape
        return Tensor.differentiable("sum", output: result, inputs: [self]) { g in
            [try g.view(kept).expand(to: inShape)]
        }
    }

    /// Mean over `axes` (all axes when nil).
    public func mean(axes: [Int]? = nil, keepDims: Bool = false) throws -> Tensor {
        let axes = try (axes ?? Array(0..<rank)).map { try normalizeAxis($0, rank: rank, op: "mean") }
        let n = axes.reduce(1) { $0 * shape[$1] }
        return try sum(axes: axes, keepDims: keepDims).scaled(1 / Float(Swift.max(n, 1)))
    }

    /// Maximum over one axis; the gradient flows to the (first) maximal element.
    public func max(axis: Int, keepDims: Bool = false) throws -> Tensor {
        try requireFloat("max", self)
        let a = try normalizeAxis(axis, rank: rank, op: "max")
        let (outer, n, inner) = splitAround(a)
        var kept = shape; kept[a] = 1
        let out = try empty(kept)
        backend.reduce(.max, self, outer: outer, n: n, inner: inner, into: out)
        let result = keepDims ? out : out.view(shape.enumerated().filter { $0.offset != a }.map(\.element))
        let x = self
        // d max / d x = 1 at the (first) maximal element of each reduced line, else 0:
        // the gradient scattered back along the axis, on the backend.
        return Tensor.differentiable("max", output: result, inputs: [self]) { g in
            let idx = try x.empty(kept, dtype: .int32)
            x.backend.argmax(x, outer: outer, n: n, inner: inner, into: idx)
            let gx = try Tensor.zeros(x.shape, on: x.backend)
            x.backend.scatterAlongAxis(g, indices: idx, outer: outer, n: n, inner: inner, into: gx)
            return [gx]
        }
    }

    /// Index of the maximum along `axis` (no gradient).
    public func argmax(axis: Int) throws -> Tensor {
        try requireFloat("argmax", self)
        let a = try normalizeAxis(axis, rank: rank, op: "argmax")
        let (outer, n, inner) = splitAround(a)
        let out = try empty(shape.enumerated().filter { $0.offset != a }.map(\.element), dtype: .int32)
        backend.argmax(self, outer: outer, n: n, inner: inner, into: out)
        return out
    }

    /// Sums away the axes along which a tensor of `target` shape was broadcast to this
    /// one's shape (the backward of broadcasting).
    public func sumToShape(_ target: [Int]) throws -> Tensor {
        if target == shape { return self }
        guard target.count <= rank else {
            throw LoomError.shapeMismatch("sumToShape: \(describe(shape)) to \(describe(target))")
        }
        var t = self
        let lead = rank - target.count
        if lead > 0 {
            // Leading axes fold into one: [L, rest] -> [rest].
            let rest = Array(shape[lead...])
            let l = shape[..<lead].reduce(1, *), r = rest.reduce(1, *)
            let out = try empty(rest)
            backend.reduce(.sum, t, outer: 1, n: l, inner: r, into: out)
            t = out
        }
        for (i, d) in target.enumerated() where d == 1 && t.shape[i] != 1 {
            let (outer, n, inner) = t.splitAround(i)
            var s = t.shape; s[i] = 1
            let out = try empty(s)
            backend.reduce(.sum, t, outer: outer, n: n, inner: inner, into: out)
            t = out
        }
        guard t.shape == target else {
            throw LoomError.shapeMismatch("sumToShape: \(describe(shape)) does not reduce to \(describe(target))")
        }
        return t
    }

    /// Broadcasts to a larger shape (a copy).
    public func expand(to target: [Int]) throws -> Tensor {
        try requireFloat("expand", self)
        if target == shape { return self }
        let out = try empty(target)
        let zero = try Tensor.zeros([1], on: backend)
        _ = try broadcastShape(shape, target, op: "expand")
        backend.binary(.add, self, zero, into: out)
        let inShape = shape
        return Tensor.differentiable("expand", output: out, inputs: [self]) { g in [try g.sumToShape(inShape)] }
    }

    /// [prod(before), shape[axis], prod(after)].
    func splitAround(_ axis: Int) -> (Int, Int, Int) {
        (shape[..<axis].reduce(1, *), shape[axis], shape[(axis + 1)...].reduce(1, *))
    }

    private func reduceAxes(_ op: ReduceOp, axes: Set<Int>) throws -> Tensor {
        var t = self
        for a in axes.sorted() {
            let (outer, n, inner) = t.splitAround(a)
            var s = t.shape; s[a] = 1
            let out = try empty(s)
            backend.reduce(op, t, outer: outer, n: n, inner: inner, into: out)
            t = out
        }
        return axes.isEmpty ? try t.copied() : t
    }

    /// A fresh copy of the values (no graph edge).
    public func copied() throws -> Tensor {
        let out = try empty()
        backend.copy(self, into: out)
        return out
    }
}
