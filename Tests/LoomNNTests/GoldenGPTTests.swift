import Foundation
import XCTest
import LoomCore
import LoomNN

/// Loom's GPT against an independent float64 implementation (scripts/gen_golden_gpt.py,
/// PyTorch): the forward loss, the gradient of every parameter, and three AdamW steps.
final class GoldenGPTTests: XCTestCase {
    struct Fixture {
        let json: [String: Any]
        var config: [String: Int] { json["config"] as! [String: Int] }
        func tensors(_ key: String) -> [String: (shape: [Int], data: [Float])] {
            (json[key] as! [String: [String: Any]]).mapValues {
                (($0["shape"] as! [Int]), ($0["data"] as! [Double]).map(Float.init))
            }
        }
        func ints(_ key: String) -> [Int32] { (json[key] as! [Int]).map(Int32.init) }
    }

    func loadFixture() throws -> Fixture {
        let url = try XCTUnwrap(Bundle.module.url(forResource: "gpt_golden", withExtension: "json", subdirectory: "Fixtures"))
        return Fixture(json: try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any])
    }

    func makeModel(_ f: Fixture) throws -> (GPT, Tensor, Tensor) {
        let c = f.config
        let model = try GPT(GPTConfig(vocabSize: c["vocab"]!, contextLength: c["context"]!, layers: c["layers"]!,
                                      dModel: c["d_model"]!, heads: c["heads"]!), seed: 0)
        let params = f.tensors("params")
        let named = model.namedParameters()
        XCTAssertEqual(Set(named.map(\.name)), Set(params.keys), "parameter names differ from the reference's")
        for (name, t) in named {
            let p = try XCTUnwrap(params[name])
            XCTAssertEqual(t.shape, p.shape, name)
            p.data.withUnsafeBytes { t.backend.upload($0, to: t) }
        }
        let shape = [c["batch"]!, c["context"]!]
        return (model, Tensor(indices: f.ints("tokens"), shape: shape), Tensor(indices: f.ints("targets"), shape: shape))
    }

    func testLossAndEveryGradientMatchReference() throws {
        let f = try loadFixture()
        let (model, tokens, targets) = try makeModel(f)
        let loss = try model.loss(tokens: tokens, targets: targets)
        XCTAssertEqual(Double(loss.item), f.json["loss"] as! Double, accuracy: 1e-5)
        try loss.backward()
        let grads = f.tensors("grads")
        for (name, t) in model.namedParameters() {
            let expected = try XCTUnwrap(grads[name]).data
            let got = try XCTUnwrap(t.grad, "\(name) has no gradient").floats
            let scale = max(expected.map(abs).max() ?? 0, 1e-3)
            let worst = zip(got, expected).map { abs($0 - $1) }.max() ?? 0
            // float32 vs float64 reference: errors relative to the tensor's largest entry.
            XCTAssertLessThan(worst / scale, 1e-4, "\(name): max abs error \(worst) vs scale \(scale)")
        }
    }

    func testThreeAdamWStepsMatchReference() throws {
        let f = try loadFixture()
        let (model, tokens, targets) = try makeModel(f)
        let opt = Adam.adamW(model.namedParameters(), lr: 1e-2, weightDecay: 0.01)
        var losses: [Double] = []
        for _ in 0..<3 {
            opt.zeroGrad()
            let loss = try model.loss(tokens: tokens, targets: targets)
            try loss.backward()
            try opt.step()
            losses.append(Double(loss.item))
        }
        let expected = f.json["adamw_losses"] as! [Double]
        for (a, b) in zip(losses, expected) { XCTAssertEqual(a, b, accuracy: 2e-5 * max(1, abs(b))) }
    }
}
