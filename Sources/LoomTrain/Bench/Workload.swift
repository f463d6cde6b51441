import LoomCore
import LoomDistributed
import LoomNN
import LoomParallel

/// The three reference workloads of the benchmark (same shapes, batch sizes and
/// optimizers as the PyTorch and JAX references): one training step on a fixed batch.
public enum Workload: String, CaseIterable, Sendable {
    case mlp, cnn, gpt

    public var unit: String { self == .gpt ? "tokens/s" : "samples/s" }

    /// Samples (or tokens) a step processes.
    public var itemsPerStep: Int {
        switch self {
        case .mlp: return 128
        case .cnn: return 64
        case .gpt: return 16 * 128
        }
    }

    /// A closure that runs one training step and returns its loss. With a communicator,
    /// one rank of data parallel training (each rank its own batch of the workload's size).
    public func makeStep(on backend: any Backend, seed: UInt64 = 0, communicator: Communicator? = nil) throws -> () throws -> Float {
        var rng = Philox(seed: seed &+ 1000 &+ UInt64(communicator?.rank ?? 0))
        var dp: DataParallel?
        func parallel(_ m: Module) throws {
            if let c = communicator, c.size > 1 { dp = try DataParallel(parameters: m.namedParameters(), communicator: c) }
        }
        switch self {
        case .mlp:
            let model = MLP(sizes: [784, 512, 512, 10], seed: seed, on: backend)
            let opt = SGD(model.namedParameters(), lr: 0.01, momentum: 0.9)
            try parallel(model)
            let x = Tensor.uniform([128, 784], low: 0, high: 1, rng: &rng, on: backend)
            let y = Tensor(indices: (0..<128).map { _ in Int32(rng.nextInt(below: 10)) }, shape: [128], on: backend)
            return { try trainStep(opt, dp) { try model(x).crossEntropy(targets: y) } }
        case .cnn:
            let model = CNN(seed: seed, on: backend)
            let opt = SGD(model.namedParameters(), lr: 0.01, momentum: 0.9)
            try parallel(model)
            let x = Tensor.uniform([64, 1, 28, 28], low: 0, high: 1, rng: &rng, on: backend)
            let y = Tensor(indices: (0..<64).map { _ in Int32(rng.nextInt(below: 10)) }, shape: [64], on: backend)
            return { try trainStep(opt, dp) { try model(x).crossEntropy(targets: y) } }
        case .gpt:
            let model = try GPT(.bench, seed: seed, on: backend)
            let opt = Adam.adamW(model.namedParameters(), lr: 3e-4)
            try parallel(model)
            let x = Tensor(indices: (0..<2048).map { _ in Int32(rng.nextInt(below: 256)) }, shape: [16, 128], on: backend)
            let y = Tensor(indices: (0..<2048).map { _ in Int32(rng.nextInt(below: 256)) }, shape: [16, 128], on: backend)
            return { try trainStep(opt, dp) { try model.loss(tokens: x, targets: y) } }
        }
    }
}

/// zero grads, forward, backward, (gradient all-reduce,) update; returns the loss.
@inline(__always)
func trainStep(_ opt: Optimizer, _ dp: DataParallel?, _ loss: () throws -> Tensor) throws -> Float {
    opt.zeroGrad()
    let l = try loss()
    try l.backward()
    try dp?.synchronize()
    try opt.step()
    return l.item
}
