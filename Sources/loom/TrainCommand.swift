import ArgumentParser
import Foundation
import LoomCore
import LoomDistributed
import LoomParallel
import LoomTrain

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a model; with no arguments, the MNIST CNN on the bundled data (about 15 s on 2 cores).",
        discussion: """
        CONFIG is a TOML file (see examples/). Flags override its values. Outputs go to OUT/NAME/ (default runs/NAME/): metrics.jsonl, summary.json, loss.svg, config.toml and checkpoint.safetensors, written atomically at every evaluation.

        Examples:
          loom train
          loom train examples/shakespeare-gpt.toml
          loom train --model mlp --epochs 3 --lr 0.02
          loom train examples/mnist-cnn.toml --steps 200 --stop-at 100   # stops at 100, as if interrupted
          loom train --resume runs/mnist-cnn                            # continues bit for bit
          loom train examples/shakespeare-gpt.toml --dp 2 --zero 1      # 2 data-parallel ranks (threads)
          loom launch -n 2 -- train examples/shakespeare-gpt.toml       # 2 data-parallel MPI processes
          loom train examples/shakespeare-gpt.toml --dp 2 --tp 2        # 4 ranks: data x tensor parallel
          loom train examples/shakespeare-gpt.toml --pp 2 --micro-batches 8 --trace trace.json   # 2 pipeline stages, 1F1B
          loom train examples/shakespeare-gpt.toml --dp 2 --tp 2 --pp 2 # 8 ranks: 3D
        """
    )

    @Argument(help: "A TOML configuration file (default: the built-in MNIST CNN).")
    var config: String?

    @Option(help: "Model: cnn, mlp, resnet or gpt (without CONFIG, picks that model's built-in example).")
    var model: ModelKind?
    @Option(help: "Data file (MNIST CSV or IDX images, or a text file for gpt).")
    var data: String?
    @Option(help: "Passes over the training data.")
    var epochs: Int?
    @Option(help: "Optimizer steps (overrides --epochs).")
    var steps: Int?
    @Option(name: .customLong("batch-size"), help: "Global batch size.")
    var batchSize: Int?
    @Option(help: "Micro-batches per optimizer step (gradient accumulation).")
    var accumulate: Int?
    @Option(help: "Peak learning rate.")
    var lr: Double?
    @Option(help: "Seed for initialisation, shuffling and dropout.")
    var seed: Int?
    @Option(help: "Directory that holds run directories (default runs).")
    var out: String?
    @Option(help: "Run name (the run directory under OUT).")
    var name: String?
    @Option(help: "Continue the run in this directory from its checkpoint.")
    var resume: String?
    @Option(name: .customLong("init"), help: "Start a new run from this checkpoint's model and tokenizer (e.g. one made by loom gpt2 import); the model's shape is the checkpoint's.")
    var initFrom: String?
    @Option(name: .customLong("stop-at"), help: "Stop after this step, with a checkpoint, as if interrupted (resume later).")
    var stopAt: Int?
    @Option(help: "CPU threads per rank (default: all cores or LOOM_THREADS, divided among in-process ranks).")
    var threads: Int?
    @Option(help: "Data-parallel ranks. Under mpirun/srun/loom launch: the number of processes; otherwise that many ranks as threads of this process.")
    var dp: Int?
    @Option(help: "Tensor-parallel ranks (gpt): attention heads, MLP and vocabulary split across them. Total ranks = dp x tp.")
    var tp: Int?
    @Option(help: "ZeRO stage with --dp: 1 shards optimizer state across ranks (reduce-scatter, local update, all-gather); 2 also keeps only each rank's shard of the gradients; 3 also of the parameters, gathered unit by unit around each forward and backward.")
    var zero: Int?
    @Option(help: "Pipeline stages: the model cut into consecutive pieces (gpt: blocks balanced by cost; mlp, cnn, resnet: layers). Total ranks = dp x tp x pp.")
    var pp: Int?
    @Option(name: .customLong("micro-batches"), help: "Pipeline micro-batches per step (each data replica's batch split that many ways).")
    var microBatches: Int?
    @Option(help: "Pipeline schedule: gpipe, 1f1b or interleaved.")
    var schedule: Schedule.Kind?
    @Option(help: "Interleaved schedule: model chunks (virtual stages) per stage.")
    var chunks: Int?
    @Flag(help: "Pipeline: recompute each micro-batch's activations during backward instead of keeping them.")
    var recompute = false
    @Option(help: "Matrix products (and, on the CPU, convolutions): float32, or bf16 (bf16 operands, float32 accumulation; weights, optimizer state, softmax, norms and loss stay float32).")
    var precision: Precision?
    @Option(help: "Write a Chrome trace (Perfetto) of the last 10 steps, one lane per rank, and a communication lane per data-parallel rank (its collectives, and waits on them).")
    var trace: String?
    @Option(name: .customLong("max-restarts"), help: "When a rank dies or a collective times out, restart from the last checkpoint, up to N times (in-process ranks; under MPI, give it to loom launch).")
    var maxRestarts: Int = 0
    @OptionGroup var deviceOptions: DeviceOptions

    func run() throws {
        try runReportingErrors {
            var c: TrainConfig
            let initial = try initFrom.map { try TrainingCheckpoint.peek($0).1 }
            if let resume {
                guard initFrom == nil else { throw LoomError.config("--resume and --init both given: continue a run, or start one from a model") }
                c = try TrainingCheckpoint.peek(resume).1
            } else if let config {
                c = try ConfigFile.load(config)
            } else {
                c = try TrainConfig.preset((model ?? initial?.model ?? .cnn).preset)
            }
            if let initial {  // the model's shape is the checkpoint's
                c.model = initial.model; c.layers = initial.layers; c.dModel = initial.dModel; c.heads = initial.heads
                c.context = initial.context; c.hidden = initial.hidden; c.residual = initial.residual
            }
            if let model { c.model = model }
            if let data { c.data = data }
            if let epochs { c.epochs = epochs; if steps == nil { c.steps = 0 } }
            if let steps { c.steps = steps }
            if let batchSize { c.batchSize = batchSize }
            if let accumulate { c.accumulationSteps = accumulate }
            if let lr { c.lr = lr }
            if let seed { c.seed = seed }
            if let out { c.out = out }
            if let name { c.name = name }
            if let dp { c.dp = dp }
            if let tp { c.tp = tp }
            if let pp { c.pp = pp }
            if let microBatches { c.microBatches = microBatches }
            if let schedule { c.pipelineSchedule = schedule }
            if let chunks { c.chunks = chunks }
            if recompute { c.recompute = true }
            if let precision { c.precision = precision }
            if let zero {
                guard (0...3).contains(zero) else { throw LoomError.config("--zero \(zero): valid stages are 0, 1, 2 and 3") }
                c.zero = zero
            }
            try ConfigFile.validate(c)
            guard maxRestarts >= 0 else { throw LoomError.config("--max-restarts \(maxRestarts) must be >= 0") }
            var job = TrainingJob(config: c.resolvingPaths(resolveDataPath))
            job.resume = resume
            job.initFrom = initFrom
            job.stopAt = stopAt
            job.tracePath = trace
            job.threads = threads
            job.restarts = RestartPolicy(maxRestarts: maxRestarts)
            job.backend = { [deviceOptions] in try deviceOptions.backend(localRank: $0, cpuThreads: $1) }
            let (summary, directory) = try job.run()
            guard let s = summary else { return }  // not rank 0
            var line = String(format: "done: %d steps, train_loss %.4f, val_loss %.4f", s.steps, s.trainLoss, s.validationLoss)
            if let a = s.validationAccuracy { line += String(format: ", val_accuracy %.2f%%", 100 * a) }
            line += String(format: ", %.0f %@ training, %.1f s (%.1f s evaluating) -> %@/", s.throughput, s.unit, s.wallSeconds,
                           s.evaluationSeconds, directory)
            print(line)
        }
    }
}

/// Prints a LoomError as one line on stderr and exits non-zero (no stack trace).
func runReportingErrors(_ body: () throws -> Void) throws {
    do { try body() } catch let e as LoomError {
        FileHandle.standardError.write("loom: error: \(e)\n".data(using: .utf8)!)
        throw ExitCode(1)
    } catch let e as CommError {
        FileHandle.standardError.write("loom: error: \(e)\n".data(using: .utf8)!)
        throw ExitCode(1)
    }
}
