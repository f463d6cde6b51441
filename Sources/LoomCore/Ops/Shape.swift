// Reshape, permute, slice, concatenate. Reshape is a view; the others copy.

extension Tensor {
    /// The same values with a new shape; one axis may be -1 (inferred).
    public func reshaped(_ newShape: [Int]) throws -> Tensor {
        var s = newShape
        if let i = s.firstIndex(of: -1) {
            let known = s.enumerated().filter { $0.offset != i }.reduce(1) { $0 * $1.element }
            guard known > 0, count % known == 0 else {
                throw LoomError.shapeMismatch("reshape: \(describe(shape)) (\(count) elements) to \(describe(newShape))")
            }
            s[i] = count / known
        }
        guard s.reduce(1, *) == count else {
            throw LoomError.shapeMismatch("reshape: \(describe(shape)) (\(count) elements) to \(describe(newShape)) (\(s.reduce(1, *)) elements)")
        }
        let inShape = shape
        return Tensor.differentiable("reshape", output: view(s), inputs: [self]) { g in [g.view(inShape)] }
    }

    /// [N, ...] -> [N, prod(...)].
    public func flattened(from axis: Int = 1) throws -> Tensor {
        try reshaped(Array(shape[..<axis]) + [shape[axis...].reduce(1, *)])
    }

    /// Axis i of the result is axis perm[i] of self.
    public func permuted(_ perm: [Int]) throws -> Tensor {
        try require4ByteElements("permuted", self)
        guard perm.sorted() == Array(0..<rank) else {
            throw LoomError.invalidArgument("permute: \(perm) is not a permutation of the axes of \(describe(shape))")
        }
        let out = try empty(perm.map { shape[$0] })
        backend.permute(self, perm: perm, into: out)
        var inverse = perm
        for (i, p) in perm.enumerated() { inverse[p] = i }
        return Tensor.differentiable("permute", output: out, inputs: [self]) { g in [try g.permuted(inverse)] }
    }

    /// Swaps two axes (a copy).
    public func transposed(_ a: Int = -2, _ b: Int = -1) throws -> Tensor {
        var perm = Array(0..<rank)
        let i = try normalizeAxis(a, rank: rank, op: "transpose"), j = try normalizeAxis(b, rank: rank, op: "transpose")
        perm.swapAt(i, j)
        return try permuted(perm)
    }

    /// Elements `range` along `axis`.
    public func slice(axis: Int, _ range: Range<Int>) throws -> Tensor {
        try require4ByteElements("slice", self)
        let a = try normalizeAxis(axis, rank: rank, op: "slice")
        guard range.lowerBound >= 0, range.upperBound <= shape[a] else {
            throw LoomError.invalidArgument("slice: range \(range) outside axis \(a) of size \(shape[a]) in \(describe(shape))")
        }
        let (outer, n, inner) = splitAround(a)
        var s = shape; s[a] = range.count
        let out = try empty(s)
        backend.copyBlocks(self, srcOffset: range.lowerBound * inner, srcStride: n * inner,
                           into: out, dstOffset: 0, dstStride: range.count * inner,
                           rows: outer, width: range.count * inner, accumulate: false)
        let x = self
        return Tensor.differentiable("slice", output: out, inputs: [self]) { g in
            let gx = try Tensor.zeros(x.shape, on: x.backend)
            x.backend.copyBlocks(g, srcOffset: 0, srcStride: range.count * inner, into: gx,
                                 dstOffset: range.lowerBound * inner, dstStride: n * inner,
                                 rows: outer, width: range.count * inner, accumulate: false)
            return [gx]
        }
    }

    /// Joins tensors along `axis`; all other axes must agree.
    public static func concat(_ tensors: [Tensor], axis: Int) throws -> Tensor {
        for t in tensors { try require4ByteElements("concat", t) }
        guard let first = tensors.first else { throw LoomError.invalidArgument("concat: no tensors") }
        let a = try normalizeAxis(axis, rank: first.rank, op: "concat")
        for t in tensors {
            var s1 = t.shape, s0 = first.shape
            guard s1.count == s0.count else {
                throw LoomError.shapeMismatch("concat: \(describe(first.shape)) and \(describe(t.shape)) differ in rank")
            }
            s1[a] = 0; s0[a] = 0
            guard s1 == s0 else {
                throw LoomError.shapeMismatch("concat along axis \(a): \(describe(first.shape)) and \(describe(t.shape)) differ off that axis")
            }
            try requireSameDevice("concat", first, t)
        }
        let total = tensors.reduce(0) { $0 + $1.shape[a] }
        var s = first.shape; s[a] = total
        let out = try first.empty(s)
        let (outer, _, inner) = out.splitAround(a)
        var at = 0
        for t in tensors {
            let w = t.shape[a] * inner
            first.backend.copyBlocks(t, srcOffset: 0, srcStride: w, into: out, dstOffset: at, dstStride: total * inner,
                                     rows: outer, width: w, accumulate: false)
            at += w
        }
        return Tensor.differentiable("concat", output: out, inputs: tensors) { g in
            var start = 0
            return try tensors.map { t in
                defer { start += t.shape[a] }
                return t.requiresGrad ? try g.slice(axis: a, start..<(start + t.shape[a])) : nil
            }
        }
    }

    /// Pieces of the given sizes along `axis`.
    public func split(_ sizes: [Int], axis: Int) throws -> [Tensor] {
        let a = try normalizeAxis(axis, rank: rank, op: "split")
        guard sizes.reduce(0, +) == shape[a] else {
            throw LoomError.shapeMismatch("split: sizes \(sizes) do not add up to axis \(a) of \(describe(shape))")
        }
        var start = 0
        return try sizes.map { n in defer { start += n }; return try slice(axis: a, start..<(start + n)) }
    }
}
