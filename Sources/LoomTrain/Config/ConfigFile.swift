import Foundation
import LoomCore
import LoomData
import LoomNN
import TOMLKit

/// TOML <-> TrainConfig. Every key is declared once below, with its section, its type
/// and how it validates; an unknown key or section, or a bad value, is an error that
/// names it and lists what is valid.
public enum ConfigFile {
    struct Key {
        let section: String
        let name: String
        let help: String
        let read: (inout TrainConfig, TOMLValueConvertible, String) throws -> Void
        let write: (TrainConfig) -> String
    }

    static func int(_ s: String, _ n: String, _ help: String, min: Int = 0, _ kp: WritableKeyPath<TrainConfig, Int>) -> Key {
        Key(section: s, name: n, help: help, read: { c, v, path in
            guard let i = v.int, i >= min else { throw bad(path, "\(s).\(n)", "an integer >= \(min)", v) }
            c[keyPath: kp] = i
        }, write: { "\($0[keyPath: kp])" })
    }

    static func double(_ s: String, _ n: String, _ help: String, min: Double = 0, _ kp: WritableKeyPath<TrainConfig, Double>) -> Key {
        Key(section: s, name: n, help: help, read: { c, v, path in
            guard let d = v.double ?? v.int.map(Double.init), d.isFinite, d >= min else { throw bad(path, "\(s).\(n)", "a finite number >= \(min)", v) }
            c[keyPath: kp] = d
        }, write: { "\($0[keyPath: kp])" })
    }

    static func bool(_ s: String, _ n: String, _ help: String, _ kp: WritableKeyPath<TrainConfig, Bool>) -> Key {
        Key(section: s, name: n, help: help, read: { c, v, path in
            guard let b = v.bool else { throw bad(path, "\(s).\(n)", "true or false", v) }
            c[keyPath: kp] = b
        }, write: { "\($0[keyPath: kp])" })
    }

    static func string(_ s: String, _ n: String, _ help: String, oneOf: [String]? = nil, _ kp: WritableKeyPath<TrainConfig, String>) -> Key {
        Key(section: s, name: n, help: help, read: { c, v, path in
            guard let str = v.string, oneOf.map({ $0.contains(str) }) ?? true else {
                throw bad(path, "\(s).\(n)", oneOf.map { "one of \($0.map { "\"\($0)\"" }.joined(separator: ", "))" } ?? "a string", v)
            }
            c[keyPath: kp] = str
        }, write: { SafeTensors.jsonString($0[keyPath: kp]) })
    }

    /// A key whose value is one of an enum's cases (the enum lists the valid values).
    static func choice<E: CaseIterable & RawRepresentable>(_ s: String, _ n: String, _ help: String,
                                                          _ kp: WritableKeyPath<TrainConfig, E>) -> Key where E.RawValue == String {
        Key(section: s, name: n, help: help, read: { c, v, path in
            guard let str = v.string, let e = E(rawValue: str) else { throw bad(path, "\(s).\(n)", "one of \(E.validValues)", v) }
            c[keyPath: kp] = e
        }, write: { SafeTensors.jsonString($0[keyPath: kp].rawValue) })
    }

    static let keys: [Key] = [
        choice("model", "kind", "cnn, mlp, gpt or resnet", \.model),
        bool("model", "residual", "cnn: add a residual block", \.residual),
        Key(section: "model", name: "hidden", help: "mlp: hidden sizes", read: { c, v, path in
            guard let a = v.array, !a.isEmpty, a.allSatisfy({ ($0.int ?? 0) > 0 }) else {
                throw bad(path, "model.hidden", "a non-empty array of positive integers", v)
            }
            c.hidden = a.map { $0.int! }
        }, write: { "[" + $0.hidden.map(String.init).joined(separator: ", ") + "]" }),
        int("model", "depth", "resnet: 20, 32 or 56 (CIFAR-style), 18 or 34 (ImageNet-style)", min: 1, \.depth),
        int("model", "width", "resnet: channels of the first stage (0: the paper's, 16 for depth 20-56, 64 for 18-34)", min: 0, \.width),
        int("model", "layers", "gpt: transformer blocks", min: 1, \.layers),
        int("model", "d_model", "gpt: width", min: 1, \.dModel),
        int("model", "heads", "gpt: attention heads", min: 1, \.heads),
        int("model", "context", "gpt: context length", min: 1, \.context),
        double("model", "dropout", "dropout probability", \.dropout),
        string("data", "path", "CSV/IDX images or a text file", \.data),
        string("data", "labels", "IDX labels file, or the .npy of labels", \.labels),
        choice("data", "format", "images: auto, csv, idx, cifar, numpy or png (auto tells by the path)", \.format),
        int("data", "crop_padding", "images: random crops of the image padded by this many pixels (0: off)", \.cropPadding),
        bool("data", "flip", "images: random horizontal flips", \.flip),
        double("data", "validation_fraction", "held-out share", \.validationFraction),
        choice("data", "tokenizer", "gpt text: char (one token per character) or bpe (byte-level BPE fitted to the training text)", \.tokenizer),
        int("data", "vocab_size", "bpe: tokens, the 256 bytes included", min: 256, \.vocabSize),
        string("data", "tokenizer_file", "gpt text: a tokenizer written by loom tokenizer train (instead of fitting one)", \.tokenizerFile),
        int("train", "epochs", "passes over the data (when steps = 0)", \.epochs),
        int("train", "steps", "optimizer steps (overrides epochs)", \.steps),
        int("train", "batch_size", "global batch", min: 1, \.batchSize),
        int("train", "accumulation_steps", "micro-batches per step (gradients accumulate; DP all-reduces once)", min: 1, \.accumulationSteps),
        choice("train", "optimizer", "sgd, adam or adamw", \.optimizer),
        double("train", "lr", "peak learning rate", \.lr),
        double("train", "momentum", "sgd momentum", \.momentum),
        bool("train", "nesterov", "sgd Nesterov momentum", \.nesterov),
        double("train", "weight_decay", "L2 (sgd, adam) or decoupled (adamw)", \.weightDecay),
        choice("train", "schedule", "constant or cosine", \.schedule),
        int("train", "warmup_steps", "linear warm-up steps", \.warmupSteps),
        double("train", "min_lr", "learning rate at the end of the cosine", \.minLR),
        double("train", "grad_clip", "max global gradient norm (0: off)", \.gradClip),
        choice("train", "precision", "matrix products (and convolutions on the CPU): float32, or bf16 (bf16 operands, float32 accumulation; weights and optimizer state stay float32)", \.precision),
        choice("train", "nonfinite", "a step with an inf/NaN gradient: stop (before the update) or skip it", \.nonFinite),
        int("train", "seed", "seed of initialisation, shuffling and dropout", \.seed),
        int("train", "log_every", "steps between metric lines", min: 1, \.logEvery),
        int("train", "eval_every", "steps between evaluations (0: each epoch)", \.evalEvery),
        int("train", "eval_batches", "validation batches per evaluation (0: all)", \.evalBatches),
        int("parallel", "dp", "data-parallel ranks", min: 1, \.dp),
        int("parallel", "tp", "tensor-parallel ranks (gpt only)", min: 1, \.tp),
        int("parallel", "pp", "pipeline stages", min: 1, \.pp),
        int("parallel", "micro_batches", "pipeline micro-batches per step", min: 1, \.microBatches),
        choice("parallel", "schedule", "pipeline schedule: gpipe, 1f1b or interleaved", \.pipelineSchedule),
        int("parallel", "chunks", "interleaved: model chunks per stage", min: 2, \.chunks),
        bool("parallel", "recompute", "pipeline: recompute activations during backward", \.recompute),
        bool("parallel", "sync_batchnorm", "data parallel: batch norm statistics over the whole batch (SyncBatchNorm), not each rank's shard", \.syncBatchNorm),
        Key(section: "parallel", name: "pp_split", help: "layers per pipeline piece (gpt: blocks; mlp, cnn, resnet: layers in order; []: balanced)", read: { c, v, path in
            guard let a = v.array, a.allSatisfy({ ($0.int ?? -1) >= 0 }) else {
                throw bad(path, "parallel.pp_split", "an array of non-negative integers", v)
            }
            c.pipelineSplit = a.map { $0.int! }
        }, write: { "[" + $0.pipelineSplit.map(String.init).joined(separator: ", ") + "]" }),
        int("parallel", "bucket_kb", "gradient all-reduce bucket size in KiB", min: 1, \.bucketKB),
        Key(section: "parallel", name: "zero", help: "ZeRO stage: 0 (replicated), 1 (optimizer state sharded), 2 (and gradients) or 3 (and parameters)", read: { c, v, path in
            guard let z = v.int, (0...3).contains(z) else { throw bad(path, "parallel.zero", "0, 1, 2 or 3", v) }
            c.zero = z
        }, write: { "\($0.zero)" }),
        int("parallel", "timeout_s", "seconds a collective may wait before the run fails", min: 1, \.timeoutSeconds),
        int("parallel", "checkpoint_timeout_s", "seconds the other ranks wait for rank 0 to write a checkpoint", min: 1, \.checkpointTimeoutSeconds),
        string("run", "out", "directory that holds run directories", \.out),
        string("run", "name", "run directory name", \.name),
    ]

    static var sections: [String] { var seen: [String] = []; for k in keys where !seen.contains(k.section) { seen.append(k.section) }; return seen }

    static func bad(_ path: String, _ key: String, _ expected: String, _ v: TOMLValueConvertible) -> LoomError {
        LoomError.config("\(path): \(key) must be \(expected), got \(v.tomlValue.debugDescription)")
    }

    /// Parses TOML text over `base` (the defaults); `path` names the file in messages.
    public static func parse(_ text: String, path: String, base: TrainConfig = TrainConfig()) throws -> TrainConfig {
        try checkCharactersOutsideStrings(text, path: path)
        let table: TOMLTable
        do { table = try TOMLTable(string: text) } catch let e as TOMLParseError {
            throw LoomError.config("\(path): not valid TOML at line \(e.source.begin.line), column \(e.source.begin.column)")
        }
        var c = base
        for section in table.keys {
            guard sections.contains(section), let sub = table[section]?.table else {
                throw LoomError.config("\(path): unknown section [\(section)]; valid sections: \(sections.map { "[\($0)]" }.joined(separator: ", "))")
            }
            let valid = keys.filter { $0.section == section }
            for name in sub.keys {
                guard let key = valid.first(where: { $0.name == name }) else {
                    throw LoomError.config("\(path): unknown key '\(section).\(name)'; valid keys in [\(section)]: \(valid.map(\.name).joined(separator: ", "))")
                }
                try key.read(&c, sub[name]!, path)
            }
        }
        return c
    }

    public static func load(_ path: String) throws -> TrainConfig {
        guard let d = FileManager.default.contents(atPath: path), let text = String(data: d, encoding: .utf8) else {
            throw LoomError.io("config '\(path)': cannot read (missing or not UTF-8)")
        }
        var c = try parse(text, path: path)
        if c.name.isEmpty { c.name = URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent }
        return c
    }

    /// The whole configuration as TOML (every key, so the file is self-contained).
    /// Checks what the parser under TOMLKit (toml++) asserts on instead of reporting,
    /// ending the process (found by fuzzing): a control character other than tab
    /// anywhere, a non-ASCII character outside strings and comments, and a key or table
    /// name that does not start with a letter, digit, `_`, `-` or a quote (`[|rain]`,
    /// `[modèle]`, `a.|b = 1`). Such text is refused here, naming the line and column.
    static func checkCharactersOutsideStrings(_ text: String, path: String) throws {
        let bytes = Array(text.utf8)
        var line = 1, column = 0
        func fail(_ why: String) -> LoomError {
            LoomError.config("\(path): not valid TOML at line \(line), column \(column): \(why)")
        }
        func startsKey(_ b: UInt8) -> Bool {
            (b >= 48 && b <= 57) || (b >= 65 && b <= 90) || (b >= 97 && b <= 122) || b == 95 || b == 45 || b == 34 || b == 39
        }
        var quote: [UInt8]? = nil      // the delimiter of the string we are in
        var comment = false
        var depth = 0                  // arrays and inline tables open in a value
        var lineStart = true, inKey = false, inValue = false, header = false, afterDot = false
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            column += 1
            if (b < 0x20 && b != 0x09 && b != 0x0A && b != 0x0D) || b == 0x7F {
                throw fail("control character 0x\(String(b, radix: 16))")
            }
            if b == 0x0A {
                line += 1; column = 0; comment = false
                if let q = quote, q.count == 1 { quote = nil }  // a one-line string ends here (the parser reports it)
                lineStart = true; inKey = false; inValue = false; header = false; afterDot = false
                i += 1; continue
            }
            if comment { i += 1; continue }
            if let q = quote {
                if (q == [34] || q == [34, 34, 34]) && b == 92 { i += 2; column += 1; continue }  // an escape
                if bytes[i...].starts(with: q) { quote = nil; i += q.count; column += q.count - 1; continue }
                i += 1; continue
            }
            if b >= 0x80 { throw fail("a non-ASCII character outside a string or comment") }
            let space = b == 32 || b == 9 || b == 13
            if space { i += 1; continue }
            if lineStart && depth == 0 {
                lineStart = false
                if b == UInt8(ascii: "[") {
                    header = true
                    var j = i + 1
                    if j < bytes.count && bytes[j] == UInt8(ascii: "[") { j += 1 }
                    while j < bytes.count && (bytes[j] == 32 || bytes[j] == 9) { j += 1 }
                    column += j - i - 1  // to the byte before j: the loop counts j's own column
                    guard j < bytes.count, startsKey(bytes[j]) else { column += 1; throw fail("a table header needs a name") }
                    inKey = true
                    i = j; continue
                }
                if b != UInt8(ascii: "#") {
                    guard startsKey(b) else { throw fail("expected a key") }
                    inKey = true
                }
            }
            lineStart = false
            if afterDot {
                guard startsKey(b) else { throw fail("expected a key after '.'") }
                afterDot = false
            }
            switch b {
            case UInt8(ascii: "#"): comment = true
            case 34, 39:
                let triple = [UInt8](repeating: b, count: 3)
                quote = bytes[i...].starts(with: triple) ? triple : [b]
                i += quote!.count; column += quote!.count - 1; continue
            case UInt8(ascii: "."): if inKey { afterDot = true }
            case UInt8(ascii: "="): if depth == 0 && !header { inKey = false; inValue = true }
            case UInt8(ascii: "]"): if header { inKey = false } else if inValue || depth > 0 { depth = max(0, depth - 1) }
            case UInt8(ascii: "["), UInt8(ascii: "{"): if inValue || depth > 0 { depth += 1 }
            case UInt8(ascii: "}"): if inValue || depth > 0 { depth = max(0, depth - 1) }
            default: break
            }
            i += 1
        }
    }

    public static func render(_ c: TrainConfig) -> String {
        sections.map { s in
            "[\(s)]\n" + keys.filter { $0.section == s }.map { "\($0.name) = \($0.write(c))" }.joined(separator: "\n")
        }.joined(separator: "\n\n") + "\n"
    }

    /// Checks every key's own rule and those that hold across keys: run after the
    /// command line's flags are applied, which bypass the file's checks otherwise
    /// (`--dp 0` is refused as `parallel.dp = 0` would be).
    public static func validate(_ c: TrainConfig) throws {
        _ = try parse(render(c), path: "configuration with the command line's flags")
        if c.steps == 0 && c.epochs == 0 { throw LoomError.config("set train.steps or train.epochs (both are 0)") }
        if c.model == .resnet && !ResNet.depths.contains(c.depth) {
            throw LoomError.config("model.depth \(c.depth): valid resnet depths are \(ResNet.depths.map(String.init).joined(separator: ", "))")
        }
        if c.cropPadding < 0 { throw LoomError.config("data.crop_padding must be >= 0, got \(c.cropPadding)") }
        if c.model == .gpt && c.dModel % c.heads != 0 {
            throw LoomError.config("model.d_model \(c.dModel) must be divisible by model.heads \(c.heads)")
        }
        if c.pp > 1 {
            if c.accumulationSteps > 1 {
                throw LoomError.config("train.accumulation_steps = \(c.accumulationSteps) with parallel.pp = \(c.pp): a pipeline accumulates over its micro-batches; set parallel.micro_batches instead")
            }
            if c.batchSize % (c.dp * c.microBatches) != 0 {
                throw LoomError.config("train.batch_size \(c.batchSize) must divide evenly into parallel.dp = \(c.dp) replicas x parallel.micro_batches = \(c.microBatches)")
            }
            let pieces = c.pp * c.chunksPerStage
            if c.model == .gpt && !c.pipelineSplit.isEmpty && (c.pipelineSplit.count != pieces || c.pipelineSplit.reduce(0, +) != c.layers) {
                throw LoomError.config("parallel.pp_split \(c.pipelineSplit) must give \(pieces) pieces that hold the \(c.layers) blocks (model.layers)")
            }
        }
        if c.batchSize % (c.dp * c.accumulationSteps) != 0 {
            throw LoomError.config("train.batch_size \(c.batchSize) must divide evenly into parallel.dp = \(c.dp) ranks x train.accumulation_steps = \(c.accumulationSteps) micro-batches")
        }
        if c.zero == 3 && c.pp > 1 {
            throw LoomError.config("parallel.zero = 3 with parallel.pp = \(c.pp): a pipeline stage keeps its parameters whole across its micro-batches; use parallel.zero = 1 or 2 with a pipeline")
        }
        if c.tp > 1 && c.model != .gpt { throw LoomError.config("parallel.tp = \(c.tp): tensor parallelism splits gpt models only (model.kind is \(c.model))") }
        if c.tp > 1 && c.heads % c.tp != 0 { throw LoomError.config("model.heads \(c.heads) must be divisible by parallel.tp \(c.tp)") }
        if c.dropout >= 1 { throw LoomError.config("model.dropout must be below 1, got \(c.dropout)") }
        if c.validationFraction <= 0 || c.validationFraction >= 1 {
            throw LoomError.config("data.validation_fraction must be between 0 and 1 (exclusive), got \(c.validationFraction)")
        }
    }
}
