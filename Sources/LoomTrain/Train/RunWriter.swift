import Foundation
import LoomCore

/// What a run leaves behind and shows: the run directory's `config.toml`,
/// `metrics.jsonl`, `loss.svg` and `summary.json`, and the progress bar and notes on the
/// terminal. Only the rank that writes the run's files has one; checkpoints are the
/// trainer's (they are training state, not output).
final class RunWriter {
    let directory: String
    private let name: String
    private let log: MetricsLog
    /// nil when quiet.
    private let progress: Progress?

    /// Creates the directory, writes the configuration and opens the metrics log (on
    /// resume keeping the lines up to `resumedAt`).
    init(directory: String, config: TrainConfig, resumedAt step: Int?, totalSteps: Int, quiet: Bool) throws {
        self.directory = directory
        name = config.name
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try AtomicFile.write(ConfigFile.render(config), to: directory + "/config.toml")
        log = try MetricsLog(path: directory + "/metrics.jsonl", keepThrough: step)
        progress = quiet ? nil : Progress(total: totalSteps)
    }

    func note(_ line: String) { progress?.note(line) }

    /// A logged training step's metrics line.
    func log(_ record: MetricRecord) { log.append(record) }

    /// The live bar (redrawn at most a few times a second unless `force`).
    func progress(step: Int, epoch: Double, loss: Float, throughput: Double, unit: String, elapsed: Double, startStep: Int, force: Bool) {
        progress?.update(step: step, epoch: epoch, loss: loss, throughput: throughput, unit: unit, elapsed: elapsed,
                         startStep: startStep, force: force)
    }

    /// An evaluation: its metrics line, the redrawn loss plot, and a note.
    func evaluation(_ e: Evaluation, step: Int, epoch: Double, elapsed: Double, unit: String) throws {
        log.append(MetricRecord(step: step, epoch: epoch, elapsedSeconds: elapsed, throughputUnit: unit,
                                validationLoss: e.loss, validationAccuracy: e.accuracy))
        let train = log.records.compactMap { r in r.loss.map { (r.step, Double($0)) } }
        let val = log.records.compactMap { r in r.validationLoss.map { (r.step, $0) } }
        try AtomicFile.write(LossPlot.svg(train: train, validation: val, title: "\(name): loss"), to: directory + "/loss.svg")
        note(String(format: "step %d: val_loss %.4f", step, e.loss)
             + (e.accuracy.map { String(format: ", val_accuracy %.2f%%", 100 * $0) } ?? "") + " (checkpoint saved)")
    }

    /// How far a long evaluation has got.
    func evaluating(batch: Int, of total: Int) { progress?.evaluating(batch: batch, of: total) }

    /// Ends the live bar (notes still print after it).
    func endProgress() { progress?.finish() }

    func writeSummary(_ summary: RunSummary) throws {
        try AtomicFile.write(summary.json, to: directory + "/summary.json")
    }
}
