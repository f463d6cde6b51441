#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Whether operations record the graph, per thread (in-process ranks are threads, and
/// each has its own mode). Enabled unless inside `withoutGrad`.
public enum GradMode {
    private static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        return k
    }()
    private static let disabledMarker = UnsafeMutableRawPointer(bitPattern: 1)!

    public static var isEnabled: Bool { pthread_getspecific(key) == nil }

    /// Runs `body` without recording the graph (evaluation, optimizer updates).
    public static func withoutGrad<T>(_ body: () throws -> T) rethrows -> T {
        let previous = pthread_getspecific(key)
        pthread_setspecific(key, disabledMarker)
        defer { pthread_setspecific(key, previous) }
        return try body()
    }
}

/// Runs `body` without recording the graph.
public func withoutGrad<T>(_ body: () throws -> T) rethrows -> T { try GradMode.withoutGrad(body) }
