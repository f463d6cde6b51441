import ArgumentParser
import Foundation
import LoomCore
import LoomParallel
import LoomTrain

struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Predict a run's memory per rank and step time for every layout, before a rank starts; check pipeline schedules.",
        discussion: """
        With CONFIG and --ranks N: every dp x tp x pp split of N ranks, ZeRO stage, micro-batch \
        count, schedule and recomputation Loom can run is predicted on a cluster (--cluster FILE, \
        examples/clusters/; default: this machine, calibrated first), those that fit ranked by \
        step time with where the bytes and seconds go, those that do not with by how much, and \
        those Loom cannot run with why. Each line ends with the flags that run it. \
        With CONFIG and layout flags (--dp, --tp, --pp, ...): that one layout. --measure also \
        trains the layouts shown on this machine's in-process ranks and prints what they measured. \
        --calibrate measures this machine (matrix products of CONFIG's shapes, bandwidth, \
        in-process collectives) and writes a cluster description. \
        Without CONFIG: check a pipeline schedule (every send meets its receive; no deadlock) \
        and predict its bubble, taking a backward as twice a forward. See docs/planning.md.

        Examples:
          loom plan examples/shakespeare-gpt.toml --ranks 8
          loom plan examples/gpt3-175b.toml --ranks 1536 --cluster examples/clusters/a100-80gb-selene.toml --top 5
          loom plan examples/shakespeare-gpt.toml --dp 2 --tp 2 --measure
          loom plan --calibrate examples/shakespeare-gpt.toml --out cluster.toml
          loom plan --pp 4 --micro-batches 8 --schedule 1f1b --show
        """
    )

    @Argument(help: "A training config (TOML) to plan.")
    var config: String?
    @Option(help: "Search every layout of this many ranks.")
    var ranks: Int?
    @Option(help: "Cluster description (TOML); default: this machine, calibrated now.")
    var cluster: String?
    @Option(help: "Layouts to print (and --measure) from the top of the ranking.")
    var top: Int = 10
    @Flag(help: "One JSON object per layout.")
    var json = false
    @Flag(help: "Also train the layouts shown on this machine's in-process ranks and print what they measured.")
    var measure = false
    @Flag(help: "Measure this machine and write its cluster description (to --out, or standard output).")
    var calibrate = false
    @Option(help: "With --calibrate: the file to write.")
    var out: String?

    @Option(help: "Data-parallel ranks (with CONFIG: plan this one layout).")
    var dp: Int?
    @Option(help: "Tensor-parallel ranks.")
    var tp: Int?
    @Option(help: "ZeRO stage.")
    var zero: Int?
    @Option(help: "Pipeline stages.")
    var pp: Int?
    @Option(name: .customLong("micro-batches"), help: "Micro-batches per step (pipeline), or gradient accumulation steps (no pipeline).")
    var microBatches: Int?
    @Option(help: "gpipe, 1f1b or interleaved.")
    var schedule: Schedule.Kind = .oneFOneB
    @Option(help: "Interleaved: model chunks (virtual stages) per stage.")
    var chunks: Int = 2
    @Flag(help: "Pipeline: recompute activations in backward.")
    var recompute = false
    @Flag(help: "Print every stage's instructions (schedule check).")
    var show = false

    var layoutFlags: Bool { dp != nil || tp != nil || pp != nil || zero != nil || microBatches != nil || recompute }

    func validate() throws {
        if config == nil && !calibrate {
            guard let pp, let microBatches, pp >= 1, microBatches >= 1 else {
                throw ValidationError("give a CONFIG to plan, or --pp and --micro-batches (at least 1) to check a schedule")
            }
        }
        if let ranks, ranks < 1 { throw ValidationError("--ranks must be at least 1") }
        if config != nil && !calibrate && ranks == nil && !layoutFlags {
            throw ValidationError("give --ranks N to search layouts, or layout flags (--dp, --tp, --pp, ...) for one")
        }
        if ranks != nil && layoutFlags { throw ValidationError("--ranks searches layouts; drop the layout flags (or --ranks)") }
        guard top >= 1 else { throw ValidationError("--top must be at least 1") }
    }

    func run() throws {
        if calibrate { return try runReportingErrors { try runCalibration() } }
        guard let config else { return try checkSchedule() }
        try runReportingErrors {
            let c = try ConfigFile.load(config)
            let model = ModelCosts(spec: c.modelSpec, input: try PlanInput.of(c), precision: c.precision)
            let machine = try cluster.map(Cluster.load) ?? calibrated(c, model: model, ranks: ranks ?? single.ranks)
            let planner = Planner(config: c, model: model, cluster: machine)
            if let ranks { try search(planner, ranks: ranks, config: config) } else { try one(planner, single, config: config) }
        }
    }

    var single: Layout {
        Layout(dp: dp ?? 1, tp: tp ?? 1, pp: pp ?? 1, zero: zero ?? 0, microBatches: microBatches ?? 1, schedule: schedule, chunks: chunks,
               recompute: recompute)
    }

    func note(_ s: String) { if !json { FileHandle.standardError.write(Data(("loom plan: " + s + "\n").utf8)) } }

    func calibrated(_ c: TrainConfig, model: ModelCosts, ranks: Int) throws -> Cluster {
        let t0 = monotonicSeconds()
        let shapes = PlanInput.shapes(model, c, ranks: ranks)
        let m = try Calibration.measure(shapes, convolution: PlanInput.convolution(model), maxRanks: max(2, min(ranks, 8)), step: (c, model))
        note(String(format: "no --cluster: calibrated this machine in %.1f s (save it: loom plan --calibrate CONFIG --out FILE)", monotonicSeconds() - t0))
        return m
    }

    func runCalibration() throws {
        var shapes = Calibration.Shapes(), conv: (x: [Int], w: [Int])?, step: (config: TrainConfig, model: ModelCosts)?
        let maxRanks = ranks ?? 8
        if let config {
            let c = try ConfigFile.load(config)
            let model = ModelCosts(spec: c.modelSpec, input: try PlanInput.of(c), precision: c.precision)
            shapes = PlanInput.shapes(model, c, ranks: maxRanks)
            conv = PlanInput.convolution(model)
            step = (c, model)
        }
        let m = try Calibration.measure(shapes, convolution: conv, maxRanks: maxRanks, step: step) { note($0) }
        let text = m.render(comment: "Measured by `loom plan --calibrate\(config.map { " " + $0 } ?? "")` on \(m.device.name), \(m.device.cores) cores.\n"
            + "Throughputs per entry of device.threads; [[gemm]]: the planned model's products, timed.")
        if let out {
            try AtomicFile.write(text, to: out)
            note("wrote \(out)")
        } else {
            print(text, terminator: "")
        }
    }

    func search(_ planner: Planner, ranks: Int, config path: String) throws {
        let r = try planner.plan(ranks: ranks)
        let shown = Array(r.fitting.prefix(top))
        if json {
            for p in shown { print(PlanJSON(p, fits: true, config: path).json) }
            for p in r.tooBig.prefix(top) { print(PlanJSON(p, fits: false, config: path).json) }
            return
        }
        let cl = planner.costs.cluster
        print("loom plan \(path): \(ranks) ranks on \(cl.name) (\(MemoryMeter.format(Int(cl.device.memoryBytes))) per rank)")
        print("\(r.fitting.count + r.tooBig.count + r.impossible.count) layouts: \(r.fitting.count) fit, \(r.tooBig.count) do not, \(r.impossible.count) Loom cannot run")
        if shown.isEmpty { print("no layout fits") } else { print(PlanTable.header) }
        for (i, p) in shown.enumerated() {
            print(PlanTable.row(i + 1, p, unit: planner.config.isLanguageModel ? "tokens/s" : "samples/s"))
            print("      loom train \(path) \(p.layout.flags)")
        }
        if let first = r.tooBig.first {
            print("does not fit: \(r.tooBig.count) layouts; the smallest, \(first.layout), needs \(MemoryMeter.format(Int(first.memory.total))) per rank, "
                  + "\(MemoryMeter.format(Int(first.memory.total - cl.device.memoryBytes))) over")
        }
        var reasons: [String: Int] = [:]
        for x in r.impossible { reasons[x.reason, default: 0] += 1 }
        let grouped = reasons.sorted { ($0.value, $1.key) > ($1.value, $0.key) }
        for (why, n) in grouped.prefix(8) { print("cannot run (\(n) layouts): \(why)") }
        if grouped.count > 8 { print("cannot run: \(grouped.dropFirst(8).reduce(0) { $0 + $1.value }) more layouts, for \(grouped.count - 8) other reasons") }
        if measure { try measured(shown.map(\.layout), planner) }
    }

    func one(_ planner: Planner, _ l: Layout, config path: String) throws {
        if let why = planner.impossibility(l) { throw LoomError.config("layout \(l): \(why)") }
        let p = try planner.costs.predict(l)
        if json { print(PlanJSON(p, fits: p.fits, config: path).json) } else {
            print(PlanTable.header)
            print(PlanTable.row(1, p, unit: planner.config.isLanguageModel ? "tokens/s" : "samples/s"))
            if !p.fits {
                print("does not fit: \(MemoryMeter.format(Int(p.memory.total))) per rank, "
                      + "\(MemoryMeter.format(Int(p.memory.total - planner.costs.cluster.device.memoryBytes))) over the device's")
            }
        }
        if measure { try measured([l], planner, predictions: [p]) }
    }

    func measured(_ layouts: [Layout], _ planner: Planner, predictions: [Prediction]? = nil) throws {
        if !json { print("measured on this machine (in-process ranks, 3 warm-up steps, median of 8):") }
        for (i, l) in layouts.enumerated() {
            let p = try predictions?[i] ?? planner.costs.predict(l)
            let m = try LayoutMeasurement.measure(planner.config, l)
            if json {
                print(JSONOutput.string(MeasuredJSON(layout: l.description, predictedMs: p.time.total * 1000, measuredMs: m.stepSeconds * 1000,
                                                     predictedBytes: Int(p.memory.total), measuredBytes: m.peakBytes,
                                                     measuredSplit: m.peakSplit.named)))
            } else {
                print(String(format: "  %@  step %.1f ms predicted, %.1f measured (%+.0f%%);  peak %.1f MiB predicted, %.1f measured (%+.1f%%)",
                             l.description.padding(toLength: 26, withPad: " ", startingAt: 0), p.time.total * 1000, m.stepSeconds * 1000,
                             100 * (p.time.total / m.stepSeconds - 1), p.memory.total / 1048576, Double(m.peakBytes) / 1048576,
                             100 * (p.memory.total / Double(m.peakBytes) - 1)))
            }
        }
    }

    func checkSchedule() throws {
        let kind = schedule, pp = pp!, microBatches = microBatches!
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

struct MeasuredJSON: Encodable {
    var layout: String
    var predictedMs: Double, measuredMs: Double
    var predictedBytes: Int, measuredBytes: Int
    var measuredSplit: [String: Int]
    enum CodingKeys: String, CodingKey {
        case layout, predictedMs = "predicted_ms", measuredMs = "measured_ms", predictedBytes = "predicted_bytes", measuredBytes = "measured_bytes"
        case measuredSplit = "measured_split"
    }
}
