import ArgumentParser
import Foundation
import LoomCore
import LoomTrain

@main
struct Loom: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loom",
        abstract: "Train neural networks fast on CPUs: one core, all of them, or many processes (MPI).",
        subcommands: [TrainCommand.self, EvalCommand.self, GenerateCommand.self, BenchCommand.self, CheckCommand.self, LaunchCommand.self, PlanCommand.self, TokenizerCommand.self, GPT2Command.self],
        defaultSubcommand: nil
    )

    /// As ArgumentParser's, except that a usage error (a bad value, an unknown option) is
    /// one line on stderr and exit status 64, like every Loom error; `--help` still prints
    /// the help.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let code = exitCode(for: error)
            guard code == .validationFailure else { exit(withError: error) }
            FileHandle.standardError.write("loom: error: \(message(for: error))\n".data(using: .utf8)!)
            Foundation.exit(code.rawValue)
        }
    }
}
