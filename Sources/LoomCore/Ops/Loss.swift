// Losses: cross-entropy fused with log-softmax, and mean squared error.

extension Tensor {
    /// Mean cross-entropy of `logits` [..., classes] against int32 `targets` [...],
    /// ignoring positions whose target is `ignoreIndex` (the mean is over the rest).
    public func crossEntropy(targets: Tensor, ignoreIndex: Int32 = -100) throws -> Tensor {
        try requireFloat("crossEntropy", self)
        guard let classes = shape.last, rank >= 1 else {
            throw LoomError.shapeMismatch("crossEntropy: logits need a class axis, got \(describe(shape))")
        }
        guard targets.dtype == .int32 else {
            throw LoomError.deviceMismatch("crossEntropy: targets must be int32 class indices, got \(targets.dtype)")
        }
        guard Array(shape.dropLast()) == targets.shape else {
            throw LoomError.shapeMismatch("crossEntropy: logits \(describe(shape)) and targets \(describe(targets.shape)) (expected \(describe(Array(shape.dropLast()))))")
        }
        try requireSameDevice("crossEntropy", self, targets)
        let rows = count / Swift.max(classes, 1)
        let losses = try empty([rows]), weights = try empty([rows]), probs = try empty()
        try backend.crossEntropy(logits: self, targets: targets, rows: rows, classes: classes, ignoreIndex: ignoreIndex,
                                 losses: losses, weights: weights, probabilities: probs)
        // The mean over counted rows, on the backend: scale = 1 / max(counted, 1).
        let scale = try empty([])
        backend.reduce(.sum, weights, outer: 1, n: rows, inner: 1, into: scale)
        backend.scalar(.maximum, scale, 1, into: scale)
        backend.unary(.reciprocal, scale, into: scale)
        let loss = try empty([])
        backend.reduce(.sum, losses, outer: 1, n: rows, inner: 1, into: loss)
        backend.binary(.mul, loss, scale, into: loss)
        let logits = self
        // d loss / d logits[r] = (softmax(logits[r]) - onehot(target[r])) * scale, times
        // the incoming gradient g (a scalar tensor, multiplied in on the backend).
        return Tensor.differentiable("crossEntropy", output: loss, inputs: [self]) { g in
            let gx = try logits.empty(), gs = try logits.empty([])
            logits.backend.binary(.mul, g, scale, into: gs)
            logits.backend.crossEntropyBackward(probabilities: probs, targets: targets, rows: rows, classes: classes,
                                                ignoreIndex: ignoreIndex, scale: gs, into: gx)
            return [gx]
        }
    }

    /// Mean of (self - target)^2.
    public func mseLoss(_ target: Tensor) throws -> Tensor {
        guard shape == target.shape else {
            throw LoomError.shapeMismatch("mseLoss: prediction \(describe(shape)) and target \(describe(target.shape))")
        }
        return try sub(target).square().mean()
    }
}
