/// A named tensor made when it is needed: what a single process's checkpoint writer
/// takes, so that it holds one tensor's bytes at a time beyond what the tensors already
/// are (a device tensor is downloaded as it is written). Ranks of a run write pieces
/// instead (`CheckpointEntry`).
public struct LazyTensor {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    public let make: () throws -> Tensor

    public init(name: String, dtype: DType = .float32, shape: [Int], make: @escaping () throws -> Tensor) {
        self.name = name; self.dtype = dtype; self.shape = shape; self.make = make
    }

    /// A tensor that exists already.
    public init(_ name: String, _ tensor: Tensor) {
        self.init(name: name, dtype: tensor.dtype, shape: tensor.shape) { tensor }
    }
}
