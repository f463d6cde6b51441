import Foundation
import LoomCore
import LoomData
import LoomDistributed
import LoomNN
import LoomParallel

/// What a checkpoint holds, beyond the tensors: enough to continue a run bit for bit.
public struct RunState: Equatable {
    public var step: Int
    public var elapsedSeconds: Double
    public var bestValidationLoss: Double?

    public init(step: Int, elapsedSeconds: Double, bestValidationLoss: Double?) {
        self.step = step; self.elapsedSeconds = elapsedSeconds; self.bestValidationLoss = bestValidationLoss
    }
}

/// Saving and restoring a run: parameters and buffers as `model.<name>`, optimizer state
/// as `optim.<name>`, and metadata (config TOML, step, tokenizer, dropout generators,
/// optimizer step count) in the safetensors header.
public enum TrainingCheckpoint {
    public static let fileName = "checkpoint.safetensors"

    /// `optimizer`: the one training uses. `entries`: what to write instead of the local
    /// tensors, with the pieces this rank writes (`ParallelPlan.checkpointEntries`);
    /// with a `world` of several ranks every rank calls this, and each writes its pieces
    /// into the one file (`timeout`: how long the others wait for the slowest writer).
    /// `dropout`: the dropout generators, when they cover more than this rank's modules.
    public static func save(to dir: String, config: TrainConfig, setup: Setup, optimizer: Optimizer, state: RunState,
                            entries: [CheckpointEntry]? = nil, dropout: DropoutGenerators? = nil,
                            world: Communicator? = nil, timeout: Double = 600) throws {
        var meta: [String: String] = [
            "format": "pt",
            "loom.config": ConfigFile.render(config),
            "loom.step": String(state.step),
            "loom.elapsed_s": String(state.elapsedSeconds),
            "loom.optimizer_steps": String(optimizer.stepCount),
            "loom.dropout": (dropout ?? DropoutGenerators(of: setup.module)).serialized,
        ]
        if let t = setup.tokenizer { meta["loom.tokenizer"] = t.serialized }
        if let n = setup.normalization { meta["loom.normalization"] = normalizationEntry(n) }
        if let b = state.bestValidationLoss { meta["loom.best_val_loss"] = String(b) }
        let path = dir + "/" + fileName
        if let world, world.size > 1, let entries {
            return try SafeTensors.write(entries, metadata: meta, to: path, world: world, timeout: timeout)
        }
        if entries == nil { try optimizer.materializeState() }
        let tensors = try entries.map { try $0.map { try $0.whole } } ?? localTensors(setup: setup, optimizer: optimizer).map { LazyTensor($0.name, $0.tensor) }
        try SafeTensors.write(tensors, metadata: meta, to: path)
    }

    /// A checkpoint of a model alone (an imported one): its parameters, configuration and
    /// tokenizer, at step 0 with no optimizer state. `loom generate` and `loom eval` read
    /// it; `loom train --init` starts a run from it.
    public static func saveModel(_ model: Module, config: TrainConfig, tokenizer: Tokenizer?, to dir: String) throws {
        do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
            throw LoomError.io("'\(dir)': \(error.localizedDescription)")
        }
        var meta = ["format": "pt", "loom.config": ConfigFile.render(config), "loom.step": "0", "loom.elapsed_s": "0",
                    "loom.model_only": "1"]
        if let tokenizer { meta["loom.tokenizer"] = tokenizer.serialized }
        try SafeTensors.write(model.namedTensors().map { ("model." + $0.name, $0.tensor) }, metadata: meta, to: dir + "/" + fileName)
    }

    static func normalizationEntry(_ n: ChannelNormalization) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try! encoder.encode(n), as: UTF8.self)
    }

    /// The image normalisation a checkpoint's run applied (nil: none saved).
    public static func normalization(_ file: SafeTensors.File, path: String) throws -> ChannelNormalization? {
        guard let text = file.metadata["loom.normalization"] else { return nil }
        guard let n = try? JSONDecoder().decode(ChannelNormalization.self, from: Data(text.utf8)), n.mean.count == n.std.count,
              n.std.allSatisfy({ $0 > 0 && $0.isFinite }) else {
            throw LoomError.io("checkpoint '\(path)': metadata loom.normalization is not per-channel means and positive deviations")
        }
        return n
    }

    /// A setup whose data is prepared as the checkpoint's run prepared it: its tokenizer
    /// and its image normalisation (a resumed run, `--init`, `loom eval`).
    public static func setup(_ c: TrainConfig, backend: any Backend, from file: SafeTensors.File, path: String,
                             context: ParallelContext = .single) throws -> Setup {
        try Setup(c, backend: backend, context: context, tokenizer: tokenizer(file, path: path), normalization: normalization(file, path: path))
    }

    /// Parameters, buffers and optimizer state under their checkpoint names.
    public static func localTensors(setup: Setup, optimizer: Optimizer) -> [(name: String, tensor: Tensor)] {
        setup.module.namedTensors().map { ("model." + $0.name, $0.tensor) }
            + optimizer.namedState().map { ("optim." + $0.name, $0.tensor) }
    }

    /// The configuration and tokenizer stored in a checkpoint (read before building the model).
    public static func peek(_ dir: String) throws -> (SafeTensors.File, TrainConfig, Tokenizer?) {
        let path = dir.hasSuffix(".safetensors") ? dir : dir + "/" + fileName
        let file = try SafeTensors.read(path)
        guard let toml = file.metadata["loom.config"] else {
            throw LoomError.io("checkpoint '\(path)': no loom.config in its metadata (not written by loom train)")
        }
        let config = try ConfigFile.parse(toml, path: path + " [loom.config]")
        return (file, config, try tokenizer(file, path: path))
    }

    /// A GPT checkpoint's model (on the CPU) with its tokenizer and configuration; `what`
    /// names the command that needs a GPT, for the error when it is another model.
    public static func loadGPT(_ path: String, for what: String) throws -> (GPT, Tokenizer, TrainConfig) {
        let (file, c, tokenizer) = try peek(path)
        guard c.isLanguageModel, let tokenizer else {
            throw LoomError.config("checkpoint '\(path)' is a \(c.model) model; \(what) needs a gpt checkpoint")
        }
        let gpt = try GPT(c.gptConfig(vocabularySize: tokenizer.count), seed: 0, on: CPUBackend.shared)
        try restoreModel(file, path: path, into: gpt)
        return (gpt, tokenizer, c)
    }

    /// The tokenizer a checkpoint's run used (nil: an image model).
    static func tokenizer(_ file: SafeTensors.File, path: String) throws -> Tokenizer? {
        try file.metadata["loom.tokenizer"].map { try Tokenizer(serialized: $0, source: "checkpoint '\(path)' [loom.tokenizer]") }
    }

    /// Loads parameters and buffers (`model.*`) into a module. `tensorGroup`: the group its
    /// sharded tensors are split across (each takes its part of the stored whole tensor).
    /// `sharded` (ZeRO-3): the parameters it holds take only this rank's chunk, read
    /// straight from the file (nothing gathered, nothing collective).
    public static func restoreModel(_ file: SafeTensors.File, path: String, into module: Module,
                                    tensorGroup: Communicator? = nil, sharded: FullyShardedParameters? = nil) throws {
        for (name, t) in module.namedTensors() {
            if let sharded, sharded.holds(t) {
                try sharded.load(t, from: value(file, path, "model." + name, like: t, tensorGroup: tensorGroup))
            } else {
                try load(file, path, "model." + name, t, tensorGroup: tensorGroup)
            }
        }
    }

    /// Copies checkpoint tensor `name` into `t`; a sharded `t` takes its part of the
    /// stored (whole) tensor.
    private static func load(_ file: SafeTensors.File, _ path: String, _ name: String, _ t: Tensor,
                             tensorGroup: Communicator?) throws {
        guard t.sharding == nil, let e = file.entries[name], e.shape == t.shape, e.dtype == t.dtype else {
            t.backend.copy(try value(file, path, name, like: t, tensorGroup: tensorGroup), into: t)
            return
        }
        withExtendedLifetime(file) { t.backend.upload(file.bytes(e), to: t) }  // straight from the file's pages
    }

    /// The values checkpoint tensor `name` gives a tensor like `t` (its shape, dtype,
    /// sharding and backend): the stored tensor, or this rank's part of it when `t` is a
    /// tensor-parallel shard, read straight from the file's rows that hold it (the runs
    /// `CheckpointEntry.unsharded` places the slice at). A new tensor: one tensor's bytes
    /// at most.
    static func value(_ file: SafeTensors.File, _ path: String, _ name: String, like t: Tensor,
                      tensorGroup: Communicator?) throws -> Tensor {
        guard let e = file.entries[name] else { throw LoomError.io("checkpoint '\(path)': no tensor '\(name)'") }
        if let sharding = t.sharding, let group = tensorGroup, group.size > 1 {
            let part = try Tensor(uninitialized: t.shape, dtype: e.dtype, on: t.backend)
            let runs = CheckpointEntry(name: name, dtype: e.dtype, shape: t.shape, sharding: sharding,
                                       pieces: [TensorPiece(offset: 0, count: part.count) { part }]).unsharded(rank: group.rank, ranks: group.size)
            guard runs.shape == e.shape, e.dtype == t.dtype else {
                throw LoomError.shapeMismatch("checkpoint '\(path)': '\(name)' is \(describe(e.shape)) \(e.dtype), which does not slice to this rank's \(describe(t.shape)) \(t.dtype)")
            }
            let size = e.dtype.byteSize
            try withExtendedLifetime(file) {
                let bytes = file.bytes(e)
                for run in runs.pieces {
                    t.backend.upload(UnsafeRawBufferPointer(rebasing: bytes[(run.offset * size)..<((run.offset + run.count) * size)]), to: try run.make())
                }
            }
            part.sharding = sharding
            return part
        }
        guard e.shape == t.shape, e.dtype == t.dtype else {
            throw LoomError.shapeMismatch("checkpoint '\(path)': '\(name)' is \(describe(e.shape)) \(e.dtype), the model expects \(describe(t.shape)) \(t.dtype)")
        }
        let out = try Tensor(uninitialized: t.shape, dtype: t.dtype, on: t.backend)
        withExtendedLifetime(file) { t.backend.upload(file.bytes(e), to: out) }
        return out
    }

    /// Loads parameters, buffers and run metadata into a freshly built setup; the
    /// optimizer state is loaded by `restoreOptimizer` into the optimizer training uses
    /// (the plan's, which may be sharded).
    public static func restore(_ file: SafeTensors.File, path: String, into setup: Setup) throws -> RunState {
        if file.metadata["loom.model_only"] != nil {
            throw LoomError.config("checkpoint '\(path)' holds a model without a run (an import): start a run from it with loom train --init")
        }
        try restoreModel(file, path: path, into: setup.module, tensorGroup: setup.tensorGroup, sharded: setup.fullySharded)
        let meta = Metadata(file: file, path: path)
        setup.optimizer.stepCount = try meta.int("loom.optimizer_steps")
        try meta.dropoutGenerators().restore(into: setup.module)
        return try meta.runState()
    }

    /// Loads the optimizer state (`optim.*`) into `optimizer`: whole, or (ZeRO) each rank
    /// reading only its chunks, a tensor at a time.
    public static func restoreOptimizer(_ file: SafeTensors.File, path: String, into optimizer: Optimizer,
                                        tensorGroup: Communicator?) throws {
        try optimizer.loadState { name, like in try value(file, path, "optim." + name, like: like, tensorGroup: tensorGroup) }
        optimizer.stepCount = try Metadata(file: file, path: path).int("loom.optimizer_steps")
    }

    /// A checkpoint's metadata, read strictly: every value Loom wrote parses, or the
    /// checkpoint is refused naming the key and the value (a resumed run must not continue
    /// from a step count or generator that silently became 0).
    public struct Metadata {
        let file: SafeTensors.File
        let path: String

        public init(file: SafeTensors.File, path: String) { self.file = file; self.path = path }

        func bad(_ key: String, _ expected: String) -> LoomError {
            LoomError.io("checkpoint '\(path)': metadata \(key) = \(file.metadata[key].map { "'\($0)'" } ?? "(missing)") is not \(expected)")
        }

        func int(_ key: String) throws -> Int {
            guard let v = file.metadata[key].flatMap(Int.init), v >= 0 else { throw bad(key, "a count >= 0") }
            return v
        }

        func double(_ key: String) throws -> Double {
            guard let v = file.metadata[key].flatMap(Double.init), v.isFinite, v >= 0 else { throw bad(key, "a finite number >= 0") }
            return v
        }

        public func runState() throws -> RunState {
            let best: Double? = try file.metadata["loom.best_val_loss"].map { text in
                guard let v = Double(text), !v.isNaN else { throw bad("loom.best_val_loss", "a number") }
                return v
            }
            return RunState(step: try int("loom.step"), elapsedSeconds: try double("loom.elapsed_s"), bestValidationLoss: best)
        }

        /// The dropout layers' generators.
        func dropoutGenerators() throws -> DropoutGenerators {
            try DropoutGenerators(serialized: file.metadata["loom.dropout"] ?? "") { bad("loom.dropout", $0) }
        }
    }
}
