extension CPUBackend {
    public func reduce(_ op: ReduceOp, _ x: Tensor, outer: Int, n: Int, inner: Int, into y: Tensor) {
        let started = monotonicSeconds(); defer { count(.reduction, since: started) }
        let px = x.ptr, py = y.ptr
        if inner == 1 {
            // Contiguous rows: one vector reduction per output element.
            parallelFor(outer, grain: max(1, 8192 / max(n, 1)), threads: threads) { r in
                for o in r {
                    py[o] = op == .sum ? sum8(px + o * n, n) : max8(px + o * n, n)
                }
            }
            return
        }
        // Strided: accumulate whole rows of `inner` elements (vectorised across inner).
        // Parallel over outer when there is enough of it, else over inner columns.
        let byOuter = outer >= threads
        let count = byOuter ? outer : inner
        parallelFor(count, grain: byOuter ? 1 : 256, threads: threads) { r in
            let oRange = byOuter ? r : 0..<outer
            let cRange = byOuter ? 0..<inner : r
            let w = cRange.count
            for o in oRange {
                let dst = py + o * inner + cRange.lowerBound
                let src = px + o * n * inner + cRange.lowerBound
                dst.update(from: src, count: w)
                for j in 1..<max(n, 1) {
                    let row = src + j * inner
                    if op == .sum {
                        zip8(dst, row, dst, w, +)
                    } else {
                        zip8(dst, row, dst, w) { vmax($0, $1) }
                    }
                }
            }
        }
    }

    public func argmax(_ x: Tensor, outer: Int, n: Int, inner: Int, into indices: Tensor) {
        let started = monotonicSeconds(); defer { count(.reduction, since: started) }
        let px = x.ptr, pi = indices.intPtr
        for o in 0..<outer {
            for c in 0..<inner {
                var best = -Float.infinity, at = 0
                for j in 0..<n {
                    let v = px[(o * n + j) * inner + c]
                    if v > best { best = v; at = j }
                }
                pi[o * inner + c] = Int32(at)
            }
        }
    }

    public func sumOfSquares(_ tensors: [Tensor]) -> Double {
        let started = monotonicSeconds(); defer { count(.reduction, since: started) }
        var total = 0.0
        for t in tensors { total += Double(dot8(t.ptr, t.ptr, t.count)) }
        return total
    }
}
