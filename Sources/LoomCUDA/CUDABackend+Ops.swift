import LoomCore

// Elementwise maps, reductions, gathers and layout: one kernel each (CUDAKernels).

extension UnaryOp {
    /// The kernels' code for this op (`unaryF` in CUDAKernels.elementwise).
    var kernelCode: Int32 {
        switch self {
        case .neg: return 0
        case .exp: return 1
        case .log: return 2
        case .tanh: return 3
        case .relu: return 4
        case .gelu: return 5
        case .sqrt: return 6
        case .sigmoid: return 7
        case .square: return 8
        case .reciprocal: return 9
        }
    }
}

extension BinaryOp {
    var kernelCode: Int32 {
        switch self {
        case .add: return 0
        case .sub: return 1
        case .mul: return 2
        case .div: return 3
        }
    }
}

extension ScalarOp {
    var kernelCode: Int32 {
        switch self {
        case .add: return 0
        case .mul: return 1
        case .pow: return 2
        case .maximum: return 3
        }
    }
}

extension ReduceOp {
    var kernelCode: Int32 { self == .sum ? 0 : 1 }
}

extension CUDABackend {
    // MARK: Elementwise

    public func unary(_ op: UnaryOp, _ x: Tensor, into y: Tensor) {
        elementwise("unary_f32", count: x.count, [.int32(op.kernelCode), .pointer(address(x)), .pointer(address(y)), .int64(x.count)])
    }

    public func unaryBackward(_ op: UnaryOp, x: Tensor, y: Tensor, gradOutput: Tensor, into gx: Tensor) {
        elementwise("unary_backward_f32", count: gx.count,
                    [.int32(op.kernelCode), .pointer(address(x)), .pointer(address(y)), .pointer(address(gradOutput)),
                     .pointer(address(gx)), .int64(gx.count)])
    }

    public func binary(_ op: BinaryOp, _ a: Tensor, _ b: Tensor, into out: Tensor) {
        let n = out.count
        if a.count == n && b.count == n {
            elementwise("binary_f32", count: n, [.int32(op.kernelCode), .pointer(address(a)), .pointer(address(b)), .pointer(address(out)), .int64(n)])
            return
        }
        // Broadcast: merge adjacent axes where both operands advance alike, to fit 8 axes.
        var shape: [Int] = [], sa: [Int] = [], sb: [Int] = []
        let fullA = broadcastStrides(a.shape, to: out.shape), fullB = broadcastStrides(b.shape, to: out.shape)
        for d in 0..<out.shape.count where out.shape[d] != 1 {
            if let last = shape.indices.last, sa[last] == fullA[d] * out.shape[d], sb[last] == fullB[d] * out.shape[d] {
                shape[last] *= out.shape[d]; sa[last] = fullA[d]; sb[last] = fullB[d]
            } else {
                shape.append(out.shape[d]); sa.append(fullA[d]); sb.append(fullB[d])
            }
        }
        if shape.isEmpty { shape = [1]; sa = [0]; sb = [0] }
        precondition(shape.count <= 8, "\(name): broadcasting over more than 8 separate axes (\(a.shape), \(b.shape) -> \(out.shape))")
        elementwise("binary_broadcast_f32", count: n,
                    [.int32(op.kernelCode), .pointer(address(a)), .pointer(address(b)), .pointer(address(out)), .int64(n),
                     KernelArgument.arrays([shape, sa, sb], count: Int32(shape.count))])
    }

    public func scalar(_ op: ScalarOp, _ x: Tensor, _ s: Float, into y: Tensor) {
        elementwise("scalar_f32", count: x.count, [.int32(op.kernelCode), .pointer(address(x)), .float(s), .pointer(address(y)), .int64(x.count)])
    }

    // MARK: Reductions

    public func reduce(_ op: ReduceOp, _ x: Tensor, outer: Int, n: Int, inner: Int, into y: Tensor) {
        if inner == 1 && n >= 256 {  // long contiguous rows: a block per row
            launch("reduce_rows_f32", grid: min(outer, 65535), block: 256,
                   [.int32(op.kernelCode), .pointer(address(x)), .pointer(address(y)), .int64(outer), .int64(n)])
        } else if inner >= 32 && n >= 16 {  // columns over many rows (bias gradients): tiles, rows cut into runs
            let tiles = outer * ((inner + 31) / 32), runs = rowRuns(rows: n, tiles: tiles)
            inRuns(runs.count, op: op.kernelCode, count: outer * inner, into: [y]) { partial in
                launch("reduce_columns_tiled_f32", grid: tiles * runs.count, block: 256,
                       [.int32(op.kernelCode), .pointer(address(x)), .pointer(partial[0]), .int64(outer), .int64(n), .int64(inner),
                        .int64(runs.rowsPerRun)])
            }
        } else {
            elementwise("reduce_columns_f32", count: outer * inner,
                        [.int32(op.kernelCode), .pointer(address(x)), .pointer(address(y)), .int64(outer), .int64(n), .int64(inner)])
        }
    }

    /// How a tiled column reduction cuts its `rows` when `tiles` blocks cover the columns:
    /// enough runs for two blocks per multiprocessor, each run at least 64 rows, at most 64 runs.
    /// (One thread per column, walking every row, gave 3-12 blocks on a 132-multiprocessor
    /// GPU for GPT-2's bias and layer-norm gradients.)
    func rowRuns(rows: Int, tiles: Int) -> (count: Int, rowsPerRun: Int) {
        let wanted = max(1, min((2 * context.multiprocessors + tiles - 1) / tiles, rows / 64, 64))
        let perRun = (rows + wanted - 1) / wanted
        return ((rows + perRun - 1) / perRun, perRun)
    }

    /// Runs `body` with where each output's run results go ([run][i], `count` values a
    /// run; the output itself when there is one run), then combines the runs of each in
    /// order (`op` 0 sums, 1 maxima). The scratch goes back to the allocator when queued:
    /// later work on the stream is what reuses it.
    func inRuns(_ runs: Int, op: Int32, count: Int, into outputs: [Tensor], _ body: ([CUdeviceptr]) -> Void) {
        guard runs > 1 else { body(outputs.map(address)); return }
        let scratch = outputs.map { _ in orStop { try allocate(bytes: runs * count * 4) } }
        body(scratch.map { CUdeviceptr($0.handle) })
        for (partial, y) in zip(scratch, outputs) {
            elementwise("reduce_runs_f32", count: count, [.int32(op), .pointer(CUdeviceptr(partial.handle)), .pointer(address(y)),
                                                          .int64(count), .int64(runs)])
        }
    }

    public func argmax(_ x: Tensor, outer: Int, n: Int, inner: Int, into indices: Tensor) {
        elementwise("argmax_f32", count: outer * inner,
                    [.pointer(address(x)), .pointer(address(indices)), .int64(outer), .int64(n), .int64(inner)])
    }

    public func gatherAlongAxis(_ x: Tensor, indices: Tensor, outer: Int, n: Int, inner: Int, into y: Tensor) {
        elementwise("gather_axis_f32", count: outer * inner,
                    [.pointer(address(x)), .pointer(address(indices)), .pointer(address(y)), .int64(outer), .int64(n), .int64(inner)])
    }

    public func scatterAlongAxis(_ src: Tensor, indices: Tensor, outer: Int, n: Int, inner: Int, into y: Tensor) {
        elementwise("scatter_axis_f32", count: outer * inner,
                    [.pointer(address(src)), .pointer(address(indices)), .pointer(address(y)), .int64(outer), .int64(n), .int64(inner)])
    }

    public func localIndices(_ indices: Tensor, range: Range<Int>, local: Tensor, mask: Tensor) {
        elementwise("local_indices_i32", count: indices.count,
                    [.pointer(address(indices)), .pointer(address(local)), .pointer(address(mask)),
                     .int32(Int32(range.lowerBound)), .int32(Int32(range.upperBound)), .int64(indices.count)])
    }

    /// Per-block partial sums on the device (one launch per tensor), then one read back.
    public func sumOfSquares(_ tensors: [Tensor]) -> Double {
        var total = 0.0
        var slot = 0
        var pending: [Int] = []  // blocks per launched tensor, in slot order
        func flush() {
            guard slot > 0 else { return }
            var host = [Float](repeating: 0, count: slot)
            host.withUnsafeMutableBytes { b in orStop { try context.copy(fromDevice: partialsAddress, into: b) } }
            var at = 0
            for blocks in pending {
                total += Double(host[at..<(at + blocks)].reduce(0, +))
                at += blocks
            }
            slot = 0
            pending = []
        }
        for t in tensors where t.count > 0 {
            let blocks = max(1, min(64, (t.count + 4095) / 4096))
            if slot + blocks > CUDABackend.partialSlots { flush() }
            launch("sum_squares_f32", grid: blocks, block: 256,
                   [.pointer(address(t)), .int64(t.count), .pointer(partialsAddress + CUdeviceptr(slot * 4))])
            slot += blocks
            pending.append(blocks)
        }
        flush()
        return total
    }

    // MARK: Layout

    public func permute(_ x: Tensor, perm: [Int], into y: Tensor) {
        var inStrides = [Int](repeating: 1, count: x.shape.count)
        for d in stride(from: x.shape.count - 2, through: 0, by: -1) { inStrides[d] = inStrides[d + 1] * x.shape[d + 1] }
        let shape = perm.map { x.shape[$0] }, strides = perm.map { inStrides[$0] }
        precondition(shape.count <= 8, "\(name): permute of more than 8 axes")
        elementwise("permute_f32", count: y.count,
                    [.pointer(address(x)), .pointer(address(y)), .int64(y.count), KernelArgument.arrays([shape, strides], count: Int32(shape.count))])
    }

    public func copyBlocks(_ src: Tensor, srcOffset: Int, srcStride: Int, into dst: Tensor, dstOffset: Int, dstStride: Int,
                           rows: Int, width: Int, accumulate: Bool) {
        elementwise("copy_blocks_f32", count: rows * width,
                    [.pointer(address(src)), .int64(srcOffset), .int64(srcStride), .pointer(address(dst)), .int64(dstOffset),
                     .int64(dstStride), .int64(rows), .int64(width), .int32(accumulate ? 1 : 0)])
    }
}
