import Foundation
import XCTest

/// examples/embedding: a program that embeds Loom trains through the library's
/// `TrainingJob` exactly as `loom train` does.
final class EmbeddingExampleTests: CLITestCase {
    var example: String {
        URL(fileURLWithPath: binary).deletingLastPathComponent().appendingPathComponent("EmbeddingExample").path
    }

    func testAProgramEmbeddingLoomTrainsAsTheCommandLineDoes() throws {
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: example), "the example is not built next to loom: \(example)")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: example)
        p.arguments = [work]
        p.currentDirectoryURL = Self.repo
        p.standardOutput = Pipe(); p.standardError = Pipe()
        try p.run()
        let out = String(decoding: (p.standardOutput as! Pipe).fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let err = String(decoding: (p.standardError as! Pipe).fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, err)
        XCTAssertTrue(out.hasPrefix("trained 30 steps"), out)
        let cli = try loom(["train", "examples/mnist-mlp.toml", "--steps", "30", "--dp", "2", "--out", work, "--name", "cli"])
        XCTAssertEqual(cli.status, 0, cli.err)
        // Same configuration but for log and evaluation intervals: compare the steps both logged.
        let embedded = try trainingLosses(work + "/embedded"), fromCLI = try trainingLosses(work + "/cli")
        XCTAssertEqual(embedded.count, 30)
        for (step, loss) in fromCLI { XCTAssertEqual(embedded[step], loss, "step \(step)") }
        XCTAssertFalse(fromCLI.isEmpty)
    }
}
