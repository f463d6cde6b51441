import Foundation
import LoomCore
import LoomDistributed

/// The events of a run's last steps on one rank (what ran, start and end in seconds),
/// for a Chrome trace: the last `keep` steps, so a long run's trace stays small and shows
/// the steady state.
struct TraceRecorder {
    var keep = 10
    private(set) var steps: [(step: Int, events: [(name: String, start: Double, end: Double)])] = []

    mutating func record(step: Int, _ events: [(name: String, start: Double, end: Double)]) {
        steps.append((step, events))
        if steps.count > keep { steps.removeFirst(steps.count - keep) }
    }

    /// Chrome trace events (JSON objects, one per line) of this rank's recorded steps.
    func lines(track: Int) -> [String] {
        steps.flatMap { step in
            step.events.map { e in
                String(format: "{\"name\": \"%@\", \"ph\": \"X\", \"pid\": 0, \"tid\": %d, \"ts\": %.1f, \"dur\": %.1f, \"args\": {\"step\": %d}}",
                       e.name, track, e.start * 1e6, (e.end - e.start) * 1e6, step.step + 1)
            }
        }
    }

    /// Collective over `world`: every rank's events go to rank 0, which writes one trace
    /// with a track per rank (named by `label(rank)`), timed by the monotonic clock.
    /// Ranks in one process, or MPI processes on one machine, share that clock;
    /// across machines the tracks are each right but not aligned.
    func write(to path: String, world: Communicator?, label: (Int) -> String) throws {
        let mine = lines(track: world?.rank ?? 0).joined(separator: ",\n")
        guard let world, world.size > 1 else { return try TraceRecorder.writeFile([mine], labels: [label(0)], to: path) }
        let tag = 1 << 21
        if world.rank != 0 {
            try world.send(named: [], metadata: ["trace": mine], to: 0, tag: tag)
            return
        }
        var all = [mine]
        for r in 1..<world.size { all.append(try world.receiveNamed(from: r, tag: tag).metadata["trace"] ?? "") }
        try TraceRecorder.writeFile(all, labels: (0..<world.size).map(label), to: path)
    }

    static func writeFile(_ perRank: [String], labels: [String], to path: String) throws {
        var events = labels.enumerated().map { r, name in
            "{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": 0, \"tid\": \(r), \"args\": {\"name\": \"\(name)\"}}"
        }
        let body = perRank.filter { !$0.isEmpty }.joined(separator: ",\n")
        if !body.isEmpty { events.append(body) }
        try writeTextAtomically("{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n" + events.joined(separator: ",\n") + "\n]}\n", to: path)
    }
}

/// A pipeline stage's measurements over a run: the share of each step it sat idle (the
/// bubble: 1 - time in forward and backward / step time), the most memory a step held
/// beyond its start, and the most micro-batches in flight. The first step of a process
/// is left out (it allocates optimizer state and warms caches).
struct PipelineStats {
    private(set) var steps = 0
    private var busy = 0.0, wall = 0.0
    private(set) var peakBytes = 0, peakInFlight = 0

    mutating func add(events: [(name: String, start: Double, end: Double)], wall w: Double, peakBytes p: Int, inFlight: Int) {
        steps += 1
        guard steps > 1 else { return }
        busy += events.filter { $0.name.hasPrefix("forward") || $0.name.hasPrefix("backward") }.reduce(0) { $0 + $1.end - $1.start }
        wall += w
        peakBytes = max(peakBytes, p)
        peakInFlight = max(peakInFlight, inFlight)
    }

    var bubble: Double { wall > 0 ? 1 - busy / wall : .nan }
}
