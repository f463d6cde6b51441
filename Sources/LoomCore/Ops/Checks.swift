// Shape and device checks shared by the ops. Every failure is a thrown LoomError whose
// message names the op and the shapes involved.

@inline(__always)
func requireSameDevice(_ op: String, _ tensors: Tensor...) throws {
    guard let first = tensors.first else { return }
    // Compared by device, not backend object: CPU backends with different thread
    // counts (one per in-process rank) share host memory.
    for t in tensors.dropFirst() where t.device != first.device {
        throw LoomError.deviceMismatch("\(op): tensors on \(first.device) and \(t.device)")
    }
}

/// Kernels compute in float32: bfloat16/float16 tensors are storage, cast before use.
@inline(__always)
func requireFloat(_ op: String, _ t: Tensor) throws {
    guard t.dtype == .float32 else {
        throw LoomError.deviceMismatch("\(op): expected float32, got \(t.dtype) tensor \(describe(t.shape))"
            + (t.dtype.byteSize == 2 ? " (cast it with .cast(to: .float32))" : ""))
    }
}

/// Layout kernels move 4-byte elements (float32 or int32).
@inline(__always)
func require4ByteElements(_ op: String, _ t: Tensor) throws {
    guard t.dtype.byteSize == 4 else {
        throw LoomError.deviceMismatch("\(op): takes float32 or int32, got \(t.dtype) tensor \(describe(t.shape))")
    }
}

/// Numpy broadcasting: shapes are right-aligned; each pair of sizes is equal or one is 1.
public func broadcastShape(_ a: [Int], _ b: [Int], op: String = "broadcast") throws -> [Int] {
    let rank = max(a.count, b.count)
    var out = [Int](repeating: 1, count: rank)
    for i in 0..<rank {
        let da = i < rank - a.count ? 1 : a[i - (rank - a.count)]
        let db = i < rank - b.count ? 1 : b[i - (rank - b.count)]
        guard da == db || da == 1 || db == 1 else {
            throw LoomError.shapeMismatch("\(op): \(describe(a)) and \(describe(b)) do not broadcast (axis \(i): \(da) vs \(db))")
        }
        out[i] = max(da, db)
    }
    return out
}

/// Resolves a possibly negative axis against a rank.
func normalizeAxis(_ axis: Int, rank: Int, op: String) throws -> Int {
    let a = axis < 0 ? axis + rank : axis
    guard a >= 0 && a < max(rank, 1) else {
        throw LoomError.invalidArgument("\(op): axis \(axis) out of range for rank \(rank)")
    }
    return a
}
