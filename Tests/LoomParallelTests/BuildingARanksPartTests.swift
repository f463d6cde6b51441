import XCTest
import LoomCore
import LoomDistributed
import LoomNN
import LoomParallel

/// Every rank builds its own part of the model, not the whole: while it builds, it holds
/// its part and the whole of one block at most; and what it keeps is exactly what the
/// whole model has there.
final class BuildingARanksPartTests: XCTestCase {
    static let config = GPTConfig(vocabSize: 64, contextLength: 32, layers: 4, dModel: 32, heads: 2, dropout: 0)

    /// Bytes of one block's tensors, whole.
    var blockBytes: Int {
        var rng = Philox(seed: 1)
        let block = try! TransformerBlock(dModel: 32, heads: 2, std: 0.02, projStd: 0.02, dropout: 0, rng: &rng, on: CPUBackend.shared)
        return block.namedTensors().reduce(0) { $0 + $1.tensor.byteCount }
    }

    /// (bytes live once built, peak while building) of `build` on this thread.
    func measure(_ build: () throws -> Module) rethrows -> (built: Int, peak: Int, model: Module) {
        let meter = MemoryMeter()
        return try MemoryMeter.measuring(meter) {
            let model = try build()
            return (meter.liveBytes, meter.peakBytes, model)
        }
    }

    func testAPipelineStageKeepsOnlyItsPiecesAndTheirValuesAreTheWholeModels() throws {
        let whole = try GPT(Self.config, seed: 5)
        let values = Dictionary(uniqueKeysWithValues: whole.namedTensors().map { ($0.name, $0.tensor.floats) })
        for (stage, held) in [(0, [0]), (1, [1])] {
            let part = try GPT.Part(Self.config, pieces: 2, holding: held)
            let (built, peak, model) = try measure { try GPT(Self.config, seed: 5, keeping: part) }
            let gpt = model as! GPT
            let stageModel = try gpt.pieces(2)[stage]
            let kept = stageModel.namedTensors()
            XCTAssertEqual(built, kept.reduce(0) { $0 + $1.tensor.byteCount }, "stage \(stage): only its piece's tensors hold memory")
            XCTAssertLessThanOrEqual(peak, built + blockBytes, "stage \(stage): peak while building \(peak), its part \(built), a block \(blockBytes)")
            for (name, t) in kept { XCTAssertEqual(t.floats, values[name], "stage \(stage): \(name)") }
        }
    }

    func testATensorParallelRankBuildsWithinItsPartAndOneBlock() throws {
        let block = blockBytes
        let results = try InProcessWorld.run(size: 2) { comm -> (Int, Int) in
            let (built, peak, _) = try self.measure { try GPT(Self.config, seed: 5, on: CPUBackend(threads: 1), tensorGroup: comm) }
            return (built, peak)
        }
        for (rank, (built, peak)) in results.enumerated() {
            XCTAssertLessThanOrEqual(peak, built + block, "tp rank \(rank): peak while building \(peak), its part \(built), a block \(block)")
        }
    }
}
