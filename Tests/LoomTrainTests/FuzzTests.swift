import Foundation
import XCTest
import LoomCore
import LoomData
import LoomNN
import LoomTrain

/// Deterministic fuzzing of every reader of a user's files: real files mutated by
/// truncation, bit flips, inserted and overwritten bytes, huge length fields and duplicated
/// lines. Every outcome must be a value or a `LoomError`: a trap (overflow, out-of-bounds
/// index, force unwrap) would kill the test process, and any other error type would reach
/// the user as something other than Loom's one-line message.
///
/// Each reader gets a fixed, seeded number of mutants (not a time budget), so every machine
/// runs the same inputs. Inputs that once crashed a reader are kept in
/// `Fixtures/fuzz/READER/` and read first, on every run.
/// `LOOM_FUZZ_TRACE=1` writes each mutant to /tmp/fuzz-last before it is read: after a
/// crash, that file is the input that caused it (copy it into the corpus).
final class FuzzTests: ScratchDirectoryTestCase {
    /// A reader of one kind of file: the file it starts from, how many mutants it gets,
    /// and how it reads a mutant.
    struct Reader {
        var name: String
        var seed: [UInt8]
        var mutants: Int
        /// Whether some mutant must be refused (a lenient reader, which skips what it
        /// cannot parse, need not refuse any).
        var refuses = true
        var read: ([UInt8]) throws -> Void
    }

    /// One mutant of `seed`, drawn from `rng`.
    func mutate(_ seed: [UInt8], _ rng: inout Philox) -> [UInt8] {
        var b = seed
        switch rng.nextInt(below: 6) {
        case 0:  // truncate
            b = Array(b.prefix(rng.nextInt(below: max(b.count, 1))))
        case 1:  // flip 1-8 bits
            for _ in 0...rng.nextInt(below: 8) where !b.isEmpty { b[rng.nextInt(below: b.count)] ^= UInt8(1 << rng.nextInt(below: 8)) }
        case 2:  // insert random bytes
            let at = rng.nextInt(below: b.count + 1)
            b.insert(contentsOf: (0..<(1 + rng.nextInt(below: 16))).map { _ in UInt8(rng.nextInt(below: 256)) }, at: at)
        case 3:  // overwrite 8 bytes with 0xFF (huge lengths, counts, sizes)
            if b.count >= 8 { let at = rng.nextInt(below: b.count - 7); b.replaceSubrange(at..<(at + 8), with: [UInt8](repeating: 0xFF, count: 8)) }
        case 4:  // duplicate a line (duplicated keys, records)
            let lines = b.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
            if lines.count > 1 {
                let i = rng.nextInt(below: lines.count), j = rng.nextInt(below: lines.count)
                var out = lines.map(Array.init)
                out.insert(out[i], at: j)
                b = Array(out.joined(separator: [UInt8(ascii: "\n")]))
            }
        default:  // a digit run made enormous or negative (numbers past every integer type)
            if let at = b.indices.first(where: { b[$0] >= 48 && b[$0] <= 57 && rng.nextInt(below: 8) == 0 }) {
                b.insert(contentsOf: rng.nextInt(below: 2) == 0 ? [UInt8](repeating: UInt8(ascii: "9"), count: 25) : Array("-".utf8), at: at)
            }
        }
        return b
    }

    /// The inputs that once crashed `reader` (kept in the corpus as fixed cases).
    func corpus(_ reader: String) -> [[UInt8]] {
        let dir = repoPath("Tests/LoomTrainTests/Fixtures/fuzz/" + reader)
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted()
        return names.compactMap { FileManager.default.contents(atPath: dir + "/" + $0).map(Array.init) }
    }

    /// Runs `reader` on its corpus and then on its mutants. Returns what went wrong: an
    /// error that is not a LoomError, or no mutant refused at all (the fuzzer is not
    /// reaching the reader); nil if nothing. `ran` counts the inputs read.
    func fuzz(_ reader: Reader, rngSeed: UInt64, ran: inout Int) -> String? {
        var rng = Philox(seed: rngSeed)
        var refused = 0
        let fixed = corpus(reader.name)
        let trace = ProcessInfo.processInfo.environment["LOOM_FUZZ_TRACE"] != nil
        for i in 0..<(fixed.count + reader.mutants) {
            let m = i < fixed.count ? fixed[i] : mutate(reader.seed, &rng)
            if trace { FileManager.default.createFile(atPath: "/tmp/fuzz-last", contents: Data(m)) }
            ran += 1
            do { try reader.read(m) } catch is LoomError { refused += 1 } catch {
                return "\(reader.name) \(i < fixed.count ? "corpus case \(i)" : "mutant \(i - fixed.count)"): \(type(of: error)): \(error)"
            }
        }
        return refused == 0 && reader.refuses ? "\(reader.name): no mutant was refused; the fuzzer is not reaching the reader" : nil
    }

    @discardableResult
    func write(_ bytes: [UInt8], _ name: String) -> String {
        let path = work + "/" + name
        try? FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        return path
    }

    func bytes(_ path: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: path))) }

    func testReadersOfUsersFilesReturnValuesOrLoomErrorsUnderMutation() throws {
        var readers: [Reader] = []

        // A checkpoint as loom train writes one: a small GPT, its metadata.
        let gpt = try GPT(GPTConfig(vocabSize: 11, contextLength: 4, layers: 1, dModel: 8, heads: 2), seed: 1)
        let checkpoint = SafeTensors.encode(gpt.namedTensors().map { ("model." + $0.name, $0.tensor) },
                                            metadata: ["loom.step": "3", "loom.elapsed_s": "0.5", "loom.optimizer_steps": "3",
                                                       "loom.config": ConfigFile.render(TrainConfig())])
        readers.append(Reader(name: "safetensors", seed: checkpoint, mutants: 2000) { m in
            let f = try SafeTensors.decode(m, path: "mutant")
            _ = try TrainingCheckpoint.Metadata(file: f, path: "mutant").runState()
        })

        // The example configurations.
        for name in TrainConfig.presetNames {
            let text = Array(try String(contentsOfFile: repoPath("examples/\(name).toml"), encoding: .utf8).utf8)
            readers.append(Reader(name: "config-\(name)", seed: text, mutants: 1000) { m in
                let c = try ConfigFile.parse(String(decoding: m, as: UTF8.self), path: "mutant.toml")
                try ConfigFile.validate(c)
            })
        }

        // CSV rows in MNIST's layout, and the same as IDX.
        var rng = Philox(seed: 7)
        let rows = (0..<3).map { _ in (0..<784).map { _ in rng.nextInt(below: 256) } + [rng.nextInt(below: 10)] }
        let csv = Array(("pixel,…\n" + rows.map { $0.map(String.init).joined(separator: ",") }.joined(separator: "\n") + "\n").utf8)
        readers.append(Reader(name: "csv", seed: csv, mutants: 1000) { m in _ = try MNIST.loadCSV(self.write(m, "m.csv")) })
        let images: [UInt8] = [0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 28, 0, 0, 0, 28] + rows.flatMap { $0.dropLast().map(UInt8.init) }
        let labels: [UInt8] = [0, 0, 8, 1, 0, 0, 0, 3] + rows.map { UInt8($0[784]) }
        let labelsPath = write(labels, "labels.idx"), imagesPath = write(images, "images.idx")
        readers.append(Reader(name: "idx-images", seed: images, mutants: 1000) { m in
            _ = try MNIST.loadIDX(images: self.write(m, "i.idx"), labels: labelsPath)
        })
        readers.append(Reader(name: "idx-labels", seed: labels, mutants: 1000) { m in
            _ = try MNIST.loadIDX(images: imagesPath, labels: self.write(m, "l.idx"))
        })

        // Text: the bundled Shakespeare's first 4 KiB (invalid UTF-8, unseen characters).
        let text = Array(try Data(contentsOf: URL(fileURLWithPath: repoPath("data/shakespeare.txt"))).prefix(4096))
        let fitted = try TextCorpus(path: write(text, "t.txt"), validationFraction: 0.1).tokenizer
        readers.append(Reader(name: "text", seed: text, mutants: 500) { m in
            _ = try TextCorpus(path: self.write(m, "m.txt"), validationFraction: 0.1)
            _ = try TextCorpus(path: self.write(m, "m.txt"), validationFraction: 0.1, tokenizer: fitted)
        })

        // NumPy: .npy images and labels, .npz stored and deflated (numpy's zip64 headers).
        let images_ = repoPath("Tests/LoomDataTests/Fixtures/images") + "/"
        readers.append(Reader(name: "npy-images", seed: try bytes(images_ + "x.npy"), mutants: 1500) { m in
            _ = try ImageFiles.loadNumPy(self.write(m, "x.npy"), labels: images_ + "y.npy")
        })
        readers.append(Reader(name: "npy-labels", seed: try bytes(images_ + "y.npy"), mutants: 1500) { m in
            _ = try ImageFiles.loadNumPy(images_ + "x.npy", labels: self.write(m, "y.npy"))
        })
        readers.append(Reader(name: "npz-stored", seed: try bytes(images_ + "images.npz"), mutants: 1500) { m in
            _ = try ImageFiles.loadNumPy(self.write(m, "m.npz"))
        })
        readers.append(Reader(name: "npz-deflated", seed: try bytes(images_ + "images_compressed.npz"), mutants: 1500) { m in
            _ = try ImageFiles.loadNumPy(self.write(m, "m.npz"))
        })

        // CIFAR-10: two records of a label byte and 3072 pixel bytes.
        var cifar: [UInt8] = []
        for r in 0..<2 { cifar.append(UInt8(r * 3)); for i in 0..<3072 { cifar.append(UInt8((i * 7 + r) % 256)) } }
        readers.append(Reader(name: "cifar", seed: cifar, mutants: 500) { m in
            _ = try ImageFiles.loadCIFAR(self.write(m, "cifar/data_batch_1.bin"))
        })

        // PNG through libpng, in a folder of class folders.
        readers.append(Reader(name: "png", seed: try bytes(images_ + "png/cat/0.png"), mutants: 1500) { m in
            self.write(m, "png/a/0.png")
            _ = try ImageFiles.loadPNGFolder(self.work + "/png")
        })

        // GPT-2's three files in Hugging Face's layout (the weights are safetensors, above).
        let gpt2 = repoPath("Tests/LoomTrainTests/Fixtures/gpt2-tiny") + "/"
        let gpt2Copy = work + "/gpt2"
        try FileManager.default.copyItem(atPath: gpt2, toPath: gpt2Copy)
        readers.append(Reader(name: "gpt2-config", seed: try bytes(gpt2 + "config.json"), mutants: 300) { m in
            self.write(m, "gpt2/config.json")
            _ = try HuggingFaceGPT2.load(directory: gpt2Copy)
        })
        readers.append(Reader(name: "gpt2-vocab", seed: try bytes(gpt2 + "vocab.json"), mutants: 1000) { m in
            _ = try HuggingFaceGPT2.gpt2Tokenizer(vocab: self.write(m, "vocab.json"), merges: gpt2 + "merges.txt")
        })
        readers.append(Reader(name: "gpt2-merges", seed: try bytes(gpt2 + "merges.txt"), mutants: 1000) { m in
            _ = try HuggingFaceGPT2.gpt2Tokenizer(vocab: gpt2 + "vocab.json", merges: self.write(m, "merges.txt"))
        })

        // A tokenizer file (loom tokenizer train), as also stored in checkpoints.
        let bpe = try Tokenizer.fit(.bpe, to: String(decoding: text, as: UTF8.self), vocabularySize: 300)
        readers.append(Reader(name: "tokenizer", seed: Array(bpe.serialized.utf8), mutants: 1000) { m in
            _ = try Tokenizer.load(self.write(m, "tokenizer.json"))
        })

        // A run directory: its checkpoint (configuration and tokenizer in the metadata, then
        // the model's tensors) and its metrics log (read again on resume).
        var config = TrainConfig()
        config.model = .gpt
        let run = work + "/run"
        try TrainingCheckpoint.saveModel(gpt, config: config, tokenizer: bpe, to: run)
        let metrics = Array((1...6).map { "{\"elapsed_s\":0.\($0),\"loss\":2.\($0),\"lr\":0.001,\"step\":\($0)}\n" }.joined().utf8)
        readers.append(Reader(name: "run-directory", seed: try bytes(run + "/" + TrainingCheckpoint.fileName), mutants: 1500) { m in
            self.write(m, "run/" + TrainingCheckpoint.fileName)
            let (file, _, _) = try TrainingCheckpoint.peek(run)
            try TrainingCheckpoint.restoreModel(file, path: run, into: gpt)
        })
        readers.append(Reader(name: "metrics-log", seed: metrics, mutants: 500, refuses: false) { m in
            _ = try MetricsLog(path: self.write(m, "run/metrics.jsonl"), keepThrough: 3)
        })

        var problems: [String] = [], counts: [String] = []
        for (i, reader) in readers.enumerated() {
            var ran = 0
            if let p = fuzz(reader, rngSeed: 100 + UInt64(i), ran: &ran) { problems.append(p) }
            counts.append("\(reader.name) \(ran)")
        }
        print("fuzzed: " + counts.joined(separator: ", "))
        XCTAssertEqual(readers.count, 17 + TrainConfig.presetNames.count, "every reader was fuzzed")
        XCTAssertEqual(problems, [])
    }
}
