import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// Splits `0..<count` into at most `threads` contiguous chunks of at least `grain`
/// items and runs `body` on each, in parallel when there is more than one.
/// Chunks are deterministic (same split for the same count and thread count), so
/// results are bit-identical from run to run.
@inline(__always)
func parallelFor(_ count: Int, grain: Int, threads: Int, _ body: (Range<Int>) -> Void) {
    guard count > 0 else { return }
    let chunks = max(1, min(threads, count / max(grain, 1)))
    if chunks == 1 { body(0..<count); return }
    let per = (count + chunks - 1) / chunks
    DispatchQueue.concurrentPerform(iterations: chunks) { c in
        let lo = c * per
        let hi = min(count, lo + per)
        if lo < hi { body(lo..<hi) }
    }
}

/// A minimal mutex for short critical sections.
final class SpinLock: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }
    @inline(__always)
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }
}
