// Softmax and log-softmax over the last axis.

extension Tensor {
    public func softmax() throws -> Tensor { try softmaxOp(log: false) }
    public func logSoftmax() throws -> Tensor { try softmaxOp(log: true) }

    private func softmaxOp(log: Bool) throws -> Tensor {
        try requireFloat(log ? "logSoftmax" : "softmax", self)
        let cols = shape.last ?? 1, rows = count / Swift.max(cols, 1)
        let y = try empty()
        backend.softmax(self, rows: rows, cols: cols, log: log, into: y)
        return Tensor.differentiable(log ? "logSoftmax" : "softmax", output: y, inputs: [self]) { g in
            let gx = try y.empty()
            y.backend.softmaxBackward(y: y, gradOutput: g, rows: rows, cols: cols, log: log, into: gx)
            return [gx]
        }
    }

    /// Sets entries above the diagonal of each trailing [rows, cols] matrix to `value`
    /// (causal masking); their gradient is zero.
    public func maskedCausal(value: Float = -.infinity) throws -> Tensor {
        try requireFloat("maskedCausal", self)
        guard rank >= 2 else { throw LoomError.shapeMismatch("maskedCausal: needs a matrix, got \(describe(shape))") }
        let rows = shape[rank - 2], cols = shape[rank - 1]
        let y = try copied()
        backend.maskUpperTriangle(y, rows: rows, cols: cols, value: value)
        return Tensor.differentiable("maskedCausal", output: y, inputs: [self]) { g in
            let gx = try g.copied()
            g.backend.maskUpperTriangle(gx, rows: rows, cols: cols, value: 0)
            return [gx]
        }
    }
}
