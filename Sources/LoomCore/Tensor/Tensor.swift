/// An n-dimensional array of float32 (or int32) values on one device, and a node of the
/// autodiff graph.
///
/// Tensors are reference types, as in PyTorch: parameters are updated in place by the
/// optimizer, and the graph holds the tensors it needs for backward. Every tensor is a
/// contiguous row-major view `offset` elements into a `Storage`; operations that would
/// produce strided views (transpose, permute, slice) copy, except matmul, which folds
/// transposes into the GEMM call.
///
/// ```swift
/// let x = Tensor.randn([32, 784], rng: &rng)
/// let w = Tensor.randn([512, 784], rng: &rng, requiresGrad: true)
/// let loss = try x.matmul(w, transposeB: true).relu().mean()
/// try loss.backward()          // w.grad is [512, 784]
/// ```
public final class Tensor: @unchecked Sendable {
    public let shape: [Int]
    public let dtype: DType
    public let storage: Storage
    /// Elements into `storage` where this view starts.
    public let offset: Int
    public let backend: any Backend
    /// Set on parameters (leaves) and, by the engine, on every result computed from them.
    public var requiresGrad: Bool
    /// The accumulated gradient of a leaf after `backward()`; nil after `zeroGrad`.
    public var grad: Tensor?
    /// How this tensor was computed, when it needs a gradient and is not a leaf.
    public internal(set) var gradFn: GradFn?
    /// Called on a leaf after `backward` has added to its gradient. Data parallelism
    /// starts a bucket's all-reduce from here while backward continues.
    public var onGradAccumulated: ((Tensor) -> Void)?

    public init(shape: [Int], dtype: DType = .float32, storage: Storage, offset: Int = 0,
                backend: any Backend, requiresGrad: Bool = false) {
        self.shape = shape
        self.dtype = dtype
        self.storage = storage
        self.offset = offset
        self.backend = backend
        self.requiresGrad = requiresGrad
    }

    /// A new tensor of `shape` whose contents are undefined.
    public convenience init(uninitialized shape: [Int], dtype: DType = .float32, on backend: any Backend = CPUBackend.shared) {
        let n = shape.reduce(1, *)
        self.init(shape: shape, dtype: dtype, storage: backend.allocate(bytes: Swift.max(n, 1) * dtype.byteSize), backend: backend)
    }

    public var rank: Int { shape.count }
    public var count: Int { shape.reduce(1, *) }
    public var device: Device { storage.device }
    public var isLeaf: Bool { gradFn == nil }

    /// A view of the same storage with another shape of the same element count (no copy,
    /// no graph edge: use `reshaped` for a differentiable reshape).
    public func view(_ newShape: [Int], offset extra: Int = 0) -> Tensor {
        Tensor(shape: newShape, dtype: dtype, storage: storage, offset: offset + extra, backend: backend)
    }

    /// The same values, cut out of the graph.
    public func detach() -> Tensor { view(shape) }

    /// A fresh tensor of this shape/dtype on this backend.
    public func empty(_ shape: [Int]? = nil, dtype: DType? = nil) -> Tensor {
        Tensor(uninitialized: shape ?? self.shape, dtype: dtype ?? self.dtype, on: backend)
    }
}

// MARK: - Construction

extension Tensor {
    public convenience init(_ values: [Float], shape: [Int], on backend: any Backend = CPUBackend.shared) {
        precondition(values.count == shape.reduce(1, *), "Tensor(_:shape:): \(values.count) values for shape \(describe(shape))")
        self.init(uninitialized: shape, on: backend)
        values.withUnsafeBytes { backend.upload($0, to: self) }
    }

    public convenience init(indices values: [Int32], shape: [Int], on backend: any Backend = CPUBackend.shared) {
        precondition(values.count == shape.reduce(1, *), "Tensor(indices:shape:): \(values.count) values for shape \(describe(shape))")
        self.init(uninitialized: shape, dtype: .int32, on: backend)
        values.withUnsafeBytes { backend.upload($0, to: self) }
    }

    public convenience init(scalar: Float, on backend: any Backend = CPUBackend.shared) {
        self.init([scalar], shape: [], on: backend)
    }

    public static func full(_ shape: [Int], _ value: Float, on backend: any Backend = CPUBackend.shared) -> Tensor {
        let t = Tensor(uninitialized: shape, on: backend)
        backend.fill(t, value: value)
        return t
    }

    public static func zeros(_ shape: [Int], on backend: any Backend = CPUBackend.shared) -> Tensor { full(shape, 0, on: backend) }
    public static func ones(_ shape: [Int], on backend: any Backend = CPUBackend.shared) -> Tensor { full(shape, 1, on: backend) }

    /// Normal(mean, std) values drawn from `rng` (on the host, then uploaded: the same
    /// seed gives the same values on every backend).
    public static func randn(_ shape: [Int], mean: Float = 0, std: Float = 1, rng: inout Philox,
                             on backend: any Backend = CPUBackend.shared, requiresGrad: Bool = false) -> Tensor {
        var v = [Float](repeating: 0, count: shape.reduce(1, *))
        rng.fillNormal(&v, mean: mean, std: std)
        let t = Tensor(v, shape: shape, on: backend)
        t.requiresGrad = requiresGrad
        return t
    }

    /// Uniform[low, high) values drawn from `rng`.
    public static func uniform(_ shape: [Int], low: Float, high: Float, rng: inout Philox,
                               on backend: any Backend = CPUBackend.shared, requiresGrad: Bool = false) -> Tensor {
        var v = [Float](repeating: 0, count: shape.reduce(1, *))
        rng.fillUniform(&v, low: low, high: high)
        let t = Tensor(v, shape: shape, on: backend)
        t.requiresGrad = requiresGrad
        return t
    }
}

// MARK: - Reading values back

extension Tensor {
    /// The values as a host array (a copy).
    public var floats: [Float] {
        precondition(dtype == .float32, "floats: tensor is \(dtype)")
        var out = [Float](repeating: 0, count: count)
        out.withUnsafeMutableBytes { backend.download(self, into: $0) }
        return out
    }

    public var ints: [Int32] {
        precondition(dtype == .int32, "ints: tensor is \(dtype)")
        var out = [Int32](repeating: 0, count: count)
        out.withUnsafeMutableBytes { backend.download(self, into: $0) }
        return out
    }

    /// The single value of a one-element tensor.
    public var item: Float { floats[0] }

    /// Host pointer to the first element; valid for CPU tensors only.
    @inlinable
    public var ptr: UnsafeMutablePointer<Float> {
        storage.raw.assumingMemoryBound(to: Float.self) + offset
    }

    @inlinable
    public var intPtr: UnsafeMutablePointer<Int32> {
        storage.raw.assumingMemoryBound(to: Int32.self) + offset
    }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let head = "Tensor(\(describe(shape)), \(dtype), \(device)"
        if count > 8 { return head + ")" }
        let vals = dtype == .float32 ? floats.map { "\($0)" } : ints.map { "\($0)" }
        return head + ", [" + vals.joined(separator: ", ") + "])"
    }
}
