import XCTest
import LoomCore
import LoomNN

final class ModuleTests: XCTestCase {
    func testHierarchicalNamesAndTiedHead() throws {
        let gpt = try GPT(GPTConfig(vocabSize: 10, contextLength: 4, layers: 2, dModel: 8, heads: 2), seed: 1)
        let names = gpt.namedParameters().map(\.name)
        XCTAssertEqual(names.first, "wte.weight")
        XCTAssertTrue(names.contains("blocks.0.attention.qkv.weight"))
        XCTAssertTrue(names.contains("blocks.1.mlp.proj.bias"))
        XCTAssertEqual(names.last, "lnf.bias")
        XCTAssertFalse(names.contains { $0.hasPrefix("head") }, "the head is tied to wte, not a separate parameter")
        XCTAssertEqual(names.count, 2 + 2 * 12 + 2)
    }

    func testBuffersAreNamedButNotParameters() {
        var rng = Philox(seed: 1)
        let block = ResidualBlock(channels: 4, rng: &rng)
        let all = block.namedTensors().map(\.name)
        XCTAssertTrue(all.contains("bn1.runningMean"))
        XCTAssertFalse(block.namedParameters().map(\.name).contains("bn1.runningMean"))
    }

    func testSameSeedSameParametersDifferentSeedDifferent() throws {
        let a = MLP(sizes: [4, 3, 2], seed: 7), b = MLP(sizes: [4, 3, 2], seed: 7), c = MLP(sizes: [4, 3, 2], seed: 8)
        XCTAssertEqual(a.parameters.map(\.floats), b.parameters.map(\.floats))
        XCTAssertNotEqual(a.parameters.map(\.floats), c.parameters.map(\.floats))
        XCTAssertEqual(a.namedParameters().map(\.name), ["net.layers.0.weight", "net.layers.0.bias", "net.layers.2.weight", "net.layers.2.bias"])
    }

    func testTrainEvalPropagates() {
        let cnn = CNN(residual: true, seed: 1)
        cnn.eval()
        XCTAssertFalse(cnn.features.namedChildren().contains { $0.module.training })
    }
}
