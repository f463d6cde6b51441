import Foundation
import LoomCore

/// Index checks that never stop the host. An embedding's indices and a loss's targets are
/// checked on the device, where a kernel records the first one out of range in a small
/// device record ({check, position, index, bound}); the kernels that use them skip such an
/// index (a NaN output, nothing added), so nothing reads or writes outside a table. The
/// record travels to pinned host memory with the next copy the host waits for anyway (the
/// loss), and `throwPending` turns it into the same one-line error the CPU throws at the
/// call. Before, each check read a flag back and waited for the stream: two host stops a
/// step, in front of the backward pass.
final class IndexFaults: @unchecked Sendable {
    enum Check: Int32 {
        case embedding = 1, crossEntropy = 2
    }

    private let context: CUDAContext
    /// int32 {check, position, index, bound}; check 0: no fault.
    let record: CUdeviceptr
    private let mirror: UnsafeMutableRawPointer
    private var queued = false
    private var pending: LoomError?
    private let lock = NSLock()

    init(context: CUDAContext) throws {
        self.context = context
        record = try context.allocator.allocate(16)
        let driver = context.driver
        try driver.check(driver.cuMemsetD8Async(record, 0, 16, context.stream), "cuMemsetD8Async")
        var p: UnsafeMutableRawPointer?
        try driver.check(driver.cuMemHostAlloc(&p, 16, 0), "cuMemHostAlloc(16 bytes)")
        mirror = p!
        mirror.initializeMemory(as: Int32.self, repeating: 0, count: 4)
    }

    deinit {
        _ = context.driver.cuMemFreeHost(mirror)
        context.allocator.free(record)
    }

    /// A check was queued: the record must be read before the next error check.
    func noteQueued() { lock.withLock { queued = true } }

    /// Queues the record's copy into pinned memory when a check was queued since the last
    /// one; true if it did (then call `read` once the host has waited for the stream).
    func queueRead() throws -> Bool {
        guard lock.withLock({ () -> Bool in defer { queued = false }; return queued }) else { return false }
        let driver = context.driver
        try driver.check(driver.cuMemcpyDtoHAsync(mirror, record, 16, context.stream), "cuMemcpyDtoHAsync_v2")
        return true
    }

    /// After the host has waited for the stream: the record, if it holds a fault, becomes
    /// the pending error (the first one is kept).
    func read() {
        let r = (0..<4).map { mirror.load(fromByteOffset: $0 * 4, as: Int32.self) }
        guard let check = Check(rawValue: r[0]) else { return }
        let message: String
        switch check {
        case .embedding: message = "embedding: index \(r[2]) at position \(r[1]) is outside the table of \(r[3]) rows"
        case .crossEntropy: message = "cross-entropy: target \(r[2]) at row \(r[1]) is outside 0..<\(r[3])"
        }
        lock.withLock { if pending == nil { pending = .invalidArgument(message) } }
    }

    /// Throws the pending error once, and clears the device record for the next fault.
    func throwPending() throws {
        guard let error = lock.withLock({ () -> LoomError? in defer { pending = nil }; return pending }) else { return }
        mirror.initializeMemory(as: Int32.self, repeating: 0, count: 4)
        let driver = context.driver
        try driver.check(driver.cuMemsetD8Async(record, 0, 16, context.stream), "cuMemsetD8Async")
        throw error
    }
}
