import Foundation
import XCTest
import LoomCore
import LoomCUDA
import LoomDistributed

/// NCCL: the real library (from PyPI, no GPU needed to load it) answers and has every
/// symbol Loom calls; the emulator's NCCL runs the collectives of in-process ranks, each
/// on its own emulated GPU, queued on their streams.
final class NCCLTests: XCTestCase {
    func testTheRealNCCLLoadsAndHasEverySymbolLoomCalls() throws {
        if let reason = ProcessInfo.processInfo.environment["LOOM_NCCL_UNAVAILABLE"] {
            throw XCTSkip("NCCL could not be installed from PyPI: \(reason)")
        }
        let nccl: NCCL
        do { nccl = try NCCL(emulator: nil) } catch {
            return XCTFail("NCCL did not load (scripts/test.sh installs nvidia-nccl-cu13 and puts it on LOOM_CUDA_LIBS): \(error)")
        }
        XCTAssertFalse(nccl.library.isEmulator)
        XCTAssertGreaterThanOrEqual(nccl.version, 21800, "NCCL \(nccl.versionString)")
        XCTAssertTrue(nccl.library.path.hasSuffix("libnccl.so.2"), nccl.library.path)
    }

    /// All-reduce (sum and average), all-gather, reduce-scatter and broadcast of device
    /// tensors between two ranks, and a host tensor through the host world, all while
    /// each rank's host never waits for its stream until it reads the result.
    func testTwoEmulatedGPUsRunEveryCollectiveThroughTheEmulatedNCCL() throws {
        let emulator = try CUDAEmulator.path()
        let results = try InProcessWorld.run(size: 2) { world -> [[Float]] in
            let backend = try CUDABackend(device: world.rank, emulator: emulator)
            let (comm, note) = try backend.deviceCommunicator(over: world)
            let c = try XCTUnwrap(comm)
            XCTAssertTrue(note.hasPrefix("NCCL 2.30.7"), note)
            let r = Float(world.rank + 1)
            let x = try Tensor([r, 2 * r, 3 * r, 4 * r], shape: [4]).to(backend)
            try c.allReduce(x, .sum)
            let mean = try Tensor([r, -r], shape: [2]).to(backend)
            try c.allReduce(mean, .average)
            let gathered = try Tensor.zeros([4]).to(backend)
            try c.allGather(try Tensor([r, r], shape: [2]).to(backend), into: gathered)
            let chunk = try Tensor.zeros([2]).to(backend)
            try c.reduceScatter(try Tensor([r, 10 * r, 100 * r, 1000 * r], shape: [4]).to(backend), into: chunk, .sum)
            let root = try Tensor([r, r, r], shape: [3]).to(backend)
            try c.broadcast(root, root: 1)
            let hostValue = try c.average(Double(r))
            let sub = try c.split(color: 0, key: -world.rank)  // the ranks in the other order
            let y = try Tensor([r], shape: [1]).to(backend)
            try sub.allReduce(y, .sum)
            return [x.floats, mean.floats, gathered.floats, chunk.floats, root.floats, [Float(hostValue)], y.floats, [Float(sub.rank)]]
        }
        XCTAssertEqual(results[0][0], [3, 6, 9, 12])
        XCTAssertEqual(results[1][0], [3, 6, 9, 12])
        XCTAssertEqual(results[0][1], [1.5, -1.5])
        XCTAssertEqual(results[1][2], [1, 1, 2, 2])
        XCTAssertEqual(results[0][3], [3, 30])
        XCTAssertEqual(results[1][3], [300, 3000])
        XCTAssertEqual(results[0][4], [2, 2, 2])
        XCTAssertEqual(results[0][5], [1.5])
        XCTAssertEqual(results[0][6], [3])
        XCTAssertEqual(results[0][7], [1])
        XCTAssertEqual(results[1][7], [0])
    }

    /// Ranks that share one GPU (NCCL refuses them) keep collectives in host memory, and say
    /// so. The staging is pinned memory on the copy stream: with every queued operation
    /// delayed 1-2 ms, the reduced values are there for the next kernel on the compute
    /// stream, and a checkpoint-style download sees the work queued before it.
    func testRanksSharingAGPUStageThroughPinnedHostMemoryAndSaySo() throws {
        let emulator = try CUDAEmulator.path()
        let raw = try RawEmulator()
        raw.setDelay(2000)
        defer { raw.setDelay(0) }
        let results = try InProcessWorld.run(size: 2) { world -> (String, [Float], [Float]) in
            let backend = try CUDABackend(device: 0, emulator: emulator)
            let (comm, note) = try backend.deviceCommunicator(over: world)
            XCTAssertNil(comm)
            let r = Float(world.rank + 1)
            let x = try Tensor([r, 2 * r, 3 * r], shape: [3]).to(backend).scaled(10)  // queued: the download must wait for it
            try world.allReduce(x, .sum)
            let doubled = try x.scaled(2)  // queued after the upload on the copy stream
            let staged = HostBuffer(doubled)
            return (note, Array(UnsafeBufferPointer(start: staged.floats, count: 3)), x.floats)
        }
        for (note, doubled, x) in results {
            XCTAssertEqual(note, "through host memory (ranks share a GPU)")
            XCTAssertEqual(x, [30, 60, 90])
            XCTAssertEqual(doubled, [60, 120, 180])
        }
    }
}
