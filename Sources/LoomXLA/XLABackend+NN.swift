import Foundation
import LoomCore

// Neural-network kernels and optimizers, lowered to StableHLO with the CPU backend's
// formulas (CPU+Norm.swift, CPU+Index.swift, CPU+Conv.swift, CLoomKernels/Optim.c).

extension XLABackend {
    // MARK: Softmax and masks

    public func softmax(_ x: Tensor, rows: Int, cols: Int, log: Bool, into y: Tensor) {
        lock.withLock {
            let v = hlo.reshape(read(x), [rows, cols])
            let m = hlo.broadcast(hlo.reduce(v, .max, dimensions: [1]), [rows, cols], dims: [0])
            let shifted = hlo.sub(v, m)
            let e = hlo.unary("exponential", shifted)
            let s = hlo.broadcast(hlo.reduce(e, .sum, dimensions: [1]), [rows, cols], dims: [0])
            // e · (1/Σ), as the CPU's kernel does (a division rounds differently).
            write(y, log ? hlo.sub(shifted, hlo.unary("log", s)) : hlo.mul(e, hlo.div(hlo.constant(1, s.shape), s)))
        }
    }

    public func softmaxBackward(y: Tensor, gradOutput: Tensor, rows: Int, cols: Int, log: Bool, into gx: Tensor) {
        lock.withLock {
            let yv = hlo.reshape(read(y), [rows, cols]), g = hlo.reshape(read(gradOutput), [rows, cols])
            if log {  // gx = g - exp(y) Σ g
                let s = hlo.broadcast(hlo.reduce(g, .sum, dimensions: [1]), [rows, cols], dims: [0])
                write(gx, hlo.sub(g, hlo.mul(hlo.unary("exponential", yv), s)))
            } else {  // gx = y (g - Σ g y)
                let s = hlo.broadcast(hlo.reduce(hlo.mul(g, yv), .sum, dimensions: [1]), [rows, cols], dims: [0])
                write(gx, hlo.mul(yv, hlo.sub(g, s)))
            }
        }
    }

    public func maskUpperTriangle(_ x: Tensor, rows: Int, cols: Int, value: Float) {
        lock.withLock {
            let matrices = x.count / max(rows * cols, 1)
            let v = hlo.reshape(read(x), [matrices, rows, cols])
            let above = hlo.compare(hlo.iota(v.shape, dimension: 2), hlo.iota(v.shape, dimension: 1), "GT")
            write(x, hlo.select(above, hlo.constant(Double(value), v.shape, v.type), v))
        }
    }

    // MARK: Normalisation

    public func layerNorm(_ x: Tensor, gamma: Tensor, beta: Tensor, eps: Float, rows: Int, cols: Int,
                          into y: Tensor, mean: Tensor, rstd: Tensor) {
        lock.withLock {
            let v = hlo.reshape(read(x), [rows, cols])
            let n = Double(cols)
            let mu = hlo.withConstant("divide", hlo.reduce(v, .sum, dimensions: [1]), n)
            let d = hlo.sub(v, hlo.broadcast(mu, [rows, cols], dims: [0]))
            let variance = hlo.withConstant("divide", hlo.reduce(hlo.mul(d, d), .sum, dimensions: [1]), n)
            let r = hlo.unary("rsqrt", hlo.withScalar("add", variance, scalar(eps)))
            let xhat = hlo.mul(d, hlo.broadcast(r, [rows, cols], dims: [0]))
            let g = hlo.broadcast(hlo.reshape(read(gamma), [cols]), [rows, cols], dims: [1])
            let b = hlo.broadcast(hlo.reshape(read(beta), [cols]), [rows, cols], dims: [1])
            write(y, hlo.add(hlo.mul(xhat, g), b))
            write(mean, mu)
            write(rstd, r)
        }
    }

    public func layerNormBackward(x: Tensor, gamma: Tensor, mean: Tensor, rstd: Tensor, gradOutput: Tensor,
                                  rows: Int, cols: Int, gradInput: Tensor, gradGamma: Tensor, gradBeta: Tensor) {
        lock.withLock {
            let v = hlo.reshape(read(x), [rows, cols]), g = hlo.reshape(read(gradOutput), [rows, cols])
            let r = hlo.broadcast(hlo.reshape(read(rstd), [rows]), [rows, cols], dims: [0])
            let xhat = hlo.mul(hlo.sub(v, hlo.broadcast(hlo.reshape(read(mean), [rows]), [rows, cols], dims: [0])), r)
            let dxhat = hlo.mul(g, hlo.broadcast(hlo.reshape(read(gamma), [cols]), [rows, cols], dims: [1]))
            let n = Double(cols)
            let m1 = hlo.broadcast(hlo.withConstant("divide", hlo.reduce(dxhat, .sum, dimensions: [1]), n), [rows, cols], dims: [0])
            let m2 = hlo.broadcast(hlo.withConstant("divide", hlo.reduce(hlo.mul(dxhat, xhat), .sum, dimensions: [1]), n), [rows, cols], dims: [0])
            // dx = rstd (dx̂ - mean(dx̂) - x̂ mean(dx̂ x̂))
            write(gradInput, hlo.mul(r, hlo.sub(hlo.sub(dxhat, m1), hlo.mul(xhat, m2))))
            write(gradGamma, hlo.reduce(hlo.mul(g, xhat), .sum, dimensions: [0]))
            write(gradBeta, hlo.reduce(g, .sum, dimensions: [0]))
        }
    }

    /// A per-channel vector [C] spread over [n, C, inner].
    private func perChannel(_ t: Tensor, n: Int, channels: Int, inner: Int) -> HLOValue {
        hlo.broadcast(hlo.reshape(read(t), [channels]), [n, channels, inner], dims: [1])
    }

    public func channelMoments(_ x: Tensor, n: Int, channels: Int, inner: Int, mean: Tensor, variance: Tensor) {
        lock.withLock {
            let v = hlo.reshape(read(x), [n, channels, inner])
            let m = Double(n * inner)
            let mu = hlo.withConstant("divide", hlo.reduce(v, .sum, dimensions: [0, 2]), m)
            let d = hlo.sub(v, hlo.broadcast(mu, v.shape, dims: [1]))
            write(mean, mu)
            write(variance, hlo.withConstant("divide", hlo.reduce(hlo.mul(d, d), .sum, dimensions: [0, 2]), m))
        }
    }

    public func channelAffine(_ x: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, n: Int, channels: Int, inner: Int,
                              into y: Tensor) {
        lock.withLock {
            let v = hlo.reshape(read(x), [n, channels, inner])
            let c = { self.perChannel($0, n: n, channels: channels, inner: inner) }
            write(y, hlo.add(hlo.mul(hlo.sub(v, c(mean)), c(scale)), c(shift)))
        }
    }

    public func channelCombine(_ g: Tensor, _ x: Tensor, gScale: Tensor, xScale: Tensor, shift: Tensor, n: Int, channels: Int, inner: Int,
                               into y: Tensor) {
        lock.withLock {
            let shape = [n, channels, inner]
            let gv = hlo.reshape(read(g), shape), xv = hlo.reshape(read(x), shape)
            let c = { self.perChannel($0, n: n, channels: channels, inner: inner) }
            write(y, hlo.add(hlo.add(hlo.mul(gv, c(gScale)), hlo.mul(xv, c(xScale))), c(shift)))
        }
    }

    public func channelGradSums(x: Tensor, mean: Tensor, gradOutput: Tensor, n: Int, channels: Int, inner: Int,
                                sumGrad: Tensor, sumGradXmu: Tensor) {
        lock.withLock {
            let shape = [n, channels, inner]
            let g = hlo.reshape(read(gradOutput), shape), xv = hlo.reshape(read(x), shape)
            let xmu = hlo.sub(xv, perChannel(mean, n: n, channels: channels, inner: inner))
            write(sumGrad, hlo.reduce(g, .sum, dimensions: [0, 2]))
            write(sumGradXmu, hlo.reduce(hlo.mul(g, xmu), .sum, dimensions: [0, 2]))
        }
    }

    // MARK: Embeddings and the loss

    public func gather(_ table: Tensor, indices: Tensor, into out: Tensor) throws {
        lock.withLock {
            let rows = table.shape[0], width = table.count / max(rows, 1)
            let i = hlo.reshape(read(indices), [indices.count])
            checkRange(i, rows, "embedding: an index is outside the table of \(rows) rows")
            write(out, hlo.gatherRows(hlo.reshape(read(table), [rows, width]), i))
        }
    }

    public func scatterAdd(_ src: Tensor, indices: Tensor, into grad: Tensor) {
        lock.withLock {
            let rows = grad.shape[0], width = grad.count / max(rows, 1)
            let i = hlo.reshape(read(indices), [indices.count])
            write(grad, hlo.scatterAddRows(hlo.reshape(read(grad), [rows, width]), i, hlo.reshape(read(src), [indices.count, width])))
        }
    }

    /// Records a check that every int32 in `i` is in 0..<upper (or equal to `except`).
    private func checkRange(_ i: HLOValue, _ upper: Int, _ message: String, except: Int32? = nil) {
        var bad = hlo.binary("or", hlo.compare(i, hlo.constant(0, i.shape, .i32), "LT"),
                             hlo.compare(i, hlo.constant(Double(upper), i.shape, .i32), "GE"))
        if let except { bad = hlo.binary("and", bad, hlo.compare(i, hlo.constant(Double(except), i.shape, .i32), "NE")) }
        let any = hlo.reduce(hlo.convert(bad, .i32), .max, dimensions: [0])
        check(hlo.compare(any, hlo.constant(0, [], .i32), "NE"), message)
    }

    public func crossEntropy(logits: Tensor, targets: Tensor, rows: Int, classes: Int, ignoreIndex: Int32,
                             losses: Tensor, weights: Tensor, probabilities: Tensor) throws {
        lock.withLock {
            let x = hlo.reshape(read(logits), [rows, classes])
            let t = hlo.reshape(read(targets), [rows])
            checkRange(t, classes, "cross-entropy: a target is outside 0..<\(classes)", except: ignoreIndex)
            let m = hlo.reduce(x, .max, dimensions: [1])
            let e = hlo.unary("exponential", hlo.sub(x, hlo.broadcast(m, [rows, classes], dims: [0])))
            let s = hlo.reduce(e, .sum, dimensions: [1])
            write(probabilities, hlo.mul(e, hlo.broadcast(hlo.div(hlo.constant(1, s.shape), s), [rows, classes], dims: [0])))
            let hot = hlo.compare(hlo.iota([rows, classes], dimension: 1), hlo.broadcast(t, [rows, classes], dims: [0]), "EQ")
            let picked = hlo.reduce(hlo.select(hot, x, hlo.constant(0, [rows, classes])), .sum, dimensions: [1])
            let counted = hlo.compare(t, hlo.constant(Double(ignoreIndex), [rows], .i32), "NE")
            let zero = hlo.constant(0, [rows])
            write(losses, hlo.select(counted, hlo.sub(hlo.add(m, hlo.unary("log", s)), picked), zero))
            write(weights, hlo.select(counted, hlo.constant(1, [rows]), zero))
        }
    }

    public func crossEntropyBackward(probabilities: Tensor, targets: Tensor, rows: Int, classes: Int, ignoreIndex: Int32,
                                     scale: Tensor, into gx: Tensor) {
        lock.withLock {
            let p = hlo.reshape(read(probabilities), [rows, classes])
            let t = hlo.reshape(read(targets), [rows])
            let k = hlo.splat(read(scale), [rows, classes])
            let hot = hlo.compare(hlo.iota([rows, classes], dimension: 1), hlo.broadcast(t, [rows, classes], dims: [0]), "EQ")
            let g = hlo.sub(hlo.mul(p, k), hlo.select(hot, k, hlo.constant(0, [rows, classes])))
            let counted = hlo.broadcast(hlo.compare(t, hlo.constant(Double(ignoreIndex), [rows], .i32), "NE"), [rows, classes], dims: [0])
            write(gx, hlo.select(counted, g, hlo.constant(0, [rows, classes])))
        }
    }

    /// Philox-4x32-10 in the program (Random/Philox.swift): block b of the stream is
    /// Philox(key: seed, counter: counter + b), its four words the mask's elements 4b…4b+3,
    /// each kept (1/(1-p)) unless its top 24 bits as a fraction fall below p. Seed and
    /// counter are run-time values: every step's new counter runs the same program.
    public func dropoutMask(_ mask: Tensor, p: Float, seed: UInt64, counter: UInt64) {
        lock.withLock {
            let n = mask.count, blocks = (n + 3) / 4
            let w = [blocks]
            func word(_ x: UInt64) -> (HLOValue, HLOValue) {
                (scalar(UInt32(truncatingIfNeeded: x)), scalar(UInt32(truncatingIfNeeded: x >> 32)))
            }
            func splat(_ v: HLOValue) -> HLOValue { hlo.splat(v, w) }
            func const(_ v: UInt32) -> HLOValue { hlo.constant(Double(v), w, .ui32) }
            // counter + b as two 32-bit words, with the carry
            let (cLo, cHi) = word(counter)
            let lo = hlo.add(splat(cLo), hlo.iota(w, dimension: 0, .ui32))
            let carry = hlo.select(hlo.compare(lo, splat(cLo), "LT"), const(1), const(0))
            var c = [lo, hlo.add(splat(cHi), carry), const(0), const(0)]
            let (k0, k1) = word(seed)
            var k = [splat(k0), splat(k1)]
            // (hi, lo) of a 32 x 32 -> 64-bit product
            func mulWide(_ m: UInt32, _ x: HLOValue) -> (HLOValue, HLOValue) {
                let p = hlo.mul(hlo.constant(Double(m), w, .ui64), hlo.convert(x, .ui64))
                let low = hlo.binary("and", p, hlo.constant(Double(UInt32.max), w, .ui64))
                return (hlo.convert(hlo.binary("shift_right_logical", p, hlo.constant(32, w, .ui64)), .ui32), hlo.convert(low, .ui32))
            }
            for _ in 0..<10 {
                let (hi0, lo0) = mulWide(0xD251_1F53, c[0]), (hi1, lo1) = mulWide(0xCD9E_8D57, c[2])
                c = [hlo.binary("xor", hlo.binary("xor", hi1, c[1]), k[0]), lo1, hlo.binary("xor", hlo.binary("xor", hi0, c[3]), k[1]), lo0]
                k = [hlo.add(k[0], const(0x9E37_79B9)), hlo.add(k[1], const(0xBB67_AE85))]
            }
            let words = hlo.reshape(hlo.concatenate(c.map { hlo.reshape($0, [blocks, 1]) }, dimension: 1), [blocks * 4])
            let unit = hlo.withConstant("multiply", hlo.convert(hlo.binary("shift_right_logical", words, hlo.constant(8, [blocks * 4], .ui32)), .f32),
                                        1.0 / 16_777_216.0)
            let shape = [blocks * 4]
            let kept = hlo.select(hlo.compare(unit, hlo.splat(scalar(p), shape), "LT"), hlo.constant(0, shape), hlo.splat(scalar(1 / (1 - p)), shape))
            write(mask, hlo.slice(kept, start: [0], limit: [n]))
        }
    }

    // MARK: Optimizers

    public func sgdStep(_ parameters: [SGDTensors], lr: Float, momentumFactor: Float, dampening: Float, weightDecay: Float,
                        nesterov: Bool) {
        lock.withLock {
            let lrv = scalar(lr), mu = scalar(momentumFactor), keep = scalar(1 - dampening), wd = scalar(weightDecay)
            for t in parameters {
                // On the storages' flat shape, so that the new momentum and parameter are
                // written as computed (no reshape between): XLA then reads the new momentum
                // in the parameter's update instead of recomputing it from the old one, which
                // the in-place momentum write made it copy first (the mlp step: 7 copies, now
                // 3, as in JAX's; its time did not move measurably on 2 cores).
                let flat = [t.param.count]
                let p = hlo.reshape(read(t.param), flat), g0 = hlo.reshape(read(t.grad), flat)
                // Without weight decay the term is left out, not multiplied by a run-time 0 (an
                // exact no-op XLA cannot see): the momentum's update then reads no parameter.
                let g = weightDecay == 0 ? g0 : hlo.add(g0, hlo.withScalar("multiply", p, wd))
                guard let momentum = t.momentum else {
                    write(t.param, hlo.sub(p, hlo.withScalar("multiply", g, lrv)))
                    continue
                }
                let b = hlo.add(hlo.withScalar("multiply", hlo.reshape(read(momentum), flat), mu), hlo.withScalar("multiply", g, keep))
                write(momentum, b)
                let step = nesterov ? hlo.add(g, hlo.withScalar("multiply", b, mu)) : b
                write(t.param, hlo.sub(p, hlo.withScalar("multiply", step, lrv)))
            }
        }
    }

    public func adamStep(_ parameters: [AdamTensors], lr: Float, beta1: Float, beta2: Float, eps: Float, weightDecay: Float,
                         decoupled: Bool, step: Int) {
        lock.withLock {
            // The CPU's: bias corrections folded into the step size and √v's divisor, on the host.
            let bc1 = 1 - powf(beta1, Float(step)), bc2 = 1 - powf(beta2, Float(step))
            let stepSize = scalar(lr / bc1), bc2Sqrt = scalar(bc2.squareRoot())
            let decay = scalar(decoupled ? 1 - lr * weightDecay : 1), l2 = scalar(decoupled ? 0 : weightDecay)
            let b1 = scalar(beta1), b2 = scalar(beta2), c1 = scalar(1 - beta1), c2 = scalar(1 - beta2), e = scalar(eps)
            let usesL2 = !decoupled && weightDecay != 0, decays = decoupled && weightDecay != 0  // else exact no-ops, left out (see sgdStep)
            for t in parameters {
                let p = read(t.param), g0 = hlo.reshape(read(t.grad), p.shape)
                let g = usesL2 ? hlo.add(g0, hlo.withScalar("multiply", p, l2)) : g0
                let m = hlo.add(hlo.withScalar("multiply", hlo.reshape(read(t.m), p.shape), b1), hlo.withScalar("multiply", g, c1))
                let v = hlo.add(hlo.withScalar("multiply", hlo.reshape(read(t.v), p.shape), b2),
                                hlo.withScalar("multiply", hlo.mul(g, g), c2))
                write(t.m, m)
                write(t.v, v)
                let denom = hlo.withScalar("add", hlo.withScalar("divide", hlo.unary("sqrt", v), bc2Sqrt), e)
                write(t.param, hlo.sub(decays ? hlo.withScalar("multiply", p, decay) : p, hlo.div(hlo.withScalar("multiply", m, stepSize), denom)))
            }
        }
    }
}
