import Foundation
import XCTest
import LoomCore
import LoomNN
import LoomTrain

/// ResNet-18 (torchvision's architecture, width 4) against PyTorch on the same weights
/// (scripts/gen_golden_resnet.py): training-mode logits, loss, input and parameter
/// gradients and the updated running statistics; then evaluation-mode logits.
final class GoldenResNetTests: XCTestCase {
    struct Golden: Decodable {
        var targets: [Int32]
        var loss: Float
    }

    func assertClose(_ got: [Float], _ want: [Float], _ what: String, tolerance: Float = 1e-4, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, want.count, what, file: file, line: line)
        let scale = max(1e-3, want.map(abs).max() ?? 0)
        let worst = zip(got, want).map { abs($0 - $1) }.max() ?? 0
        XCTAssertLessThanOrEqual(worst / scale, tolerance, "\(what): relative error \(worst / scale)", file: file, line: line)
    }

    func testResNet18MatchesPyTorchForwardBackwardAndRunningStatistics() throws {
        let dir = try XCTUnwrap(Bundle.module.url(forResource: "resnet18_golden", withExtension: "json", subdirectory: "Fixtures")).deletingLastPathComponent().path
        let golden = try JSONDecoder().decode(Golden.self, from: Data(contentsOf: URL(fileURLWithPath: dir + "/resnet18_golden.json")))
        let file = try SafeTensors.read(dir + "/resnet18_golden.safetensors", foreign: true)
        func reference(_ name: String) throws -> [Float] { try XCTUnwrap(file.floats("golden." + name), name) }
        let model = try ResNet(depth: 18, width: 4, channels: 3, classes: 10, seed: 0)
        let tensors = model.namedTensors()
        XCTAssertEqual(Set(tensors.map(\.name)), Set(file.entries.keys.filter { !$0.hasPrefix("golden.") }), "the same tensors under the same names")
        for (name, t) in tensors {
            let values = try XCTUnwrap(file.floats(name), name)
            XCTAssertEqual(file.entries[name]?.shape, t.shape, name)
            values.withUnsafeBytes { t.backend.upload($0, to: t) }
        }
        let x = Tensor(try reference("input"), shape: [4, 3, 64, 64])
        x.requiresGrad = true
        model.train()
        let logits = try model(x)
        assertClose(logits.floats, try reference("train_logits"), "training-mode logits")
        let loss = try logits.crossEntropy(targets: Tensor(indices: golden.targets, shape: [4]))
        XCTAssertEqual(loss.item, golden.loss, accuracy: 1e-4 * golden.loss)
        try loss.backward()
        assertClose(try XCTUnwrap(x.grad).floats, try reference("input_grad"), "input gradient")
        let params = Dictionary(uniqueKeysWithValues: tensors)
        for key in file.entries.keys where key.hasPrefix("golden.grad.") {
            let name = String(key.dropFirst("golden.grad.".count))
            assertClose(try XCTUnwrap(params[name]?.grad, name).floats, try reference("grad." + name), "gradient of \(name)")
        }
        for key in file.entries.keys where key.hasPrefix("golden.running.") {
            let name = String(key.dropFirst("golden.running.".count))
            assertClose(try XCTUnwrap(params[name], name).floats, try reference("running." + name), name)
        }
        model.eval()
        assertClose(try withoutGrad { try model(x) }.floats, try reference("eval_logits"), "evaluation-mode logits (running statistics)")
    }
}
