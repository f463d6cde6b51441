import Foundation
import LoomCore

/// One line of metrics.jsonl. Training lines carry loss/lr/throughput; evaluation lines
/// carry val_loss (and val_accuracy for classifiers).
public struct MetricRecord: Equatable {
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

    public var json: String {
        var f = ["\"step\": \(step)", "\"epoch\": \(String(format: "%.4f", epoch))"]
        if let loss { f.append("\"loss\": \(loss)") }
        if let lr { f.append("\"lr\": \(lr)") }
        if let gradNorm { f.append("\"grad_norm\": \(gradNorm)") }
        if let throughput { f.append("\"\(throughputUnit == "tokens/s" ? "tokens_per_s" : "samples_per_s")\": \(String(format: "%.1f", throughput))") }
        if let validationLoss { f.append("\"val_loss\": \(validationLoss)") }
        if let validationAccuracy { f.append("\"val_accuracy\": \(validationAccuracy)") }
        if let computeSeconds { f.append("\"compute_s\": \(String(format: "%.4f", computeSeconds))") }
        if let commWaitSeconds { f.append("\"comm_wait_s\": \(String(format: "%.4f", commWaitSeconds))") }
        f.append("\"elapsed_s\": \(String(format: "%.3f", elapsedSeconds))")
        return "{" + f.joined(separator: ", ") + "}"
    }
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
                if let r = line.range(of: "\"step\": "), let n = Int(line[r.upperBound...].prefix { $0.isNumber }), n <= keep {
                    kept += line + "\n"
                }
            }
        }
        guard FileManager.default.createFile(atPath: path, contents: kept.data(using: .utf8)),
              let h = FileHandle(forWritingAtPath: path) else {
            throw LoomError.io("cannot write '\(path)'")
        }
        h.seekToEndOfFile()
        handle = h
    }

    public func append(_ r: MetricRecord) {
        records.append(r)
        handle.write((r.json + "\n").data(using: .utf8)!)
    }

    deinit { try? handle.close() }
}

/// Writes `text` to `path` through a temporary file and a rename.
func writeTextAtomically(_ text: String, to path: String) throws {
    try SafeTensors.writeAtomically(Array(text.utf8), to: path)
}
