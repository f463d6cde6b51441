import ArgumentParser
import LoomCore
import LoomTrain

@main
struct Loom: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loom",
        abstract: "Train neural networks fast on CPUs: one core, all of them, or many processes (MPI).",
        subcommands: [TrainCommand.self, EvalCommand.self, GenerateCommand.self, BenchCommand.self, LaunchCommand.self, PlanCommand.self],
        defaultSubcommand: nil
    )
}
