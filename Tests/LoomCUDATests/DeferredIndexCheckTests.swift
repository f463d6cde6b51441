import XCTest
import LoomCore
import LoomCUDA

/// On CUDA an embedding's indices and a loss's targets are checked on the device without
/// the host waiting; a bad one is thrown with the CPU's message when the host next waits
/// (the step's loss), and the kernels that use it touch nothing outside their tables.
final class DeferredIndexCheckTests: XCTestCase {
    func message(_ body: () throws -> Void) -> String {
        do { try body(); return "no error" } catch { return "\(error)" }
    }

    func testABadIndexIsThrownWithTheCPUsMessageOnceTheHostWaitsAndTheChecksNeverWait() throws {
        let backend = try CUDABackend(emulator: try CUDAEmulator.path())
        let table = try Tensor((0..<12).map(Float.init), shape: [4, 3]).to(backend)
        let waits = backend.hostWaits
        let rows = try Tensor.embedding(table, indices: try Tensor(indices: [0, 7, 1], shape: [3]).to(backend))
        XCTAssertEqual(backend.hostWaits, waits, "the check waited for the device")
        let values = rows.floats  // the host waits here, and the check's record comes back with the rows
        XCTAssertEqual(Array(values[0..<3]), [0, 1, 2])
        XCTAssertTrue(values[3..<6].allSatisfy(\.isNaN), "the bad row is NaN, not read from outside the table")
        let cpu = message { _ = try Tensor.embedding(Tensor.zeros([4, 3]), indices: Tensor(indices: [0, 7, 1], shape: [3])) }
        XCTAssertEqual(message { try backend.deferredErrors() }, cpu)
        XCTAssertTrue(cpu.contains("index 7 at position 1 is outside the table of 4 rows"), cpu)
        XCTAssertEqual(message { try backend.deferredErrors() }, "no error", "thrown once")

        // A target outside the classes, with no download after it: deferredErrors waits itself.
        let logits = try Tensor.zeros([3, 5]).to(backend)
        _ = try logits.crossEntropy(targets: try Tensor(indices: [1, -100, 9], shape: [3]).to(backend))
        let before = backend.hostWaits
        let thrown = message { try backend.deferredErrors() }
        XCTAssertEqual(backend.hostWaits, before + 1)
        XCTAssertEqual(thrown, message { _ = try Tensor.zeros([3, 5]).crossEntropy(targets: Tensor(indices: [1, -100, 9], shape: [3])) })
        XCTAssertTrue(thrown.contains("target 9 at row 2 is outside 0..<5"), thrown)

        // Good indices: nothing to throw, and a step's checks still wait for nothing.
        let fine = try Tensor.embedding(table, indices: try Tensor(indices: [3, 0], shape: [2]).to(backend))
        XCTAssertEqual(fine.floats, [9, 10, 11, 0, 1, 2])
        XCTAssertEqual(message { try backend.deferredErrors() }, "no error")
    }
}
