#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A per-thread switch, off unless inside a `with(true)` scope on the calling thread
/// (in-process ranks are threads, and each keeps its own). Backs `withoutGrad` and
/// `withPrecision`.
final class ThreadFlag: @unchecked Sendable {
    private let key: pthread_key_t
    private static let on = UnsafeMutableRawPointer(bitPattern: 1)!

    init() {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        key = k
    }

    var isOn: Bool { pthread_getspecific(key) != nil }

    /// Runs `body` with the switch at `value` on this thread, then restores it.
    func with<T>(_ value: Bool, _ body: () throws -> T) rethrows -> T {
        let previous = pthread_getspecific(key)
        pthread_setspecific(key, value ? ThreadFlag.on : nil)
        defer { pthread_setspecific(key, previous) }
        return try body()
    }
}
