// 2-D convolution and max pooling, NCHW.

extension Tensor {
    /// x [N, C, H, W] * weight [OC, C, KH, KW] (+ bias [OC]) -> [N, OC, OH, OW].
    public func conv2d(weight: Tensor, bias: Tensor?, stride: Int = 1, padding: Int = 0) throws -> Tensor {
        try requireFloat("conv2d", self); try requireFloat("conv2d", weight)
        let x = self
        try requireSameDevice("conv2d", x, weight)
        guard x.rank == 4, weight.rank == 4, x.shape[1] == weight.shape[1] else {
            throw LoomError.shapeMismatch("conv2d: input \(describe(x.shape)) with weight \(describe(weight.shape)): expected [N, C, H, W] and [OC, C, KH, KW] with equal C")
        }
        let geo = ConvGeometry(batch: x.shape[0], channels: x.shape[1], height: x.shape[2], width: x.shape[3],
                               kernelH: weight.shape[2], kernelW: weight.shape[3], stride: stride, padding: padding)
        guard geo.outH > 0, geo.outW > 0, stride > 0 else {
            throw LoomError.shapeMismatch("conv2d: kernel \(describe(Array(weight.shape[2...]))) does not fit input \(describe(x.shape)) with padding \(padding)")
        }
        let oc = weight.shape[0]
        if let bias, bias.shape != [oc] {
            throw LoomError.shapeMismatch("conv2d: bias \(describe(bias.shape)) for \(oc) output channels")
        }
        // Under bf16 precision, where the backend convolves bf16 (the CPU with oneDNN's bf16
        // kernels), x, the weights and dY are read as bf16 copies (saved for backward, as the
        // products' are); elsewhere, and for bias and outputs, float32.
        let precision = backend.runsConvolution(operands: Autocast.precision.operandDType) ? Autocast.precision : .float32
        let xl = try x.gemmInput(precision), wl = try weight.gemmInput(precision)
        let y = try empty([geo.batch, oc, geo.outH, geo.outW])
        backend.conv2d(xl, weight: wl, bias: bias, geometry: geo, into: y)
        let inputs = bias.map { [x, weight, $0] } ?? [x, weight]
        return Tensor.differentiable("conv2d", output: y, inputs: inputs) { g in
            let gx = x.requiresGrad ? try x.empty() : nil
            let gw = weight.requiresGrad ? try weight.empty() : nil
            let gb = (bias?.requiresGrad ?? false) ? try bias!.empty() : nil
            let be = x.backend
            if precision == .float32 {
                be.conv2dBackward(x: xl, weight: wl, gradOutput: g, geometry: geo, gradInput: gx, gradWeight: gw, gradBias: gb)
            } else {
                be.conv2dBackward(x: xl, weight: wl, gradOutput: try g.gemmInput(precision), geometry: geo, gradInput: gx,
                                  gradWeight: gw, gradBias: nil)
                if let gb {  // the bias gradient from float32 dY, as linear's: db[o] = sum over n, h, w of dY[n, o, h, w]
                    let perImage = try gb.empty([oc * geo.outH * geo.outW])
                    be.reduce(.sum, g, outer: 1, n: geo.batch, inner: oc * geo.outH * geo.outW, into: perImage)
                    be.reduce(.sum, perImage, outer: oc, n: geo.outH * geo.outW, inner: 1, into: gb)
                }
            }
            return bias == nil ? [gx, gw] : [gx, gw, gb]
        }
    }

    /// Max pooling with a square window; stride defaults to the window. `padding` pads
    /// each side with -inf (at most half the window, as PyTorch requires).
    public func maxPool2d(kernel: Int, stride: Int? = nil, padding: Int = 0) throws -> Tensor {
        try requireFloat("maxPool2d", self)
        guard rank == 4 else { throw LoomError.shapeMismatch("maxPool2d: expected [N, C, H, W], got \(describe(shape))") }
        let geo = PoolGeometry(batch: shape[0], channels: shape[1], height: shape[2], width: shape[3],
                               kernel: kernel, stride: stride ?? kernel, padding: padding)
        guard geo.outH > 0, geo.outW > 0, kernel > 0, padding >= 0, 2 * padding <= kernel else {
            throw LoomError.shapeMismatch("maxPool2d: window \(kernel) with padding \(padding) does not fit \(describe(shape)) (padding at most half the window)")
        }
        let y = try empty([geo.batch, geo.channels, geo.outH, geo.outW])
        let indices = try empty(y.shape, dtype: .int32)
        backend.maxPool2d(self, geometry: geo, into: y, indices: indices)
        let x = self
        return Tensor.differentiable("maxPool2d", output: y, inputs: [self]) { g in
            let gx = try x.empty()
            x.backend.maxPool2dBackward(gradOutput: g, indices: indices, geometry: geo, into: gx)
            return [gx]
        }
    }
}
