import XCTest
import LoomCore

/// A meter's split says what its bytes hold: a storage counts as activations until code
/// that gives it a role tags it, and a leaf's gradient counts as a gradient.
final class MemoryMeterTests: XCTestCase {
    func testTheSplitFollowsTagsGradientsAndFrees() throws {
        let meter = MemoryMeter()
        let backend = CPUBackend(threads: 1)
        try MemoryMeter.measuring(meter) {
            let w = try Tensor.zeros([256], on: backend)  // 1 KiB
            w.requiresGrad = true
            w.tagMemory(.parameters)
            let bucket = try Tensor.zeros([512], on: backend)  // 2 KiB
            bucket.tagMemory(.communication)
            XCTAssertEqual(meter.liveSplit[.parameters], 1024)
            XCTAssertEqual(meter.liveSplit[.communication], 2048)

            meter.resetPeak()
            do {
                let x = try Tensor.zeros([256], on: backend)  // an activation
                let loss = try (w * x).sum()
                try loss.backward()
                XCTAssertGreaterThanOrEqual(meter.peakSplit[.activations], 1024, "the input was live at the peak")
            }
            XCTAssertEqual(meter.liveSplit[.gradients], 1024, "w.grad counts as a gradient once assigned")
            XCTAssertEqual(meter.liveSplit[.activations], 0, "the step's activations are freed and credited back")

            // A gradient that is a view of a bucket stays counted as the bucket.
            w.grad = bucket.view([256])
            XCTAssertEqual(meter.liveSplit[.gradients], 0)
            XCTAssertEqual(meter.liveSplit[.communication], 2048)
            XCTAssertEqual(meter.liveSplit.total, meter.liveBytes)
        }
        XCTAssertEqual(meter.liveBytes, 0)
        XCTAssertEqual(meter.liveSplit, MemorySplit())
    }
}
