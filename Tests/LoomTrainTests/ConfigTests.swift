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
}
