import ArgumentParser
import Foundation
import LoomParallel

struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Check a pipeline schedule and predict its bubble and memory, without running it.",
        discussion: """
        Every send must meet a matching receive (same micro-batch and kind, in order) and the \
        schedule must finish; a schedule that would hang is reported with where each stage is \
        stuck. The cost model takes a backward as twice a forward.

        Examples:
          loom plan --pp 4 --micro-batches 8 --schedule 1f1b
          loom plan --pp 2 --micro-batches 8 --schedule gpipe --show
          loom plan --pp 4 --micro-batches 8 --schedule interleaved --chunks 2
        """
    )

    @Option(help: "Pipeline stages.")
    var pp: Int
    @Option(name: .customLong("micro-batches"), help: "Micro-batches per step.")
    var microBatches: Int
    @Option(help: "gpipe, 1f1b or interleaved.")
    var schedule: Schedule.Kind = .oneFOneB
    @Option(help: "Interleaved: model chunks (virtual stages) per stage.")
    var chunks: Int = 2
    @Flag(help: "Print every stage's instructions.")
    var show = false

    func validate() throws {
        guard pp >= 1, microBatches >= 1 else { throw ValidationError("--pp and --micro-batches must be at least 1") }
    }

    func run() throws {
        let kind = schedule
        let s: Schedule, r: ScheduleCheck.Report
        do {
            s = try Schedule(kind, stages: pp, microBatches: microBatches, chunks: kind == .interleaved ? chunks : nil)
            r = try ScheduleCheck().run(s)
        } catch {
            FileHandle.standardError.write("loom: error: \(error)\n".data(using: .utf8)!)
            throw ExitCode(1)
        }
        print("schedule \(schedule), \(pp) stages" + (s.chunks > 1 ? " × \(s.chunks) chunks" : "")
              + ", \(microBatches) micro-batches: every send meets its receive; no deadlock")
        print(String(format: "theoretical bubble (K-1)/(vM+K-1) = %.3f", s.theoreticalBubble))
        print("stage  predicted bubble  peak activations in flight  instructions" + (s.chunks > 1 ? "  (in flight: micro-batch × chunk units)" : ""))
        for stage in 0..<pp {
            print(String(format: "%5d  %16.3f  %26d  %d", stage, r.bubble[stage], r.peakInFlight[stage], s.program(stage: stage).count))
        }
        if show {
            for stage in 0..<pp {
                print("stage \(stage): " + s.steps[stage].map { $0.map(\.description).joined(separator: " ") }.joined(separator: " | "))
            }
        }
    }
}
