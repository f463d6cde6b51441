import CLoomKernels
#if canImport(Glibc)
import Glibc
#endif

// Softmax, layer norm and batch-norm statistics: row-wise kernels, rows split across threads.

extension CPUBackend {
    public func softmax(_ x: Tensor, rows: Int, cols: Int, log: Bool, into y: Tensor) {
        let started = monotonicSeconds(); defer { count(.softmax, since: started) }
        let px = x.ptr, py = y.ptr
        parallelFor(rows, grain: max(1, 4096 / max(cols, 1)), threads: threads) { r in
            loom_softmax_rows(px + r.lowerBound * cols, py + r.lowerBound * cols, Int64(r.count), Int64(cols),
                              log ? 1 : 0, 0)
        }
    }

    public func softmaxBackward(y: Tensor, gradOutput: Tensor, rows: Int, cols: Int, log: Bool, into gx: Tensor) {
        let started = monotonicSeconds(); defer { count(.softmax, since: started) }
        let py = y.ptr, pg = gradOutput.ptr, pgx = gx.ptr
        parallelFor(rows, grain: max(1, 4096 / max(cols, 1)), threads: threads) { r in
            let o = r.lowerBound * cols
            loom_softmax_backward_rows(py + o, pg + o, pgx + o, Int64(r.count), Int64(cols), log ? 1 : 0, 0)
        }
    }

    public func maskUpperTriangle(_ x: Tensor, rows: Int, cols: Int, value: Float) {
        let started = monotonicSeconds(); defer { count(.softmax, since: started) }
        let px = x.ptr
        let matrices = x.count / max(rows * cols, 1)
        parallelFor(matrices, grain: 1, threads: threads) { r in
            for b in r {
                let m = px + b * rows * cols
                for i in 0..<rows where i + 1 < cols {
                    (m + i * cols + i + 1).update(repeating: value, count: cols - i - 1)
                }
            }
        }
    }

    public func layerNorm(_ x: Tensor, gamma: Tensor, beta: Tensor, eps: Float, rows: Int, cols: Int,
                          into y: Tensor, mean: Tensor, rstd: Tensor) {
        let started = monotonicSeconds(); defer { count(.norm, since: started) }
        let px = x.ptr, py = y.ptr, pgm = gamma.ptr, pbt = beta.ptr, pm = mean.ptr, pr = rstd.ptr
        parallelFor(rows, grain: max(1, 4096 / max(cols, 1)), threads: threads) { r in
            let o = r.lowerBound * cols
            loom_layernorm_rows(px + o, pgm, pbt, eps, Int64(r.count), Int64(cols), py + o, pm + r.lowerBound,
                                pr + r.lowerBound)
        }
    }

    public func layerNormBackward(x: Tensor, gamma: Tensor, mean: Tensor, rstd: Tensor, gradOutput: Tensor,
                                  rows: Int, cols: Int, gradInput: Tensor, gradGamma: Tensor, gradBeta: Tensor) {
        let started = monotonicSeconds(); defer { count(.norm, since: started) }
        let px = x.ptr, pgm = gamma.ptr, pm = mean.ptr, pr = rstd.ptr, pg = gradOutput.ptr, pgx = gradInput.ptr
        // Each chunk sums its rows' contributions to dgamma/dbeta in its own buffer;
        // buffers are added in chunk order, so the result does not depend on timing.
        let chunks = max(1, min(threads, rows / 16))
        let per = (rows + chunks - 1) / chunks
        let partial = UnsafeMutablePointer<Float>.allocate(capacity: chunks * 3 * cols)
        defer { partial.deallocate() }
        partial.initialize(repeating: 0, count: chunks * 3 * cols)
        parallelFor(chunks, grain: 1, threads: threads) { cr in
            for c in cr {
                let lo = c * per, hi = min(rows, (c + 1) * per)
                guard lo < hi else { continue }
                let dg = partial + c * 3 * cols, db = dg + cols, xhat = db + cols
                let o = lo * cols
                loom_layernorm_backward_rows(px + o, pgm, pm + lo, pr + lo, pg + o, Int64(hi - lo), Int64(cols),
                                             pgx + o, dg, db, xhat)
            }
        }
        let dg = gradGamma.ptr, db = gradBeta.ptr
        dg.update(from: partial, count: cols)
        db.update(from: partial + cols, count: cols)
        for c in 1..<chunks {
            zip8(dg, partial + c * 3 * cols, dg, cols, +)
            zip8(db, partial + c * 3 * cols + cols, db, cols, +)
        }
    }

    public func channelMoments(_ x: Tensor, n: Int, channels: Int, inner: Int, mean: Tensor, variance: Tensor) {
        let started = monotonicSeconds(); defer { count(.norm, since: started) }
        let px = x.ptr, pm = mean.ptr, pv = variance.ptr
        let m = Float(n * inner)
        parallelFor(channels, grain: 1, threads: threads) { r in
            for c in r {
                var s: Float = 0
                for b in 0..<n { s += sum8(px + (b * channels + c) * inner, inner) }
                let mu = s / m
                var v: Float = 0
                let muv = F8(repeating: mu)
                for b in 0..<n {
                    let row = px + (b * channels + c) * inner
                    var acc = F8(), j = 0
                    while j + 8 <= inner { let d = load8(row + j) - muv; acc += d * d; j += 8 }
                    v += acc.sum()
                    while j < inner { let d = row[j] - mu; v += d * d; j += 1 }
                }
                pm[c] = mu; pv[c] = v / m
            }
        }
    }

    public func channelAffine(_ x: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, n: Int, channels: Int, inner: Int,
                              into y: Tensor) {
        let started = monotonicSeconds(); defer { count(.norm, since: started) }
        let px = x.ptr, py = y.ptr, pm = mean.ptr, ps = scale.ptr, pt = shift.ptr
        parallelFor(n * channels, grain: max(1, 4096 / max(inner, 1)), threads: threads) { r in
            for row in r {
                let c = row % channels
                let mu = F8(repeating: pm[c]), s = F8(repeating: ps[c]), t = F8(repeating: pt[c])
                map8(px + row * inner, py + row * inner, inner) { ($0 - mu) * s + t }
            }
        }
    }

    public func channelCombine(_ g: Tensor, _ x: Tensor, gScale: Tensor, xScale: Tensor, shift: Tensor, n: Int, channels: Int, inner: Int,
                               into y: Tensor) {
        let started = monotonicSeconds(); defer { count(.norm, since: started) }
        let pg = g.ptr, px = x.ptr, py = y.ptr, pa = gScale.ptr, pb = xScale.ptr, pd = shift.ptr
        parallelFor(n * channels, grain: max(1, 4096 / max(inner, 1)), threads: threads) { r in
            for row in r {
                let c = row % channels
                let a = F8(repeating: pa[c]), b = F8(repeating: pb[c]), d = F8(repeating: pd[c])
                zip8(pg + row * inner, px + row * inner, py + row * inner, inner) { g, x in g * a + x * b + d }
            }
        }
    }

    public func channelGradSums(x: Tensor, mean: Tensor, gradOutput: Tensor, n: Int, channels: Int, inner: Int,
                                sumGrad: Tensor, sumGradXmu: Tensor) {
        let started = monotonicSeconds(); defer { count(.norm, since: started) }
        let px = x.ptr, pm = mean.ptr, pg = gradOutput.ptr, p1 = sumGrad.ptr, p2 = sumGradXmu.ptr
        parallelFor(channels, grain: 1, threads: threads) { r in
            for c in r {
                // One pass over g and x. Eight lanes per row, then the row's sum, as
                // `channelMoments` sums: with g = x - mean (synchronised batch norm's
                // variance) s2 is its variance sum, added up in the same order.
                var s1: Float = 0, s2: Float = 0
                let mu = pm[c], muv = F8(repeating: mu)
                for b in 0..<n {
                    let off = (b * channels + c) * inner
                    var sumG = F8(), acc = F8(), j = 0
                    while j + 8 <= inner {
                        let g = load8(pg + off + j)
                        sumG += g
                        acc += g * (load8(px + off + j) - muv)
                        j += 8
                    }
                    s1 += sumG.sum()
                    s2 += acc.sum()
                    while j < inner { s1 += pg[off + j]; s2 += pg[off + j] * (px[off + j] - mu); j += 1 }
                }
                p1[c] = s1; p2[c] = s2
            }
        }
    }
}
