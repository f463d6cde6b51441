#if canImport(Glibc)
import Glibc
#endif

// Embedding lookup, cross-entropy and dropout masks.

extension CPUBackend {
    public func gather(_ table: Tensor, indices: Tensor, into out: Tensor) throws {
        let started = monotonicSeconds(); defer { count(.embedding, since: started) }
        let rows = table.shape[0], width = table.count / max(rows, 1)
        let pt = table.ptr, pi = indices.intPtr, po = out.ptr
        for i in 0..<indices.count where pi[i] < 0 || Int(pi[i]) >= rows {
            throw LoomError.invalidArgument("embedding: index \(pi[i]) at position \(i) is outside the table of \(rows) rows")
        }
        parallelFor(indices.count, grain: 64, threads: threads) { r in
            for i in r { (po + i * width).update(from: pt + Int(pi[i]) * width, count: width) }
        }
    }

    public func scatterAdd(_ src: Tensor, indices: Tensor, into grad: Tensor) {
        let started = monotonicSeconds(); defer { count(.embedding, since: started) }
        let rows = grad.shape[0], width = grad.count / max(rows, 1)
        let ps = src.ptr, pi = indices.intPtr, pg = grad.ptr
        // Parallel over columns: rows may repeat, columns never collide.
        parallelFor(width, grain: 64, threads: threads) { cr in
            let w = cr.count
            for i in 0..<indices.count {
                let d = pg + Int(pi[i]) * width + cr.lowerBound
                zip8(d, ps + i * width + cr.lowerBound, d, w, +)
            }
        }
    }

    public func crossEntropy(logits: Tensor, targets: Tensor, rows: Int, classes: Int, ignoreIndex: Int32,
                             losses: Tensor, weights: Tensor, probabilities: Tensor) throws {
        let started = monotonicSeconds(); defer { count(.loss, since: started) }
        let px = logits.ptr, pt = targets.intPtr, pl = losses.ptr, pw = weights.ptr, pp = probabilities.ptr
        for i in 0..<rows where pt[i] != ignoreIndex && (pt[i] < 0 || Int(pt[i]) >= classes) {
            throw LoomError.invalidArgument("cross-entropy: target \(pt[i]) at row \(i) is outside 0..<\(classes)")
        }
        parallelFor(rows, grain: max(1, 4096 / max(classes, 1)), threads: threads) { r in
            for row in r {
                let x = px + row * classes, p = pp + row * classes
                let m = max8(x, classes), mv = F8(repeating: m)
                map8(x, p, classes) { exp8($0 - mv) }
                let s = sum8(p, classes)
                let inv = 1 / s
                map8(p, p, classes) { $0 * inv }
                let t = pt[row]
                pl[row] = t == ignoreIndex ? 0 : (m + logf(s)) - x[Int(t)]
                pw[row] = t == ignoreIndex ? 0 : 1
            }
        }
    }

    public func crossEntropyBackward(probabilities: Tensor, targets: Tensor, rows: Int, classes: Int, ignoreIndex: Int32,
                                     scale: Tensor, into gx: Tensor) {
        let started = monotonicSeconds(); defer { count(.loss, since: started) }
        let pp = probabilities.ptr, pt = targets.intPtr, pg = gx.ptr, scale = scale.ptr[0]
        parallelFor(rows, grain: max(1, 4096 / max(classes, 1)), threads: threads) { r in
            for row in r {
                let g = pg + row * classes
                let t = pt[row]
                if t == ignoreIndex { g.update(repeating: 0, count: classes); continue }
                map8(pp + row * classes, g, classes) { $0 * scale }
                g[Int(t)] -= scale
            }
        }
    }

    public func dropoutMask(_ mask: Tensor, p: Float, seed: UInt64, counter: UInt64) {
        let started = monotonicSeconds(); defer { count(.elementwise, since: started) }
        let pm = mask.ptr, n = mask.count
        let keep = 1 / (1 - p)
        let blocks = (n + 3) / 4
        parallelFor(blocks, grain: 1024, threads: threads) { r in
            for b in r {
                let u = Philox.block(key: seed, counter: counter &+ UInt64(b))
                let lanes = [u.0, u.1, u.2, u.3]
                for lane in 0..<4 where b * 4 + lane < n {
                    pm[b * 4 + lane] = Philox.unitFloat(lanes[lane]) < p ? 0 : keep
                }
            }
        }
    }

    public func gatherAlongAxis(_ x: Tensor, indices: Tensor, outer: Int, n: Int, inner: Int, into y: Tensor) {
        let started = monotonicSeconds(); defer { count(.embedding, since: started) }
        let px = x.ptr, pi = indices.intPtr, py = y.ptr
        for o in 0..<outer {
            for c in 0..<inner {
                let j = Int(pi[o * inner + c])
                py[o * inner + c] = j >= 0 && j < n ? px[(o * n + j) * inner + c] : 0
            }
        }
    }

    public func scatterAlongAxis(_ src: Tensor, indices: Tensor, outer: Int, n: Int, inner: Int, into y: Tensor) {
        let started = monotonicSeconds(); defer { count(.embedding, since: started) }
        let ps = src.ptr, pi = indices.intPtr, py = y.ptr
        for o in 0..<outer {
            for c in 0..<inner {
                let j = Int(pi[o * inner + c])
                if j >= 0 && j < n { py[(o * n + j) * inner + c] += ps[o * inner + c] }
            }
        }
    }

    public func localIndices(_ indices: Tensor, range: Range<Int>, local: Tensor, mask: Tensor) {
        let pi = indices.intPtr, pl = local.intPtr, pm = mask.ptr
        let lo = Int32(range.lowerBound), hi = Int32(range.upperBound)
        for i in 0..<indices.count {
            let inside = pi[i] >= lo && pi[i] < hi
            pl[i] = inside ? pi[i] - lo : 0
            pm[i] = inside ? 1 : 0
        }
    }
}
