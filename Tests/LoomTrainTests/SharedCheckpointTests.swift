import Foundation
import XCTest
import LoomCore
import LoomDistributed
import LoomNN
import LoomParallel
import LoomTrain

/// Every rank writes the pieces it holds into the one checkpoint file: the file is what
/// one process holding everything writes, nothing is gathered, and a failing rank leaves
/// no file.
final class SharedCheckpointTests: XCTestCase {
    static let config = GPTConfig(vocabSize: 64, contextLength: 16, layers: 2, dModel: 32, heads: 2, dropout: 0)
    var work: String!

    override func setUpWithError() throws {
        work = NSTemporaryDirectory() + "loom-shared-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: work) }

    /// A [rows, cols] tensor's values in row-major order; tensor rank r of `ranks` holds,
    /// along `axis`, the rows `Sharding.ranges` names. Its slice cut into two pieces at
    /// `cut` and placed by `unsharded` lands exactly where the whole tensor has those values.
    func testATensorParallelSlicesPiecesLandWhereTheWholeTensorHasThem() {
        for (shape, axis, shardPieces, ranks) in [([4, 6], 1, 1, 2), ([6, 4], 0, 1, 2), ([2, 12, 3], 1, 3, 2), ([3, 8], 1, 2, 4), ([8, 2], 0, 2, 2)] {
            let sharding = Sharding(axis: axis, pieces: shardPieces)
            let whole = shape.reduce(1, *)
            let outer = shape[..<axis].reduce(1, *), inner = shape[(axis + 1)...].reduce(1, *)
            var written = [Float](repeating: -1, count: whole)
            for rank in 0..<ranks {
                // The slice: for each outer index, the rows this rank holds, in order.
                let rows = sharding.ranges(fullSize: shape[axis], rank: rank, ranks: ranks).flatMap { Array($0) }
                var local: [Float] = []
                for i in 0..<outer { for row in rows { for k in 0..<inner { local.append(Float((i * shape[axis] + row) * inner + k)) } } }
                var localShape = shape
                localShape[axis] = rows.count
                let t = Tensor(local, shape: localShape)
                let cut = local.count / 3 + rank
                let entry = CheckpointEntry(name: "w", dtype: .float32, shape: localShape, sharding: sharding, pieces: [
                    TensorPiece(offset: 0, count: cut) { t.flatView(from: 0, count: cut) },
                    TensorPiece(offset: cut, count: local.count - cut) { t.flatView(from: cut, count: local.count - cut) },
                ]).unsharded(rank: rank, ranks: ranks)
                XCTAssertEqual(entry.shape, shape)
                for piece in entry.pieces {
                    let values = try! piece.make().floats
                    XCTAssertEqual(values.count, piece.count)
                    for (j, v) in values.enumerated() {
                        XCTAssertEqual(written[piece.offset + j], -1, "\(shape) axis \(axis): element \(piece.offset + j) written twice")
                        written[piece.offset + j] = v
                    }
                }
            }
            XCTAssertEqual(written, (0..<whole).map(Float.init), "\(shape) split along \(axis) in \(shardPieces) pieces over \(ranks) ranks")
        }
    }

    /// What one process holding the whole model and its Adam state writes.
    func singleProcessFile() throws -> SafeTensors.File {
        let gpt = try GPT(SharedCheckpointTests.config, seed: 5)
        let adam = Adam.adamW(gpt.namedParameters(), lr: 1e-3)
        try adam.materializeState()
        let path = work + "/single.safetensors"
        try SafeTensors.write(gpt.namedTensors() + adam.namedState(), metadata: ["k": "v"], to: path)
        return try SafeTensors.read(path)
    }

    /// The same model at ZeRO stage `zero` over `ranks` in-process ranks, each rank
    /// writing its pieces; returns the file, and the most rank 0's writing added to what it held.
    func shardedFile(zero: Int, ranks: Int, failing: Int? = nil) throws -> (file: SafeTensors.File, extra: Int) {
        let path = work + "/zero\(zero).safetensors"
        let extras = try InProcessWorld.run(size: ranks) { comm -> Int in
            let meter = MemoryMeter()
            return try MemoryMeter.measuring(meter) {
                let backend = CPUBackend(threads: 1)
                let full = zero == 3 ? FullyShardedParameters(communicator: comm, backend: backend) : nil
                let gpt = try GPT(SharedCheckpointTests.config, seed: 5, on: backend, sharding: full)
                try full?.shard([gpt], as: nil)
                let sharding = try dataParallelSharding(zero: zero, parameters: gpt.namedParameters(), optimizer: Adam.adamW(gpt.namedParameters(), lr: 1e-3),
                                                        group: comm, bucketBytes: 8 << 10, fullySharded: full)
                var entries = sharding.checkpointEntries(gpt.namedTensors()) + (try sharding.optimizerStateEntries())
                if comm.rank == failing, let i = entries.firstIndex(where: { !$0.pieces.isEmpty }) {
                    entries[i].pieces[0] = TensorPiece(offset: entries[i].pieces[0].offset, count: entries[i].pieces[0].count) {
                        throw LoomError.io("no space left on device (injected)")
                    }
                }
                let before = meter.liveBytes
                meter.resetPeak()
                // Each rank's own metadata (its dropout generators, say) differs in length: rank 0's is the file's.
                let metadata = ["k": "v", "mine": String(repeating: "x", count: 1 + 37 * comm.rank)]
                try SafeTensors.write(entries, metadata: metadata, to: path, world: comm, timeout: 60)
                return meter.peakBytes - before
            }
        }
        return (try SafeTensors.read(path), extras[0])
    }

    func assertSameTensors(_ a: SafeTensors.File, _ b: SafeTensors.File, _ what: String) {
        XCTAssertEqual(Set(a.entries.keys), Set(b.entries.keys), what)
        for (name, e) in a.entries {
            XCTAssertEqual(b.entries[name]?.shape, e.shape, "\(what): \(name)")
            XCTAssertEqual(b.floats(name), a.floats(name), "\(what): \(name)")
        }
    }

    func testEveryRankWritingItsPiecesMakesTheFileOneProcessWrites() throws {
        let single = try singleProcessFile()
        for (zero, ranks) in [(0, 2), (1, 4), (3, 4), (3, 3)] {
            let (file, extra) = try shardedFile(zero: zero, ranks: ranks)
            assertSameTensors(single, file, "zero \(zero) over \(ranks) ranks")
            XCTAssertEqual(file.metadata["k"], "v")
            XCTAssertEqual(file.metadata["mine"], "x")
            // Pieces are views of what the rank holds, written in place on the CPU: what
            // writing adds is the messages about the pieces, less than one tensor.
            let largest = single.entries.values.map { $0.range.count }.max()!
            XCTAssertLessThan(extra, largest, "zero \(zero): writing added \(extra) bytes to rank 0")
        }
    }

    func testARankThatFailsToWriteLeavesNoFileAndEveryRankSaysWhich() throws {
        XCTAssertThrowsError(try shardedFile(zero: 3, ranks: 4, failing: 2)) { error in
            XCTAssertTrue("\(error)".contains("rank 2") && "\(error)".contains("no space left on device (injected)"), "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: work + "/zero3.safetensors"))
        let left = try FileManager.default.contentsOfDirectory(atPath: work)
        XCTAssertTrue(left.isEmpty, "left behind: \(left)")
    }
}
