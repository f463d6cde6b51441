import XCTest
import LoomCore
import LoomNN

/// A training step computes where its tensors live: on a device the host cannot read,
/// the only value a step brings back is the loss the caller asks for.
final class DeviceResidencyTests: XCTestCase {
    func testAGPTTrainingStepReadsNothingBackButItsLoss() throws {
        let device = IsolatedBackend(index: 11)
        let gpt = try GPT(GPTConfig(vocabSize: 40, contextLength: 8, layers: 2, dModel: 16, heads: 2), seed: 1, on: device)
        let opt = Adam.adamW(gpt.namedParameters(), lr: 1e-3, weightDecay: 0.1)
        var rng = Philox(seed: 5)
        let tokens = Tensor(indices: (0..<32).map { _ in Int32(rng.nextInt(below: 40)) }, shape: [4, 8], on: device)
        let targets = Tensor(indices: (0..<32).map { _ in Int32(rng.nextInt(below: 40)) }, shape: [4, 8], on: device)
        var losses: [Float] = []
        for _ in 0..<3 {
            device.resetCounters()
            opt.zeroGrad()
            let loss = try gpt.loss(tokens: tokens, targets: targets)
            try loss.backward()
            try opt.step()
            XCTAssertEqual(device.downloads, 0, "forward, backward (cross-entropy included) and AdamW read nothing back")
            losses.append(loss.item)
            XCTAssertEqual(device.downloads, 1)
        }
        XCTAssertLessThan(losses[2], losses[0])
    }

    func testModuleToMovesEveryParameterAndBufferAndKeepsTheOptimizersReferences() throws {
        let device = IsolatedBackend(index: 12)
        let cnn = CNN(residual: true, classes: 10, seed: 2)
        let opt = SGD(cnn.namedParameters(), lr: 0.1, momentum: 0.9)
        let before = cnn.namedTensors().map { ($0.name, $0.tensor.floats) }
        try cnn.to(device)
        for ((name, values), (_, t)) in zip(before, cnn.namedTensors()) {
            XCTAssertEqual(t.device, .isolated(12), name)
            XCTAssertEqual(t.floats, values, name)
        }
        XCTAssertTrue(zip(opt.parameters, cnn.namedParameters()).allSatisfy { $0.tensor === $1.tensor })
        let x = try Tensor(uninitialized: [2, 1, 28, 28], on: device)
        device.fill(x, value: 0.5)
        let loss = try cnn(x).crossEntropy(targets: Tensor(indices: [1, 2], shape: [2], on: device))
        try loss.backward()
        try opt.step()
        XCTAssertTrue(loss.item.isFinite)
    }
}
