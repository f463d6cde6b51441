import Foundation
import LoomCore

/// Input batches to the GPU on the context's copy stream, through two pinned host buffers
/// used in turn: batch N+1 is copied while step N computes (PyTorch's `pin_memory` and
/// `non_blocking=True` copies).
///
/// For each batch: wait until the slot's previous copy has left its pinned buffer; copy
/// the host tensors into it; allocate the device tensors; make the copy stream wait for
/// the compute stream's work so far (the allocator may hand out blocks that work still
/// reads); queue the copies and record an event that `StagedTensors.take()` makes the
/// compute stream wait for.
final class BatchStager: @unchecked Sendable {
    private final class Slot {
        var pinned: UnsafeMutableRawPointer?
        var capacity = 0
        /// Recorded on the copy stream after this slot's last copy.
        let copied: CUevent
        /// Bumped at each use, so a batch taken after its slot was reused is caught.
        var generation = 0
        init(copied: CUevent) { self.copied = copied }
    }

    private let context: CUDAContext
    private var slots: [Slot] = []
    private var next = 0
    /// Recorded on the compute stream before each batch's copies.
    private let computeMark: CUevent
    private let lock = NSLock()

    init(context: CUDAContext) throws {
        self.context = context
        let driver = context.driver
        func event() throws -> CUevent {
            var e: OpaquePointer?
            try driver.check(driver.cuEventCreate(&e, 2), "cuEventCreate")  // CU_EVENT_DISABLE_TIMING
            return e
        }
        computeMark = try event()
        slots = try (0..<2).map { _ in Slot(copied: try event()) }
    }

    deinit {
        let driver = context.driver
        _ = driver.cuStreamSynchronize(context.copyStream)
        for slot in slots {
            if let p = slot.pinned { _ = driver.cuMemFreeHost(p) }
            _ = driver.cuEventDestroy(slot.copied)
        }
        _ = driver.cuEventDestroy(computeMark)
    }

    func stage(_ tensors: [Tensor], on backend: CUDABackend) throws -> StagedTensors {
        lock.lock(); defer { lock.unlock() }
        let driver = context.driver
        let slot = slots[next]
        next = (next + 1) % slots.count
        // Offsets in the pinned buffer, each tensor 256-byte aligned.
        var offsets: [Int] = [], bytes = 0
        for t in tensors { offsets.append(bytes); bytes += (t.byteCount + 255) / 256 * 256 }
        guard bytes > 0 else { return StagedTensors(try tensors.map { try $0.to(backend) }) {} }

        try driver.check(driver.cuEventSynchronize(slot.copied), "cuEventSynchronize")
        if slot.capacity < bytes {
            if let p = slot.pinned { try driver.check(driver.cuMemFreeHost(p), "cuMemFreeHost") }
            slot.pinned = nil
            slot.capacity = 0
            var p: UnsafeMutableRawPointer?
            try driver.check(driver.cuMemHostAlloc(&p, bytes, 0), "cuMemHostAlloc(\(bytes) bytes)")
            slot.pinned = p
            slot.capacity = bytes
        }
        let pinned = slot.pinned!
        for (t, offset) in zip(tensors, offsets) {
            try t.withHostMemory { source in
                if let base = source.baseAddress { (pinned + offset).copyMemory(from: base, byteCount: t.byteCount) }
            }
        }
        let outputs = try tensors.map { try Tensor(uninitialized: $0.shape, dtype: $0.dtype, on: backend) }
        try driver.check(driver.cuEventRecord(computeMark, context.stream), "cuEventRecord")
        try driver.check(driver.cuStreamWaitEvent(context.copyStream, computeMark, 0), "cuStreamWaitEvent")
        for (t, offset) in zip(outputs, offsets) where t.byteCount > 0 {
            try driver.check(driver.cuMemcpyHtoDAsync(backend.address(t), pinned + offset, t.byteCount, context.copyStream),
                             "cuMemcpyHtoDAsync_v2")
        }
        try driver.check(driver.cuEventRecord(slot.copied, context.copyStream), "cuEventRecord")
        slot.generation += 1
        let generation = slot.generation, stream = context.stream
        return StagedTensors(outputs) { [self] in
            lock.lock(); defer { lock.unlock() }
            guard slot.generation == generation else {
                throw LoomError.invalidArgument("a staged batch was taken after two later batches were staged: its copy event was reused")
            }
            try driver.check(driver.cuStreamWaitEvent(stream, slot.copied, 0), "cuStreamWaitEvent")
        }
    }
}

extension CUDABackend: BatchStaging {
    public func stage(_ tensors: [Tensor]) throws -> StagedTensors {
        try stager.stage(tensors, on: self)
    }
}
