import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// Splits `0..<count` into at most `threads` contiguous chunks of at least `grain`
/// items and runs `body` on each, in parallel when there is more than one.
/// Chunks are deterministic (same split for the same count and thread count), so
/// results are bit-identical from run to run.
///
/// The chunks run on oneDNN's OpenMP team (libgomp, `GOMP_parallel`) when that runtime is
/// loaded, else on libdispatch's pool. One pool for everything: after a convolution the
/// OpenMP threads spin for a while waiting for the next parallel region, and a second
/// pool's threads would wait for cores behind them (ResNet-20 at 2 threads: batch norm and
/// the elementwise ops did not speed up from 1 thread to 2 at all, and libgomp's spinning
/// was 21% of the profile). `LOOM_CPU_POOL=dispatch` keeps libdispatch (to compare).
@inline(__always)
func parallelFor(_ count: Int, grain: Int, threads: Int, _ body: (Range<Int>) -> Void) {
    guard count > 0 else { return }
    let chunks = max(1, min(threads, count / max(grain, 1)))
    if chunks == 1 { body(0..<count); return }
    let per = (count + chunks - 1) / chunks
    if let team = OpenMPTeam.shared {
        team.run(chunks: chunks) { c in
            let lo = c * per, hi = min(count, lo + per)
            if lo < hi { body(lo..<hi) }
        }
        return
    }
    DispatchQueue.concurrentPerform(iterations: chunks) { c in
        let lo = c * per
        let hi = min(count, lo + per)
        if lo < hi { body(lo..<hi) }
    }
}

/// libgomp's parallel region, reached with dlsym (it is loaded with oneDNN): the ABI GCC
/// emits for `#pragma omp parallel`.
final class OpenMPTeam: @unchecked Sendable {
    typealias Region = @convention(c) (UnsafeMutableRawPointer?) -> Void
    private let parallel: @convention(c) (Region, UnsafeMutableRawPointer?, UInt32, UInt32) -> Void
    fileprivate let threadNumber: @convention(c) () -> Int32
    fileprivate let teamSize: @convention(c) () -> Int32

    static let shared: OpenMPTeam? = {
        if let pool = getenv("LOOM_CPU_POOL").map({ String(cString: $0) }), pool == "dispatch" { return nil }
        guard let handle = dlopen(nil, RTLD_NOW), let p = dlsym(handle, "GOMP_parallel"), let t = dlsym(handle, "omp_get_thread_num"),
              let n = dlsym(handle, "omp_get_num_threads") else { return nil }
        return OpenMPTeam(parallel: unsafeBitCast(p, to: (@convention(c) (Region, UnsafeMutableRawPointer?, UInt32, UInt32) -> Void).self),
                          threadNumber: unsafeBitCast(t, to: (@convention(c) () -> Int32).self),
                          teamSize: unsafeBitCast(n, to: (@convention(c) () -> Int32).self))
    }()

    private init(parallel: @escaping @convention(c) (Region, UnsafeMutableRawPointer?, UInt32, UInt32) -> Void,
                 threadNumber: @escaping @convention(c) () -> Int32, teamSize: @escaping @convention(c) () -> Int32) {
        self.parallel = parallel
        self.threadNumber = threadNumber
        self.teamSize = teamSize
    }

    /// `body(c)` for every c in 0..<chunks, on a team of `chunks` threads (the caller one of
    /// them). Inside another parallel region the team is the calling thread alone, which
    /// then runs every chunk.
    func run(chunks: Int, _ body: (Int) -> Void) {
        withoutActuallyEscaping(body) { body in
            var work = Work(team: self, chunks: chunks, body: body)
            withUnsafeMutablePointer(to: &work) { p in parallel(OpenMPTeam.region, UnsafeMutableRawPointer(p), UInt32(chunks), 0) }
        }
    }

    private struct Work {
        let team: OpenMPTeam
        let chunks: Int
        let body: (Int) -> Void
    }

    private static let region: Region = { raw in
        let work = raw!.assumingMemoryBound(to: Work.self)
        let n = Int(work.pointee.team.teamSize()), t = Int(work.pointee.team.threadNumber())
        var c = t
        while c < work.pointee.chunks {
            work.pointee.body(c)
            c += max(n, 1)
        }
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
