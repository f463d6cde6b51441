import Synchronization

/// A block of memory owned by one backend, known above the backend only by an opaque
/// handle: a host address for the CPU backend, a device address (or any other token) for
/// an accelerator. Tensors are views into a storage: `offset` elements in, contiguous,
/// row-major.
///
/// Nothing outside a backend turns the handle into memory. Host code reads and writes
/// tensor values through `Tensor.withHostMemory` (host storages only) or through the
/// backend's `upload`/`download` (any device).
public final class Storage: @unchecked Sendable {
    public let device: Device
    public let byteCount: Int
    /// The backend's name for this block. Meaningful only to the backend that made it.
    public let handle: UInt
    private let release: (UInt, Int) -> Void
    /// The meter this allocation is charged to (the allocating thread's current one).
    private let meter: MemoryMeter?
    /// What the block holds, for its meter's split; changed only under the meter's count
    /// through `tag` (a storage no meter counts keeps `.activations`).
    public private(set) var category = MemoryCategory.activations
    /// The generation of the copies made of these values (`Tensor.operandCopy`) while nothing
    /// has reached the memory since; 0 when there is none to trust. A host storage is read and
    /// written only through `hostAddress` and `Tensor.ptr` (and its kin), which set it to 0, so a
    /// copy made before any access, by anyone, can never be taken for the values after it (as
    /// long as a pointer is taken for the access it serves, not kept across products).
    private let sealedGeneration = Atomic<Int>(0)
    /// Generations are numbered across all storages: a copy's never matches another
    /// storage's, even one at the same address after this one is freed.
    private static let generations = Atomic<Int>(0)

    /// `metered: false` for a second name of memory already counted (a backend's
    /// temporary host view of its own block).
    public init(device: Device, byteCount: Int, handle: UInt, metered: Bool = true, release: @escaping (UInt, Int) -> Void) {
        self.device = device
        self.byteCount = byteCount
        self.handle = handle
        self.release = release
        meter = metered ? MemoryMeter.current : nil
        meter?.charge(byteCount, category)
    }

    /// Counts this block under `category` from now on. `onlyUntagged`: only if nothing has
    /// said what it holds yet (a gradient that is a view of a communication bucket stays
    /// counted as the bucket).
    public func tag(_ category: MemoryCategory, onlyUntagged: Bool = false) {
        guard let meter, category != self.category, !onlyUntagged || self.category == .activations else { return }
        meter.move(byteCount, from: self.category, to: category)
        self.category = category
    }

    /// The host address of a host storage; nil for device memory. For backends that
    /// live on the host (the CPU backend, and an accelerator stand-in mapping its blocks).
    public var hostAddress: UnsafeMutableRawPointer? {
        guard device.isHost else { return nil }
        touch()
        return UnsafeMutableRawPointer(bitPattern: handle)
    }

    /// Someone is about to read or write this memory: copies made of it are no longer known
    /// to hold its values. (Reads count too; a needless recast is all they cost.) A load
    /// first, so that the common case, nothing sealed, writes nothing to a shared line.
    @inline(__always)
    func touch() {
        if sealedGeneration.load(ordering: .relaxed) != 0 { sealedGeneration.store(0, ordering: .relaxed) }
    }

    /// Declares the copies about to be recorded as made from the values as they are now, and
    /// returns their generation; nil for device memory, whose writes this class never sees.
    func seal() -> Int? {
        guard device.isHost else { return nil }
        let generation = Storage.generations.add(1, ordering: .relaxed).newValue
        sealedGeneration.store(generation, ordering: .relaxed)
        return generation
    }

    /// Whether nothing has reached this memory since `seal()` returned `generation`.
    func isSealed(at generation: Int) -> Bool {
        sealedGeneration.load(ordering: .relaxed) == generation
    }

    /// No memory: what a tensor whose values were released points at (`Tensor.rebind`).
    /// A kernel that reads it reads address 0 and faults at once instead of returning
    /// stale values.
    public static func released(on device: Device) -> Storage {
        Storage(device: device, byteCount: 0, handle: 0, metered: false, release: { _, _ in })
    }

    deinit {
        meter?.credit(byteCount, category)
        release(handle, byteCount)
    }
}

/// Allocation failure: names the bytes and the device, as PyTorch's out-of-memory error does.
public func allocationError(bytes: Int, device: Device, detail: String = "") -> LoomError {
    .backend("cannot allocate \(bytes) bytes (\((Double(bytes) / 104857.6).rounded() / 10) MiB) on \(device)"
             + (detail.isEmpty ? "" : ": \(detail)"))
}
