/// A named tensor made when it is needed: what a checkpoint writer takes, so that a rank
/// holds one of a checkpoint's tensors at a time beyond its own state (ZeRO-3 gathers a
/// unit when its first parameter is written; sharded optimizer state is gathered one
/// segment at a time). `make` may be collective: every rank that takes part makes the
/// same tensors in the same order (the writer's rank writes them, the others drain).
public struct LazyTensor {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// How the tensor made is a part of a larger one (tensor parallelism), as `Tensor.sharding`.
    public var sharding: Sharding?
    public let make: () throws -> Tensor

    public init(name: String, dtype: DType = .float32, shape: [Int], make: @escaping () throws -> Tensor) {
        self.name = name; self.dtype = dtype; self.shape = shape; self.make = make
    }

    /// A tensor that exists already.
    public init(_ name: String, _ tensor: Tensor) {
        self.init(name: name, dtype: tensor.dtype, shape: tensor.shape) { tensor }
        sharding = tensor.sharding
    }

    /// The same tensor under another name.
    public func renamed(_ newName: String) -> LazyTensor {
        var out = LazyTensor(name: newName, dtype: dtype, shape: shape, make: make)
        out.sharding = sharding
        return out
    }

    /// `transform` of the tensor made, of `shape` (gathering tensor-parallel shards into
    /// the whole: no sharding after).
    public func map(shape: [Int], _ transform: @escaping (Tensor) throws -> Tensor) -> LazyTensor {
        let make = self.make
        return LazyTensor(name: name, dtype: dtype, shape: shape) { try transform(make()) }
    }
}
