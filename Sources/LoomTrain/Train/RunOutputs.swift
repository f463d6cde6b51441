import Foundation
import LoomCore

/// One line of metrics.jsonl. Training lines carry loss/lr/throughput; evaluation lines
/// carry val_loss (and val_accuracy for classifiers).
public struct MetricRecord: Equatable, Encodable {
    public var step: Int
    public var epoch: Double
    public var elapsedSeconds: Double
    public var loss: Float?
    public var lr: Float?
    public var throughput: Double?
    public var throughputUnit: String
    public var validationLoss: Double?
    public var validationAccuracy: Double?
    /// Data parallel runs: seconds of the log window spent computing, and blocked waiting
    /// for gradient all-reduces that backward did not hide.
    public var computeSeconds: Double?
    public var commWaitSeconds: Double?
    /// The global L2 norm of the step's gradient (after data-parallel averaging, before
    /// clipping), as Megatron-LM logs it.
    public var gradNorm: Float?
    /// Steps skipped so far for a non-finite gradient (train.nonfinite = "skip").
    public var skippedSteps: Int?
    /// A restart line: which restart of the job this is, and what ended the previous attempt.
    public var restart: Int?
    public var restartCause: String?

    enum CodingKeys: String, CodingKey {
        case step, epoch, loss, lr, gradNorm = "grad_norm", tokensPerSecond = "tokens_per_s", samplesPerSecond = "samples_per_s"
        case validationLoss = "val_loss", validationAccuracy = "val_accuracy", computeSeconds = "compute_s"
        case commWaitSeconds = "comm_wait_s", elapsedSeconds = "elapsed_s", skippedSteps = "skipped_steps", restart, restartCause = "restart_cause"
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(step, forKey: .step)
        try c.encode(rounded(epoch, 4), forKey: .epoch)
        try c.encodeIfPresent(loss, forKey: .loss)
        try c.encodeIfPresent(lr, forKey: .lr)
        try c.encodeIfPresent(gradNorm, forKey: .gradNorm)
        try c.encodeIfPresent(throughput.map { rounded($0, 1) }, forKey: throughputUnit == "tokens/s" ? .tokensPerSecond : .samplesPerSecond)
        try c.encodeIfPresent(validationLoss, forKey: .validationLoss)
        try c.encodeIfPresent(validationAccuracy, forKey: .validationAccuracy)
        try c.encodeIfPresent(computeSeconds.map { rounded($0, 4) }, forKey: .computeSeconds)
        try c.encodeIfPresent(commWaitSeconds.map { rounded($0, 4) }, forKey: .commWaitSeconds)
        try c.encode(rounded(elapsedSeconds, 3), forKey: .elapsedSeconds)
        try c.encodeIfPresent(skippedSteps, forKey: .skippedSteps)
        try c.encodeIfPresent(restart, forKey: .restart)
        try c.encodeIfPresent(restartCause, forKey: .restartCause)
    }

    /// One line of metrics.jsonl.
    public var json: String { JSONOutput.string(self) }
}

/// Appends metric lines to runs/NAME/metrics.jsonl, flushing each so a killed run keeps them.
public final class MetricsLog {
    private let handle: FileHandle
    public private(set) var records: [MetricRecord] = []

    /// Opens the log; on resume keeps only lines up to `keepThrough` (a run killed after
    /// its last checkpoint logged steps that the resumed run will log again).
    public init(path: String, keepThrough: Int?) throws {
        var kept = ""
        if let keep = keepThrough, let old = try? String(contentsOfFile: path, encoding: .utf8) {
            for line in old.split(separator: "\n") {
                let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
                if let n = o?["step"] as? Int, n <= keep { kept += line + "\n" }
            }
        }
        try AtomicFile.write(kept, to: path)  // a kill while trimming keeps the old log
        guard let h = FileHandle(forWritingAtPath: path) else { throw LoomError.io("cannot write '\(path)'") }
        h.seekToEndOfFile()
        handle = h
    }

    public func append(_ r: MetricRecord) {
        records.append(r)
        handle.write((r.json + "\n").data(using: .utf8)!)
    }

    deinit { try? handle.close() }
}
