// Loom inside another program: a training job built in code and run with the same few
// calls `loom train` makes (TrainingJob chooses the world, threads and restarts), then the
// trained model evaluated from its checkpoint. Built with the package; run from the
// repository (the bundled data is found from there):
//
//     swift run -c release EmbeddingExample [OUT]
//
// It trains the MNIST MLP for 30 steps as 2 data-parallel ranks (threads of this process)
// and prints the run's summary.json. `loom train examples/mnist-mlp.toml --steps 30 --dp 2`
// gives the same losses, bit for bit (Tests/LoomTrainTests/EmbeddingExampleTests.swift).
import Foundation
import LoomTrain

do {
    var config = try TrainConfig.preset("mnist-mlp")
    config.steps = 30
    config.logEvery = 1
    config.evalEvery = 15
    config.dp = 2
    config.out = CommandLine.arguments.dropFirst().first ?? "runs"
    config.name = "embedded"

    var job = TrainingJob(config: config)
    job.quiet = true
    let (summary, directory) = try job.run()
    guard let summary else { exit(0) }  // another rank of an MPI job
    print("trained \(summary.steps) steps, val_loss \(summary.validationLoss) -> \(directory)/")
    print(summary.json, terminator: "")
} catch {
    FileHandle.standardError.write(Data("embedding example: \(error)\n".utf8))
    exit(1)
}
