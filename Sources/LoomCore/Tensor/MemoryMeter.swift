import Foundation

/// Counts the bytes of tensor storage allocated while it is the thread's current meter
/// and not yet freed, and the high-water mark of that count: how a pipeline stage
/// measures the memory one training step holds beyond what it starts with (activations
/// kept for backward, gradients, temporaries). A storage is charged to the meter that was
/// current when it was allocated and credited back to that meter when it is freed, on
/// whatever thread frees it. Threads with no current meter are not counted.
public final class MemoryMeter: @unchecked Sendable {
    private let lock = NSLock()
    private var live = 0
    private var high = 0

    public init() {}

    /// Bytes allocated under this meter and not yet freed.
    public var liveBytes: Int { lock.lock(); defer { lock.unlock() }; return live }
    /// The most `liveBytes` has been since the last `resetPeak()`.
    public var peakBytes: Int { lock.lock(); defer { lock.unlock() }; return high }

    /// Starts a new high-water mark at the current live count.
    public func resetPeak() { lock.lock(); high = live; lock.unlock() }

    func charge(_ bytes: Int) {
        lock.lock()
        live += bytes
        if live > high { high = live }
        lock.unlock()
    }

    func credit(_ bytes: Int) { lock.lock(); live -= bytes; lock.unlock() }

    private static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        return k
    }()

    /// The meter allocations on this thread are charged to (nil: none).
    public static var current: MemoryMeter? {
        pthread_getspecific(key).map { Unmanaged<MemoryMeter>.fromOpaque($0).takeUnretainedValue() }
    }

    /// Runs `body` with `meter` as this thread's current meter.
    public static func measuring<T>(_ meter: MemoryMeter, _ body: () throws -> T) rethrows -> T {
        let previous = pthread_getspecific(key)
        pthread_setspecific(key, Unmanaged.passUnretained(meter).toOpaque())
        defer { pthread_setspecific(key, previous) }
        return try withExtendedLifetime(meter) { try body() }
    }
}
