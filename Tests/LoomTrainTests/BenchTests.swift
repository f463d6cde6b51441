import Foundation
import LoomCore
import LoomTrain
import XCTest

/// What `loom bench` reports beside a CPU figure.
final class BenchTests: XCTestCase {
    /// The cross-core probe gives a rate a cache hand-over can have (between 0.1 GB/s and
    /// 10 TB/s) where two CPUs are allowed, and nothing where one is; a bench on 2 threads
    /// records it before the warm-up and after the timed runs, and its JSON line carries
    /// both; on 1 thread it is not measured.
    func testAMultiThreadBenchRecordsHowFastTwoCPUsHandDataToEachOther() throws {
        let rate = CrossCoreRate.measure(seconds: 0.05)
        guard let rate else {
            XCTAssertLessThan(ProcessInfo.processInfo.activeProcessorCount, 2, "two CPUs, and no rate")
            return
        }
        XCTAssertGreaterThan(rate, 0.1)
        XCTAssertLessThan(rate, 10_000)

        let two = try Bench.run(.mlp, backend: CPUBackend(threads: 2), steps: 1, warmup: 0, peak: 1)
        let rates = try XCTUnwrap(two.crossCoreGbps, "2 threads: the rate before and after")
        XCTAssertEqual(rates.count, 2)
        XCTAssertTrue(rates.allSatisfy { $0 > 0.1 && $0 < 10_000 }, "\(rates)")
        let line = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(two.json.utf8)) as? [String: Any])
        XCTAssertEqual((line["cross_core_gbps"] as? [Double])?.count, 2, two.json)

        let one = try Bench.run(.mlp, backend: CPUBackend(threads: 1), steps: 1, warmup: 0, peak: 1)
        XCTAssertNil(one.crossCoreGbps)
        XCTAssertFalse(one.json.contains("cross_core_gbps"), one.json)
    }

    /// A bf16 bench on 2 threads says in how many checks its backend streamed the results both
    /// threads read (`StreamedHandOvers`: at least the first step's); a float32 one, whose
    /// kernels stream nothing, and a 1-thread one say nothing; one whose choice was set by hand
    /// says which.
    func testABF16BenchOnTwoThreadsSaysWhetherItStreamedWhatBothThreadsRead() throws {
        try XCTSkipUnless(ProcessInfo.processInfo.activeProcessorCount >= 2, "one CPU: the probe's two threads could not run at once")
        let two = try Bench.run(.mlp, backend: CPUBackend(threads: 2), steps: 1, warmup: 0, peak: 1, precision: .bfloat16)
        let checks = try XCTUnwrap(two.streamedHandOvers, "the first step's casts asked")
        XCTAssertGreaterThanOrEqual(checks.measurements, 1)
        XCTAssertLessThanOrEqual(checks.streamed, checks.measurements)
        let line = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(two.json.utf8)) as? [String: Any])
        XCTAssertEqual(line["stream_checks"] as? [Int], [checks.streamed, checks.measurements], two.json)

        let float32 = try Bench.run(.mlp, backend: CPUBackend(threads: 2), steps: 1, warmup: 0, peak: 1)
        XCTAssertNil(float32.streamedHandOvers)
        let one = try Bench.run(.mlp, backend: CPUBackend(threads: 1), steps: 1, warmup: 0, peak: 1, precision: .bfloat16)
        XCTAssertNil(one.streamedHandOvers)
        XCTAssertFalse(one.json.contains("stream_checks"), one.json)
        let byHand = try Bench.run(.mlp, backend: CPUBackend(threads: 2, streaming: .always), steps: 1, warmup: 0, peak: 1, precision: .bfloat16)
        XCTAssertNil(byHand.streamedHandOvers, "always: nothing measured")
        XCTAssertTrue(byHand.json.contains("\"stream_stores\":\"always\""), byHand.json)
    }
}
