import LoomCore

/// Updates parameters from their gradients. State tensors are named after the
/// parameter they belong to (`blocks.0.mlp.fc.weight.exp_avg`) so checkpoints carry them.
public protocol Optimizer: AnyObject {
    var parameters: [(name: String, tensor: Tensor)] { get }
    /// Learning rate used by the next `step()` (schedules set it each step).
    var learningRate: Float { get set }
    /// Updates done so far.
    var stepCount: Int { get set }
    func step() throws
    /// Optimizer state, each tensor with the parameter it belongs to (an index into
    /// `parameters`) and its slot (created on first use, so call after a step or
    /// `materializeState()`). A state tensor has its parameter's shape and sharding.
    func state() -> [OptimizerState]
    /// Allocates every state tensor (zeros), so a checkpoint can be loaded into them.
    func materializeState() throws
    /// An optimizer of the same kind and settings over other parameters (ZeRO builds
    /// one over each rank's shard).
    func withParameters(_ parameters: [(name: String, tensor: Tensor)]) -> Optimizer
    /// Sets the state from `value(name, like)`: the values of the state tensor named as
    /// `namedState` names it, shaped like parameter-shaped `like` (a checkpoint's). A
    /// sharded optimizer keeps only its chunk of each.
    func loadState(_ value: (_ name: String, _ like: Tensor) throws -> Tensor) throws
}

extension Optimizer {
    public func loadState(_ value: (_ name: String, _ like: Tensor) throws -> Tensor) throws {
        try materializeState()
        for (name, t) in namedState() { t.backend.copy(try value(name, t), into: t) }
    }
}

/// One state tensor of an optimizer: PyTorch's `state[param][slot]`.
public struct OptimizerState {
    public let parameter: Int
    /// `momentum_buffer`, `exp_avg`, `exp_avg_sq`: PyTorch's names.
    public let slot: String
    public let tensor: Tensor
    public init(parameter: Int, slot: String, tensor: Tensor) { self.parameter = parameter; self.slot = slot; self.tensor = tensor }
}

extension Optimizer {
    public func zeroGrad() { for (_, p) in parameters { p.grad = nil } }

    /// State by checkpoint name: the parameter's name and the slot (`blocks.0.mlp.fc.weight.exp_avg`).
    public func namedState() -> [(name: String, tensor: Tensor)] {
        state().map { (parameters[$0.parameter].name + "." + $0.slot, $0.tensor) }
    }
}

/// `items` grouped by the backend of their parameter, in order of first appearance (one
/// multi-tensor step per backend; a model normally lives on one).
func byBackend<T>(_ items: [T], _ param: KeyPath<T, Tensor>) -> [(any Backend, [T])] {
    var groups: [(any Backend, [T])] = []
    for item in items {
        let backend = item[keyPath: param].backend
        if let i = groups.firstIndex(where: { $0.0 === backend }) { groups[i].1.append(item) } else { groups.append((backend, [item])) }
    }
    return groups
}

/// A zero state tensor for `p`: same shape, backend and sharding.
func zeroState(like p: Tensor) throws -> Tensor {
    let t = try Tensor.zeros(p.shape, on: p.backend)
    t.tagMemory(.optimizerState)
    t.sharding = p.sharding
    return t
}

/// SGD with momentum, Nesterov momentum and L2 weight decay (PyTorch's `torch.optim.SGD`).
public final class SGD: Optimizer {
    public let parameters: [(name: String, tensor: Tensor)]
    public var learningRate: Float
    public var stepCount = 0
    public let momentum: Float, dampening: Float, weightDecay: Float, nesterov: Bool
    private var buffers: [Tensor?]

    public init(_ parameters: [(name: String, tensor: Tensor)], lr: Float, momentum: Float = 0, dampening: Float = 0,
                weightDecay: Float = 0, nesterov: Bool = false) {
        self.parameters = parameters
        learningRate = lr
        self.momentum = momentum; self.dampening = dampening; self.weightDecay = weightDecay; self.nesterov = nesterov
        buffers = Array(repeating: nil, count: parameters.count)
    }

    public func step() throws {
        var updates: [SGDTensors] = []
        for (i, (_, p)) in parameters.enumerated() {
            guard let g = p.grad else { continue }
            if momentum != 0 && buffers[i] == nil { buffers[i] = try zeroState(like: p) }
            updates.append(SGDTensors(param: p, grad: g, momentum: buffers[i]))
        }
        // PyTorch starts the momentum buffer at the first gradient, undamped.
        let dampening = stepCount == 0 ? 0 : self.dampening
        for (backend, group) in byBackend(updates, \.param) {
            backend.sgdStep(group, lr: learningRate, momentumFactor: momentum, dampening: dampening, weightDecay: weightDecay,
                            nesterov: nesterov)
        }
        stepCount += 1
    }

    public func withParameters(_ parameters: [(name: String, tensor: Tensor)]) -> Optimizer {
        SGD(parameters, lr: learningRate, momentum: momentum, dampening: dampening, weightDecay: weightDecay, nesterov: nesterov)
    }

    public func materializeState() throws {
        guard momentum != 0 else { return }
        for (i, (_, p)) in parameters.enumerated() where buffers[i] == nil { buffers[i] = try zeroState(like: p) }
    }

    public func state() -> [OptimizerState] {
        buffers.enumerated().compactMap { i, b in b.map { OptimizerState(parameter: i, slot: "momentum_buffer", tensor: $0) } }
    }
}

/// Adam and AdamW (decoupled weight decay), PyTorch's formulas and defaults.
public final class Adam: Optimizer {
    public let parameters: [(name: String, tensor: Tensor)]
    public var learningRate: Float
    public var stepCount = 0
    public let beta1: Float, beta2: Float, eps: Float, weightDecay: Float, decoupled: Bool
    private var m: [Tensor?], v: [Tensor?]

    public init(_ parameters: [(name: String, tensor: Tensor)], lr: Float = 1e-3, beta1: Float = 0.9, beta2: Float = 0.999,
                eps: Float = 1e-8, weightDecay: Float = 0, decoupled: Bool = false) {
        self.parameters = parameters
        learningRate = lr
        self.beta1 = beta1; self.beta2 = beta2; self.eps = eps; self.weightDecay = weightDecay; self.decoupled = decoupled
        m = Array(repeating: nil, count: parameters.count)
        v = m
    }

    /// AdamW: decoupled weight decay, default 0.01 as in PyTorch.
    public static func adamW(_ parameters: [(name: String, tensor: Tensor)], lr: Float = 1e-3, beta1: Float = 0.9,
                             beta2: Float = 0.999, eps: Float = 1e-8, weightDecay: Float = 0.01) -> Adam {
        Adam(parameters, lr: lr, beta1: beta1, beta2: beta2, eps: eps, weightDecay: weightDecay, decoupled: true)
    }

    public func step() throws {
        stepCount += 1
        var updates: [AdamTensors] = []
        for (i, (_, p)) in parameters.enumerated() {
            guard let g = p.grad else { continue }
            if m[i] == nil { m[i] = try zeroState(like: p); v[i] = try zeroState(like: p) }
            updates.append(AdamTensors(param: p, grad: g, m: m[i]!, v: v[i]!))
        }
        for (backend, group) in byBackend(updates, \.param) {
            backend.adamStep(group, lr: learningRate, beta1: beta1, beta2: beta2, eps: eps, weightDecay: weightDecay,
                             decoupled: decoupled, step: stepCount)
        }
    }

    public func withParameters(_ parameters: [(name: String, tensor: Tensor)]) -> Optimizer {
        Adam(parameters, lr: learningRate, beta1: beta1, beta2: beta2, eps: eps, weightDecay: weightDecay, decoupled: decoupled)
    }

    public func materializeState() throws {
        for (i, (_, p)) in parameters.enumerated() where m[i] == nil {
            m[i] = try zeroState(like: p); v[i] = try zeroState(like: p)
        }
    }

    public func state() -> [OptimizerState] {
        parameters.indices.flatMap { i -> [OptimizerState] in
            guard let mi = m[i], let vi = v[i] else { return [] }
            return [OptimizerState(parameter: i, slot: "exp_avg", tensor: mi), OptimizerState(parameter: i, slot: "exp_avg_sq", tensor: vi)]
        }
    }
}
