#if canImport(Glibc)
import Glibc
#endif

extension CPUBackend {
    public func permute(_ x: Tensor, perm: [Int], into y: Tensor) {
        let started = monotonicSeconds(); defer { count(.memory, since: started) }
        let shape = x.shape, rank = shape.count
        var xStrides = [Int](repeating: 1, count: rank)
        for d in stride(from: rank - 2, through: 0, by: -1) { xStrides[d] = xStrides[d + 1] * shape[d + 1] }
        let outShape = perm.map { shape[$0] }
        let src = perm.map { xStrides[$0] }  // stride in x of each output axis
        let px = x.ptr, py = y.ptr
        // Copy runs along the output's last axis; contiguous when that axis is x's last.
        let cols = outShape.last ?? 1
        let rows = y.count / max(cols, 1)
        let step = src.last ?? 1
        parallelFor(rows, grain: max(1, 4096 / max(cols, 1)), threads: threads) { r in
            for row in r {
                var rem = row, off = 0
                for d in stride(from: rank - 2, through: 0, by: -1) {
                    off += (rem % outShape[d]) * src[d]
                    rem /= outShape[d]
                }
                let dst = py + row * cols
                if step == 1 {
                    dst.update(from: px + off, count: cols)
                } else {
                    for j in 0..<cols { dst[j] = px[off + j * step] }
                }
            }
        }
    }

    public func copyBlocks(_ src: Tensor, srcOffset: Int, srcStride: Int, into dst: Tensor, dstOffset: Int, dstStride: Int,
                           rows: Int, width: Int, accumulate: Bool) {
        let started = monotonicSeconds(); defer { count(.memory, since: started) }
        let ps = src.ptr + srcOffset, pd = dst.ptr + dstOffset
        parallelFor(rows, grain: max(1, 16384 / max(width, 1)), threads: threads) { r in
            for row in r {
                let s = ps + row * srcStride, d = pd + row * dstStride
                if accumulate { zip8(d, s, d, width, +) } else { d.update(from: s, count: width) }
            }
        }
    }
}
