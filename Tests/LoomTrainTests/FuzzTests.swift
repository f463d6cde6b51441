import Foundation
import XCTest
import LoomCore
import LoomData
import LoomNN
import LoomTrain

/// Deterministic, time-bounded fuzzing of every reader of a user's files: real files
/// mutated by truncation, bit flips, inserted and overwritten bytes, huge length fields and
/// duplicated lines. Every outcome must be a value or a `LoomError`: a trap (overflow,
/// out-of-bounds index, force unwrap) would kill the test process, and any other error type
/// would reach the user as something other than Loom's one-line message.
/// `LOOM_FUZZ_TRACE=1` writes each mutant to /tmp/fuzz-last before it is read: after a
/// crash, that file is the input that caused it. (It found two: toml++ asserting on a
/// table name starting with a control or non-ASCII character, or with `|`.)
final class FuzzTests: ScratchDirectoryTestCase {
    /// Per reader: at most this many mutants, and at most this many seconds.
    let mutants = 3000, seconds = 8.0  // 8 readers: at most about a minute in all

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
        default:  // a digit run made enormous (numbers past every integer type)
            if let at = b.indices.first(where: { b[$0] >= 48 && b[$0] <= 57 && rng.nextInt(below: 8) == 0 }) {
                b.insert(contentsOf: [UInt8](repeating: UInt8(ascii: "9"), count: 25), at: at)
            }
        }
        return b
    }

    /// Runs `read` on mutants of `seed`. Returns what went wrong: an error that is not a
    /// LoomError, or no mutant refused at all (the fuzzer is not reaching the reader); nil if nothing.
    func fuzz(_ name: String, seed: [UInt8], rngSeed: UInt64, _ read: ([UInt8]) throws -> Void) -> String? {
        var rng = Philox(seed: rngSeed)
        let start = Date()
        var refused = 0
        for i in 0..<mutants where Date().timeIntervalSince(start) < seconds {
            let m = mutate(seed, &rng)
            if ProcessInfo.processInfo.environment["LOOM_FUZZ_TRACE"] != nil { FileManager.default.createFile(atPath: "/tmp/fuzz-last", contents: Data(m)) }
            do { try read(m) } catch is LoomError { refused += 1 } catch {
                return "\(name) mutant \(i): \(type(of: error)): \(error)"
            }
        }
        return refused == 0 ? "\(name): no mutant was refused; the fuzzer is not reaching the reader" : nil
    }

    func write(_ bytes: [UInt8], _ name: String) -> String {
        let path = work + "/" + name
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        return path
    }

    func testReadersOfUsersFilesReturnValuesOrLoomErrorsUnderMutation() throws {
        // A checkpoint as loom train writes one: a small GPT, its metadata.
        let gpt = try GPT(GPTConfig(vocabSize: 11, contextLength: 4, layers: 1, dModel: 8, heads: 2), seed: 1)
        let checkpoint = SafeTensors.encode(gpt.namedTensors().map { ("model." + $0.name, $0.tensor) },
                                            metadata: ["loom.step": "3", "loom.elapsed_s": "0.5", "loom.optimizer_steps": "3",
                                                       "loom.config": ConfigFile.render(TrainConfig())])
        var problems: [String?] = []
        problems.append(fuzz("safetensors", seed: checkpoint, rngSeed: 1) { m in
            let f = try SafeTensors.decode(m, path: "mutant")
            _ = try TrainingCheckpoint.Metadata(file: f, path: "mutant").runState()
        })
        // The example configurations.
        for (i, name) in TrainConfig.presetNames.enumerated() {
            let text = Array(try String(contentsOfFile: repoPath("examples/\(name).toml"), encoding: .utf8).utf8)
            problems.append(fuzz("config \(name)", seed: text, rngSeed: 10 + UInt64(i)) { m in
                let c = try ConfigFile.parse(String(decoding: m, as: UTF8.self), path: "mutant.toml")
                try ConfigFile.validate(c)
            })
        }
        // CSV rows in MNIST's layout, and the same as IDX.
        var rng = Philox(seed: 7)
        let rows = (0..<3).map { _ in (0..<784).map { _ in rng.nextInt(below: 256) } + [rng.nextInt(below: 10)] }
        let csv = Array(("pixel,…\n" + rows.map { $0.map(String.init).joined(separator: ",") }.joined(separator: "\n") + "\n").utf8)
        problems.append(fuzz("csv", seed: csv, rngSeed: 20) { m in _ = try MNIST.loadCSV(write(m, "m.csv")) })
        let images: [UInt8] = [0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 28, 0, 0, 0, 28] + rows.flatMap { $0.dropLast().map(UInt8.init) }
        let labels: [UInt8] = [0, 0, 8, 1, 0, 0, 0, 3] + rows.map { UInt8($0[784]) }
        let labelsPath = write(labels, "labels.idx")
        problems.append(fuzz("idx images", seed: images, rngSeed: 21) { m in _ = try MNIST.loadIDX(images: write(m, "i.idx"), labels: labelsPath) })
        let imagesPath = write(images, "images.idx")
        problems.append(fuzz("idx labels", seed: labels, rngSeed: 22) { m in _ = try MNIST.loadIDX(images: imagesPath, labels: write(m, "l.idx")) })
        // Text: the bundled Shakespeare's first 4 KiB (invalid UTF-8, unseen characters).
        let text = Array(try Data(contentsOf: URL(fileURLWithPath: repoPath("data/shakespeare.txt"))).prefix(4096))
        let fitted = try TextCorpus(path: write(text, "t.txt"), validationFraction: 0.1).tokenizer
        problems.append(fuzz("text", seed: text, rngSeed: 30) { m in
            _ = try TextCorpus(path: write(m, "m.txt"), validationFraction: 0.1)
            _ = try TextCorpus(path: write(m, "m.txt"), validationFraction: 0.1, tokenizer: fitted)
        })
        XCTAssertEqual(problems.count, 5 + TrainConfig.presetNames.count, "every reader was fuzzed")
        XCTAssertEqual(problems.compactMap { $0 }, [])
    }
}
