/// A block of memory owned by one backend. Host memory for the CPU backend; a device
/// address (carried in the same pointer-sized field) for accelerator backends.
/// Tensors are views into a storage: `offset` elements in, contiguous, row-major.
public final class Storage: @unchecked Sendable {
    public let device: Device
    public let byteCount: Int
    public let raw: UnsafeMutableRawPointer
    private let release: (UnsafeMutableRawPointer, Int) -> Void
    /// The meter this allocation is charged to (the allocating thread's current one).
    private let meter: MemoryMeter?

    public init(device: Device, byteCount: Int, raw: UnsafeMutableRawPointer,
                release: @escaping (UnsafeMutableRawPointer, Int) -> Void) {
        self.device = device
        self.byteCount = byteCount
        self.raw = raw
        self.release = release
        meter = MemoryMeter.current
        meter?.charge(byteCount)
    }

    deinit {
        meter?.credit(byteCount)
        release(raw, byteCount)
    }
}
