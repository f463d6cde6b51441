import ArgumentParser
import Foundation
import LoomCore
import LoomTrain

/// `loom eval --json`: the checkpoint's step and what was measured.
struct EvalReport: Encodable {
    let step: Int
    let evaluation: Evaluation

    func encode(to encoder: Encoder) throws {
        enum Key: String, CodingKey { case step }
        var c = encoder.container(keyedBy: Key.self)
        try c.encode(step, forKey: .step)
        try evaluation.encode(to: encoder)
    }
}

struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Evaluate a checkpoint on its validation split (or on other data).",
        discussion: """
        Examples:
          loom eval --checkpoint runs/mnist-cnn
          loom eval --checkpoint runs/mnist-cnn/checkpoint.safetensors --data other.csv.gz
        """
    )

    @Option(help: "A run directory or a checkpoint.safetensors file.")
    var checkpoint: String
    @Option(help: "Evaluate on this data file instead (its validation split).")
    var data: String?
    @Flag(help: "Print one JSON object.")
    var json = false
    @OptionGroup var deviceOptions: DeviceOptions

    func run() throws {
        try runReportingErrors {
            let (file, saved, _) = try TrainingCheckpoint.peek(checkpoint)
            var c = saved
            c.data = resolveDataPath(data ?? c.data)
            if !c.labels.isEmpty { c.labels = resolveDataPath(c.labels) }
            // The checkpoint holds whole tensors whatever the layout it was trained with:
            // build the whole model in one process, load it, and evaluate.
            c.dp = 1; c.tp = 1; c.pp = 1
            let backend = try deviceOptions.backend()
            let setup = try TrainingCheckpoint.setup(c, backend: backend, from: file, path: checkpoint)
            try TrainingCheckpoint.restoreModel(file, path: checkpoint, into: setup.module)
            let step = Int(file.metadata["loom.step"] ?? "0") ?? 0
            if setup.unseenCharacters > 0, let t = setup.tokenizer {
                FileHandle.standardError.write(("loom: note: \(setup.unseenCharacters) characters of '\(c.data)' are not in the checkpoint's "
                    + "vocabulary of \(t.count); read as \(t.unknownDescription)\n").data(using: .utf8)!)
            }
            let e = try Evaluator(steps: setup.steps, data: setup.validation, batchSize: c.batchSize, backend: backend,
                                  isClassifier: !c.isLanguageModel, precision: c.precision).evaluate()
            if json {
                print(JSONOutput.string(EvalReport(step: step, evaluation: e)))
            } else {
                print(String(format: "step %d: val_loss %.4f", step, e.loss) + (e.accuracy.map { String(format: ", val_accuracy %.2f%%", 100 * $0) } ?? ""))
            }
        }
    }
}
