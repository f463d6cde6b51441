import XCTest
import LoomTrain

/// The dropout layers' generator positions in a checkpoint: JSON now, and the
/// `name=key:position;…` text of older checkpoints still read.
final class DropoutGeneratorsTests: XCTestCase {
    struct Bad: Error { let what: String }

    func testGeneratorsRoundTripExactlyAndOldCheckpointsStillRead() throws {
        let g = DropoutGenerators(byLayer: ["blocks.0.dropout": .init(key: UInt64.max - 1, position: (1 << 60) + 3),
                                            "blocks.1.dropout": .init(key: 7, position: 0)])
        XCTAssertEqual(try DropoutGenerators(serialized: g.serialized) { Bad(what: $0) }, g, "64-bit keys and positions survive JSON")
        let old = try DropoutGenerators(serialized: "blocks.0.dropout=18446744073709551614:1152921504606846979;blocks.1.dropout=7:0") { Bad(what: $0) }
        XCTAssertEqual(old, g)
        XCTAssertEqual(try DropoutGenerators(serialized: "") { Bad(what: $0) }, DropoutGenerators(), "a model without dropout")
        XCTAssertThrowsError(try DropoutGenerators(serialized: "a=1:2;a=3:4") { Bad(what: $0) }) { XCTAssertTrue("\($0)".contains("distinct")) }
        XCTAssertThrowsError(try DropoutGenerators(serialized: "{\"a\": 3}") { Bad(what: $0) }) { XCTAssertTrue("\($0)".contains("JSON object")) }
        XCTAssertEqual(g.merging(DropoutGenerators(byLayer: ["head.dropout": .init(key: 1, position: 2)])).byLayer.count, 3)
    }
}
