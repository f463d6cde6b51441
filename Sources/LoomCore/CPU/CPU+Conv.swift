import CDNNL
import Foundation
import COpenBLAS
#if canImport(Glibc)
import Glibc
#endif

// Convolution as GEMM, one image at a time (Caffe's layout). For image b:
//   cols_b [C*KH*KW, OH*OW]   each column one receptive field (im2col)
//   y_b    [OC, OH*OW]        = W [OC, C*KH*KW] · cols_b   (already NCHW: no permute)
// Backward:
//   dW    += dy_b · cols_bᵀ     dcols_b = Wᵀ · dy_b  -> col2im -> dx_b
// The patch matrix of one image (400 x 196 floats = 313 KB for the CNN's second conv)
// stays in cache between im2col and its GEMM, where a whole-batch patch matrix would be
// 20 MB through memory. Images are split across threads; each GEMM is single-threaded.

extension CPUBackend {
    /// float32 always; bf16 where oneDNN's kernels multiply bf16 (AVX512-BF16 or AMX).
    public func runsConvolution(operands dtype: DType) -> Bool {
        dtype == .float32 || (dtype == .bfloat16 && CPUBackend.useOneDNN && OneDNNConvolution.hasBF16Kernels)
    }

    public func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor?, geometry g: ConvGeometry, into y: Tensor) {
        let start = monotonicSeconds()
        precondition(x.dtype == weight.dtype && runsConvolution(operands: x.dtype), "conv2d: operands \(x.dtype) and \(weight.dtype)")
        if withOneDNN(g, outChannels: weight.shape[0], bias: bias != nil, operands: x.dtype, {
            $0.forward(x: UnsafeMutableRawPointer(x.ptr), weight: UnsafeMutableRawPointer(weight.ptr), bias: bias?.ptr, y: y.ptr)
        }) {
            count(.convolution, flops: 2 * Double(weight.shape[0]) * Double(g.patch) * Double(g.positions), since: start)
            return
        }
        if x.dtype == .bfloat16 {  // a geometry oneDNN has no bf16 kernel for: the same values, widened (exact)
            conv2d(widened(x), weight: widened(weight), bias: bias, geometry: g, into: y)
            return
        }
        let (k, hw, oc) = (g.patch, g.outH * g.outW, weight.shape[0])
        let px = x.ptr, pw = weight.ptr, py = y.ptr, pb = bias?.ptr
        parallelFor(g.batch, grain: 1, threads: threads) { r in
            let cols = UnsafeMutablePointer<Float>.allocate(capacity: k * hw)
            defer { cols.deallocate() }
            for b in r {
                im2colImage(px + b * g.channels * g.height * g.width, g, cols)
                let yb = py + b * oc * hw
                if let pb { for o in 0..<oc { (yb + o * hw).update(repeating: pb[o], count: hw) } }
                sgemm(transA: false, transB: false, m: oc, n: hw, k: k, alpha: 1,
                      pw, lda: k, cols, ldb: hw, beta: pb == nil ? 0 : 1, yb, ldc: hw)
            }
        }
        count(.convolution, flops: 2 * Double(oc * hw * k * g.batch), since: start)
    }

    public func conv2dBackward(x: Tensor, weight: Tensor, gradOutput: Tensor, geometry g: ConvGeometry,
                               gradInput: Tensor?, gradWeight: Tensor?, gradBias: Tensor?) {
        let began = monotonicSeconds()
        precondition(x.dtype == weight.dtype && x.dtype == gradOutput.dtype && runsConvolution(operands: x.dtype),
                     "conv2dBackward: operands \(x.dtype), \(weight.dtype) and \(gradOutput.dtype)")
        // The forward's entry (a layer with a bias wants its gradient): one set of primitives per layer.
        if withOneDNN(g, outChannels: weight.shape[0], bias: gradBias != nil, operands: x.dtype, {
            $0.backward(x: UnsafeMutableRawPointer(x.ptr), weight: UnsafeMutableRawPointer(weight.ptr), gy: UnsafeMutableRawPointer(gradOutput.ptr),
                        gx: gradInput?.ptr, gw: gradWeight?.ptr, gb: gradBias?.ptr)
        }) {
            let products = Double((gradInput == nil ? 0 : 1) + (gradWeight == nil ? 0 : 1))
            count(.convolution, flops: 2 * products * Double(weight.shape[0]) * Double(g.patch) * Double(g.positions), since: began)
            return
        }
        if x.dtype == .bfloat16 {
            conv2dBackward(x: widened(x), weight: widened(weight), gradOutput: widened(gradOutput), geometry: g,
                           gradInput: gradInput, gradWeight: gradWeight, gradBias: gradBias)
            return
        }
        let (k, hw, oc) = (g.patch, g.outH * g.outW, weight.shape[0])
        let px = x.ptr, pw = weight.ptr, pg = gradOutput.ptr
        let pgx = gradInput?.ptr
        // Each chunk of images accumulates its own dW/db; chunks are summed in order
        // afterwards, so the result does not depend on thread timing.
        let chunks = max(1, min(threads, g.batch))
        let per = (g.batch + chunks - 1) / chunks
        let partial = UnsafeMutablePointer<Float>.allocate(capacity: chunks * (oc * k + oc))
        defer { partial.deallocate() }
        partial.initialize(repeating: 0, count: chunks * (oc * k + oc))
        let start = monotonicSeconds()
        parallelFor(chunks, grain: 1, threads: threads) { cr in
            let cols = UnsafeMutablePointer<Float>.allocate(capacity: k * hw)
            defer { cols.deallocate() }
            for c in cr {
                let dw = partial + c * (oc * k + oc), db = dw + oc * k
                for b in (c * per)..<min(g.batch, (c + 1) * per) {
                    let gy = pg + b * oc * hw
                    if gradWeight != nil {
                        im2colImage(px + b * g.channels * g.height * g.width, g, cols)
                        sgemm(transA: false, transB: true, m: oc, n: k, k: hw, alpha: 1,
                              gy, lda: hw, cols, ldb: hw, beta: 1, dw, ldc: k)
                    }
                    if gradBias != nil { for o in 0..<oc { db[o] += sum8(gy + o * hw, hw) } }
                    if let pgx {
                        sgemm(transA: true, transB: false, m: k, n: hw, k: oc, alpha: 1,
                              pw, lda: k, gy, ldb: hw, beta: 0, cols, ldc: hw)
                        col2imImage(cols, g, pgx + b * g.channels * g.height * g.width)
                    }
                }
            }
        }
        let passes = (gradWeight != nil ? 1.0 : 0) + (gradInput != nil ? 1.0 : 0)
        count(.convolution, flops: passes * 2 * Double(oc * hw * k * g.batch), since: start)
        for (c0, target, width) in [(0, gradWeight, oc * k), (oc * k, gradBias, oc)] {
            guard let target else { continue }
            let t = target.ptr
            t.update(from: partial + c0, count: width)
            for c in 1..<chunks { zip8(t, partial + c * (oc * k + oc) + c0, t, width, +) }
        }
    }

    /// cols [C*KH*KW, OH*OW] of one image [C, H, W].
    private func im2colImage(_ image: UnsafePointer<Float>, _ g: ConvGeometry, _ cols: UnsafeMutablePointer<Float>) {
        let (H, W, S, P, OH, OW) = (g.height, g.width, g.stride, g.padding, g.outH, g.outW)
        var row = cols
        for c in 0..<g.channels {
            let plane = image + c * H * W
            for kh in 0..<g.kernelH {
                for kw in 0..<g.kernelW {
                    for oh in 0..<OH {
                        let ih = oh * S - P + kh
                        let dst = row + oh * OW
                        if ih < 0 || ih >= H { dst.update(repeating: 0, count: OW); continue }
                        let src = plane + ih * W
                        if S == 1 {
                            // Valid output columns are those with 0 <= ow - P + kw < W.
                            // Plain loops: rows are 14-28 floats, too short for memmove calls.
                            let lo = Swift.max(0, P - kw), hi = Swift.max(Swift.min(OW, W + P - kw), lo)
                            let s = src + (kw - P)
                            for ow in 0..<lo { dst[ow] = 0 }
                            for ow in lo..<hi { dst[ow] = s[ow] }
                            for ow in hi..<OW { dst[ow] = 0 }
                        } else {
                            for ow in 0..<OW {
                                let iw = ow * S - P + kw
                                dst[ow] = (iw >= 0 && iw < W) ? src[iw] : 0
                            }
                        }
                    }
                    row += OH * OW
                }
            }
        }
    }

    /// The adjoint of im2colImage: sums cols back into image [C, H, W] (overwritten).
    private func col2imImage(_ cols: UnsafePointer<Float>, _ g: ConvGeometry, _ image: UnsafeMutablePointer<Float>) {
        let (H, W, S, P, OH, OW) = (g.height, g.width, g.stride, g.padding, g.outH, g.outW)
        image.update(repeating: 0, count: g.channels * H * W)
        var row = cols
        for c in 0..<g.channels {
            let plane = image + c * H * W
            for kh in 0..<g.kernelH {
                for kw in 0..<g.kernelW {
                    for oh in 0..<OH {
                        let ih = oh * S - P + kh
                        if ih < 0 || ih >= H { continue }
                        let src = row + oh * OW, dst = plane + ih * W
                        if S == 1 {
                            let lo = Swift.max(0, P - kw), hi = Swift.min(OW, W + P - kw)
                            // Rows are short (OW = 14 or 28 here): a plain loop, which the
                            // compiler vectorises, beats 8-wide vectors with scalar tails.
                            let d = dst + (lo - P + kw), s = src + lo
                            for j in 0..<Swift.max(hi - lo, 0) { d[j] += s[j] }
                        } else {
                            for ow in 0..<OW {
                                let iw = ow * S - P + kw
                                if iw >= 0 && iw < W { dst[iw] += src[ow] }
                            }
                        }
                    }
                    row += OH * OW
                }
            }
        }
    }

    public func maxPool2d(_ x: Tensor, geometry g: PoolGeometry, into y: Tensor, indices: Tensor) {
        let started = monotonicSeconds(); defer { count(.convolution, since: started) }
        let px = x.ptr, py = y.ptr, pi = indices.intPtr
        let (H, W, K, S, P, OH, OW) = (g.height, g.width, g.kernel, g.stride, g.padding, g.outH, g.outW)
        parallelFor(g.batch * g.channels, grain: 4, threads: threads) { r in
            for plane in r {
                let x = px + plane * H * W, y = py + plane * OH * OW, idx = pi + plane * OH * OW
                for oh in 0..<OH {
                    for ow in 0..<OW {
                        // The window clipped to the image (padding never wins).
                        let h0 = oh * S - P, w0 = ow * S - P
                        var best = -Float.infinity, at = Swift.max(h0, 0) * W + Swift.max(w0, 0)
                        for ih in Swift.max(h0, 0)..<Swift.min(h0 + K, H) {
                            for iw in Swift.max(w0, 0)..<Swift.min(w0 + K, W) where x[ih * W + iw] > best {
                                best = x[ih * W + iw]; at = ih * W + iw
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
        let started = monotonicSeconds(); defer { count(.convolution, since: started) }
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

/// oneDNN's primitives for each convolution a backend has run. An entry's buffers serve
/// one call at a time, so each call checks one out: threads that share a backend (the
/// in-process ranks all see host tensors on the shared CPU backend) get their own.
final class ConvolutionCache: @unchecked Sendable {
    private struct Key: Hashable { var geometry: [Int], outChannels: Int, bias: Bool, operands: DType }
    private var idle: [Key: [OneDNNConvolution]] = [:]
    private var unsupported: Set<Key> = []
    private let lock = NSLock()

    /// Runs `body` with an entry for the geometry to itself; false when oneDNN builds none.
    func with(_ g: ConvGeometry, outChannels: Int, bias: Bool, operands: DType, _ body: (OneDNNConvolution) -> Void) -> Bool {
        let key = Key(geometry: [g.batch, g.channels, g.height, g.width, g.kernelH, g.kernelW, g.stride, g.padding],
                      outChannels: outChannels, bias: bias, operands: operands)
        lock.lock()
        if unsupported.contains(key) { lock.unlock(); return false }
        let entry = idle[key]?.popLast()
        lock.unlock()
        guard let conv = entry ?? OneDNNConvolution(g, outChannels: outChannels, bias: bias, operands: operands) else {
            lock.lock(); unsupported.insert(key); lock.unlock()
            return false
        }
        body(conv)
        lock.lock(); idle[key, default: []].append(conv); lock.unlock()
        return true
    }
}

extension CPUBackend {
    /// Runs `body` on oneDNN's primitives for a convolution; false (nothing run) to use im2col.
    func withOneDNN(_ g: ConvGeometry, outChannels: Int, bias: Bool, operands: DType, _ body: (OneDNNConvolution) -> Void) -> Bool {
        guard CPUBackend.useOneDNN else { return false }
        return convolutions.with(g, outChannels: outChannels, bias: bias, operands: operands) { conv in
            omp_set_num_threads(Int32(threads))
            body(conv)
        }
    }
}
