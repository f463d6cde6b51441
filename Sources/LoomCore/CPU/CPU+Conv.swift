#if canImport(Glibc)
import Glibc
#endif

// Convolution as GEMM: im2col lays every receptive field out as a row, so that
//   out[N*OH*OW, OC] = cols[N*OH*OW, C*KH*KW] x W^T[C*KH*KW, OC]
// is one large GEMM (and so are both weight and input gradients).

extension CPUBackend {
    public func im2col(_ x: Tensor, geometry g: ConvGeometry, into cols: Tensor) {
        let px = x.ptr, pc = cols.ptr
        let (C, H, W, KH, KW, S, P) = (g.channels, g.height, g.width, g.kernelH, g.kernelW, g.stride, g.padding)
        let (OH, OW, patch) = (g.outH, g.outW, g.patch)
        parallelFor(g.batch * OH, grain: 1, threads: threads) { r in
            for bo in r {
                let b = bo / OH, oh = bo % OH
                let image = px + b * C * H * W
                for ow in 0..<OW {
                    var dst = pc + ((b * OH + oh) * OW + ow) * patch
                    for c in 0..<C {
                        let plane = image + c * H * W
                        for kh in 0..<KH {
                            let ih = oh * S - P + kh
                            if ih < 0 || ih >= H {
                                dst.update(repeating: 0, count: KW); dst += KW; continue
                            }
                            let row = plane + ih * W
                            let iw0 = ow * S - P
                            if iw0 >= 0 && iw0 + KW <= W {
                                dst.update(from: row + iw0, count: KW)
                            } else {
                                for kw in 0..<KW {
                                    let iw = iw0 + kw
                                    dst[kw] = (iw >= 0 && iw < W) ? row[iw] : 0
                                }
                            }
                            dst += KW
                        }
                    }
                }
            }
        }
    }

    public func col2im(_ cols: Tensor, geometry g: ConvGeometry, into gx: Tensor) {
        let pc = cols.ptr, px = gx.ptr
        let (C, H, W, KH, KW, S, P) = (g.channels, g.height, g.width, g.kernelH, g.kernelW, g.stride, g.padding)
        let (OH, OW, patch) = (g.outH, g.outW, g.patch)
        // One image per task: images own disjoint parts of gx.
        parallelFor(g.batch, grain: 1, threads: threads) { r in
            for b in r {
                let image = px + b * C * H * W
                image.update(repeating: 0, count: C * H * W)
                for oh in 0..<OH {
                    for ow in 0..<OW {
                        var src = pc + ((b * OH + oh) * OW + ow) * patch
                        for c in 0..<C {
                            let plane = image + c * H * W
                            for kh in 0..<KH {
                                let ih = oh * S - P + kh
                                if ih >= 0 && ih < H {
                                    let row = plane + ih * W
                                    for kw in 0..<KW {
                                        let iw = ow * S - P + kw
                                        if iw >= 0 && iw < W { row[iw] += src[kw] }
                                    }
                                }
                                src += KW
                            }
                        }
                    }
                }
            }
        }
    }

    public func maxPool2d(_ x: Tensor, geometry g: PoolGeometry, into y: Tensor, indices: Tensor) {
        let px = x.ptr, py = y.ptr, pi = indices.intPtr
        let (H, W, K, S, OH, OW) = (g.height, g.width, g.kernel, g.stride, g.outH, g.outW)
        parallelFor(g.batch * g.channels, grain: 4, threads: threads) { r in
            for plane in r {
                let x = px + plane * H * W, y = py + plane * OH * OW, idx = pi + plane * OH * OW
                for oh in 0..<OH {
                    for ow in 0..<OW {
                        var best = -Float.infinity, at = 0
                        for kh in 0..<K {
                            let rowOff = (oh * S + kh) * W + ow * S
                            for kw in 0..<K where x[rowOff + kw] > best {
                                best = x[rowOff + kw]; at = rowOff + kw
                            }
                        }
                        y[oh * OW + ow] = best
                        idx[oh * OW + ow] = Int32(at)
                    }
                }
            }
        }
    }

    public func maxPool2dBackward(gradOutput: Tensor, indices: Tensor, geometry g: PoolGeometry, into gx: Tensor) {
        let pg = gradOutput.ptr, pi = indices.intPtr, px = gx.ptr
        let (H, W, O) = (g.height, g.width, g.outH * g.outW)
        parallelFor(g.batch * g.channels, grain: 4, threads: threads) { r in
            for plane in r {
                let gx = px + plane * H * W, gy = pg + plane * O, idx = pi + plane * O
                gx.update(repeating: 0, count: H * W)
                for j in 0..<O { gx[Int(idx[j])] += gy[j] }
            }
        }
    }
}
