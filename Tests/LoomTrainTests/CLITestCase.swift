import Foundation
import XCTest

/// Base of the tests that run the real `loom` binary, as a user would: a scratch
/// directory per test, and helpers to run loom and read what it wrote.
class CLITestCase: XCTestCase {
    var work: String!

    override func setUp() {
        work = NSTemporaryDirectory() + "loom-e2e-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: work) }

    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// ResNet-20 (width 4) with batch norm on the bundled MNIST, 5 steps of SGD at a small
    /// learning rate, logged every step, written to `work/resnet.toml`. Batch norm over 16
    /// images makes this training chaotic: float32 rounding differences between any two
    /// summation orders (1e-7 at step 1) grow past 1e-5 by step 7 or 8 and to 1e-2 by step
    /// 20 (measured), so 5 steps is what a comparison to 1e-5 can check.
    func resNetConfig() throws -> String {
        let path = work + "/resnet.toml"
        try """
            [model]
            kind = "resnet"
            depth = 20
            width = 4
            [data]
            path = "\(Self.repo.path)/data/mnist_5k.csv.gz"
            validation_fraction = 0.2
            [train]
            steps = 5
            batch_size = 16
            optimizer = "sgd"
            lr = 0.002
            momentum = 0.9
            log_every = 1
            seed = 3
            """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// mlp, cnn or gpt at small shapes (every thread of the CUDA emulator is a fiber), 3-6
    /// steps logged each, written to `work/<model>.toml`. Text: the first 30 kB of Shakespeare.
    func smallConfig(_ model: String) throws -> String {
        let text = try String(contentsOfFile: Self.repo.path + "/data/shakespeare.txt", encoding: .utf8)
        try String(text.prefix(30_000)).write(toFile: work + "/text.txt", atomically: true, encoding: .utf8)
        let body: String
        switch model {
        case "gpt":
            body = """
                [model]
                kind = "gpt"
                layers = 2
                d_model = 32
                heads = 2
                context = 16
                [data]
                path = "\(work!)/text.txt"
                validation_fraction = 0.1
                [train]
                steps = 6
                batch_size = 8
                optimizer = "adamw"
                lr = 0.003
                weight_decay = 0.1
                grad_clip = 1.0
                """
        case "mlp":
            body = """
                [model]
                kind = "mlp"
                hidden = [64]
                [train]
                steps = 6
                batch_size = 32
                optimizer = "sgd"
                lr = 0.05
                momentum = 0.9
                """
        default:
            body = """
                [model]
                kind = "cnn"
                residual = true
                [train]
                steps = 3
                batch_size = 16
                optimizer = "adam"
                lr = 0.002
                """
        }
        let path = work + "/\(model).toml"
        try (body + "\nlog_every = 1\nseed = 3\n").write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Every logged training loss of `run` within `tolerance` (relative) of `reference`'s.
    func assertSameLosses(_ run: String, _ reference: String, tolerance: Double = 1e-5, file: StaticString = #filePath, line: UInt = #line) throws {
        let a = try trainingLosses(work + "/" + run).mapValues { Double($0)! }, b = try trainingLosses(work + "/" + reference).mapValues { Double($0)! }
        XCTAssertFalse(b.isEmpty, file: file, line: line)
        XCTAssertEqual(Set(a.keys), Set(b.keys), "\(run) logged other steps", file: file, line: line)
        for (step, x) in b {
            let y = try XCTUnwrap(a[step], file: file, line: line)
            XCTAssertLessThanOrEqual(abs(x - y) / abs(x), tolerance, "\(run) step \(step): \(y) vs \(x) on the CPU", file: file, line: line)
        }
    }

    /// Three steps of `config` on the CPU and the other three on the device, then the other
    /// way round: both give the losses of the whole run on the CPU. `train(args, name,
    /// onDevice)` runs `loom train`.
    func assertCheckpointsMoveBothWays(_ config: String, device: String, train: ([String], String, Bool) throws -> Void,
                                       file: StaticString = #filePath, line: UInt = #line) throws {
        try train([config], "whole", false)
        for (first, name) in [(false, "cpu-then-\(device)"), (true, "\(device)-then-cpu")] {
            try train([config, "--stop-at", "3"], name, first)
            try train(["--resume", work + "/" + name], name, !first)
            try assertSameLosses(name, "whole", file: file, line: line)
        }
    }

    /// The loom executable built next to this test bundle.
    var binary: String {
        let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for candidate in [dir, dir.deletingLastPathComponent()] {
            let p = candidate.appendingPathComponent("loom").path
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        for c in ["release", "debug"] {
            let p = Self.repo.appendingPathComponent(".build/\(c)/loom").path
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return "loom"
    }

    struct Result { var status: Int32; var out: String; var err: String }

    @discardableResult
    func loom(_ args: [String], env: [String: String] = [:]) throws -> Result {
        let p = try start(args, env: env)
        let out = String(data: (p.standardOutput as! Pipe).fileHandleForReading.readDataToEndOfFile(), encoding: .utf8)!
        let err = String(data: (p.standardError as! Pipe).fileHandleForReading.readDataToEndOfFile(), encoding: .utf8)!
        p.waitUntilExit()
        return Result(status: p.terminationStatus, out: out, err: err)
    }

    func start(_ args: [String], env: [String: String] = [:]) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = args
        p.currentDirectoryURL = Self.repo
        p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
        p.standardOutput = Pipe(); p.standardError = Pipe()
        try p.run()
        return p
    }

    func json(_ path: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
    }

    func trainingLosses(_ run: String) throws -> [Int: String] {
        var out: [Int: String] = [:]
        for line in try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8).split(separator: "\n") {
            let o = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            if o["loss"] != nil {
                // Compare the exact text: bit-identical floats print identically.
                let text = String(line)
                let loss = text[text.range(of: "\"loss\":")!.upperBound...].drop { $0 == " " }.prefix { $0 != "," && $0 != "}" }
                out[o["step"] as! Int] = String(loss)
            }
        }
        return out
    }
}
