// Layer norm and batch norm.

extension Tensor {
    /// Normalises the last axis to zero mean and unit variance, then scales by `gamma`
    /// and shifts by `beta` (both [C]). x: [..., C].
    public func layerNorm(gamma: Tensor, beta: Tensor, eps: Float = 1e-5) throws -> Tensor {
        try requireFloat("layerNorm", self)
        let cols = shape.last ?? 0
        guard gamma.shape == [cols], beta.shape == [cols] else {
            throw LoomError.shapeMismatch("layerNorm: input \(describe(shape)) with gamma \(describe(gamma.shape)), beta \(describe(beta.shape)) (expected [\(cols)])")
        }
        let rows = count / Swift.max(cols, 1)
        let x = self, y = try empty()
        let mean = try empty([rows]), rstd = try empty([rows])
        backend.layerNorm(x, gamma: gamma, beta: beta, eps: eps, rows: rows, cols: cols, into: y, mean: mean, rstd: rstd)
        return Tensor.differentiable("layerNorm", output: y, inputs: [x, gamma, beta]) { g in
            let gx = try x.empty(), gg = try gamma.empty(), gb = try beta.empty()
            x.backend.layerNormBackward(x: x, gamma: gamma, mean: mean, rstd: rstd, gradOutput: g, rows: rows, cols: cols,
                                        gradInput: gx, gradGamma: gg, gradBeta: gb)
            return [gx, gg, gb]
        }
    }

    /// Batch norm over axis 1 of [N, C, ...]. In training, normalises with the batch's
    /// statistics and updates the running ones in place (PyTorch: unbiased variance in
    /// the running estimate); in evaluation, uses the running statistics.
    ///
    /// `synchronized`: synchronised batch norm (PyTorch's SyncBatchNorm). The batch is this
    /// rank's shard of a batch split evenly across `ranks` data-parallel ranks; `sum` adds
    /// a tensor up over them in place. The statistics are then the whole batch's (from the
    /// ranks' sums and sums of squares), and so are the sums in dx; the gamma and beta
    /// gradients stay this rank's part, which the data-parallel reduction adds up.
    public func batchNorm(gamma: Tensor, beta: Tensor, runningMean: Tensor, runningVar: Tensor,
                          training: Bool, momentum: Float = 0.1, eps: Float = 1e-5,
                          synchronized: (ranks: Int, sum: (Tensor) throws -> Void)? = nil) throws -> Tensor {
        try requireFloat("batchNorm", self)
        guard rank >= 2 else { throw LoomError.shapeMismatch("batchNorm: needs [N, C, ...], got \(describe(shape))") }
        let n = shape[0], c = shape[1], inner = count / Swift.max(n * c, 1)
        for (name, t) in [("gamma", gamma), ("beta", beta), ("runningMean", runningMean), ("runningVar", runningVar)]
        where t.shape != [c] {
            throw LoomError.shapeMismatch("batchNorm: input \(describe(shape)) with \(name) \(describe(t.shape)) (expected [\(c)])")
        }
        let x = self
        let bshape = [1, c] + Array(repeating: 1, count: rank - 2)
        if !training {
            // y = (x - mean) * gamma / sqrt(var + eps) + beta, with the running statistics.
            let scale = try withoutGrad { try runningVar.shifted(eps).sqrt().pow(-1) }
            return try x.sub(runningMean.view(bshape)).mul(try gamma.mul(scale).reshaped(bshape)).add(try beta.reshaped(bshape))
        }
        var mean = try empty([c]), variance = try empty([c])
        backend.channelMoments(x, n: n, channels: c, inner: inner, mean: mean, variance: variance)
        var m = Float(n * inner)
        if let synchronized {
            // The whole batch's moments in two passes, as one process computes them: the
            // ranks' sums give the mean; then their sums of squared deviations from it the
            // variance (sum x² - m mean² would lose digits when the mean is large).
            try withoutGrad {
                let sums = try mean.scaled(m)
                try synchronized.sum(sums)
                m *= Float(synchronized.ranks)
                mean = try sums.scaled(1 / m)
                let deviation = try x.sub(mean.view(bshape))
                let squares = try x.empty([c]), unused = try x.empty([c])
                backend.channelGradSums(x: x, mean: mean, gradOutput: deviation, n: n, channels: c, inner: inner,
                                        sumGrad: unused, sumGradXmu: squares)
                try synchronized.sum(squares)
                variance = try squares.scaled(1 / m)
            }
        }
        try withoutGrad {
            // running = (1 - momentum) * running + momentum * batch (variance unbiased)
            let rm = try runningMean.scaled(1 - momentum).add(mean.scaled(momentum))
            let rv = try runningVar.scaled(1 - momentum).add(variance.scaled(momentum * m / Swift.max(m - 1, 1)))
            backend.copy(rm, into: runningMean); backend.copy(rv, into: runningVar)
        }
        let rstd = try withoutGrad { try variance.shifted(eps).sqrt().pow(-1) }
        let y = try empty()
        let scale = try withoutGrad { try gamma.mul(rstd) }
        backend.channelAffine(x, mean: mean, scale: scale, shift: beta, n: n, channels: c, inner: inner, into: y)
        return Tensor.differentiable("batchNorm", output: y, inputs: [x, gamma, beta]) { g in
            let s1 = try x.empty([c]), s2 = try x.empty([c])  // sum(g), sum(g * (x - mean)) per channel
            x.backend.channelGradSums(x: x, mean: mean, gradOutput: g, n: n, channels: c, inner: inner, sumGrad: s1, sumGradXmu: s2)
            // Synchronised: dx needs the whole batch's sums (m is the whole batch's count).
            var (t1, t2) = (s1, s2)
            if let synchronized {
                let both = try Tensor.concat([s1, s2], axis: 0)
                try synchronized.sum(both)
                (t1, t2) = (try both.slice(axis: 0, 0..<c), try both.slice(axis: 0, c..<(2 * c)))
            }
            // dx = gamma*rstd*g - gamma*rstd*s1/m - gamma*rstd^3*s2/m * (x - mean)
            //    = k1 g + k2 x + k3, per channel: one pass over g and x.
            let k1 = scale
            let k2 = try gamma.mul(rstd.pow(3)).mul(t2).scaled(-1 / m)
            let k3 = try scale.mul(t1).scaled(-1 / m).sub(try k2.mul(mean))
            let gx = try g.empty()
            g.backend.channelCombine(g, x, gScale: k1, xScale: k2, shift: k3, n: n, channels: c, inner: inner, into: gx)
            let gGamma = try s2.mul(rstd)  // sum(g * xhat)
            return [gx, gGamma, s1]
        }
    }
}
