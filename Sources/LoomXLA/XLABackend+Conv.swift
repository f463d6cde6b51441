import LoomCore

// Convolution and max pooling on StableHLO's convolution, the CPU backend's semantics
// (CPU+Conv.swift): NCHW input, [OC, C, KH, KW] kernels, symmetric zero padding.
//
// Backward, with s the stride and p the padding (per spatial axis of size H, kernel K,
// output OH):
//   dX = dY dilated by s (lhs_dilation), convolved with the kernel flipped in space and
//        its channel axes swapped, padding (K-1-p, H-1+p-(OH-1)s);
//   dW = X convolved with dY as the kernel dilated by s (rhs_dilation), N as the summed
//        axis: padding (p, K+(OH-1)s-H-p);
//   db = Σ dY over N, OH, OW.

extension XLABackend {
    public func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor?, geometry g: ConvGeometry, into y: Tensor) {
        lock.withLock {
            let oc = weight.shape[0]
            let xv = hlo.reshape(read(x), [g.batch, g.channels, g.height, g.width])
            let w = hlo.reshape(read(weight), [oc, g.channels, g.kernelH, g.kernelW])
            var r = hlo.convolution(xv, w, layout: "[b, f, 0, 1]x[o, i, 0, 1]->[b, f, 0, 1]", strides: [g.stride, g.stride],
                                    padding: [(g.padding, g.padding), (g.padding, g.padding)], shape: [g.batch, oc, g.outH, g.outW])
            if let bias { r = hlo.add(r, hlo.broadcast(hlo.reshape(read(bias), [oc]), r.shape, dims: [1])) }
            write(y, r)
        }
    }

    public func conv2dBackward(x: Tensor, weight: Tensor, gradOutput: Tensor, geometry g: ConvGeometry,
                               gradInput: Tensor?, gradWeight: Tensor?, gradBias: Tensor?) {
        lock.withLock {
            let oc = weight.shape[0], s = g.stride, p = g.padding
            let dy = hlo.reshape(read(gradOutput), [g.batch, oc, g.outH, g.outW])
            if let gradInput {
                let w = hlo.reverse(hlo.reshape(read(weight), [oc, g.channels, g.kernelH, g.kernelW]), dimensions: [2, 3])
                let pads = [(g.kernelH - 1 - p, g.height - 1 + p - (g.outH - 1) * s), (g.kernelW - 1 - p, g.width - 1 + p - (g.outW - 1) * s)]
                write(gradInput, hlo.convolution(dy, w, layout: "[b, f, 0, 1]x[i, o, 0, 1]->[b, f, 0, 1]", strides: [1, 1], padding: pads,
                                                 lhsDilation: [s, s], shape: [g.batch, g.channels, g.height, g.width]))
            }
            if let gradWeight {
                let xv = hlo.reshape(read(x), [g.batch, g.channels, g.height, g.width])
                let pads = [(p, g.kernelH + (g.outH - 1) * s - g.height - p), (p, g.kernelW + (g.outW - 1) * s - g.width - p)]
                write(gradWeight, hlo.convolution(xv, dy, layout: "[f, b, 0, 1]x[i, o, 0, 1]->[f, b, 0, 1]", strides: [1, 1], padding: pads,
                                                  rhsDilation: [s, s], shape: [oc, g.channels, g.kernelH, g.kernelW]))
            }
            if let gradBias { write(gradBias, hlo.reduce(dy, .sum, dimensions: [0, 2, 3])) }
        }
    }

    /// [N, C, OH, OW]: for each output, the row and column (oh·S - P + kh, ow·S - P + kw) of
    /// the input that kernel position (kh, kw) reads, clamped to the image when `clamp`.
    private func inputPositions(_ g: PoolGeometry, kh: Int, kw: Int, clamp: Bool = false) -> (row: HLOValue, col: HLOValue) {
        let shape = [g.batch, g.channels, g.outH, g.outW]
        func position(_ axis: Int, _ k: Int) -> HLOValue {
            let p = hlo.withConstant("add", hlo.withConstant("multiply", hlo.iota(shape, dimension: axis), Double(g.stride)), Double(k - g.padding))
            return clamp ? hlo.max(p, hlo.constant(0, shape, .i32)) : p
        }
        return (position(2, kh), position(3, kw))
    }

    /// Offsets in the input plane: row·W + col.
    private func planeOffsets(_ p: (row: HLOValue, col: HLOValue), _ g: PoolGeometry) -> HLOValue {
        hlo.add(hlo.withConstant("multiply", p.row, Double(g.width)), p.col)
    }

    /// For each kernel position (kh, kw): the inputs it reads, [N, C, OH, OW] (-∞ in the
    /// padding), and their offsets in the input plane.
    private func windows(_ x: HLOValue, _ g: PoolGeometry) -> [(values: HLOValue, offsets: HLOValue)] {
        let (K, S, P, OH, OW) = (g.kernel, g.stride, g.padding, g.outH, g.outW)
        let padded = hlo.pad(x, hlo.constant(-Double.infinity), low: [0, 0, P, P], high: [0, 0, P + K, P + K], interior: [0, 0, 0, 0])
        return (0..<K).flatMap { kh in
            (0..<K).map { kw in
                (hlo.slice(padded, start: [0, 0, kh, kw], limit: [g.batch, g.channels, kh + (OH - 1) * S + 1, kw + (OW - 1) * S + 1],
                           strides: [1, 1, S, S]),
                 planeOffsets(inputPositions(g, kh: kh, kw: kw), g))
            }
        }
    }

    public func maxPool2d(_ x: Tensor, geometry g: PoolGeometry, into y: Tensor, indices: Tensor) {
        lock.withLock {
            let xv = hlo.reshape(read(x), [g.batch, g.channels, g.height, g.width])
            let all = windows(xv, g)
            // The first strict maximum in (kh, kw) order, starting from the window's first
            // position inside the image, as the CPU scans.
            var best = hlo.constant(-Double.infinity, all[0].values.shape)
            var at = planeOffsets(inputPositions(g, kh: 0, kw: 0, clamp: true), g)
            for (v, offset) in all {
                let better = hlo.compare(v, best, "GT")
                best = hlo.select(better, v, best)
                at = hlo.select(better, offset, at)
            }
            write(y, best)
            write(indices, at)
        }
    }

    public func maxPool2dBackward(gradOutput: Tensor, indices: Tensor, geometry g: PoolGeometry, into gx: Tensor) {
        lock.withLock {
            let shape = [g.batch, g.channels, g.outH, g.outW]
            let dy = hlo.reshape(read(gradOutput), shape), idx = hlo.reshape(read(indices), shape)
            let (K, S, P) = (g.kernel, g.stride, g.padding)
            var total = hlo.constant(0, [g.batch, g.channels, g.height, g.width])
            let zero = hlo.constant(0)
            for kh in 0..<K {
                for kw in 0..<K {
                    let offset = planeOffsets(inputPositions(g, kh: kh, kw: kw), g)
                    let mine = hlo.select(hlo.compare(idx, offset, "EQ"), dy, hlo.constant(0, shape))
                    // Output (oh, ow) lands on input (oh·S + kh - P, ow·S + kw - P).
                    let lowH = kh - P, lowW = kw - P
                    let highH = g.height - lowH - ((g.outH - 1) * S + 1), highW = g.width - lowW - ((g.outW - 1) * S + 1)
                    total = hlo.add(total, hlo.pad(mine, zero, low: [0, 0, lowH, lowW], high: [0, 0, highH, highW], interior: [0, 0, S - 1, S - 1]))
                }
            }
            write(gx, total)
        }
    }
}
