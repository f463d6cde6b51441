import Foundation
import LoomCore
import LoomDistributed

/// One training job, launched: the configuration, where it starts from, and how its ranks
/// are laid out and restarted. `loom train` builds one from its flags and calls `run()`; a
/// program that embeds Loom does the same in code (examples/embedding/main.swift):
///
///     var config = try TrainConfig.preset("mnist-mlp")
///     config.steps = 50
///     config.dp = 2                       // two ranks, as threads of this process
///     let summary = try TrainingJob(config: config).run().summary
///
/// The world is chosen here, not by the caller: this process's rank of an MPI job when an
/// MPI launcher started it (mpirun, srun, `loom launch`), else `dp × tp × pp` ranks as
/// threads, else one process.
public struct TrainingJob {
    public var config: TrainConfig
    /// A run directory to continue from its checkpoint.
    public var resume: String?
    /// A checkpoint whose model (and tokenizer) a new run starts from.
    public var initFrom: String?
    /// Stop after this step, with a checkpoint, as if interrupted.
    public var stopAt: Int?
    /// Write a Chrome trace of the last steps here.
    public var tracePath: String?
    /// CPU threads for this process (divided among in-process ranks); nil: all cores or
    /// LOOM_THREADS.
    public var threads: Int?
    /// A job whose rank died or whose collective timed out starts again from its last
    /// checkpoint (in-process ranks; an MPI job is restarted by its launcher).
    public var restarts = RestartPolicy()
    /// No progress bar or notes (the run directory is written as always).
    public var quiet = false
    /// The backend of this process's `localRank`-th rank with `cpuThreads` threads (nil:
    /// the shared CPU backend). The command line's `--device` replaces it.
    public var backend: (_ localRank: Int, _ cpuThreads: Int?) throws -> any Backend = { _, threads in
        threads.map { CPUBackend(threads: $0) } ?? CPUBackend.shared
    }
    /// Where restarts are announced (standard error by default).
    public var announce: (String) -> Void = { FileHandle.standardError.write(Data(("loom: " + $0 + "\n").utf8)) }

    public init(config: TrainConfig) { self.config = config }

    /// The ranks this job runs on.
    public enum World: Equatable {
        case single
        case inProcess(ranks: Int)
        /// This process is one rank of an MPI job.
        case mpi
    }

    public var world: World {
        if MPICommunicator.launchedByMPI { return .mpi }
        let ranks = config.dp * config.tp * config.pp
        return ranks > 1 ? .inProcess(ranks: ranks) : .single
    }

    /// Trains. Returns rank 0's summary (nil on the other ranks of an MPI job) and the run
    /// directory.
    public func run() throws -> (summary: RunSummary?, directory: String) {
        let env = ProcessInfo.processInfo.environment
        var from = resume
        // Under `loom launch --max-restarts`, a relaunched job continues from the run's checkpoint.
        if from == nil, env["LOOM_RESUME_IF_CHECKPOINT"] != nil, hasCheckpoint { from = config.runDirectory }
        let earlier = env["LOOM_RESTART_ATTEMPT"].flatMap(Int.init).map { ($0, env["LOOM_RESTART_CAUSE"] ?? "the previous attempt failed") }
        return try restarts.run(first: earlier, announce: { number, cause in
            announce("\(cause); restart \(number) of \(restarts.maxRestarts) from \(hasCheckpoint ? "the last checkpoint" : "the start")")
        }) { number, cause in
            // A restart continues from the last checkpoint, or from the start if there is none yet.
            if number > (earlier?.0 ?? 0) { from = hasCheckpoint ? config.runDirectory : nil }
            do {
                return try attempt(resume: from, initFrom: from == nil ? initFrom : nil, restart: cause.map { (number, $0) })
            } catch let e as CommError {
                throw RestartPolicy.Failure(cause: "\(e)", underlying: e)
            }
        }
    }

    private var hasCheckpoint: Bool { FileManager.default.fileExists(atPath: config.runDirectory + "/" + TrainingCheckpoint.fileName) }

    /// Each rank's memory budget: `LOOM_MEMORY_LIMIT` (bytes, or with a K/M/G/T suffix),
    /// enforced on the tensors the rank allocates; nil: none.
    public static func memoryLimit(_ env: [String: String] = ProcessInfo.processInfo.environment) throws -> Int? {
        guard let text = env["LOOM_MEMORY_LIMIT"], !text.isEmpty else { return nil }
        guard let bytes = MemoryMeter.parseBytes(text) else {
            throw LoomError.config("LOOM_MEMORY_LIMIT = '\(text)' is not a byte count (e.g. 2147483648, 512M, 2G)")
        }
        return bytes
    }

    /// Runs `body`, one rank's work, charging its tensors to a meter with the rank's
    /// memory budget (when there is one).
    private static func budgeted<T>(_ limit: Int?, rank: Int, _ body: () throws -> T) throws -> T {
        guard let limit else { return try body() }
        return try MemoryMeter.measuring(MemoryMeter(limit: limit, label: "rank \(rank)"), body)
    }

    /// One attempt on this job's world.
    private func attempt(resume: String?, initFrom: String?, restart: (Int, String)?) throws -> (summary: RunSummary?, directory: String) {
        let limit = try TrainingJob.memoryLimit()
        func trainer(_ backend: any Backend, _ communicator: Communicator?) throws -> Trainer {
            let t = try Trainer(config: config, backend: backend, resume: resume, initFrom: initFrom, communicator: communicator)
            t.stopAt = stopAt
            t.tracePath = tracePath
            t.restart = restart
            t.quiet = quiet
            return t
        }
        switch world {
        case .single:
            return try TrainingJob.budgeted(limit, rank: 0) {
                let t = try trainer(try backend(0, threads), nil)
                return (try t.run(), t.runDirectory)
            }
        case .inProcess(let ranks):
            let perRank = max(1, (threads ?? CPUBackend.defaultThreads) / ranks)
            let results = try InProcessWorld.run(size: ranks, timeout: Double(config.timeoutSeconds)) { comm -> (RunSummary, String) in
                try TrainingJob.budgeted(limit, rank: comm.rank) {
                    let t = try trainer(try backend(comm.rank, perRank), comm)
                    defer { t.finish() }
                    return (try t.run(), t.runDirectory)
                }
            }
            return (results[0].0, results[0].1)
        case .mpi:
            let world = try MPICommunicator.world(timeout: Double(config.timeoutSeconds))
            guard config.dp == 1 || config.dp * config.tp * config.pp == world.size else {
                throw LoomError.config("parallel.dp = \(config.dp) x tp \(config.tp) x pp \(config.pp) but the launcher started \(world.size) processes")
            }
            do {
                let s: RunSummary, t: Trainer
                (s, t) = try TrainingJob.budgeted(limit, rank: world.rank) {
                    let t = try trainer(try backend(MPICommunicator.localRank, threads), world)
                    return (try t.run(), t)
                }
                world.finalize()
                return (world.rank == 0 ? s : nil, t.runDirectory)
            } catch {
                // Communication errors name their rank already. Loom's message, then the
                // launcher ends the others.
                let text = error is CommError ? "\(error)" : "rank \(world.rank): \(error)"
                FileHandle.standardError.write(Data("loom: error: \(text)\n".utf8))
                world.abort()
            }
        }
    }
}
