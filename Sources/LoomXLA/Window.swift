import LoomCore

/// The matrices a GEMM operand (or a block copy) addresses inside a flat slot, as slices
/// and reshapes: element (b, r, c) is at `start + b·batchStride + r·ld + c`.
///
/// The two strided axes (batch and rows, those of extent > 1) are ordered by stride; the
/// outer one's stride must be a whole number of the inner one's, and neither may overlap
/// the next (inner stride ≥ cols). Then the window is a slice of the slot of
/// `outer extent × outer stride` elements (zero-padded past the slot's end), reshaped to
/// [outer, outer stride / inner stride, inner stride] and cut to [outer, inner, cols].
/// Worked example: attention's heads of query values in a fused qkv [B, T, 3C] buffer,
/// for one sequence b: start b·T·3C, batch H (stride D), rows T (stride 3C), cols D. Outer
/// is rows (3C), inner is batch (D): slice T·3C elements, reshape to [T, 3C/D, D], cut to
/// [T, H, D], transpose to [H, T, D].
struct Window {
    let start: Int
    let batch: Int, rows: Int, cols: Int
    let batchStride: Int, ld: Int

    init(_ op: GEMMOperand, batch: Int, rows: Int, cols: Int, base: Int) {
        start = base + op.offset
        self.batch = batch; self.rows = rows; self.cols = cols
        batchStride = op.batchStride; ld = op.ld
    }

    init(start: Int, rows: Int, cols: Int, ld: Int) {
        self.start = start; batch = 1; self.rows = rows; self.cols = cols; batchStride = 0; self.ld = ld
    }

    /// The strided axes of extent > 1, outermost first: (axis 0 batch / 1 rows, extent, stride).
    private var axes: [(axis: Int, extent: Int, stride: Int)] {
        [(0, batch, batchStride), (1, rows, ld)].filter { $0.extent > 1 }.sorted { $0.stride > $1.stride }
    }

    /// The region's shape [outer, inner, …] before the cut, its flat length, and the cut.
    private var plan: (shape: [Int], length: Int, cut: [Int]) {
        let a = axes
        switch a.count {
        case 0: return ([cols], cols, [cols])
        case 1:
            precondition(a[0].stride >= cols, "xla: overlapping rows (stride \(a[0].stride) < \(cols) columns)")
            return ([a[0].extent, a[0].stride], a[0].extent * a[0].stride, [a[0].extent, cols])
        default:
            let (outer, inner) = (a[0], a[1])
            precondition(inner.stride >= cols && outer.stride % inner.stride == 0 && outer.stride / inner.stride >= inner.extent,
                         "xla: a strided operand the backend cannot slice: batch \(batch) × stride \(batchStride), rows \(rows) × ld \(ld), \(cols) columns")
            return ([outer.extent, outer.stride / inner.stride, inner.stride], outer.extent * outer.stride, [outer.extent, inner.extent, cols])
        }
    }

    /// Whether rows are the outer strided axis (the cut is [rows, batch, cols]: a transpose
    /// away from [batch, rows, cols], its own inverse); else the cut is [batch, rows, cols]
    /// less its extent-1 axes (a reshape away).
    private var rowsOutermost: Bool { let a = axes; return a.count == 2 && a[0].axis == 1 }

    private func toBatchRowsCols(_ v: HLOValue, _ hlo: HLOBuilder) -> HLOValue {
        rowsOutermost ? hlo.transpose(v, [1, 0, 2]) : hlo.reshape(v, [batch, rows, cols])
    }

    private func fromBatchRowsCols(_ v: HLOValue, _ hlo: HLOBuilder) -> HLOValue {
        rowsOutermost ? hlo.transpose(v, [1, 0, 2]) : hlo.reshape(v, plan.cut)
    }

    /// The region of the slot the window lies in, shaped as the plan (zeros past the end).
    private func region(_ slot: HLOValue, slotCount: Int, _ hlo: HLOBuilder) -> HLOValue {
        let p = plan
        let end = Swift.min(start + p.length, slotCount)
        let flat = hlo.padEnd(hlo.slice(slot, start: [start], limit: [end]), to: [p.length])
        return hlo.reshape(flat, p.shape)
    }

    /// [batch, rows, cols]; a batch stride of 0 repeats one matrix.
    func read(_ slot: HLOValue, slotCount: Int, _ hlo: HLOBuilder) -> HLOValue {
        if batch > 1 && batchStride == 0 {
            let one = Window(start: start, rows: rows, cols: cols, ld: ld).read(slot, slotCount: slotCount, hlo)
            return hlo.broadcast(hlo.reshape(one, [rows, cols]), [batch, rows, cols], dims: [1, 2])
        }
        let p = plan
        let r = region(slot, slotCount: slotCount, hlo)
        return toBatchRowsCols(hlo.slice(r, start: p.shape.map { _ in 0 }, limit: p.cut), hlo)
    }

    /// The slot with [batch, rows, cols] `v` written into the window.
    func write(_ v: HLOValue, into slot: HLOValue, slotCount: Int, _ hlo: HLOBuilder) -> HLOValue {
        precondition(batch == 1 || batchStride != 0, "xla: writing a batch of matrices that share storage")
        let p = plan
        let cut = fromBatchRowsCols(v, hlo)
        let filled: HLOValue
        if p.cut == p.shape {  // the window covers its region: nothing old to keep
            filled = hlo.reshape(cut, [p.length])
        } else {
            let old = region(slot, slotCount: slotCount, hlo)
            filled = hlo.reshape(hlo.updateSlice(old, cut, at: p.shape.map { _ in 0 }), [p.length])
        }
        let end = Swift.min(start + p.length, slotCount)
        let kept = hlo.slice(filled, start: [0], limit: [end - start])
        return hlo.updateSlice(slot, kept, at: [start])
    }
}
