import XCTest
import LoomCore
import LoomNN

/// Generation over a KV cache computes what the full forward computes: the prompt at
/// once, then one position at a time, with rows of different lengths left-padded.
final class KVCacheTests: XCTestCase {
    let config = GPTConfig(vocabSize: 50, contextLength: 32, layers: 2, dModel: 32, heads: 4)

    func tokens(_ n: Int, seed: UInt64) -> [Int32] {
        var rng = Philox(seed: seed)
        return (0..<n).map { _ in Int32(rng.nextInt(below: 50)) }
    }

    /// Logits [V] at position `p` of a single row run whole.
    func fullLogits(_ model: GPT, _ row: [Int32]) throws -> [[Float]] {
        let all = try withoutGrad { try model(Tensor(indices: row, shape: [1, row.count])) }.floats
        return (0..<row.count).map { Array(all[($0 * 50)..<(($0 + 1) * 50)]) }
    }

    func maxDifference(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).map { abs($0 - $1) }.max() ?? .infinity }

    func testCachedLogitsEqualTheFullForwardAtEveryPosition() throws {
        let model = try GPT(config, seed: 3)
        let row = tokens(20, seed: 1)
        let want = try fullLogits(model, row)
        let cache = try KVCache(for: model, padding: [0])
        try withoutGrad {
            let prompt = try model(Tensor(indices: Array(row[0..<7]), shape: [1, 7]), cache: cache).floats
            for p in 0..<7 { XCTAssertLessThan(maxDifference(Array(prompt[(p * 50)..<((p + 1) * 50)]), want[p]), 1e-5, "prompt position \(p)") }
            for p in 7..<20 {
                let step = try model(Tensor(indices: [row[p]], shape: [1, 1]), cache: cache).floats
                XCTAssertLessThan(maxDifference(step, want[p]), 1e-5, "position \(p), one token over the cache")
            }
        }
        XCTAssertEqual(cache.length, 20)
    }

    func testLeftPaddedRowsOfABatchGiveEachRowsOwnLogits() throws {
        let model = try GPT(config, seed: 4)
        let rows = [tokens(5, seed: 2), tokens(12, seed: 3), tokens(9, seed: 4)]
        let next = [tokens(3, seed: 5), tokens(3, seed: 6), tokens(3, seed: 7)]
        let padding = rows.map { 12 - $0.count }
        let cache = try KVCache(for: model, padding: padding)
        let batch = zip(rows, padding).flatMap { [Int32](repeating: 0, count: $1) + $0 }
        try withoutGrad {
            let prompt = try model(Tensor(indices: batch, shape: [3, 12]), cache: cache).floats
            for (r, row) in rows.enumerated() {
                let last = Array(prompt[((r * 12 + 11) * 50)..<((r * 12 + 12) * 50)])
                XCTAssertLessThan(maxDifference(last, try fullLogits(model, row)[row.count - 1]), 1e-5, "row \(r)'s prompt")
            }
            for s in 0..<3 {
                let step = try model(Tensor(indices: next.map { $0[s] }, shape: [3, 1]), cache: cache).floats
                for (r, row) in rows.enumerated() {
                    let alone = try fullLogits(model, row + next[r][0...s])
                    XCTAssertLessThan(maxDifference(Array(step[(r * 50)..<((r + 1) * 50)]), alone[alone.count - 1]), 1e-5,
                                      "row \(r), generated token \(s)")
                }
            }
        }
    }

    func testACacheRefusesPositionsPastTheContextAndPipelinePieces() throws {
        let model = try GPT(config, seed: 5)
        let cache = try KVCache(for: model, padding: [0])
        try withoutGrad {
            _ = try model(Tensor(indices: tokens(30, seed: 8), shape: [1, 30]), cache: cache)
            XCTAssertThrowsError(try model(Tensor(indices: tokens(3, seed: 9), shape: [1, 3]), cache: cache)) { error in
                XCTAssertTrue("\(error)".contains("30 cached positions"), "\(error)")
            }
            XCTAssertThrowsError(try model.pieces(2)[0](Tensor(indices: [1], shape: [1, 1]), cache: cache))
        }
        XCTAssertThrowsError(try KVCache(for: model, padding: [32]))
    }
}
