import Foundation
import XCTest
import LoomCore
import LoomDistributed
import LoomTrain

/// Training on a backend whose memory the host cannot read except by upload/download
/// (`IsolatedBackend`): the proof that a GPU backend plugs in below the trainer, the
/// layers, the optimizers and every parallel layout without touching them. Its kernels
/// are the CPU backend's, so the losses must be bit-identical to a CPU run.
final class IsolatedDeviceTrainingTests: ScratchDirectoryTestCase {

    func config(_ model: ModelKind, steps: Int = 4) -> TrainConfig {
        var c = TrainConfig()
        c.model = model
        c.steps = steps
        c.logEvery = 1
        c.evalEvery = steps
        c.evalBatches = 1
        c.out = work
        c.seed = 3
        switch model {
        case .gpt:
            c.data = repoPath("data/shakespeare.txt"); c.validationFraction = 0.1
            c.layers = 2; c.dModel = 32; c.heads = 2; c.context = 16; c.batchSize = 8
            c.optimizer = .adamw; c.lr = 3e-3; c.weightDecay = 0.1; c.gradClip = 1
        case .mlp:
            c.data = repoPath("data/mnist_5k.csv.gz"); c.hidden = [64]; c.batchSize = 32
            c.optimizer = .sgd; c.lr = 0.05
        default:
            c.data = repoPath("data/mnist_5k.csv.gz"); c.batchSize = 16; c.lr = 2e-3
        }
        return c
    }

    /// Per-step training losses of a run, one rank per backend made by `backend(rank)`.
    func losses(_ c: TrainConfig, name: String, ranks: Int = 1, _ backend: @escaping (Int) -> any Backend) throws -> [Float] {
        var c = c
        c.name = name
        if ranks == 1 {
            let t = try Trainer(config: c, backend: backend(0))
            t.quiet = true
            try t.run()
        } else {
            _ = try InProcessWorld.run(size: ranks) { comm -> Int in
                let t = try Trainer(config: c, backend: backend(comm.rank), communicator: comm)
                t.quiet = true
                defer { t.finish() }
                try t.run()
                return 0
            }
        }
        let text = try String(contentsOfFile: "\(work)/\(name)/metrics.jsonl", encoding: .utf8)
        return try text.split(separator: "\n").compactMap { line in
            let o = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            return (o["loss"] as? NSNumber)?.floatValue
        }
    }

    func assertSameLosses(_ c: TrainConfig, _ label: String, ranks: Int = 1, file: StaticString = #filePath, line: UInt = #line) throws {
        let cpu = try losses(c, name: "\(label)-cpu", ranks: ranks) { _ in CPUBackend(threads: 1) }
        let isolated = try losses(c, name: "\(label)-isolated", ranks: ranks) { IsolatedBackend(index: $0) }
        XCTAssertEqual(cpu.count, c.steps, "\(label): logged steps", file: file, line: line)
        XCTAssertTrue(cpu.allSatisfy { $0.isFinite }, "\(label): \(cpu)", file: file, line: line)
        XCTAssertEqual(isolated, cpu, "\(label): isolated device vs CPU", file: file, line: line)
    }

    func testMLPCNNAndGPTTrainOnIsolatedMemoryWithTheCPULosses() throws {
        try assertSameLosses(config(.mlp), "mlp")
        try assertSameLosses(config(.cnn, steps: 3), "cnn")
        try assertSameLosses(config(.gpt), "gpt")
    }

    func testDataTensorAndPipelineParallelGPTTrainOnIsolatedMemoryWithTheCPULosses() throws {
        var dp = config(.gpt); dp.dp = 2
        try assertSameLosses(dp, "gpt-dp2", ranks: 2)
        var zero = config(.gpt); zero.dp = 2; zero.zero = 1
        try assertSameLosses(zero, "gpt-dp2-zero", ranks: 2)
        var tp = config(.gpt); tp.tp = 2
        try assertSameLosses(tp, "gpt-tp2", ranks: 2)
        var pp = config(.gpt); pp.pp = 2; pp.microBatches = 4
        try assertSameLosses(pp, "gpt-pp2", ranks: 2)
    }
}
