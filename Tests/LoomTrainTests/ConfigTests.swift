import Foundation
import XCTest
import LoomCore
import LoomTrain

final class ConfigTests: XCTestCase {
    func repoPath(_ p: String) -> String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent(p).path
    }

    func testExampleFilesEqualTheBuiltInPresets() throws {
        for name in TrainConfig.presetNames {
            XCTAssertEqual(try ConfigFile.load(repoPath("examples/\(name).toml")), try TrainConfig.preset(name), name)
        }
    }

    func testRenderParsesBackToTheSameConfig() throws {
        var c = try TrainConfig.preset("shakespeare-gpt")
        c.hidden = [7, 9]; c.labels = "x \"quoted\""
        XCTAssertEqual(try ConfigFile.parse(ConfigFile.render(c), path: "rendered"), c)
    }

    func testUnknownKeyNamesItAndListsValidKeys() {
        XCTAssertThrowsError(try ConfigFile.parse("[train]\nlearning_rate = 0.1\n", path: "x.toml")) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains("unknown key 'train.learning_rate'"), m)
            XCTAssertTrue(m.contains("valid keys in [train]: epochs, steps, batch_size"), m)
        }
        XCTAssertThrowsError(try ConfigFile.parse("[optim]\nlr = 1\n", path: "x.toml")) { e in
            XCTAssertTrue("\(e)".contains("unknown section [optim]; valid sections: [model], [data], [train], [parallel], [run]"))
        }
    }

    func testTextThatCrashedTheTOMLParserIsRefusedWithItsPlace() {
        // Each of these ended the process in toml++'s assertions (found by FuzzTests).
        for (text, message) in [("[|rain]\nlr = 1\n", "line 1, column 2: a table header needs a name"),
                                ("[train]\nepochs = 3\n[mod\u{E8}le]\n", "line 3, column 5: a non-ASCII character"),
                                ("[\u{8}train]\n", "line 1, column 2: a table header needs a name"),
                                ("[train]\nlr = 1\u{8}\n", "line 2, column 7: control character 0x8"),
                                ("[train]\nlr.|x = 1\n", "line 2, column 4: expected a key after '.'"),
                                ("[train]\n|lr = 1\n", "line 2, column 1: expected a key")] {
            XCTAssertThrowsError(try ConfigFile.parse(text, path: "x.toml")) { e in XCTAssertTrue("\(e)".contains(message), "\(text): \(e)") }
        }
        // What is allowed stays allowed: non-ASCII in strings and comments, nested arrays.
        XCTAssertNoThrow(try ConfigFile.parse("# modèle\n[model]\nhidden = [\n  64,\n  32,\n]\n[run]\nname = \"modèle\"\n", path: "x.toml"))
    }

    func testBadValuesNameKeyAndExpectation() {
        XCTAssertThrowsError(try ConfigFile.parse("[train]\nlr = \"fast\"\n", path: "x.toml")) { e in
            XCTAssertTrue("\(e)".contains("x.toml: train.lr must be a finite number >= 0.0"), "\(e)")
        }
        XCTAssertThrowsError(try ConfigFile.parse("[model]\nkind = \"rnn\"\n", path: "x.toml")) { e in
            XCTAssertTrue("\(e)".contains("model.kind must be one of \"cnn\", \"mlp\", \"gpt\""), "\(e)")
        }
        XCTAssertThrowsError(try ConfigFile.parse("[train\n", path: "x.toml")) { e in
            XCTAssertTrue("\(e)".contains("not valid TOML at line 1"), "\(e)")
        }
    }
}

/// The [model] section reads as a typed spec, and one builder makes every model from its
/// spec and the data's input.
final class ModelSpecTests: XCTestCase {
    func testEveryModelKindReadsAsItsSpec() throws {
        for kind in ModelKind.allCases { XCTAssertEqual(try TrainConfig.preset(kind.preset).modelSpec.kind, kind) }
        var c = TrainConfig()
        c.model = .resnet; c.depth = 32; c.width = 8
        XCTAssertEqual(c.modelSpec, .resnet(depth: 32, width: 8))
        c.model = .gpt; c.layers = 3; c.dModel = 48; c.heads = 6; c.context = 20
        XCTAssertEqual(c.modelSpec.gptConfig(vocabularySize: 70)?.vocabSize, 70)
        XCTAssertEqual(c.gptConfig(vocabularySize: 70).layers, 3)
    }

    func testEachSpecBuildsAModelThatTrainsOnItsInput() throws {
        let images = ModelInput.images(shape: [3, 8, 8], classes: 5)
        var rng = Philox(seed: 1)
        let x = Tensor.randn([2, 3, 8, 8], rng: &rng), y = Tensor(indices: [1, 4], shape: [2])
        for spec in [ModelSpec.mlp(hidden: [16]), .cnn(residual: true), .resnet(depth: 20, width: 4)] {
            let built = try spec.build(for: images, seed: 1, on: CPUBackend.shared)
            let loss = try built.task.loss(inputs: x, targets: y)
            try loss.backward()
            XCTAssertTrue(loss.item.isFinite, "\(spec)")
            XCTAssertEqual(try built.task.evaluate(inputs: x, targets: y).count, 2, "\(spec)")
            XCTAssertTrue(built.task.module.parameters.allSatisfy { $0.grad != nil }, "\(spec): every parameter got a gradient")
        }
        let gpt = try ModelSpec.gpt(layers: 1, dModel: 16, heads: 2, context: 8, dropout: 0)
            .build(for: .tokens(vocabulary: 30), seed: 1, on: CPUBackend.shared)
        let tokens = Tensor(indices: (0..<16).map { Int32($0 % 30) }, shape: [2, 8])
        XCTAssertEqual(try gpt.task.evaluate(inputs: tokens, targets: tokens).count, 16)
        XCTAssertThrowsError(try ModelSpec.mlp(hidden: [4]).build(for: .tokens(vocabulary: 30), seed: 1, on: CPUBackend.shared)) {
            XCTAssertTrue("\($0)".contains("reads images, not text"), "\($0)")
        }
        XCTAssertThrowsError(try ModelSpec.cnn(residual: false).build(for: .images(shape: [10], classes: 2), seed: 1, on: CPUBackend.shared)) {
            XCTAssertTrue("\($0)".contains("[10]"), "\($0)")
        }
    }
}

final class SafeTensorsTests: XCTestCase {
    func testRoundTripAndLayout() throws {
        let a = Tensor([1, 2, 3, 4, 5, 6], shape: [2, 3]), b = Tensor(indices: [7, 8], shape: [2])
        let bytes = SafeTensors.encode([("a", a), ("b", b)], metadata: ["k": "v \"q\""])
        let n = Int(bytes[0]) | Int(bytes[1]) << 8
        XCTAssertEqual((8 + n) % 8, 0, "data section is 8-byte aligned")
        let f = try SafeTensors.decode(bytes, path: "mem")
        XCTAssertEqual(f.floats("a"), a.floats)
        XCTAssertEqual(f.entries["b"]?.dtype, .int32)
        XCTAssertEqual(f.metadata["k"], "v \"q\"")
    }

    func testTruncatedForeignAndCorruptFilesAreRejectedWithReasons() {
        let good = SafeTensors.encode([("w", Tensor([1, 2, 3, 4], shape: [4]))], metadata: [:])
        func reason(_ bytes: [UInt8]) -> String {
            do { _ = try SafeTensors.decode(bytes, path: "f"); return "accepted" } catch { return "\(error)" }
        }
        XCTAssertTrue(reason(Array(good.dropLast(3))).contains("truncated"))
        XCTAssertTrue(reason(Array(good.prefix(5))).contains("too short"))
        XCTAssertTrue(reason(Array("hello, this is not a checkpoint at all".utf8)).contains("not a safetensors file"))
        var flipped = good; flipped[flipped.count - 1] ^= 0xFF
        XCTAssertTrue(reason(flipped).contains("checksum mismatch"))
    }

    func testTheChecksumCoversTheHeaderAndAFileWithoutOneIsRefused() throws {
        let good = SafeTensors.encode([("w", Tensor([1, 2, 3, 4], shape: [4]))], metadata: ["loom.step": "5"])
        XCTAssertNoThrow(try SafeTensors.decode(good, path: "f"))
        // The step count 5 -> 7 in the header: same length, valid JSON, data untouched.
        let pattern = Array("\"loom.step\":\"5\"".utf8)
        let at = (0...(good.count - pattern.count)).first { Array(good[$0..<($0 + pattern.count)]) == pattern }! + pattern.count - 2
        var edited = good; edited[at] = UInt8(ascii: "7")
        XCTAssertThrowsError(try SafeTensors.decode(edited, path: "f")) { XCTAssertTrue("\($0)".contains("checksum mismatch"), "\($0)") }
        // A shape edited [4] -> [2] and its offsets left: caught by the checksum first.
        let header = #"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#
        var plain: [UInt8] = []
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { plain.append(contentsOf: $0) }
        plain += Array(header.utf8) + [UInt8](repeating: 0, count: 16)
        XCTAssertThrowsError(try SafeTensors.decode(plain, path: "f")) { XCTAssertTrue("\($0)".contains("has no Loom checksum"), "\($0)") }
    }

    func testHalfPrecisionTensorsRoundTrip() throws {
        let h = try Tensor([1.5, -2, 65504, 0.1], shape: [2, 2]).cast(to: .bfloat16)
        let f = try SafeTensors.decode(SafeTensors.encode([("h", h)], metadata: [:]), path: "mem")
        XCTAssertEqual(f.entries["h"]?.dtype, .bfloat16)
        XCTAssertEqual(f.entries["h"]?.range.count, 8)
        XCTAssertEqual(withExtendedLifetime(f) { Array(f.bytes(f.entries["h"]!).bindMemory(to: UInt16.self)) }, h.halfBits)
    }

    func testCheckpointMetadataParsesOrFailsNamingTheKey() throws {
        let meta = ["loom.step": "12", "loom.elapsed_s": "3.5", "loom.optimizer_steps": "12", "loom.dropout": "blocks.0.dropout=7:96"]
        let file = try SafeTensors.decode(SafeTensors.encode([], metadata: meta), path: "ok")
        XCTAssertEqual(try TrainingCheckpoint.Metadata(file: file, path: "ok").runState(), RunState(step: 12, elapsedSeconds: 3.5, bestValidationLoss: nil))
        for (key, value, message) in [("loom.step", "twelve", "metadata loom.step = 'twelve' is not a count >= 0"),
                                      ("loom.step", "-3", "loom.step = '-3'"),
                                      ("loom.elapsed_s", "nan", "loom.elapsed_s = 'nan' is not a finite number")] {
            var m = meta; m[key] = value
            let f = try SafeTensors.decode(SafeTensors.encode([], metadata: m), path: "bad")
            XCTAssertThrowsError(try TrainingCheckpoint.Metadata(file: f, path: "bad").runState()) { XCTAssertTrue("\($0)".contains(message), "\($0)") }
        }
        var m = meta; m.removeValue(forKey: "loom.step")
        let f = try SafeTensors.decode(SafeTensors.encode([], metadata: m), path: "bad")
        XCTAssertThrowsError(try TrainingCheckpoint.Metadata(file: f, path: "bad").runState()) { XCTAssertTrue("\($0)".contains("(missing)"), "\($0)") }
    }
}
