import Foundation
import XCTest

/// `loom plan` as a user runs it: the search's report, the layout it ranks first run as
/// printed, this machine calibrated and read back, and bad input named.
final class PlanCommandTests: CLITestCase {
    /// A cluster of this machine's shape without timings (planning needs no measurement).
    func cluster(memoryGiB: Double = 8) throws -> String {
        let path = work + "/cluster.toml"
        try """
            [cluster]
            name = "two cores, untimed"
            devices_per_node = 8
            [device]
            memory_gib = \(memoryGiB)
            cores = 2
            threads = [1, 2]
            matmul_tflops_float32 = [0.1, 0.18]
            matmul_tflops_bf16 = [0.2, 0.36]
            memory_gbps = [20, 30]
            [intra_node]
            bandwidth_gbps = 4
            latency_us = 50
            """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func testTheSearchRanksLayoutsSaysWhatCannotRunAndTheFirstRunsAsPrinted() throws {
        let r = try loom(["plan", "examples/shakespeare-gpt.toml", "--ranks", "4", "--cluster", try cluster(), "--top", "3"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("4 ranks on two cores, untimed"), r.out)
        XCTAssertTrue(r.out.contains("cannot run"), r.out)
        let commands = r.out.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { $0.hasPrefix("loom train ") }
        XCTAssertEqual(commands.count, 3, r.out)
        // The first, as printed, trains (one step, into the scratch directory).
        let args: [String] = commands[0].split(separator: " ").dropFirst().map(String.init) + ["--steps", "1", "--out", work!, "--name", "first"]
        let run = try loom(args)
        XCTAssertEqual(run.status, 0, "\(commands[0]): \(run.err)")
        XCTAssertTrue(FileManager.default.fileExists(atPath: work + "/first/summary.json"))
    }

    func testALayoutThatDoesNotFitIsSaidWithByHowMuch() throws {
        let r = try loom(["plan", "examples/shakespeare-gpt.toml", "--dp", "1", "--cluster", try cluster(memoryGiB: 0.05)])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("does not fit") && r.out.contains("over the device's"), r.out)
    }

    func testCalibrationWritesADescriptionThePlannerReads() throws {
        let out = work + "/machine.toml"
        let c = try loom(["plan", "--calibrate", "examples/shakespeare-gpt.toml", "--ranks", "2", "--out", out])
        XCTAssertEqual(c.status, 0, c.err)
        let text = try String(contentsOfFile: out, encoding: .utf8)
        for key in ["[[gemm]]", "[[attention]]", "[[kernel]]", "step_scale", "[intra_node]"] { XCTAssertTrue(text.contains(key), "\(key) missing:\n\(text.prefix(800))") }
        let r = try loom(["plan", "examples/shakespeare-gpt.toml", "--ranks", "2", "--cluster", out, "--json"])
        XCTAssertEqual(r.status, 0, r.err)
        let first = try JSONSerialization.jsonObject(with: Data(r.out.split(separator: "\n")[0].utf8)) as! [String: Any]
        XCTAssertGreaterThan(first["step_ms"] as! Double, 0)
        XCTAssertTrue((first["command"] as! String).hasPrefix("loom train examples/shakespeare-gpt.toml --dp "), "\(first)")
    }

    func testMissingDataAndAnUnknownClusterKeyAreNamed() throws {
        let config = work + "/gpt.toml"
        try "[model]\nkind = \"gpt\"\n[data]\npath = \"\(work!)/no-such.txt\"\n[train]\nsteps = 1\n".write(toFile: config, atomically: true, encoding: .utf8)
        let r = try loom(["plan", config, "--ranks", "2", "--cluster", try cluster()])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.contains("no-such.txt") && r.err.contains("data.vocab_size"), r.err)
        let bad = work + "/bad.toml"
        try "[device]\nmemory_gib = 8\nmemory_bw = 3\n".write(toFile: bad, atomically: true, encoding: .utf8)
        let b = try loom(["plan", "examples/shakespeare-gpt.toml", "--ranks", "2", "--cluster", bad])
        XCTAssertEqual(b.status, 1)
        XCTAssertTrue(b.err.contains("unknown key 'device.memory_bw'") && b.err.contains("memory_gbps"), b.err)
    }
}
