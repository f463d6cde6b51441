#if canImport(Glibc)
import Glibc
#endif

// Softmax, layer norm and batch-norm statistics: row-wise kernels, rows split across threads.

extension CPUBackend {
    public func softmax(_ x: Tensor, rows: Int, cols: Int, log: Bool, into y: Tensor) {
        let px = x.ptr, py = y.ptr
        parallelFor(rows, grain: max(1, 4096 / max(cols, 1)), threads: threads) { r in
            for row in r {
                let x = px + row * cols, y = py + row * cols
                let m = max8(x, cols)
                if m == -.infinity { y.update(repeating: log ? -.infinity : 0, count: cols); continue }
                let mv = F8(repeating: m)
                map8(x, y, cols) { exp8($0 - mv) }
                let s = sum8(y, cols)
                if log {
                    let shift = F8(repeating: m + logf(s))
                    map8(x, y, cols) { $0 - shift }
                } else {
                    let inv = 1 / s
                    map8(y, y, cols) { $0 * inv }
                }
            }
        }
    }

    public func softmaxBackward(y: Tensor, gradOutput: Tensor, rows: Int, cols: Int, log: Bool, into gx: Tensor) {
        let py = y.ptr, pg = gradOutput.ptr, pgx = gx.ptr
        parallelFor(rows, grain: max(1, 4096 / max(cols, 1)), threads: threads) { r in
            for row in r {
                let y = py + row * cols, g = pg + row * cols, gx = pgx + row * cols
                if log {
                    // y = log p: gx = g - p * sum(g)
                    let s = F8(repeating: sum8(g, cols))
                    zip8(g, y, gx, cols) { $0 - exp8($1) * s }
                } else {
                    // gx = p * (g - <g, p>)
                    let d = F8(repeating: dot8(g, y, cols))
                    zip8(g, y, gx, cols) { $1 * ($0 - d) }
                }
            }
        }
    }

    public func maskUpperTriangle(_ x: Tensor, rows: Int, cols: Int, value: Float) {
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
        let px = x.ptr, py = y.ptr, pgm = gamma.ptr, pbt = beta.ptr, pm = mean.ptr, pr = rstd.ptr
        parallelFor(rows, grain: max(1, 4096 / max(cols, 1)), threads: threads) { r in
            for row in r {
                let x = px + row * cols, y = py + row * cols
                let mu = sum8(x, cols) / Float(cols)
                let muv = F8(repeating: mu)
                // Two passes: the variance of x - mu, not E[x^2] - mu^2 (cancellation).
                map8(x, y, cols) { $0 - muv }
                let variance = dot8(y, y, cols) / Float(cols)
                let rs = 1 / (variance + eps).squareRoot()
                pm[row] = mu; pr[row] = rs
                let rsv = F8(repeating: rs)
                var j = 0
                while j + 8 <= cols {
                    store8(load8(y + j) * rsv * load8(pgm + j) + load8(pbt + j), y + j); j += 8
                }
                while j < cols { y[j] = y[j] * rs * pgm[j] + pbt[j]; j += 1 }
            }
        }
    }

    public func layerNormBackward(x: Tensor, gamma: Tensor, mean: Tensor, rstd: Tensor, gradOutput: Tensor,
                                  rows: Int, cols: Int, gradInput: Tensor, gradGamma: Tensor, gradBeta: Tensor) {
        let px = x.ptr, pgm = gamma.ptr, pm = mean.ptr, pr = rstd.ptr, pg = gradOutput.ptr, pgx = gradInput.ptr
        // Each chunk sums its rows' contributions to dgamma/dbeta in its own buffer;
        // buffers are added in chunk order, so the result does not depend on timing.
        let chunks = max(1, min(threads, rows / 16))
        let per = (rows + chunks - 1) / chunks
        let partial = UnsafeMutablePointer<Float>.allocate(capacity: chunks * 2 * cols)
        defer { partial.deallocate() }
        partial.initialize(repeating: 0, count: chunks * 2 * cols)
        parallelFor(chunks, grain: 1, threads: threads) { cr in
            let xhat = UnsafeMutablePointer<Float>.allocate(capacity: cols)
            defer { xhat.deallocate() }
            for c in cr {
                let dg = partial + c * 2 * cols, db = dg + cols
                for row in (c * per)..<min(rows, (c + 1) * per) {
                    let x = px + row * cols, g = pg + row * cols, gx = pgx + row * cols
                    let mu = F8(repeating: pm[row]), rs = pr[row], rsv = F8(repeating: rs)
                    map8(x, xhat, cols) { ($0 - mu) * rsv }
                    // dxhat = g * gamma; gx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
                    var s1 = F8(), s2 = F8()
                    var j = 0
                    while j + 8 <= cols {
                        let gv = load8(g + j), xh = load8(xhat + j), dxh = gv * load8(pgm + j)
                        s1 += dxh; s2 += dxh * xh
                        store8(load8(dg + j) + gv * xh, dg + j)
                        store8(load8(db + j) + gv, db + j)
                        j += 8
                    }
                    var t1 = s1.sum(), t2 = s2.sum()
                    while j < cols {
                        let dxh = g[j] * pgm[j]
                        t1 += dxh; t2 += dxh * xhat[j]
                        dg[j] += g[j] * xhat[j]; db[j] += g[j]
                        j += 1
                    }
                    let m1 = F8(repeating: t1 / Float(cols)), m2 = F8(repeating: t2 / Float(cols))
                    j = 0
                    while j + 8 <= cols {
                        let dxh = load8(g + j) * load8(pgm + j)
                        store8(rsv * (dxh - m1 - load8(xhat + j) * m2), gx + j)
                        j += 8
                    }
                    while j < cols { gx[j] = rs * (g[j] * pgm[j] - m1[0] - xhat[j] * m2[0]); j += 1 }
                }
            }
        }
        let dg = gradGamma.ptr, db = gradBeta.ptr
        dg.update(from: partial, count: cols)
        db.update(from: partial + cols, count: cols)
        for c in 1..<chunks {
            zip8(dg, partial + c * 2 * cols, dg, cols, +)
            zip8(db, partial + c * 2 * cols + cols, db, cols, +)
        }
    }

    public func channelMoments(_ x: Tensor, n: Int, channels: Int, inner: Int, mean: Tensor, variance: Tensor) {
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
        let px = x.ptr, py = y.ptr, pm = mean.ptr, ps = scale.ptr, pt = shift.ptr
        parallelFor(n * channels, grain: max(1, 4096 / max(inner, 1)), threads: threads) { r in
            for row in r {
                let c = row % channels
                let mu = F8(repeating: pm[c]), s = F8(repeating: ps[c]), t = F8(repeating: pt[c])
                map8(px + row * inner, py + row * inner, inner) { ($0 - mu) * s + t }
            }
        }
    }

    public func channelGradSums(x: Tensor, mean: Tensor, gradOutput: Tensor, n: Int, channels: Int, inner: Int,
                                sumGrad: Tensor, sumGradXmu: Tensor) {
        let px = x.ptr, pm = mean.ptr, pg = gradOutput.ptr, p1 = sumGrad.ptr, p2 = sumGradXmu.ptr
        parallelFor(channels, grain: 1, threads: threads) { r in
            for c in r {
                var s1: Float = 0, s2: Float = 0
                let mu = pm[c]
                for b in 0..<n {
                    let off = (b * channels + c) * inner
                    s1 += sum8(pg + off, inner)
                    for j in 0..<inner { s2 += pg[off + j] * (px[off + j] - mu) }
                }
                p1[c] = s1; p2[c] = s2
            }
        }
    }
}
