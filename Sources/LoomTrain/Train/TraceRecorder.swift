import Foundation
import LoomCore
import LoomDistributed
import LoomParallel

/// The events of a run's last steps on one rank (what ran, start and end in seconds),
/// for a Chrome trace: the last `keep` steps, so a long run's trace stays small and shows
/// the steady state.
struct TraceRecorder {
    var keep = 10

    /// A span per instruction a pipeline stage ran, named as `forward(3)`.
    static func spans(_ events: [PipelineEvent]) -> [TimedSpan] {
        events.map { TimedSpan(name: "\($0.instruction)", start: $0.start, end: $0.end) }
    }

    private(set) var steps: [(step: Int, events: [TimedSpan])] = []

    /// One step's spans (the schedule's and the update's).
    mutating func record(step: Int, _ events: [TimedSpan]) {
        steps.append((step, events))
        if steps.count > keep { steps.removeFirst(steps.count - keep) }
    }

    /// Chrome trace events of this rank's recorded steps, on track `track`.
    func events(track: Int) -> [TraceEvent] {
        steps.flatMap { TraceRecorder.events($0.events, step: $0.step, track: track) }
    }

    /// Chrome trace events of one step's `events`, on track `track`: its compute lane is
    /// thread `2 track`, its communication lane `2 track + 1`.
    static func events(_ events: [TimedSpan], step: Int, track: Int) -> [TraceEvent] {
        events.map { e in
            TraceEvent(name: e.name, ph: "X", pid: 0, tid: 2 * track + e.lane.rawValue, ts: rounded(e.start * 1e6, 1), dur: rounded((e.end - e.start) * 1e6, 1),
                       args: TraceEvent.Args(step: step + 1, name: nil))
        }
    }

    static func events(_ events: [PipelineEvent], step: Int, track: Int) -> [TraceEvent] {
        Self.events(spans(events), step: step, track: track)
    }

    /// Collective over `world`: every rank's events go to rank 0, which writes one trace
    /// with a track per rank (named by `label(rank)`), timed by the monotonic clock.
    /// Ranks in one process, or MPI processes on one machine, share that clock;
    /// across machines the tracks are each right but not aligned.
    func write(to path: String, world: Communicator?, label: (Int) -> String) throws {
        let mine = events(track: world?.rank ?? 0)
        guard let world, world.size > 1 else { return try TraceRecorder.writeFile([mine], labels: [label(0)], to: path) }
        let tag = 1 << 21
        if world.rank != 0 {
            try world.send(named: [], metadata: ["trace": JSONOutput.string(mine)], to: 0, tag: tag)
            return
        }
        var all = [mine]
        for r in 1..<world.size {
            let text = try world.receiveNamed(from: r, tag: tag).metadata["trace"] ?? "[]"
            all.append(try JSONDecoder().decode([TraceEvent].self, from: Data(text.utf8)))
        }
        try TraceRecorder.writeFile(all, labels: (0..<world.size).map(label), to: path)
    }

    static func writeFile(_ perRank: [[TraceEvent]], labels: [String], to path: String) throws {
        // A rank's compute lane, and its communication lane where it has one.
        let used = Set(perRank.joined().map(\.tid))
        var lanes: [(tid: Int, name: String)] = []
        for (r, name) in labels.enumerated() {
            lanes.append((2 * r, name))
            if used.contains(2 * r + 1) { lanes.append((2 * r + 1, name + " communication")) }
        }
        let names = lanes.map { lane in
            TraceEvent(name: "thread_name", ph: "M", pid: 0, tid: lane.tid, ts: nil, dur: nil, args: TraceEvent.Args(step: nil, name: lane.name))
        }
        try AtomicFile.write(JSONOutput.string(TraceFile(displayTimeUnit: "ms", traceEvents: names + perRank.flatMap { $0 }), pretty: true) + "\n",
                                to: path)
    }
}

/// The Chrome trace format (Perfetto opens it): complete events ("X", microseconds) and
/// thread-name metadata ("M").
struct TraceEvent: Codable {
    struct Args: Codable {
        var step: Int?
        var name: String?
    }
    var name: String
    var ph: String
    var pid: Int
    var tid: Int
    var ts: Double?
    var dur: Double?
    var args: Args
}

struct TraceFile: Encodable {
    var displayTimeUnit: String
    var traceEvents: [TraceEvent]
}
