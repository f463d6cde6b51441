import ArgumentParser
import Foundation
import LoomCore
import LoomTrain

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

    func run() throws {
        try runReportingErrors {
            var c = try TrainingCheckpoint.peek(checkpoint).1
            if let data { c.data = data }
            c.evalBatches = 0
            // The checkpoint holds whole tensors whatever the layout it was trained with:
            // evaluate in one process.
            c.dp = 1; c.tp = 1; c.pp = 1
            let trainer = try Trainer(config: c, resume: checkpoint)
            let step = trainer.step
            let e = try trainer.evaluate(full: true)
            if json {
                print("{\"step\": \(step), \"val_loss\": \(e.loss)" + (e.accuracy.map { ", \"val_accuracy\": \($0)" } ?? "") + "}")
            } else {
                print(String(format: "step %d: val_loss %.4f", step, e.loss) + (e.accuracy.map { String(format: ", val_accuracy %.2f%%", 100 * $0) } ?? ""))
            }
        }
    }
}
