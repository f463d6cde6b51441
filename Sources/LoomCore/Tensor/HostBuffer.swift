/// A tensor's values in host memory, for code that must hand a transport (MPI, a file, a
/// shared-memory exchange) a host address: the tensor's own memory when the host can
/// address it, else a buffer owned here, downloaded on creation and uploaded by
/// `commit()`. Keep the buffer alive while the address is in use.
///
/// This, `upload`/`download` and `Tensor.withHostMemory` are the only ways above a
/// backend to reach tensor memory.
public final class HostBuffer: @unchecked Sendable {
    public let tensor: Tensor
    /// The bytes of the tensor's view (its own memory, or the staging copy).
    public let bytes: UnsafeMutableRawBufferPointer
    /// Whether `bytes` is a staging copy (the tensor lives on a device).
    public let isStaged: Bool
    /// The backend's own staging memory (pinned, on a GPU), when it has some.
    private let staging: StagingBuffer?

    /// `download: false` when the caller overwrites every byte (a receive).
    public init(_ tensor: Tensor, download: Bool = true) {
        self.tensor = tensor
        if let base = tensor.storage.hostAddress {
            bytes = UnsafeMutableRawBufferPointer(start: base + tensor.offset * tensor.dtype.byteSize, count: tensor.byteCount)
            isStaged = false
            staging = nil
        } else if let backend = tensor.backend as? HostStaging {
            let s = backend.stagingBuffer(for: tensor, download: download)
            staging = s
            bytes = UnsafeMutableRawBufferPointer(rebasing: s.bytes[0..<tensor.byteCount])
            isStaged = true
        } else {
            bytes = .allocate(byteCount: Swift.max(tensor.byteCount, 1), alignment: 64)
            isStaged = true
            staging = nil
            if download { tensor.backend.download(tensor, into: UnsafeMutableRawBufferPointer(rebasing: bytes[0..<tensor.byteCount])) }
        }
    }

    /// The staged bytes back into the tensor (nothing to do for a host tensor).
    public func commit() {
        if let staging { staging.commit(); return }
        if isStaged { tensor.backend.upload(UnsafeRawBufferPointer(rebasing: bytes[0..<tensor.byteCount]), to: tensor) }
    }

    public var floats: UnsafeMutablePointer<Float> { bytes.baseAddress!.assumingMemoryBound(to: Float.self) }
    public var count: Int { tensor.count }

    deinit { if isStaged && staging == nil { bytes.deallocate() } }
}

/// A backend with host memory of its own for staging its tensors (page-locked memory and
/// a copy stream on a GPU, so that a collective's copies are DMA and do not queue behind
/// the compute stream's later work). `HostBuffer` asks it first.
public protocol HostStaging: Backend {
    /// Host bytes (at least the tensor's byte count) that hold `tensor`'s values if
    /// `download`, once this returns.
    func stagingBuffer(for tensor: Tensor, download: Bool) -> StagingBuffer
}

/// Host bytes a `HostStaging` backend lent; returned to it when released.
public protocol StagingBuffer: AnyObject {
    var bytes: UnsafeMutableRawBufferPointer { get }
    /// The bytes into the tensor, ordered before the device's later work on it.
    func commit()
}
