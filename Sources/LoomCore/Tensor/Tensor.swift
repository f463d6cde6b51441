/// An n-dimensional array on one device, and a node of the autodiff graph.
///
/// Tensors are reference types, as in PyTorch: parameters are updated in place by the
/// optimizer, and the graph holds the tensors it needs for backward. Every tensor is a
/// contiguous row-major view `offset` elements into a `Storage`; operations that would
/// produce strided views (transpose, permute, slice) copy, except matmul, which folds
/// transposes into the GEMM call.
///
/// Memory belongs to the backend: host code reads values with `floats`/`ints` (a
/// download) or, for host tensors only, `withHostMemory`. Tensors made without `on:` are
/// allocated on the current default backend (`withDefaultBackend`, else the CPU).
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
    /// Replaced only by `move(to:)`, which keeps the tensor's identity (parameters that an
    /// optimizer holds stay the same objects when a module changes device).
    public private(set) var storage: Storage
    /// Elements into `storage` where this view starts.
    public private(set) var offset: Int
    public private(set) var backend: any Backend
    /// Set on parameters (leaves) and, by the engine, on every result computed from them.
    public var requiresGrad: Bool
    /// The accumulated gradient of a leaf after `backward()`; nil after `zeroGrad`.
    /// Its memory counts as gradients from then on (`MemoryMeter`'s split).
    public var grad: Tensor? {
        didSet { grad?.storage.tag(.gradients, onlyUntagged: true) }
    }
    /// How this tensor was computed, when it needs a gradient and is not a leaf.
    public internal(set) var gradFn: GradFn?
    /// Set on a parameter that is this rank's part of a larger one (tensor parallelism),
    /// and on its optimizer state; nil for whole tensors.
    public var sharding: Sharding?
    /// Called on a leaf after `backward` has added to its gradient. Data parallelism
    /// starts a bucket's all-reduce from here while backward continues.
    public var onGradAccumulated: ((Tensor) -> Void)?
    /// This tensor's values rounded for bf16 matrix products, kept from one use to the next
    /// while its storage says nothing has touched them (OperandCopy.swift). Set on parameters.
    var operandCopy: OperandCopy?

    public init(shape: [Int], dtype: DType = .float32, storage: Storage, offset: Int = 0,
                backend: any Backend, requiresGrad: Bool = false) {
        self.shape = shape
        self.dtype = dtype
        self.storage = storage
        self.offset = offset
        self.backend = backend
        self.requiresGrad = requiresGrad
    }

    /// A new tensor of `shape` whose contents are undefined. Throws when the backend
    /// cannot allocate it (the error names the bytes and the device).
    public convenience init(uninitialized shape: [Int], dtype: DType = .float32, on backend: any Backend = DefaultBackend.current) throws {
        let n = shape.reduce(1, *)
        guard n >= 0 else { throw LoomError.shapeMismatch("tensor of shape \(describe(shape)): negative size") }
        try MemoryMeter.current?.admit(Swift.max(n, 1) * dtype.byteSize, shape: shape)
        self.init(shape: shape, dtype: dtype, storage: try backend.allocate(bytes: Swift.max(n, 1) * dtype.byteSize), backend: backend)
    }

    /// For constructors from host values, which are small: allocation failure traps with
    /// the backend's message.
    convenience init(allocating shape: [Int], dtype: DType, on backend: any Backend) {
        do { try self.init(uninitialized: shape, dtype: dtype, on: backend) } catch { fatalError("\(error)") }
    }

    public var rank: Int { shape.count }
    public var count: Int { shape.reduce(1, *) }
    public var device: Device { storage.device }
    public var isLeaf: Bool { gradFn == nil }
    /// Bytes of this view.
    public var byteCount: Int { count * dtype.byteSize }

    /// Counts this tensor's whole storage as holding `category` (`MemoryMeter`'s split).
    public func tagMemory(_ category: MemoryCategory) { storage.tag(category) }

    /// A view of the same storage with another shape of the same element count (no copy,
    /// no graph edge: use `reshaped` for a differentiable reshape).
    public func view(_ newShape: [Int], offset extra: Int = 0) -> Tensor {
        Tensor(shape: newShape, dtype: dtype, storage: storage, offset: offset + extra, backend: backend)
    }

    /// The same values, cut out of the graph.
    public func detach() -> Tensor { view(shape) }

    /// A fresh tensor of this shape/dtype on this backend.
    public func empty(_ shape: [Int]? = nil, dtype: DType? = nil) throws -> Tensor {
        try Tensor(uninitialized: shape ?? self.shape, dtype: dtype ?? self.dtype, on: backend)
    }
}

// MARK: - Construction

extension Tensor {
    public convenience init(_ values: [Float], shape: [Int], on backend: any Backend = DefaultBackend.current) {
        precondition(values.count == shape.reduce(1, *), "Tensor(_:shape:): \(values.count) values for shape \(describe(shape))")
        self.init(allocating: shape, dtype: .float32, on: backend)
        values.withUnsafeBytes { backend.upload($0, to: self) }
    }

    public convenience init(indices values: [Int32], shape: [Int], on backend: any Backend = DefaultBackend.current) {
        precondition(values.count == shape.reduce(1, *), "Tensor(indices:shape:): \(values.count) values for shape \(describe(shape))")
        self.init(allocating: shape, dtype: .int32, on: backend)
        values.withUnsafeBytes { backend.upload($0, to: self) }
    }

    /// `shape` filled with one host value: for layers' initial parameters and buffers
    /// (like the other constructors from host values, it traps if allocation fails).
    public convenience init(repeating value: Float, shape: [Int], on backend: any Backend = DefaultBackend.current) {
        self.init(allocating: shape, dtype: .float32, on: backend)
        backend.fill(self, value: value)
    }

    public convenience init(scalar: Float, on backend: any Backend = DefaultBackend.current) {
        self.init([scalar], shape: [], on: backend)
    }

    public static func full(_ shape: [Int], _ value: Float, dtype: DType = .float32,
                            on backend: any Backend = DefaultBackend.current) throws -> Tensor {
        let t = try Tensor(uninitialized: shape, dtype: dtype, on: backend)
        backend.fill(t, value: value)
        return t
    }

    public static func zeros(_ shape: [Int], dtype: DType = .float32, on backend: any Backend = DefaultBackend.current) throws -> Tensor {
        try full(shape, 0, dtype: dtype, on: backend)
    }
    public static func ones(_ shape: [Int], dtype: DType = .float32, on backend: any Backend = DefaultBackend.current) throws -> Tensor {
        try full(shape, 1, dtype: dtype, on: backend)
    }

    /// Normal(mean, std) values drawn from `rng` (on the host, then uploaded: the same
    /// seed gives the same values on every backend).
    public static func randn(_ shape: [Int], mean: Float = 0, std: Float = 1, rng: inout Philox,
                             on backend: any Backend = DefaultBackend.current, requiresGrad: Bool = false) -> Tensor {
        var v = [Float](repeating: 0, count: shape.reduce(1, *))
        rng.fillNormal(&v, mean: mean, std: std)
        let t = Tensor(v, shape: shape, on: backend)
        t.requiresGrad = requiresGrad
        return t
    }

    /// Uniform[low, high) values drawn from `rng`.
    public static func uniform(_ shape: [Int], low: Float, high: Float, rng: inout Philox,
                               on backend: any Backend = DefaultBackend.current, requiresGrad: Bool = false) -> Tensor {
        var v = [Float](repeating: 0, count: shape.reduce(1, *))
        rng.fillUniform(&v, low: low, high: high)
        let t = Tensor(v, shape: shape, on: backend)
        t.requiresGrad = requiresGrad
        return t
    }
}

// MARK: - Devices

extension Tensor {
    /// The same values on `target` (a copy through the host), or this tensor when it is
    /// already there; between host backends, a view of the same memory that `target`
    /// computes on. Not differentiable: for moving data and parameters, as in PyTorch.
    public func to(_ target: any Backend) throws -> Tensor {
        if target === backend { return self }
        // Host backends (CPU ones of any thread count) share memory: nothing to copy. The
        // result is computed on by `target`, with its threads: a batch the loader made on
        // the shared backend must not run a rank's ops on every core (in-process ranks
        // would each take all of them). A tensor in a graph keeps its identity.
        if target.device == device && device.isHost {
            return requiresGrad ? self : Tensor(shape: shape, dtype: dtype, storage: storage, offset: offset, backend: target)
        }
        let out = try Tensor(uninitialized: shape, dtype: dtype, on: target)
        try Tensor.transfer(self, into: out)
        out.requiresGrad = requiresGrad && isLeaf
        return out
    }

    /// The same values on the backend registered for `device` (`Backends`).
    public func to(_ device: Device) throws -> Tensor { try to(Backends.backend(for: device)) }

    /// Moves this tensor's values to `target` in place: the tensor keeps its identity
    /// (an optimizer's reference to a parameter stays valid) and its gradient, if any,
    /// moves with it. What `Module.to` does to every parameter and buffer.
    public func move(to target: any Backend) throws {
        if target === backend || (target.device == device && device.isHost) { return }
        let fresh = try to(target)
        let g = try grad?.to(target)
        storage = fresh.storage; offset = 0; backend = target
        grad = g
    }

    /// Points this tensor at `offset` elements into `storage` (same device), keeping its
    /// identity, shape and gradient: for a layout that holds a parameter's values only
    /// while they are used. ZeRO-3 gathers a unit's parameters into one buffer before the
    /// unit runs and points them at `Storage.released(on:)` afterwards, so the graph's
    /// references to the parameter read the gathered values at backward too.
    public func rebind(to storage: Storage, offset: Int) {
        precondition(storage.device == device, "rebind: \(storage.device) storage for a tensor on \(device)")
        precondition(storage.byteCount == 0 || (offset + count) * dtype.byteSize <= storage.byteCount,
                     "rebind: \(describe(shape)) at \(offset) overruns a \(storage.byteCount)-byte storage")
        self.storage = storage
        self.offset = offset
    }

    /// dst = src across backends: direct when they share a device, else through the
    /// source's host bytes (`HostBuffer`: its own memory, or a staging download).
    public static func transfer(_ src: Tensor, into dst: Tensor) throws {
        guard src.count == dst.count, src.dtype == dst.dtype else {
            throw LoomError.shapeMismatch("transfer: \(src.dtype) \(describe(src.shape)) into \(dst.dtype) \(describe(dst.shape))")
        }
        if src.device == dst.device && src.device.isHost { dst.backend.copy(src, into: dst); return }
        let host = HostBuffer(src)
        withExtendedLifetime(host) { dst.backend.upload(UnsafeRawBufferPointer(host.bytes), to: dst) }
    }
}

// MARK: - Reading values back

extension Tensor {
    /// The values as a host array (a copy; bfloat16 and float16 widened to float32).
    public var floats: [Float] {
        precondition(dtype.isFloatingPoint, "floats: tensor is \(dtype)")
        switch dtype {
        case .bfloat16, .float16:
            var half = [UInt16](repeating: 0, count: count)
            half.withUnsafeMutableBytes { backend.download(self, into: $0) }
            return dtype == .bfloat16 ? half.map(BFloat16Bits.float) : half.map { Float(Float16(bitPattern: $0)) }
        default:
            var out = [Float](repeating: 0, count: count)
            out.withUnsafeMutableBytes { backend.download(self, into: $0) }
            return out
        }
    }

    public var ints: [Int32] {
        precondition(dtype == .int32, "ints: tensor is \(dtype)")
        var out = [Int32](repeating: 0, count: count)
        out.withUnsafeMutableBytes { backend.download(self, into: $0) }
        return out
    }

    /// The raw element bits of a 2-byte tensor (bfloat16, float16), downloaded.
    public var halfBits: [UInt16] {
        precondition(dtype.byteSize == 2, "halfBits: tensor is \(dtype)")
        var out = [UInt16](repeating: 0, count: count)
        out.withUnsafeMutableBytes { backend.download(self, into: $0) }
        return out
    }

    /// The single value of a one-element tensor.
    public var item: Float { floats[0] }

    /// Runs `body` on this view's bytes in host memory. Only for host tensors: device
    /// memory is read with `floats`/`ints` or the backend's download, never addressed.
    public func withHostMemory<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) throws -> R {
        guard let base = storage.hostAddress else {
            throw LoomError.deviceMismatch("host access to a tensor \(describe(shape)) on \(device): download it (floats, ints) or use Tensor.to(.cpu)")
        }
        return try body(UnsafeMutableRawBufferPointer(start: base + offset * dtype.byteSize, count: byteCount))
    }

    /// Host pointer to the first element, for the CPU backend's kernels. It and its kin below
    /// mark the storage touched (`Storage.touch`): copies of its values may be stale from now.
    @inline(__always)
    var ptr: UnsafeMutablePointer<Float> {
        storage.touch()
        return UnsafeMutableRawPointer(bitPattern: storage.handle)!.assumingMemoryBound(to: Float.self) + offset
    }

    @inline(__always)
    var intPtr: UnsafeMutablePointer<Int32> {
        storage.touch()
        return UnsafeMutableRawPointer(bitPattern: storage.handle)!.assumingMemoryBound(to: Int32.self) + offset
    }

    @inline(__always)
    var halfPtr: UnsafeMutablePointer<UInt16> {
        storage.touch()
        return UnsafeMutableRawPointer(bitPattern: storage.handle)!.assumingMemoryBound(to: UInt16.self) + offset
    }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let head = "Tensor(\(describe(shape)), \(dtype), \(device)"
        if count > 8 { return head + ")" }
        let vals = dtype.isFloatingPoint ? floats.map { "\($0)" } : ints.map { "\($0)" }
        return head + ", [" + vals.joined(separator: ", ") + "])"
    }
}
