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

    /// `download: false` when the caller overwrites every byte (a receive).
    public init(_ tensor: Tensor, download: Bool = true) {
        self.tensor = tensor
        if let base = tensor.storage.hostAddress {
            bytes = UnsafeMutableRawBufferPointer(start: base + tensor.offset * tensor.dtype.byteSize, count: tensor.byteCount)
            isStaged = false
        } else {
            bytes = .allocate(byteCount: Swift.max(tensor.byteCount, 1), alignment: 64)
            isStaged = true
            if download { tensor.backend.download(tensor, into: UnsafeMutableRawBufferPointer(rebasing: bytes[0..<tensor.byteCount])) }
        }
    }

    /// The staged bytes back into the tensor (nothing to do for a host tensor).
    public func commit() {
        if isStaged { tensor.backend.upload(UnsafeRawBufferPointer(rebasing: bytes[0..<tensor.byteCount]), to: tensor) }
    }

    public var floats: UnsafeMutablePointer<Float> { bytes.baseAddress!.assumingMemoryBound(to: Float.self) }
    public var count: Int { tensor.count }

    deinit { if isStaged { bytes.deallocate() } }
}
