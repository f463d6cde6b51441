import Foundation
import LoomCore

/// Host staging for collectives that go through host memory (ranks sharing a GPU, MPI
/// without NCCL, checkpoints): page-locked buffers from a pool, moved on the context's copy
/// stream. A download waits for the compute stream's work so far (an event), copies on the
/// copy stream and waits for that copy only; an upload waits likewise, copies, and makes the
/// compute stream wait for it, so the next kernel sees the new values while the host goes on.
/// A buffer goes back to the pool when released and is reused only once its last upload
/// has run (the emulator's pinned copies really are asynchronous: a missing wait shows).
final class PinnedStaging: @unchecked Sendable {
    final class Block {
        let pointer: UnsafeMutableRawPointer
        let capacity: Int
        /// Recorded on the compute stream before a copy (the work the copy must follow).
        let computed: CUevent
        /// Recorded on the copy stream after a copy.
        let copied: CUevent
        /// An upload from this block may still be running.
        var uploading = false
        init(pointer: UnsafeMutableRawPointer, capacity: Int, computed: CUevent, copied: CUevent) {
            self.pointer = pointer
            self.capacity = capacity
            self.computed = computed
            self.copied = copied
        }
    }

    private let context: CUDAContext
    private var free: [Int: [Block]] = [:]
    private var all: [Block] = []
    private let lock = NSLock()

    init(context: CUDAContext) { self.context = context }

    deinit {
        let driver = context.driver
        _ = driver.cuStreamSynchronize(context.copyStream)
        for b in all {
            _ = driver.cuMemFreeHost(b.pointer)
            _ = driver.cuEventDestroy(b.computed)
            _ = driver.cuEventDestroy(b.copied)
        }
    }

    /// A block of at least `bytes` (sizes in powers of two from 4 KB), free to write.
    func take(_ bytes: Int) throws -> Block {
        let size = max(4096, 1 << (64 - (max(bytes, 1) - 1).leadingZeroBitCount))
        let driver = context.driver
        if let b = lock.withLock({ free[size]?.popLast() }) {
            if b.uploading {  // the host may not write it before its last upload has read it
                try driver.check(driver.cuEventSynchronize(b.copied), "cuEventSynchronize")
                b.uploading = false
            }
            return b
        }
        var p: UnsafeMutableRawPointer?
        try driver.check(driver.cuMemHostAlloc(&p, size, 0), "cuMemHostAlloc(\(size) bytes)")
        func event() throws -> CUevent {
            var e: OpaquePointer?
            try driver.check(driver.cuEventCreate(&e, 2), "cuEventCreate")  // CU_EVENT_DISABLE_TIMING
            return e
        }
        let b = Block(pointer: p!, capacity: size, computed: try event(), copied: try event())
        lock.withLock { all.append(b) }
        return b
    }

    func give(_ b: Block) { lock.withLock { free[b.capacity, default: []].append(b) } }

    /// The compute stream's work so far, then `copy` on the copy stream, recorded in `b.copied`.
    private func afterCompute(_ b: Block, _ copy: () throws -> Void) throws {
        let driver = context.driver
        try driver.check(driver.cuEventRecord(b.computed, context.stream), "cuEventRecord")
        try driver.check(driver.cuStreamWaitEvent(context.copyStream, b.computed, 0), "cuStreamWaitEvent")
        try copy()
        try driver.check(driver.cuEventRecord(b.copied, context.copyStream), "cuEventRecord")
    }

    /// The tensor's bytes into `b`; returns when they are there.
    func download(_ address: CUdeviceptr, bytes: Int, into b: Block) throws {
        let driver = context.driver
        try afterCompute(b) {
            try driver.check(driver.cuMemcpyDtoHAsync(b.pointer, address, bytes, context.copyStream), "cuMemcpyDtoHAsync_v2")
        }
        try driver.check(driver.cuEventSynchronize(b.copied), "cuEventSynchronize")
    }

    /// `b`'s bytes into the tensor, before any compute work queued after this call.
    func upload(_ b: Block, bytes: Int, to address: CUdeviceptr) throws {
        let driver = context.driver
        try afterCompute(b) {
            try driver.check(driver.cuMemcpyHtoDAsync(address, b.pointer, bytes, context.copyStream), "cuMemcpyHtoDAsync_v2")
        }
        try driver.check(driver.cuStreamWaitEvent(context.stream, b.copied, 0), "cuStreamWaitEvent")
        b.uploading = true
    }
}

/// A `HostBuffer`'s bytes when the tensor is on a GPU: a pinned block, back to the pool when released.
final class PinnedBuffer: StagingBuffer {
    private let backend: CUDABackend
    private let tensor: Tensor
    private let block: PinnedStaging.Block
    let bytes: UnsafeMutableRawBufferPointer

    init(backend: CUDABackend, tensor: Tensor, download: Bool) {
        self.backend = backend
        self.tensor = tensor
        block = backend.orStop { try backend.staging.take(tensor.byteCount) }
        bytes = UnsafeMutableRawBufferPointer(start: block.pointer, count: block.capacity)
        if download {
            backend.orStop { try backend.staging.download(backend.address(tensor), bytes: tensor.byteCount, into: block) }
            backend.countHostWait()
        }
    }

    func commit() {
        backend.orStop { try backend.staging.upload(block, bytes: tensor.byteCount, to: backend.address(tensor)) }
    }

    deinit { backend.staging.give(block) }
}

extension CUDABackend: HostStaging {
    public func stagingBuffer(for tensor: Tensor, download: Bool) -> StagingBuffer {
        PinnedBuffer(backend: self, tensor: tensor, download: download)
    }
}
