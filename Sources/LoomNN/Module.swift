import LoomCore

/// A piece of a network: holds parameters (tensors that require grad), buffers (other
/// tensors, e.g. batch-norm running statistics) and child modules as stored properties.
///
/// Names come from the property names, joined with dots down the tree, the way PyTorch
/// names them (`blocks.0.attention.qkv.weight`); checkpoints and parallel sharding key
/// on them. Arrays of modules are numbered. Order is declaration order, so every rank
/// enumerates parameters identically.
open class Module {
    /// Training mode (dropout active, batch norm uses batch statistics).
    public private(set) var training = true

    public init() {}

    /// Every parameter, with its hierarchical name, in a fixed order.
    public func namedParameters() -> [(name: String, tensor: Tensor)] {
        namedTensors().filter { $0.tensor.requiresGrad }
    }

    public var parameters: [Tensor] { namedParameters().map(\.tensor) }

    /// Parameters and buffers: everything a checkpoint holds for this module.
    public func namedTensors(prefix: String = "") -> [(name: String, tensor: Tensor)] {
        var out: [(String, Tensor)] = []
        var seen = Set<ObjectIdentifier>()  // tied weights appear once, under their first name
        visit(prefix: prefix) { name, t in
            if seen.insert(ObjectIdentifier(t)).inserted { out.append((name, t)) }
        }
        return out
    }

    /// Child modules with their names.
    public func namedChildren() -> [(name: String, module: Module)] {
        var out: [(String, Module)] = []
        for (label, value) in storedProperties() {
            if let m = value as? Module { out.append((label, m)) }
            if let ms = value as? [Module] { for (i, m) in ms.enumerated() { out.append((childName(label, i), m)) } }
        }
        return out
    }

    /// The name of element `index` of the module array stored as `label`: `label.index`.
    /// A module holding a slice of a larger model's array (a pipeline stage's blocks)
    /// overrides it to keep the larger model's numbering, so names stay global; an empty
    /// name splices the element's names into this module's (a container of pieces).
    open func childName(_ label: String, _ index: Int) -> String { "\(label).\(index)" }

    /// Every module below this one, depth first, with its full name.
    public func descendants() -> [(name: String, module: Module)] {
        namedChildren().flatMap { name, child in
            [(name, child)] + child.descendants().map { (Module.join(name, $0.name), $0.module) }
        }
    }

    /// Dotted name of `name` under `prefix` (either may be empty).
    static func join(_ prefix: String, _ name: String) -> String {
        prefix.isEmpty ? name : name.isEmpty ? prefix : prefix + "." + name
    }

    public var parameterCount: Int { parameters.reduce(0) { $0 + $1.count } }

    /// Switches this module and all below it to training or evaluation mode.
    public func train(_ on: Bool = true) {
        training = on
        for (_, c) in namedChildren() { c.train(on) }
    }

    public func eval() { train(false) }

    /// Moves every parameter and buffer to `backend`, in place (PyTorch's
    /// `module.to(device)`): the tensors keep their identity, so an optimizer made before
    /// the move still holds them.
    public func to(_ backend: any Backend) throws {
        for (_, t) in namedTensors() { try t.move(to: backend) }
    }

    /// Moves every parameter and buffer to the backend registered for `device`.
    public func to(_ device: Device) throws { try to(Backends.backend(for: device)) }

    /// Drops the values of every parameter and buffer (their tensors keep their shapes and
    /// names; reading them faults): for the parts of a model another rank holds, built
    /// only to draw the same random streams and give the same names.
    public func releaseValues() {
        for (_, t) in namedTensors() { t.rebind(to: Storage.released(on: t.device), offset: 0) }
    }

    /// Drops every parameter's gradient (PyTorch's `zero_grad(set_to_none=True)`).
    public func zeroGrad() { for p in parameters { p.grad = nil } }

    private func visit(prefix: String, _ body: (String, Tensor) -> Void) {
        for (label, value) in storedProperties() {
            let name = Module.join(prefix, label)
            if let t = value as? Tensor { body(name, t) }
            if let t = value as? Tensor? , let t { body(name, t) }
            if let m = value as? Module { m.visit(prefix: name, body) }
            if let ms = value as? [Module] { for (i, m) in ms.enumerated() { m.visit(prefix: Module.join(prefix, childName(label, i)), body) } }
        }
    }

    private func storedProperties() -> [(String, Any)] {
        var mirrors: [Mirror] = []
        var m: Mirror? = Mirror(reflecting: self)
        while let mm = m { mirrors.append(mm); m = mm.superclassMirror }
        return mirrors.reversed().flatMap { mirror in
            mirror.children.compactMap { c in c.label.map { ($0, c.value) } }.filter { $0.0 != "training" }
        }
    }
}

/// A module with one input and one output, the kind `Sequential` chains.
public protocol UnaryLayer: Module {
    func callAsFunction(_ x: Tensor) throws -> Tensor
}

/// A new parameter: a leaf tensor that requires grad.
@inlinable
public func parameter(_ t: Tensor) -> Tensor {
    t.requiresGrad = true
    t.tagMemory(.parameters)
    return t
}
