import LoomCore
import LoomDistributed

/// Something that ran, named as a trace shows it, with its start and end (monotonic
/// seconds), on the rank's compute lane (what its training thread did) or its
/// communication lane (a collective running on the communicator's queue).
public struct TimedSpan: Sendable {
    public enum Lane: Int, Sendable { case compute, communication }
    public var name: String
    public var start: Double
    public var end: Double
    public var lane: Lane
    public init(name: String, start: Double, end: Double, lane: Lane = .compute) {
        self.name = name; self.start = start; self.end = end; self.lane = lane
    }
}

/// The collectives data parallelism ran in a step, and where its training thread waited
/// for one, as trace spans: a gather that ran under the compute before it shows on the
/// communication lane with no wait under it; one that did not, with a `wait:` span as
/// long as the part it failed to hide.
///
/// A communicator runs its collectives one after another in the order they were started,
/// so a collective's span starts when it was started or when the one before it
/// completed, whichever is later.
///
/// ```
/// compute        |forward blocks.0|forward blocks.1|wait: all-gather of blocks.2|forward blocks.2|
/// communication  |all-gather of blocks.1|all-gather of blocks.2 ..............|
/// ```
///
/// Off until `isRecording` (a run with `--trace`): then it keeps the spans until `take()`.
public final class CommTimeline {
    public var isRecording = false
    private var requests: [CommRequest] = []
    private var waits: [TimedSpan] = []

    public init() {}

    /// Waits for `request` (rethrowing its failure), recording it and the wait.
    func wait(_ request: CommRequest) throws {
        let start = monotonicSeconds()
        try request.wait()
        guard isRecording else { return }
        let end = monotonicSeconds()
        requests.append(request)
        if end - start > 1e-6 { waits.append(TimedSpan(name: "wait: " + request.label, start: start, end: end)) }
    }

    /// The spans recorded since the last call.
    public func take() -> [TimedSpan] {
        defer { requests = []; waits = [] }
        var free = -Double.infinity, spans = waits
        for r in requests.sorted(by: { $0.issued < $1.issued }) {
            guard let end = r.completed else { continue }
            spans.append(TimedSpan(name: r.label, start: max(r.issued, free), end: end, lane: .communication))
            free = end
        }
        return spans
    }
}
