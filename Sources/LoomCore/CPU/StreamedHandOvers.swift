import CLoomKernels
#if canImport(Glibc)
import Glibc
#endif

/// Whether the CPU backend stores the results that every thread reads next past the cores'
/// caches (non-temporal stores; the same values): the bf16 copy of a short activation
/// (`CPUBackend.streamsRounding`), C of a product split by columns, and a weight gradient's
/// packed operand.
///
/// A store into a line that another core has read costs what moving the line's ownership
/// costs, and that depends on where the two cores are: on the 2-vCPU Zen 4 machines Loom is
/// measured on, ~7 ns a line with the vCPUs on one L3 and ~28 with them on two (a state that
/// changes every 30 s to minutes as the host moves them). A streamed line costs ~3–5 ns in
/// either state, and its readers then fetch it from memory. The mlp's bf16 step at 2 threads,
/// every such result streamed: 14% faster with the vCPUs apart, 5% slower together
/// (docs/benchmarks.md). So, `measured` (the default), the backend asks the hardware:
/// `StreamProbe.c` has its two threads store and read a [128, 512] matrix both ways (~1–2 ms),
/// and the backend streams while plain stores take more than `threshold` times as long (here
/// 0.8–1.15 near, 3.0–3.6 far), measuring again when the last measurement is older than
/// `interval`.
/// `LOOM_STREAM_STORES=always|never|measured` sets it by hand.
public final class StreamedHandOvers: @unchecked Sendable {
    public enum Mode: String, CaseIterable, Sendable { case measured, always, never }

    public let mode: Mode
    /// Plain stores' time over streamed ones' above which results are streamed.
    public static let threshold = 1.5
    /// Seconds a measurement stands; one that could not run (the two threads did not run at
    /// once: more threads than free cores) stands ten times as long, plain stores meanwhile.
    public static let interval = 1.0

    private let lock = SpinLock()
    private var streaming = false, nextMeasurement = -Double.infinity
    private var measurements = 0, streamedMeasurements = 0, ratio: Double?

    init(mode: Mode) { self.mode = mode }

    /// `LOOM_STREAM_STORES`, else `measured`; an unknown value is named on stderr and ignored.
    static var modeFromEnvironment: Mode {
        guard let raw = getenv("LOOM_STREAM_STORES").map({ String(cString: $0) }) else { return .measured }
        if let mode = Mode(rawValue: raw) { return mode }
        let valid = Mode.allCases.map(\.rawValue).joined(separator: ", ")
        fputs("loom: LOOM_STREAM_STORES=\(raw) is not one of \(valid); using measured\n", stderr)
        return .measured
    }

    /// Measurements so far, how many of them chose streaming, and the last one's ratio.
    public var record: Checks {
        lock.withLock { Checks(measurements: measurements, streamed: streamedMeasurements, lastRatio: ratio) }
    }

    /// What the measurements found: how many were made, how many chose streaming, and the
    /// last one's ratio (plain stores' time over streamed ones'; nil before the first, or
    /// where it could not run).
    public struct Checks: Equatable, Sendable {
        public var measurements: Int, streamed: Int, lastRatio: Double?

        /// The checks made since `earlier` (a record taken before), with the last ratio.
        public func since(_ earlier: Checks) -> Checks {
            Checks(measurements: measurements - earlier.measurements, streamed: streamed - earlier.streamed, lastRatio: lastRatio)
        }
    }

    /// Whether to stream now, for a backend of `threads` threads (one: never; its next op
    /// reads from its own cache). `measured`: measures first where the last measurement is
    /// older than `interval`, on two threads of the backend's pool (`parallel`).
    func now(threads: Int, parallel: (_ body: (Int) -> Void) -> Void) -> Bool {
        guard threads > 1 else { return false }
        switch mode {
        case .always: return true
        case .never: return false
        case .measured: break
        }
        let now = monotonicSeconds()
        if let current = lock.withLock({ now < nextMeasurement ? streaming : nil }) { return current }
        let measured = Self.measure(parallel)
        return lock.withLock {
            nextMeasurement = now + (measured == nil ? 10 : 1) * Self.interval
            measurements += 1
            ratio = measured
            streaming = (measured ?? 0) > Self.threshold
            if streaming { streamedMeasurements += 1 }
            return streaming
        }
    }

    /// Plain stores' time over streamed ones' (`StreamProbe.c`) on two threads that `parallel`
    /// runs at once; nil where they did not run at once or the processor cannot stream.
    static func measure(_ parallel: (_ body: (Int) -> Void) -> Void) -> Double? {
        guard let probe = loom_stream_probe_create() else { return nil }
        defer { loom_stream_probe_free(probe) }
        parallel { id in loom_stream_probe_play(probe, Int32(id)) }
        let ratio = loom_stream_probe_ratio(probe)
        return ratio > 0 ? ratio : nil
    }
}
