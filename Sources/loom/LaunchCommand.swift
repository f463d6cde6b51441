import ArgumentParser
import Foundation
import LoomTrain

struct LaunchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "launch",
        abstract: "Start N ranks of a loom command under mpirun, with defaults that work on small machines.",
        discussion: """
        Runs: mpirun -n N [--allow-run-as-root] [--oversubscribe] [--host HOSTS] -x LOOM_THREADS=T <this loom> COMMAND... \
        --allow-run-as-root is added when running as root, --oversubscribe when N x T exceeds \
        this machine's cores (without --hosts); each rank uses T CPU threads (default 1: one core per rank). \
        `mpirun -n N loom train ...` and Slurm's `srun loom train ...` work as well.

        Every LOOM_* variable of this environment is passed to the ranks. With --max-restarts N, \
        a job that fails (a rank died, a collective timed out) is started again, up to N times, \
        and continues from the run's last checkpoint (train resumes bit-exactly); the restart \
        and its cause go into metrics.jsonl.

        Examples:
          loom launch -n 2 -- train --model gpt --steps 200
          loom launch -n 4 --max-restarts 2 -- train examples/shakespeare-gpt.toml
          loom launch -n 4 --hosts node1:2,node2:2 -- train examples/shakespeare-gpt.toml
        """
    )

    @Option(name: .short, help: "Number of ranks.")
    var n: Int
    @Option(help: "Hosts and slots, as mpirun's --host takes them (node1:2,node2:2).")
    var hosts: String?
    @Option(name: .customLong("threads-per-rank"), help: "CPU threads per rank.")
    var threadsPerRank: Int = 1
    @Option(name: .customLong("max-restarts"), help: "Start a failed job again from its last checkpoint, up to N times.")
    var maxRestarts: Int = 0
    @Argument(parsing: .captureForPassthrough, help: "The loom command and its arguments, after --.")
    var command: [String] = []

    func run() throws {
        let cmd = command.first == "--" ? Array(command.dropFirst()) : command
        guard n >= 1 else { throw ValidationError("-n must be at least 1") }
        guard !cmd.isEmpty else { throw ValidationError("give the loom command to run after --, e.g. loom launch -n 2 -- train") }
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":").map { "\($0)/mpirun" }
        guard let mpirun = path.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            FileHandle.standardError.write("loom: error: mpirun not found on PATH (Debian: apt-get install openmpi-bin)\n".data(using: .utf8)!)
            throw ExitCode(1)
        }
        var args = [mpirun, "-n", String(n)]
        if getuid() == 0 { args.append("--allow-run-as-root") }
        // More ranks x threads than this machine has cores (with --hosts, mpirun's slots decide).
        if hosts == nil && n * threadsPerRank > Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) {
            args.append("--oversubscribe")
        }
        if let hosts { args += ["--host", hosts] }
        args += ["-x", "LOOM_THREADS=\(threadsPerRank)"]
        for name in ProcessInfo.processInfo.environment.keys.sorted() where name.hasPrefix("LOOM_") && name != "LOOM_THREADS" {
            args += ["-x", name]
        }
        guard maxRestarts > 0 else {
            let cargs = (args + [selfExecutable()] + cmd).map { strdup($0) } + [nil]
            execv(mpirun, cargs)
            FileHandle.standardError.write("loom: error: cannot run \(mpirun): \(String(cString: strerror(errno)))\n".data(using: .utf8)!)
            throw ExitCode(1)
        }
        // Each attempt is a new mpirun; from the second on, the ranks resume from the run's
        // checkpoint and log the restart (TrainingJob reads these variables).
        do {
            try RestartPolicy(maxRestarts: maxRestarts).run(announce: { number, cause in
                FileHandle.standardError.write(Data("loom: \(cause); restart \(number) of \(maxRestarts) from the last checkpoint\n".utf8))
            }) { attempt, cause in
                let p = Process()
                p.executableURL = URL(fileURLWithPath: mpirun)
                p.arguments = Array(args.dropFirst()) + (attempt == 0 ? [] : [
                    "-x", "LOOM_RESUME_IF_CHECKPOINT=1", "-x", "LOOM_RESTART_ATTEMPT=\(attempt)", "-x", "LOOM_RESTART_CAUSE=\(cause ?? "")",
                ]) + [selfExecutable()] + cmd
                try p.run()
                p.waitUntilExit()
                guard p.terminationStatus == 0 else {
                    throw RestartPolicy.Failure(cause: "the job exited with status \(p.terminationStatus) (a rank died or a collective timed out)")
                }
            }
        } catch is RestartPolicy.Failure {
            throw ExitCode(1)
        }
    }

    func selfExecutable() -> String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        return n > 0 ? String(cString: buf) : CommandLine.arguments[0]
    }
}
