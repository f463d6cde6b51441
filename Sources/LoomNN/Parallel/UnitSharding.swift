import LoomCore

/// Where a layout that keeps parameters sharded between uses (ZeRO-3, PyTorch's FSDP)
/// meets a model. A model given one names its units as it builds them and runs each
/// unit's forward through `forward`:
///
///     let block = try TransformerBlock(...)
///     try sharding?.shard([block], as: block)          // from here on, 1/N of it is kept
///     ...
///     x = try sharding.forward(block) { try block(x) } // whole while it runs
///
/// Parameters no unit takes belong to the root unit (`as: nil`: a GPT's embeddings and
/// final norm, or the whole of a model that names no units); the root's forward is the
/// whole model's, and its parameters stay whole from the start of a step's forward to
/// the end of its backward. Without a sharding a model is built and run as always, so
/// a model is the same code in every layout.
public protocol UnitSharding: AnyObject {
    /// Takes the parameters of `modules` that no earlier call took into `unit` (nil: the
    /// root unit): from here on this rank keeps only its chunk of them, and their tensors
    /// hold values only while the unit runs.
    func shard(_ modules: [Module], as unit: Module?) throws
    /// Runs `body`, the forward of `unit` (nil: the root, whose forward is the whole
    /// model's), with the unit's parameters whole, and arranges that they are whole again
    /// when backward reaches the unit. Returns `body`'s result.
    func forward(_ unit: Module?, _ body: () throws -> Tensor) throws -> Tensor
}

extension Optional where Wrapped == any UnitSharding {
    /// `body` through the sharding's `forward` when there is one, else `body` itself.
    public func forward(_ unit: Module?, _ body: () throws -> Tensor) throws -> Tensor {
        guard let sharding = self else { return try body() }
        return try sharding.forward(unit, body)
    }
}
