import LoomCore
import LoomDistributed
import LoomNN
import LoomParallel

/// The benchmark's workloads: one training step on a fixed batch. mlp, cnn and gpt are the
/// three reference workloads (same shapes, batch sizes and optimizers as the PyTorch and
/// JAX references in ../shared/bench); resnet20 is ResNet-20 on CIFAR-shaped images
/// (3×32×32, batch 128, SGD momentum, batch norm in training mode; bench/resnet20_torch.py
/// is the same in PyTorch); gpt2 is GPT-2 small at batch 8 × 1024 tokens with AdamW, for
/// GPUs (bench/gpt2_torch.py is the same model in PyTorch).
public enum Workload: String, CaseIterable, Sendable {
    case mlp, cnn, gpt, resnet20, gpt2

    /// What `loom bench` runs by default (`all`): the CPU reference workloads.
    public static let reference: [Workload] = [.mlp, .cnn, .gpt, .resnet20]

    public var unit: String { self == .gpt || self == .gpt2 ? "tokens/s" : "samples/s" }

    /// Samples (or tokens) a step processes.
    public var itemsPerStep: Int {
        switch self {
        case .mlp: return 128
        case .cnn: return 64
        case .resnet20: return 128
        case .gpt: return 16 * 128
        case .gpt2: return 8 * 1024
        }
    }

    /// A closure that runs one training step and returns its loss, unread: a device backend
    /// may still be computing it (`Backend.endStep`), as a jitted JAX step returns. With a
    /// communicator, one rank of data parallel training (each rank its own batch of the
    /// workload's size) at ZeRO stage `zero`.
    public func makeStep(on backend: any Backend, seed: UInt64 = 0, communicator: Communicator? = nil,
                         zero: Int = 0) throws -> () throws -> Tensor {
        var rng = Philox(seed: seed &+ 1000 &+ UInt64(communicator?.rank ?? 0))
        let full = zero == 3 ? communicator.flatMap { $0.size > 1 ? FullyShardedParameters(communicator: $0, backend: backend) : nil } : nil
        let root = full as (any UnitSharding)?
        /// The step of `model` under `optimizer` (a template the layout shards), with its loss.
        func step(_ model: Module, _ optimizer: Optimizer, _ loss: @escaping () throws -> Tensor) throws -> () throws -> Tensor {
            try full?.shard([model], as: nil)  // what the model did not shard as units: its root
            let layout = try dataParallelSharding(zero: zero, parameters: model.namedParameters(), optimizer: optimizer, group: communicator,
                                                  bucketBytes: DataParallel.defaultBucketBytes, fullySharded: full)
            return {
                let l = try root.forward(nil) { try loss() }
                try l.backward()
                try layout.reduceGradients()
                try layout.optimizer.step()
                // Gradients released once applied (PyTorch's zero_grad(set_to_none=True)),
                // before the step ends: on a lazy backend (XLA) they are then no result of
                // the step's program, and XLA fuses them into the update.
                layout.optimizer.zeroGrad()
                try backend.endStep()
                return l
            }
        }
        switch self {
        case .mlp:
            let model = MLP(sizes: [784, 512, 512, 10], seed: seed, on: backend)
            let x = Tensor.uniform([128, 784], low: 0, high: 1, rng: &rng, on: backend)
            let y = Tensor(indices: (0..<128).map { _ in Int32(rng.nextInt(below: 10)) }, shape: [128], on: backend)
            return try step(model, SGD(model.namedParameters(), lr: 0.01, momentum: 0.9)) { try model(x).crossEntropy(targets: y) }
        case .cnn:
            let model = CNN(seed: seed, on: backend)
            let x = Tensor.uniform([64, 1, 28, 28], low: 0, high: 1, rng: &rng, on: backend)
            let y = Tensor(indices: (0..<64).map { _ in Int32(rng.nextInt(below: 10)) }, shape: [64], on: backend)
            return try step(model, SGD(model.namedParameters(), lr: 0.01, momentum: 0.9)) { try model(x).crossEntropy(targets: y) }
        case .resnet20:
            let model = try ResNet(depth: 20, channels: 3, classes: 10, seed: seed, on: backend)
            let x = Tensor.uniform([128, 3, 32, 32], low: 0, high: 1, rng: &rng, on: backend)
            let y = Tensor(indices: (0..<128).map { _ in Int32(rng.nextInt(below: 10)) }, shape: [128], on: backend)
            return try step(model, SGD(model.namedParameters(), lr: 0.01, momentum: 0.9)) { try model(x).crossEntropy(targets: y) }
        case .gpt, .gpt2:
            let config: GPTConfig = self == .gpt ? .bench : .gpt2Small
            let (b, t) = self == .gpt ? (16, 128) : (8, 1024)
            let model = try GPT(config, seed: seed, on: backend, sharding: full)
            let vocabulary = self == .gpt ? 256 : 50257  // GPT-2's real tokens; the padded rows are never targets
            let x = Tensor(indices: (0..<b * t).map { _ in Int32(rng.nextInt(below: vocabulary)) }, shape: [b, t], on: backend)
            let y = Tensor(indices: (0..<b * t).map { _ in Int32(rng.nextInt(below: vocabulary)) }, shape: [b, t], on: backend)
            return try step(model, Adam.adamW(model.namedParameters(), lr: 3e-4)) { try model.loss(logits: model(x), targets: y) }
        }
    }
}
