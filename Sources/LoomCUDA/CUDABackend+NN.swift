import Foundation
import LoomCore

// Matrix products (cuBLAS), normalisation, convolution, pooling, embedding, losses,
// dropout and optimizer steps.

extension CUDABackend {
    // MARK: Linear algebra

    /// Row-major C = op(A) op(B) is column-major Cᵀ = op(B)ᵀ op(A)ᵀ: cuBLAS gets B as its
    /// first operand and A as its second, each with its own transpose flag and leading
    /// dimension unchanged (a row-major matrix read column-major is its transpose).
    public func gemm(_ a: GEMMOperand, _ b: GEMMOperand, _ c: GEMMOperand, m: Int, n: Int, k: Int, batch: Int,
                     alpha: Float, beta: Float) {
        guard m > 0, n > 0, batch > 0 else { return }
        let dtype = a.tensor.dtype
        precondition(b.tensor.dtype == dtype && (dtype == .float32 || dtype == .bfloat16) && c.tensor.dtype == .float32,
                     "gemm: operands \(dtype) and \(b.tensor.dtype) into \(c.tensor.dtype): both float32 or both bfloat16, into float32")
        gemmFlops += 2 * Double(m) * Double(n) * Double(k) * Double(batch)
        let size = CUdeviceptr(dtype.byteSize)
        let pa = address(a.tensor) + CUdeviceptr(a.offset) * size, pb = address(b.tensor) + CUdeviceptr(b.offset) * size
        let pc = address(c.tensor) + CUdeviceptr(c.offset * 4)
        orStop {
            let product = dtype == .bfloat16 ? blas.gemmBF16 : blas.gemm
            try product(b.transposed, a.transposed, n, m, k, alpha, pb, b.ld, b.batchStride, pa, a.ld, a.batchStride,
                        beta, pc, c.ld, c.batchStride, batch)
        }
    }

    // MARK: Softmax and normalisation

    public func softmax(_ x: Tensor, rows: Int, cols: Int, log: Bool, into y: Tensor) {
        guard rows > 0 else { return }
        launch("softmax_f32", grid: min(rows, 65535), block: CUDABackend.rowBlock(cols),
               [.pointer(address(x)), .pointer(address(y)), .int64(rows), .int64(cols), .int32(log ? 1 : 0)])
    }

    public func softmaxBackward(y: Tensor, gradOutput: Tensor, rows: Int, cols: Int, log: Bool, into gx: Tensor) {
        guard rows > 0 else { return }
        launch("softmax_backward_f32", grid: min(rows, 65535), block: CUDABackend.rowBlock(cols),
               [.pointer(address(y)), .pointer(address(gradOutput)), .pointer(address(gx)), .int64(rows), .int64(cols), .int32(log ? 1 : 0)])
    }

    public func maskUpperTriangle(_ x: Tensor, rows: Int, cols: Int, value: Float) {
        elementwise("mask_upper_f32", count: x.count, [.pointer(address(x)), .int64(rows), .int64(cols), .float(value), .int64(x.count)])
    }

    public func layerNorm(_ x: Tensor, gamma: Tensor, beta: Tensor, eps: Float, rows: Int, cols: Int,
                          into y: Tensor, mean: Tensor, rstd: Tensor) {
        guard rows > 0 else { return }
        launch("layer_norm_f32", grid: min(rows, 65535), block: CUDABackend.rowBlock(cols),
               [.pointer(address(x)), .pointer(address(gamma)), .pointer(address(beta)), .float(eps), .int64(rows), .int64(cols),
                .pointer(address(y)), .pointer(address(mean)), .pointer(address(rstd))])
    }

    public func layerNormBackward(x: Tensor, gamma: Tensor, mean: Tensor, rstd: Tensor, gradOutput: Tensor,
                                  rows: Int, cols: Int, gradInput: Tensor, gradGamma: Tensor, gradBeta: Tensor) {
        guard rows > 0 else { return }
        launch("layer_norm_backward_input_f32", grid: min(rows, 65535), block: CUDABackend.rowBlock(cols),
               [.pointer(address(x)), .pointer(address(gamma)), .pointer(address(mean)), .pointer(address(rstd)),
                .pointer(address(gradOutput)), .pointer(address(gradInput)), .int64(rows), .int64(cols)])
        let tiles = (cols + 31) / 32, runs = rowRuns(rows: rows, tiles: tiles)
        inRuns(runs.count, op: 0, count: cols, into: [gradGamma, gradBeta]) { partial in
            launch("layer_norm_backward_params_f32", grid: tiles * runs.count, block: 256,
                   [.pointer(address(x)), .pointer(address(mean)), .pointer(address(rstd)), .pointer(address(gradOutput)),
                    .pointer(partial[0]), .pointer(partial[1]), .int64(rows), .int64(cols), .int64(runs.rowsPerRun)])
        }
    }

    public func channelMoments(_ x: Tensor, n: Int, channels: Int, inner: Int, mean: Tensor, variance: Tensor) {
        launch("channel_moments_f32", grid: min(channels, 65535), block: 256,
               [.pointer(address(x)), .int64(n), .int64(channels), .int64(inner), .pointer(address(mean)), .pointer(address(variance))])
    }

    public func channelAffine(_ x: Tensor, mean: Tensor, scale: Tensor, shift: Tensor, n: Int, channels: Int, inner: Int, into y: Tensor) {
        elementwise("channel_affine_f32", count: x.count,
                    [.pointer(address(x)), .pointer(address(mean)), .pointer(address(scale)), .pointer(address(shift)), .pointer(address(y)),
                     .int64(channels), .int64(inner), .int64(x.count)])
    }

    public func channelCombine(_ g: Tensor, _ x: Tensor, gScale: Tensor, xScale: Tensor, shift: Tensor, n: Int, channels: Int, inner: Int,
                               into y: Tensor) {
        elementwise("channel_combine_f32", count: y.count,
                    [.pointer(address(g)), .pointer(address(x)), .pointer(address(gScale)), .pointer(address(xScale)), .pointer(address(shift)),
                     .pointer(address(y)), .int64(channels), .int64(inner), .int64(y.count)])
    }

    public func channelGradSums(x: Tensor, mean: Tensor, gradOutput: Tensor, n: Int, channels: Int, inner: Int,
                                sumGrad: Tensor, sumGradXmu: Tensor) {
        launch("channel_grad_sums_f32", grid: min(channels, 65535), block: 256,
               [.pointer(address(x)), .pointer(address(mean)), .pointer(address(gradOutput)), .int64(n), .int64(channels), .int64(inner),
                .pointer(address(sumGrad)), .pointer(address(sumGradXmu)), .int32(1)])
    }

    // MARK: Convolution and pooling

    /// The kernels' `struct Conv`.
    private func convArgument(_ g: ConvGeometry) -> KernelArgument {
        .ints([g.batch, g.channels, g.height, g.width, g.kernelH, g.kernelW, g.stride, g.padding, g.outH, g.outW])
    }

    /// A scratch buffer of columns [patch, batch * OH * OW].
    private func columns(_ g: ConvGeometry) -> Tensor {
        orStop { try Tensor(uninitialized: [g.patch, g.positions], on: self) }
    }

    /// y[b] = W [OC, patch] · cols[:, b] [patch, OH·OW] (+ bias), one strided-batched GEMM over the images.
    public func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor?, geometry g: ConvGeometry, into y: Tensor) {
        let oc = weight.shape[0], hw = g.outH * g.outW
        let cols = columns(g)
        elementwise("im2col_f32", count: g.channels * g.positions, [.pointer(address(x)), .pointer(address(cols)), convArgument(g)])
        gemm(GEMMOperand(weight, ld: g.patch), GEMMOperand(cols, ld: g.positions, batchStride: hw), GEMMOperand(y, ld: hw, batchStride: oc * hw),
             m: oc, n: hw, k: g.patch, batch: g.batch, alpha: 1, beta: 0)
        if let bias {
            elementwise("add_channel_bias_f32", count: y.count,
                        [.pointer(address(y)), .pointer(address(bias)), .int64(oc), .int64(hw), .int64(y.count)])
        }
    }

    public func conv2dBackward(x: Tensor, weight: Tensor, gradOutput gy: Tensor, geometry g: ConvGeometry,
                               gradInput: Tensor?, gradWeight: Tensor?, gradBias: Tensor?) {
        let oc = weight.shape[0], hw = g.outH * g.outW
        if let gradWeight {
            // dW [OC, patch] = Σ_b gy[b] [OC, OH·OW] · cols[:, b]ᵀ, the images in order.
            let cols = columns(g)
            elementwise("im2col_f32", count: g.channels * g.positions, [.pointer(address(x)), .pointer(address(cols)), convArgument(g)])
            for b in 0..<g.batch {
                gemm(GEMMOperand(gy, offset: b * oc * hw, ld: hw), GEMMOperand(cols, offset: b * hw, ld: g.positions, transposed: true),
                     GEMMOperand(gradWeight, ld: g.patch), m: oc, n: g.patch, k: hw, batch: 1, alpha: 1, beta: b == 0 ? 0 : 1)
            }
        }
        if let gradBias {
            launch("channel_grad_sums_f32", grid: min(oc, 65535), block: 256,
                   [.pointer(address(gy)), .pointer(address(gy)), .pointer(address(gy)), .int64(g.batch), .int64(oc), .int64(hw),
                    .pointer(address(gradBias)), .pointer(address(gradBias)), .int32(0)])
        }
        if let gradInput {
            // dcols[:, b] = Wᵀ [patch, OC] · gy[b]; then each input element gathers its columns.
            let dcols = columns(g)
            gemm(GEMMOperand(weight, ld: g.patch, transposed: true), GEMMOperand(gy, ld: hw, batchStride: oc * hw),
                 GEMMOperand(dcols, ld: g.positions, batchStride: hw), m: g.patch, n: hw, k: oc, batch: g.batch, alpha: 1, beta: 0)
            elementwise("col2im_f32", count: gradInput.count, [.pointer(address(dcols)), .pointer(address(gradInput)), convArgument(g)])
        }
    }

    public func maxPool2d(_ x: Tensor, geometry g: PoolGeometry, into y: Tensor, indices: Tensor) {
        elementwise("max_pool_f32", count: y.count,
                    [.pointer(address(x)), .pointer(address(y)), .pointer(address(indices)), .int64(g.batch * g.channels),
                     .int32(Int32(g.height)), .int32(Int32(g.width)), .int32(Int32(g.kernel)), .int32(Int32(g.stride)),
                     .int32(Int32(g.outH)), .int32(Int32(g.outW)), .int32(Int32(g.padding))])
    }

    public func maxPool2dBackward(gradOutput: Tensor, indices: Tensor, geometry g: PoolGeometry, into gx: Tensor) {
        fill(gx, value: 0)
        elementwise("max_pool_backward_f32", count: gradOutput.count,
                    [.pointer(address(gradOutput)), .pointer(address(indices)), .pointer(address(gx)), .int64(g.batch * g.channels),
                     .int32(Int32(g.height)), .int32(Int32(g.width)), .int32(Int32(g.outH * g.outW))])
    }

    // MARK: Embedding and losses

    public func gather(_ table: Tensor, indices: Tensor, into out: Tensor) throws {
        let rows = table.shape[0], width = table.count / max(rows, 1)
        checkIndices(indices, lower: 0, upper: rows, ignore: Int32.min, as: .embedding)
        elementwise("embedding_f32", count: indices.count * width,
                    [.pointer(address(table)), .pointer(address(indices)), .pointer(address(out)), .int64(indices.count), .int64(width),
                     .int64(rows)])
    }

    public func scatterAdd(_ src: Tensor, indices: Tensor, into grad: Tensor) {
        let rows = grad.shape[0], width = grad.count / max(rows, 1)
        elementwise("embedding_backward_f32", count: indices.count * width,
                    [.pointer(address(src)), .pointer(address(indices)), .pointer(address(grad)), .int64(indices.count), .int64(width),
                     .int64(rows)])
    }

    public func crossEntropy(logits: Tensor, targets: Tensor, rows: Int, classes: Int, ignoreIndex: Int32,
                             losses: Tensor, weights: Tensor, probabilities: Tensor) throws {
        guard rows > 0 else { return }
        checkIndices(targets, lower: 0, upper: classes, ignore: ignoreIndex, as: .crossEntropy)
        launch("cross_entropy_f32", grid: min(rows, 65535), block: CUDABackend.rowBlock(classes),
               [.pointer(address(logits)), .pointer(address(targets)), .int64(rows), .int64(classes), .int32(ignoreIndex),
                .pointer(address(losses)), .pointer(address(weights)), .pointer(address(probabilities))])
    }

    public func crossEntropyBackward(probabilities: Tensor, targets: Tensor, rows: Int, classes: Int, ignoreIndex: Int32,
                                     scale: Tensor, into gx: Tensor) {
        elementwise("cross_entropy_backward_f32", count: rows * classes,
                    [.pointer(address(probabilities)), .pointer(address(targets)), .pointer(address(scale)), .pointer(address(gx)),
                     .int64(rows), .int64(classes), .int32(ignoreIndex)])
    }

    public func dropoutMask(_ mask: Tensor, p: Float, seed: UInt64, counter: UInt64) {
        elementwise("dropout_mask_f32", count: (mask.count + 3) / 4,
                    [.pointer(address(mask)), .int64(mask.count), .float(p), .uint64(seed), .uint64(counter)])
    }

    // MARK: Optimizers

    public func sgdStep(_ parameters: [SGDTensors], lr: Float, momentumFactor: Float, dampening: Float, weightDecay: Float,
                        nesterov: Bool) {
        let hasMomentum = parameters.first?.momentum != nil
        precondition(parameters.allSatisfy { ($0.momentum != nil) == hasMomentum }, "sgdStep: momentum buffers for some parameters only")
        launchOverTensorLists("sgd_f32", parameters.map { [$0.param, $0.grad] + ($0.momentum.map { [$0] } ?? []) },
                              [.int32(hasMomentum ? 1 : 0), .float(lr), .float(momentumFactor), .float(1 - dampening), .float(weightDecay),
                               .int32(nesterov ? 1 : 0)])
    }

    public func adamStep(_ parameters: [AdamTensors], lr: Float, beta1: Float, beta2: Float, eps: Float, weightDecay: Float,
                         decoupled: Bool, step: Int) {
        // The same scalar arithmetic as the CPU backend, on the host, in float32.
        let bc1 = 1 - powf(beta1, Float(step)), bc2 = 1 - powf(beta2, Float(step))
        let stepSize = lr / bc1, bc2Sqrt = bc2.squareRoot()
        let decay: Float = decoupled ? 1 - lr * weightDecay : 1
        launchOverTensorLists("adam_f32", parameters.map { [$0.param, $0.grad, $0.m, $0.v] },
                              [.float(beta1), .float(beta2), .float(eps), .float(weightDecay), .int32(decoupled ? 1 : 0),
                               .float(stepSize), .float(bc2Sqrt), .float(decay)])
    }

    /// The kernels' LOOM_TENSORS_PER_LAUNCH: 96 tensors' four addresses and offsets and the
    /// scalars make a 3.9 KB parameter block, inside the 4 KB every driver takes (GPT-2
    /// small's 148 parameters: two launches).
    static let tensorsPerLaunch = 96

    /// Launches `kernel` once per `tensorsPerLaunch` entries of `lists` (each entry: a
    /// parameter, its gradient, then up to two state tensors of the same size), with the
    /// kernel's `struct TensorList` as its first argument and `scalars` after it.
    private func launchOverTensorLists(_ kernel: String, _ lists: [[Tensor]], _ scalars: [KernelArgument]) {
        let limit = CUDABackend.tensorsPerLaunch
        for chunkStart in stride(from: 0, to: lists.count, by: limit) {
            let chunk = lists[chunkStart..<min(chunkStart + limit, lists.count)]
            var addresses = Array(repeating: [CUdeviceptr](repeating: 0, count: limit), count: 4)
            var start = [Int64](repeating: 0, count: limit + 1)
            for (j, tensors) in chunk.enumerated() {
                precondition(tensors.allSatisfy { $0.count == tensors[0].count && $0.dtype == .float32 },
                             "optimizer step: a parameter, its gradient and state differ in size or are not float32")
                for (slot, t) in tensors.enumerated() { addresses[slot][j] = address(t) }
                start[j + 1] = start[j] + Int64(tensors[0].count)
            }
            let total = Int(start[chunk.count])
            guard total > 0 else { continue }
            var table: [UInt8] = []
            for slot in addresses { for a in slot { table += withUnsafeBytes(of: a) { Array($0) } } }
            for s in start { table += withUnsafeBytes(of: s) { Array($0) } }
            table += withUnsafeBytes(of: Int32(chunk.count)) { Array($0) } + [0, 0, 0, 0]
            precondition(table.count + scalars.reduce(0) { $0 + $1.bytes.count } <= 4096, "\(kernel): parameter block over 4 KB")
            elementwise(kernel, count: total, [.bytes(table)] + scalars)
        }
    }
}
