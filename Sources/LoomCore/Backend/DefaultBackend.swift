#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// The backend that tensors and layers made without `on:` allocate on: the innermost
/// `withDefaultBackend` scope of the calling thread, else the process's CPU backend.
/// Scoped per thread, like `withoutGrad`, because in-process ranks are threads.
public enum DefaultBackend {
    private final class Box { let backend: any Backend; init(_ b: any Backend) { backend = b } }

    private static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        return k
    }()

    public static var current: any Backend {
        guard let p = pthread_getspecific(key) else { return CPUBackend.shared }
        return Unmanaged<Box>.fromOpaque(p).takeUnretainedValue().backend
    }

    /// Runs `body` with `backend` as this thread's default.
    public static func with<T>(_ backend: any Backend, _ body: () throws -> T) rethrows -> T {
        let previous = pthread_getspecific(key)
        let box = Unmanaged.passRetained(Box(backend))
        pthread_setspecific(key, box.toOpaque())
        defer { pthread_setspecific(key, previous); box.release() }
        return try body()
    }
}

/// Runs `body` with tensors and layers made without `on:` allocated on `backend`.
public func withDefaultBackend<T>(_ backend: any Backend, _ body: () throws -> T) rethrows -> T {
    try DefaultBackend.with(backend, body)
}

/// The backend that serves each device, for `Tensor.to(_: Device)` and `Module.to`.
/// The CPU is always there; other backends register themselves when they are opened. The
/// calling thread's default backend comes first when it serves the device: in-process
/// ranks that share one GPU each open their own backend (stream, allocator) and must not
/// be handed the last one registered.
public enum Backends {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var table: [Device: any Backend] = [:]

    public static func register(_ backend: any Backend) {
        lock.lock(); defer { lock.unlock() }
        table[backend.device] = backend
    }

    public static func backend(for device: Device) throws -> any Backend {
        if DefaultBackend.current.device == device { return DefaultBackend.current }
        if device == .cpu { return CPUBackend.shared }
        lock.lock(); defer { lock.unlock() }
        guard let b = table[device] else {
            throw LoomError.deviceMismatch("no backend is open for \(device) (open one first: cpu is always available)")
        }
        return b
    }
}
