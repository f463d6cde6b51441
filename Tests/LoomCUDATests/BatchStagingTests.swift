import XCTest
import LoomCore
import LoomCUDA

/// Batches staged on the copy stream (emulated: the emulator's streams run in order, so
/// this proves the data path and the bookkeeping, not the overlap).
final class BatchStagingTests: XCTestCase {
    func batch(_ i: Int) -> [Tensor] {
        let rows = 3 + i  // a larger batch each time: the pinned buffers grow
        return [Tensor((0..<(rows * 5)).map { Float($0 + 100 * i) }, shape: [rows, 5]),
                Tensor(indices: (0..<rows).map { Int32($0 * 7 + i) }, shape: [rows])]
    }

    func testStagedBatchesArriveIntactOneStepAheadAsTheTrainerTakesThem() throws {
        let backend = try CUDABackend(emulator: try CUDAEmulator.path())
        var ahead = try backend.stage(batch(0))
        for i in 0..<5 {
            let current = try ahead.take()
            ahead = try backend.stage(batch(i + 1))
            XCTAssertEqual(current.map(\.device), [backend.device, backend.device])
            XCTAssertEqual(current[0].shape, [3 + i, 5])
            XCTAssertEqual(current[0].floats, batch(i)[0].floats)
            XCTAssertEqual(current[1].ints, batch(i)[1].ints)
            XCTAssertEqual(current[1].dtype, .int32)
        }
    }

    func testABatchTakenAfterItsSlotWasReusedIsAnError() throws {
        let backend = try CUDABackend(emulator: try CUDAEmulator.path())
        let first = try backend.stage(batch(0))
        _ = try backend.stage(batch(1)).take()
        _ = try backend.stage(batch(2)).take()
        XCTAssertThrowsError(try first.take()) { XCTAssertTrue("\($0)".contains("taken after two later batches"), "\($0)") }
    }
}
